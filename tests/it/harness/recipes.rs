//! Building SFC recipes (the JSON an MES puts in a work master's `data`)
//! and storing them through the MES. One builder per action interaction;
//! a test adds what its action needs (`Parameters`, `Equipment`, …) to the
//! value returned.

use microdcs::testkit::Mes;
use serde_json::{json, Value};
use std::time::Duration;

/// The `dataschema` of an SFC recipe in a work master.
pub use microdcs::testkit::mes::SFC_RECIPE as SFC;

/// A `push_command` action `name` in `step` with qualifier `qualifier`:
/// the station sends a command of type `type_id`, re-sent after
/// `timeout_s` seconds without an answer (0: never).
pub fn push_command(
    name: &str,
    step: &str,
    qualifier: &str,
    type_id: &str,
    timeout_s: u64,
) -> Value {
    json!({"Name": name, "Step": step, "Qualifier": qualifier, "Interaction": "push_command",
           "TypeId": type_id, "TimeoutSeconds": timeout_s})
}

/// A `pull_event` action `name` in `step` (qualifier `N`): the step waits
/// for an equipment event of type `type_id`, at most `timeout_s` seconds
/// (0: forever).
pub fn pull_event(name: &str, step: &str, type_id: &str, timeout_s: u64) -> Value {
    json!({"Name": name, "Step": step, "Qualifier": "N", "Interaction": "pull_event",
           "TypeId": type_id, "TimeoutSeconds": timeout_s})
}

/// Stores `recipe` as work master `wm-axle` of `scope` (a configuration
/// event, no reply) and gives the station a moment to apply it.
pub async fn store_recipe(mes: &mut Mes, scope: &str, recipe: Value) {
    mes.configure(
        "workmaster",
        scope,
        json!({"ID": "wm-axle", "data": recipe, "dataschema": SFC}),
        false,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
}
