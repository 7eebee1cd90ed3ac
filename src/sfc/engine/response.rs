//! The job response of a finished execution (`ISA95JobResponseDataType`).

use crate::jobs::JobState;
use crate::sfc::exec::{Execution, Status};
use serde_json::{json, Value};

fn rfc3339(ms: u64) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(i64::try_from(ms).unwrap_or(i64::MAX))
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The job response of a finished execution (`ISA95JobResponseDataType`):
/// the action results as `JobResponseData`, the step history, start and end
/// times, and the failure reason as `Description`.
pub(super) fn response_json(job: &str, e: &Execution, state: &JobState) -> Value {
    let data: Vec<Value> = e
        .results
        .iter()
        .map(|(k, v)| json!({"ID": k, "Value": v}))
        .chain(std::iter::once(json!({
            "ID": "steps",
            "Value": e.history.iter().map(|h| json!({
                "Step": h.step, "Activation": h.activation,
                "Entered": rfc3339(h.entered_ms), "Left": h.left_ms.map(rfc3339)
            })).collect::<Vec<_>>()
        })))
        .collect();
    let mut r = json!({
        "JobResponseID": format!("{job}-response"),
        "JobOrderID": job,
        "StartTime": rfc3339(e.started_ms),
        "EndTime": rfc3339(e.ended_ms.unwrap_or(e.started_ms)),
        "JobState": state.to_wire(),
        "JobResponseData": data,
    });
    if let Status::Failed(reason) = &e.status {
        r["Description"] = json!({"Locale": "en", "Text": reason});
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::MainState;

    #[test]
    fn responses_carry_results_history_and_reason() {
        let e = Execution::failed("j", "s", "boom", 1_700_000_000_000);
        let r = response_json("j", &e, &JobState::new(MainState::Aborted, None));
        assert_eq!(r["Description"]["Text"], "boom");
        assert_eq!(r["JobOrderID"], "j");
        let typed: crate::models::isa95_jobcontrol::ISA95JobResponseDataType =
            serde_json::from_value(r).unwrap();
        assert_eq!(typed.job_order_id, "j");
    }
}
