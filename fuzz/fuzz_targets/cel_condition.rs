//! A transition condition's text → compiled condition → evaluation, against
//! an empty context and against one with some results, states and params.
#![no_main]

use libfuzzer_sys::fuzz_target;
use microdcs::sfc::condition::{Condition, ConditionContext};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

fn map(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

fuzz_target!(|text: &str| {
    let Ok(condition) = Condition::compile(text) else {
        return;
    };
    // What a recipe shows is what compiles to the same condition again.
    let shown = condition.to_string();
    assert_eq!(
        Condition::compile(&shown).as_ref(),
        Ok(&condition),
        "condition {text:?} displays as {shown:?}"
    );
    if let Condition::Expr(cel) = &condition {
        let _ = cel.free_variables();
    }

    let empty_map = Map::new();
    let empty_states = BTreeMap::new();
    let empty = ConditionContext {
        results: &empty_map,
        states: &empty_states,
        params: &empty_map,
        step_results: &empty_map,
        elapsed_seconds: 0.0,
    };
    let _ = condition.evaluate(&empty);

    let results = map(json!({
        "press": {"ok": true, "force": 12.5, "n": 3, "big": u64::MAX, "tags": ["a", "b"]},
        "scan": {"code": "X-1", "nested": {"deep": [1, 2, {"x": null}]}}
    }));
    let states: BTreeMap<String, String> = [("press", "done"), ("scan", "running")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    let params = map(json!({"Torque": 40, "Variant": "A", "Limit": -1.5}));
    let step_results = map(json!({"ok": true, "ready": false}));
    let full = ConditionContext {
        results: &results,
        states: &states,
        params: &params,
        step_results: &step_results,
        elapsed_seconds: 2.5,
    };
    let _ = condition.evaluate(&full);
});
