//! The cost of schema validation per message (#12), in process: what the
//! validation layer adds in front of a handler (decode the payload to a JSON
//! value, check it against its schema) for a Store of a full job order,
//! against the floor a handler pays anyway (decoding the same bytes into
//! the generated `StoreCall` with serde). Both run on the same machine in
//! the same run, so their ratio does not depend on the machine.

use microdcs::models::isa95_jobcontrol::StoreCall;
use microdcs::validation::SchemaSet;
use microdcs::{ContentType, EventType};
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// Per-message times of one measurement.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ValidationCost {
    /// Payload size, bytes.
    pub(crate) bytes: usize,
    /// Decoding into `StoreCall` (serde), per message.
    pub(crate) decode: Duration,
    /// Decoding to a JSON value and checking it against `StoreCall`'s
    /// schema, per message.
    pub(crate) validate: Duration,
}

impl ValidationCost {
    /// Validation ÷ decoding.
    pub(crate) fn ratio(&self) -> f64 {
        self.validate.as_secs_f64() / self.decode.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// A Store with every kind of requirement, as an MES sends it.
fn store_call() -> Value {
    json!({"JobOrder": {
        "JobOrderID": "JO-2026-000042",
        "Description": [{"Locale": "en", "Text": "rear axle, left hand drive"}],
        "WorkMasterID": [{"ID": "wm-axle", "Description": {"Locale": "en", "Text": "axle"}}],
        "StartTime": "2026-11-30T06:00:00Z",
        "Priority": 3,
        "JobOrderParameters": [
            {"ID": "torque_nm", "Value": 42.5, "EngineeringUnits": {"DisplayName": {"Text": "Nm"}}},
            {"ID": "variant", "Value": "LHD"}
        ],
        "EquipmentRequirements": [{"ID": "press-1", "Quantity": "1"}],
        "MaterialRequirements": [
            {"MaterialClassID": "steel", "MaterialDefinitionID": "s235", "Quantity": "2"}
        ],
        "PersonnelRequirements": [{"ID": "operator"}]
    }, "Comment": [{"Locale": "en", "Text": "from MES"}]})
}

/// Median over `rounds` rounds of `n` runs of `f`, per run.
fn per_message(n: usize, rounds: usize, mut f: impl FnMut()) -> Duration {
    let mut times: Vec<Duration> = (0..rounds)
        .map(|_| {
            let t = Instant::now();
            for _ in 0..n {
                f();
            }
            t.elapsed() / u32::try_from(n).unwrap_or(u32::MAX)
        })
        .collect();
    times.sort_unstable();
    times[times.len() / 2]
}

/// Measures both with `n` messages per round.
///
/// # Errors
/// When the payload does not decode or is not valid (a bug in the bench).
pub(crate) fn run(n: usize) -> Result<ValidationCost, String> {
    let schemas = SchemaSet::builtin();
    let bytes = serde_json::to_vec(&store_call()).map_err(|e| e.to_string())?;
    let value: Value = ContentType::Json
        .decode(&bytes)
        .map_err(|e| e.to_string())?;
    schemas
        .check(StoreCall::DATASCHEMA, &value)
        .map_err(|e| e.to_string())?;
    ContentType::Json
        .decode::<StoreCall>(&bytes)
        .map_err(|e| e.to_string())?;
    let rounds = 7;
    // Warm-up (caches, allocator).
    per_message(n / 10 + 1, 1, || {
        let _ = black_box(ContentType::Json.decode::<StoreCall>(black_box(&bytes)));
    });
    let decode = per_message(n, rounds, || {
        let _ = black_box(ContentType::Json.decode::<StoreCall>(black_box(&bytes)));
    });
    let validate = per_message(n, rounds, || {
        if let Ok(v) = ContentType::Json.decode::<Value>(black_box(&bytes)) {
            let _ = black_box(schemas.check(StoreCall::DATASCHEMA, &v));
        }
    });
    Ok(ValidationCost {
        bytes: bytes.len(),
        decode,
        validate,
    })
}
