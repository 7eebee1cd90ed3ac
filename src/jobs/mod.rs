//! Job management: the OPC UA Machinery Jobs / ISA95-JOBCONTROL job order
//! state machine, its Redis persistence and the built-in `machinery-jobs`
//! northbound processor.
//!
//! - [`state`]: states, numbers and their wire form.
//! - [`machine`]: the state machine as a pure function, built from the
//!   NodeSet's transition table.
//! - [`acceptance`]: which configured resources an order needs (pure).
//! - [`audit`]: the job's audit trail (commands, transitions, steps).
//! - [`store`]: Redis keys and the atomic compare-and-swap script.
//! - [`manager`]: the state machine applied to stored jobs; the API the SFC
//!   engine calls for internal transitions.
//! - [`wire`]: the methods' CloudEvent payloads.
//! - `command`: the job methods independent of the face (MQTT or OPC UA)
//!   they arrive on.
//! - [`processor`]: the `machinery-jobs` processor.

pub mod acceptance;
pub mod audit;
pub(crate) mod command;
pub mod machine;
pub mod manager;
pub mod processor;
pub mod state;
pub mod status;
pub mod store;
pub mod wire;

pub use machine::{Internal, Machine, Method, Trigger};
pub use manager::{CommandOutcome, JobManager, JobSettings};
pub use state::{JobState, MainState, SubState};
pub use status::ReturnStatus;
pub use store::JobStore;

/// The longest JobOrderID accepted, in UTF-8 bytes (wire contract §8); a
/// longer one is answered with `InvalidRequest`.
pub const MAX_JOB_ORDER_ID_BYTES: usize = 256;

use serde_json::Value;

/// The main-state transitions of `ISA95JobOrderReceiverObjectType`, as
/// generated from the NodeSet: `(from, to, causes)`.
pub(crate) fn nodeset_edges(
) -> impl Iterator<Item = (&'static str, &'static str, &'static [&'static str])> {
    crate::models::JOB_ORDER_STATE_MACHINE
        .transitions
        .iter()
        .filter(|t| t.parent.is_none())
        .map(|t| (t.from, t.to, t.causes))
}

/// Checks a job order against the generated `ISA95JobOrderDataType` and
/// returns it in its canonical form (PascalCase, absent optionals omitted,
/// snake_case input accepted).
///
/// # Errors
/// The order does not match the data type; the message names the field.
pub fn normalise_order(order: Value) -> Result<Value, OrderError> {
    let typed: crate::models::isa95_jobcontrol::ISA95JobOrderDataType =
        serde_json::from_value(order)?;
    Ok(serde_json::to_value(&typed)?)
}

/// A job order that does not match `ISA95JobOrderDataType`; the message is
/// serde's and names the field.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct OrderError(#[from] serde_json::Error);

/// The information models behind the processor (for its metadata event).
pub(crate) fn models_info() -> Vec<processor::ModelInfo> {
    use crate::models::{isa95_jobcontrol as j, machinery_jobs as m};
    [
        (j::NAMESPACE_URI, j::MODEL_VERSION, j::PUBLICATION_DATE),
        (m::NAMESPACE_URI, m::MODEL_VERSION, m::PUBLICATION_DATE),
    ]
    .into_iter()
    .map(|(uri, version, date)| processor::ModelInfo {
        uri: uri.to_owned(),
        version: version.to_owned(),
        publication_date: date.to_owned(),
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn orders_are_normalised_to_pascal_case_and_checked() {
        let v = normalise_order(json!({
            "job_order_id": "j1",
            "work_master_id": [{"id": "wm"}],
            "priority": 2
        }))
        .unwrap();
        assert_eq!(
            v,
            json!({"JobOrderID": "j1", "WorkMasterID": [{"ID": "wm"}], "Priority": 2})
        );
        let e = normalise_order(json!({"JobOrderID": 5}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("string"), "{e}");
        let e = normalise_order(json!({"JobOrderID": "j", "Priority": 70000}))
            .unwrap_err()
            .to_string();
        assert!(!e.is_empty());
    }

    #[test]
    fn the_machine_is_built_from_the_generated_nodeset_table() {
        let edges: Vec<_> = nodeset_edges().collect();
        assert_eq!(
            edges.len(),
            13,
            "13 main-state transitions in ISA95JobOrderReceiverObjectType"
        );
        assert!(edges.contains(&("AllowedToStart", "Running", &[][..])));
        assert!(Machine::from_table(nodeset_edges()).is_ok());
    }
}
