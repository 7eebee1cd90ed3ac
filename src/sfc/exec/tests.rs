//! Scenario tests of the evolution: one behaviour per test.

use super::*;
use serde_json::json;

struct T {
    recipe: Recipe,
    net: Net,
    now: u64,
}

impl T {
    #[allow(clippy::needless_pass_by_value)]
    fn new(recipe: Value) -> T {
        let recipe = Recipe::parse(&recipe).unwrap_or_else(|e| panic!("{e}"));
        let net = Net::compile(&recipe).unwrap();
        T {
            recipe,
            net,
            now: 1_000_000,
        }
    }
    fn ctx(&self) -> EvolutionContext<'_> {
        EvolutionContext {
            recipe: &self.recipe,
            net: &self.net,
            now_ms: self.now,
        }
    }
    fn start(&self) -> (Execution, Vec<Effect>) {
        Execution::start("j1", "line", Map::new(), self.ctx())
    }
}

fn action(name: &str, step: &str, q: &str, interaction: &str, ty: &str) -> Value {
    json!({"Name": name, "Step": step, "Qualifier": q, "Interaction": interaction, "TypeId": ty, "TimeoutSeconds": 0})
}

fn push(name: &str, step: &str) -> Value {
    action(
        name,
        step,
        "N",
        "push_command",
        &format!("com.example.{name}.v1"),
    )
}

fn steps(names: &[&str]) -> Vec<Value> {
    names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            if i == 0 {
                json!({"Name": n, "Initial": true})
            } else {
                json!({"Name": n})
            }
        })
        .collect()
}

fn tr(source: &str, target: &str, condition: &str) -> Value {
    json!({"Source": source, "Target": target, "Condition": condition})
}

fn dispatched(effects: &[Effect]) -> Vec<(String, String, u32)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Dispatch {
                action,
                command_id,
                attempt,
                ..
            } => Some((action.clone(), command_id.clone(), *attempt)),
            _ => None,
        })
        .collect()
}

fn names(effects: &[Effect]) -> Vec<String> {
    dispatched(effects).into_iter().map(|d| d.0).collect()
}

fn entered(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::StepEntered { step, .. } => Some(step.clone()),
            _ => None,
        })
        .collect()
}

fn timers(effects: &[Effect]) -> Vec<(String, u64)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Timer { key, at_ms } => Some((key.clone(), *at_ms)),
            _ => None,
        })
        .collect()
}

fn ok(e: &Execution, action: &str, data: Value) -> Input {
    Input::Result {
        command_id: e.actions[action].command_id.clone(),
        outcome: Ok(data),
    }
}

fn finished(effects: &[Effect]) -> Option<Status> {
    effects.iter().find_map(|e| match e {
        Effect::Finished(s) => Some(s.clone()),
        _ => None,
    })
}

fn sequence() -> Value {
    json!({
        "Steps": steps(&["load", "press", "inspect"]),
        "Transitions": [tr("load", "press", "always"), tr("press", "inspect", "")],
        "Actions": [
            push("clamp", "load"),
            push("press_in", "press"),
            action("inspection", "inspect", "N", "pull_event", "com.example.inspected.v1")
        ]
    })
}

/// [`sequence`] with a timeout on its action at `index`.
fn sequence_timing_out(index: usize, seconds: u64) -> Value {
    let mut r = sequence();
    r["Actions"][index]["TimeoutSeconds"] = json!(seconds);
    r
}

/// Two steps, `a` then `b` (always), with `actions`.
fn a_then_b(actions: &Value) -> Value {
    json!({
        "Steps": steps(&["a", "b"]),
        "Transitions": [tr("a", "b", "always")],
        "Actions": actions
    })
}

/// The event [`sequence`]'s `inspection` waits for.
fn inspected() -> Input {
    event(
        "com.example.inspected.v1",
        json!({"passed": true}),
        None,
        None,
    )
}

/// The first timer `effects` set, firing.
fn first_timer(effects: &[Effect]) -> Input {
    Input::Timer {
        key: timers(effects)[0].0.clone(),
    }
}

#[test]
fn a_sequence_runs_step_by_step_and_completes() {
    let t = T::new(sequence());
    let (mut e, effects) = t.start();
    assert_eq!(entered(&effects), ["load"]);
    assert_eq!(
        dispatched(&effects),
        [("clamp".into(), "line/j1/clamp/1".into(), 1)]
    );
    let effects = e.apply(ok(&e, "clamp", json!({"ok": true})), t.ctx());
    assert_eq!(entered(&effects), ["press"]);
    assert_eq!(names(&effects), ["press_in"]);
    let effects = e.apply(ok(&e, "press_in", json!({"force_kn": 12.5})), t.ctx());
    assert_eq!(entered(&effects), ["inspect"]);
    assert!(names(&effects).is_empty(), "a pull action sends nothing");
    let effects = e.apply(inspected(), t.ctx());
    assert_eq!(finished(&effects), Some(Status::Completed));
    assert_eq!(e.results["press_in"]["force_kn"], 12.5);
    assert_eq!(e.history.len(), 3);
    assert_eq!(
        parse_command_id("line/j1/clamp/1"),
        Some(("line".into(), "j1".into(), "clamp".into(), 1))
    );
    assert!(e.history.iter().all(|h| h.left_ms.is_some()));
    // Nothing happens after the end.
    assert!(e.apply(ok(&e, "clamp", json!({})), t.ctx()).is_empty());
}

#[test]
fn an_event_that_arrives_early_is_kept_and_matched_on_activation() {
    let t = T::new(sequence());
    let (mut e, _) = t.start();
    let effects = e.apply(inspected(), t.ctx());
    assert!(effects.is_empty());
    assert_eq!(e.early.len(), 1);
    e.apply(ok(&e, "clamp", json!({})), t.ctx());
    let effects = e.apply(ok(&e, "press_in", json!({})), t.ctx());
    assert_eq!(
        finished(&effects),
        Some(Status::Completed),
        "inspect completes at once"
    );
    assert!(e.early.is_empty());
    assert_eq!(e.results["inspection"]["passed"], true);
}

fn event(ty: &str, data: Value, equipment: Option<&str>, expires_ms: Option<u64>) -> Input {
    Input::Event {
        type_id: ty.into(),
        data,
        id: None,
        equipment: equipment.map(str::to_owned),
        expires_ms,
    }
}

const PART: &str = "com.example.part.present.v1";

/// A simultaneous branch whose two paths each wait for the same event
/// type from a different equipment.
fn two_sensors() -> Value {
    let mut left = action("left_part", "left", "N", "pull_event", PART);
    left["Equipment"] = json!("line-1/press");
    let mut right = action("right_part", "right", "N", "pull_event", PART);
    right["Equipment"] = json!("line-1/camera");
    json!({
        "Steps": steps(&["start", "left", "right", "join"]),
        "Transitions": [tr("start", "fork", "always"), tr("fork", "join", "always")],
        "Branches": [{"Name": "fork", "Type": "simultaneous", "Branches": [["left"], ["right"]]}],
        "Actions": [push("prep", "start"), left, right, push("check", "join")]
    })
}

#[test]
fn an_equipment_selector_takes_its_level_and_the_levels_below() {
    assert!(selector_takes(None, None));
    assert!(selector_takes(None, Some("line-1/press")));
    assert!(selector_takes(Some("line-1/press"), Some("line-1/press")));
    assert!(selector_takes(
        Some("line-1/press"),
        Some("line-1/press/left")
    ));
    assert!(!selector_takes(
        Some("line-1/press"),
        Some("line-1/presses")
    ));
    assert!(!selector_takes(Some("line-1/press"), Some("line-1")));
    assert!(!selector_takes(Some("line-1/press"), None));
    assert_eq!(equipment_of(Some("axle")), None);
    assert_eq!(equipment_of(Some("axle/")), None);
    assert_eq!(
        equipment_of(Some("axle/line-1/press")).as_deref(),
        Some("line-1/press")
    );
    assert_eq!(equipment_of(None), None);
}

#[test]
fn parallel_pull_actions_each_take_their_own_equipments_event() {
    let t = T::new(two_sensors());
    let (mut e, _) = t.start();
    let effects = e.apply(ok(&e, "prep", json!({})), t.ctx());
    assert_eq!(entered(&effects), ["left", "right"]);
    // Neither the scope itself nor a sibling equipment completes them.
    e.apply(event(PART, json!({"from": "scope"}), None, None), t.ctx());
    e.apply(
        event(
            PART,
            json!({"from": "presses"}),
            Some("line-1/presses"),
            None,
        ),
        t.ctx(),
    );
    assert_eq!(e.actions["left_part"].state, ActionState::Running);
    assert_eq!(e.actions["right_part"].state, ActionState::Running);
    assert_eq!(e.early.len(), 2, "kept, not applied");
    // The second path's event first: it goes to the second path.
    let effects = e.apply(
        event(PART, json!({"from": "camera"}), Some("line-1/camera"), None),
        t.ctx(),
    );
    assert!(entered(&effects).is_empty());
    assert_eq!(e.actions["left_part"].state, ActionState::Running);
    assert_eq!(e.results["right_part"]["from"], "camera");
    // A sub-level of the press is the press.
    let effects = e.apply(
        event(
            PART,
            json!({"from": "press"}),
            Some("line-1/press/left"),
            None,
        ),
        t.ctx(),
    );
    assert_eq!(entered(&effects), ["join"]);
    assert_eq!(e.results["left_part"]["from"], "press");
    assert_eq!(e.results["right_part"]["from"], "camera");
}

#[test]
fn a_kept_event_is_taken_only_by_an_action_whose_selector_matches() {
    let t = T::new(two_sensors());
    let (mut e, _) = t.start();
    // Both arrive before the branch: the camera's first.
    e.apply(
        event(PART, json!({"from": "camera"}), Some("line-1/camera"), None),
        t.ctx(),
    );
    e.apply(
        event(PART, json!({"from": "press"}), Some("line-1/press"), None),
        t.ctx(),
    );
    let effects = e.apply(ok(&e, "prep", json!({})), t.ctx());
    assert_eq!(entered(&effects), ["left", "right", "join"]);
    assert_eq!(e.results["left_part"]["from"], "press");
    assert_eq!(e.results["right_part"]["from"], "camera");
    assert!(e.early.is_empty());
}

#[test]
fn an_action_without_a_selector_takes_any_equipments_event() {
    let t = T::new(sequence());
    let (mut e, _) = t.start();
    e.apply(ok(&e, "clamp", json!({})), t.ctx());
    e.apply(ok(&e, "press_in", json!({})), t.ctx());
    let effects = e.apply(
        event(
            "com.example.inspected.v1",
            json!({"passed": true}),
            Some("line-1/camera"),
            None,
        ),
        t.ctx(),
    );
    assert_eq!(finished(&effects), Some(Status::Completed));
}

#[test]
fn an_expired_event_completes_nothing() {
    let mut t = T::new(sequence());
    let (mut e, _) = t.start();
    e.apply(ok(&e, "clamp", json!({})), t.ctx());
    e.apply(ok(&e, "press_in", json!({})), t.ctx());
    let ty = "com.example.inspected.v1";
    // Expired on arrival: not applied, not kept.
    let effects = e.apply(event(ty, json!({"n": 1}), None, Some(t.now)), t.ctx());
    assert!(effects.is_empty());
    assert_eq!(e.actions["inspection"].state, ActionState::Running);
    assert!(e.early.is_empty());
    // Still valid: applied.
    t.now += 10;
    let effects = e.apply(event(ty, json!({"n": 2}), None, Some(t.now + 1)), t.ctx());
    assert_eq!(finished(&effects), Some(Status::Completed));
    assert_eq!(e.results["inspection"]["n"], 2);
}

#[test]
fn a_kept_event_that_expires_before_its_step_is_dropped() {
    let mut t = T::new(sequence());
    let (mut e, _) = t.start();
    let ty = "com.example.inspected.v1";
    e.apply(event(ty, json!({"n": 1}), None, Some(t.now + 500)), t.ctx());
    e.apply(
        event(ty, json!({"n": 2}), None, Some(t.now + 5000)),
        t.ctx(),
    );
    assert_eq!(e.early.len(), 2);
    t.now += 1000;
    e.apply(ok(&e, "clamp", json!({})), t.ctx());
    assert_eq!(e.early.len(), 1, "the expired one is gone");
    let effects = e.apply(ok(&e, "press_in", json!({})), t.ctx());
    assert_eq!(finished(&effects), Some(Status::Completed));
    assert_eq!(e.results["inspection"]["n"], 2, "the live one completes it");

    // Only expired ones kept: the action waits.
    let mut t = T::new(sequence());
    let (mut e, _) = t.start();
    e.apply(event(ty, json!({"n": 1}), None, Some(t.now + 500)), t.ctx());
    e.apply(ok(&e, "clamp", json!({})), t.ctx());
    t.now += 500;
    let effects = e.apply(ok(&e, "press_in", json!({})), t.ctx());
    assert_eq!(entered(&effects), ["inspect"]);
    assert_eq!(e.actions["inspection"].state, ActionState::Running);
}

#[test]
fn a_command_not_sent_before_its_expiry_is_retried_per_policy_or_fails() {
    let unsent = |e: &Execution, attempt| Input::Unsent {
        command_id: e.actions["clamp"].command_id.clone(),
        attempt,
        reason: "expired in the work stream".into(),
    };
    // With retries left: the next attempt, same command id.
    let mut r = sequence_timing_out(0, 5);
    r["Actions"][0]["Retry"] = json!({"MaxAttempts": 2});
    let t = T::new(r);
    let (mut e, _) = t.start();
    let effects = e.apply(unsent(&e, 1), t.ctx());
    assert_eq!(
        dispatched(&effects),
        [("clamp".into(), "line/j1/clamp/1".into(), 2)]
    );
    // A stale report about attempt 1 changes nothing now.
    assert!(e.apply(unsent(&e, 1), t.ctx()).is_empty());
    // The last attempt unsent: the job fails with the reason.
    let effects = e.apply(unsent(&e, 2), t.ctx());
    assert!(
        matches!(finished(&effects), Some(Status::Failed(m)) if m.contains("not sent") && m.contains("expired in the work stream")),
        "{effects:?}"
    );
    assert_eq!(e.actions["clamp"].state, ActionState::Failed);

    // No retry policy: fails at once.
    let t = T::new(sequence());
    let (mut e, _) = t.start();
    let effects = e.apply(unsent(&e, 1), t.ctx());
    assert!(matches!(finished(&effects), Some(Status::Failed(_))));
}

#[test]
fn a_redelivered_event_is_applied_once() {
    let t = T::new(sequence());
    let (mut e, _) = t.start();
    let ev = Input::Event {
        type_id: "com.example.inspected.v1".into(),
        data: json!({"n": 1}),
        id: Some("camera\u{1f}e-1".into()),
        equipment: None,
        expires_ms: None,
    };
    e.apply(ev.clone(), t.ctx());
    let before = e.clone();
    assert!(e.apply(ev, t.ctx()).is_empty());
    assert_eq!(e, before, "not kept a second time");
    assert_eq!(e.early.len(), 1);
}

#[test]
fn duplicate_and_stale_results_are_harmless() {
    let t = T::new(sequence());
    let (mut e, _) = t.start();
    let first = ok(&e, "clamp", json!({"n": 1}));
    e.apply(first.clone(), t.ctx());
    let before = e.clone();
    assert!(e.apply(first, t.ctx()).is_empty());
    assert_eq!(e, before);
    let unknown = Input::Result {
        command_id: "nope".into(),
        outcome: Ok(json!({})),
    };
    assert!(e.apply(unknown, t.ctx()).is_empty());
}

#[test]
fn an_equipment_error_fails_the_job() {
    let t = T::new(sequence());
    let (mut e, _) = t.start();
    let effects = e.apply(
        Input::Result {
            command_id: e.actions["clamp"].command_id.clone(),
            outcome: Err("COMMUNICATION_ERROR: jammed".into()),
        },
        t.ctx(),
    );
    assert!(
        matches!(finished(&effects), Some(Status::Failed(m)) if m.contains("clamp") && m.contains("jammed"))
    );
}

#[test]
fn timeouts_resend_with_the_same_id_then_fail() {
    let mut r = sequence_timing_out(0, 5);
    r["Actions"][0]["Retry"] = json!({"MaxAttempts": 3, "BackoffSeconds": 1});
    let mut t = T::new(r);
    let (mut e, effects) = t.start();
    let (key, at) = timers(&effects)[0].clone();
    assert_eq!(at, t.now + 5000);
    // A timer that fires early (another replica's clock) does nothing.
    assert!(e
        .apply(Input::Timer { key: key.clone() }, t.ctx())
        .is_empty());
    t.now += 5000;
    let effects = e.apply(Input::Timer { key }, t.ctx());
    assert!(names(&effects).is_empty(), "back-off first");
    let (backoff, at) = timers(&effects)[0].clone();
    assert_eq!(at, t.now + 1000);
    t.now += 1000;
    let effects = e.apply(Input::Timer { key: backoff }, t.ctx());
    assert_eq!(
        dispatched(&effects),
        [("clamp".into(), "line/j1/clamp/1".into(), 2)]
    );
    // Attempt 3, then exhausted.
    let mut key = timers(&effects)[0].0.clone();
    t.now += 5000;
    let effects = e.apply(Input::Timer { key: key.clone() }, t.ctx());
    t.now += 1000;
    let effects2 = e.apply(first_timer(&effects), t.ctx());
    assert_eq!(dispatched(&effects2)[0].2, 3);
    key.clone_from(&timers(&effects2)[0].0);
    t.now += 5000;
    let effects = e.apply(Input::Timer { key }, t.ctx());
    assert!(matches!(finished(&effects), Some(Status::Failed(m)) if m.contains("3 attempts")));
}

#[test]
fn a_result_after_a_resend_still_completes_the_action() {
    let mut r = sequence_timing_out(0, 1);
    r["Actions"][0]["Retry"] = json!({"MaxAttempts": 2});
    let mut t = T::new(r);
    let (mut e, effects) = t.start();
    t.now += 1000;
    let effects = e.apply(first_timer(&effects), t.ctx());
    assert_eq!(dispatched(&effects)[0].2, 2);
    let effects = e.apply(ok(&e, "clamp", json!({})), t.ctx());
    assert_eq!(entered(&effects), ["press"]);
}

#[test]
fn qualifier_n_holds_the_step_and_is_cancelled_when_left() {
    let t = T::new(json!({
        "Steps": steps(&["a", "b"]),
        "Transitions": [tr("a", "b", "results.go.ok == true")],
        "Actions": [push("go", "a"), push("slow", "a"), push("next", "b")]
    }));
    let (mut e, effects) = t.start();
    assert_eq!(names(&effects), ["go", "slow"]);
    // The expression fires without waiting for `slow`, which is cancelled.
    let effects = e.apply(ok(&e, "go", json!({"ok": true})), t.ctx());
    assert_eq!(entered(&effects), ["b"]);
    assert_eq!(e.actions["slow"].state, ActionState::Cancelled);
    let late = ok(&e, "slow", json!({}));
    let _ = late;
    assert!(e
        .apply(
            Input::Result {
                command_id: "line/j1/slow/1".into(),
                outcome: Ok(json!({}))
            },
            t.ctx()
        )
        .is_empty());
}

#[test]
fn qualifier_p_does_not_hold_the_step_and_p0_runs_on_exit() {
    let t = T::new(a_then_b(&json!([
        action("pulse", "a", "P", "push_command", "com.example.pulse.v1"),
        action("bye", "a", "P0", "push_command", "com.example.bye.v1"),
        push("work", "b")
    ])));
    let (mut e, effects) = t.start();
    // `a` has no non-stored action: it is finished at once.
    assert_eq!(names(&effects), ["pulse", "bye", "work"]);
    assert_eq!(entered(&effects), ["a", "b"]);
    // The pulse's late result is still recorded.
    e.apply(ok(&e, "pulse", json!({"v": 1})), t.ctx());
    assert_eq!(e.results["pulse"]["v"], 1);
}

#[test]
fn qualifier_s_keeps_running_until_r_resets_it() {
    let t = T::new(json!({
        "Steps": steps(&["a", "b", "c"]),
        "Transitions": [tr("a", "b", "always"), tr("b", "c", "always")],
        "Actions": [
            action("conveyor", "a", "S", "push_command", "com.example.conveyor.v1"),
            push("weld", "b"),
            action("stop_conveyor", "c", "R", "push_command", "conveyor"),
            push("unload", "c")
        ]
    }));
    let (mut e, effects) = t.start();
    assert_eq!(names(&effects), ["conveyor", "weld"]);
    assert_eq!(
        e.actions["conveyor"].state,
        ActionState::Running,
        "still running in b"
    );
    let effects = e.apply(ok(&e, "weld", json!({})), t.ctx());
    assert_eq!(names(&effects), ["unload"], "R sends nothing itself");
    assert_eq!(e.actions["conveyor"].state, ActionState::Cancelled);
}

#[test]
fn qualifier_l_is_cancelled_at_its_limit_and_releases_the_step() {
    let mut r = a_then_b(&json!([
        action("blow", "a", "L", "push_command", "com.example.air.v1"),
        push("next", "b")
    ]));
    r["Actions"][0]["DurationSeconds"] = json!(2.0);
    let mut t = T::new(r);
    let (mut e, effects) = t.start();
    let (key, at) = timers(&effects)[0].clone();
    assert_eq!(at, t.now + 2000);
    t.now += 2000;
    let effects = e.apply(Input::Timer { key }, t.ctx());
    assert_eq!(e.actions["blow"].state, ActionState::Cancelled);
    assert_eq!(entered(&effects), ["b"]);
}

#[test]
fn qualifier_d_is_sent_after_its_delay_only_if_the_step_is_still_active() {
    let mut r = a_then_b(&json!([
        action("late", "a", "D", "push_command", "com.example.late.v1"),
        push("next", "b")
    ]));
    r["Actions"][0]["DelaySeconds"] = json!(3.0);
    let mut t = T::new(r.clone());
    let (mut e, effects) = t.start();
    assert!(names(&effects).is_empty());
    let (key, _) = timers(&effects)[0].clone();
    t.now += 3000;
    let effects = e.apply(Input::Timer { key }, t.ctx());
    assert_eq!(names(&effects), ["late"]);
    let effects = e.apply(ok(&e, "late", json!({})), t.ctx());
    assert_eq!(entered(&effects), ["b"], "D holds the step until done");

    // Left before the delay (an expression condition): never sent.
    r["Transitions"][0]["Condition"] = json!("params.skip == true");
    let mut t = T::new(r);
    let mut params = Map::new();
    params.insert("skip".into(), json!(true));
    let (e, effects) = Execution::start("j2", "line", params, t.ctx());
    assert_eq!(entered(&effects), ["a", "b"]);
    let mut e = e;
    t.now += 3000;
    let key = timers(&effects)[0].0.clone();
    assert!(names(&e.apply(Input::Timer { key }, t.ctx())).is_empty());
}

fn branches(kind: &str) -> Value {
    json!({
        "Steps": steps(&["start", "left", "right", "join"]),
        "Transitions": [tr("start", "fork", "always"), tr("fork", "join", "always")],
        "Branches": [{"Name": "fork", "Type": kind, "Branches": [["left"], ["right"]]}],
        "Actions": [push("prep", "start"), push("press_left", "left"), push("press_right", "right"), push("check", "join")]
    })
}

#[test]
fn a_simultaneous_branch_runs_all_paths_and_joins_when_all_are_done() {
    let t = T::new(branches("simultaneous"));
    let (mut e, _) = t.start();
    let effects = e.apply(ok(&e, "prep", json!({})), t.ctx());
    assert_eq!(entered(&effects), ["left", "right"]);
    assert_eq!(names(&effects), ["press_left", "press_right"]);
    let effects = e.apply(ok(&e, "press_right", json!({})), t.ctx());
    assert!(entered(&effects).is_empty(), "waits for the other path");
    let effects = e.apply(ok(&e, "press_left", json!({})), t.ctx());
    assert_eq!(entered(&effects), ["join"]);
    let effects = e.apply(ok(&e, "check", json!({})), t.ctx());
    assert_eq!(finished(&effects), Some(Status::Completed));
}

#[test]
fn a_selection_branch_takes_the_highest_priority_enabled_path() {
    let mut r = branches("selection");
    r["Transitions"] = json!([
        tr("start", "fork", "always"),
        {"Source": "fork", "Target": "left", "Condition": "results.prep.side == 'left'", "Priority": 2},
        {"Source": "fork", "Target": "right", "Condition": "results.prep.side != ''", "Priority": 1},
        tr("fork", "join", "always")
    ]);
    let t = T::new(r.clone());
    let (mut e, _) = t.start();
    // Both entries are true; priority 1 (right) wins.
    let effects = e.apply(ok(&e, "prep", json!({"side": "left"})), t.ctx());
    assert_eq!(entered(&effects), ["right"]);
    let effects = e.apply(ok(&e, "press_right", json!({})), t.ctx());
    assert_eq!(
        entered(&effects),
        ["join"],
        "the chosen path alone converges"
    );

    r["Transitions"][2]["Condition"] = json!("results.prep.side == 'right'");
    let t = T::new(r);
    let (mut e, _) = t.start();
    let effects = e.apply(ok(&e, "prep", json!({"side": "left"})), t.ctx());
    assert_eq!(entered(&effects), ["left"]);
}

#[test]
fn branches_nest() {
    let t = T::new(json!({
        "Steps": steps(&["s", "a1", "a2", "b1", "c1", "end"]),
        "Transitions": [
            tr("s", "outer", "always"),
            {"Source": "inner", "Target": "b1", "Condition": "results.a1.big == true"},
            {"Source": "inner", "Target": "c1", "Condition": "results.a1.big == false"},
            tr("outer", "end", "always")
        ],
        "Branches": [
            {"Name": "outer", "Type": "simultaneous", "Branches": [["a1", "inner"], ["a2"]]},
            {"Name": "inner", "Type": "selection", "Branches": [["b1"], ["c1"]]}
        ],
        "Actions": [push("s", "s"), push("a1", "a1"), push("a2", "a2"), push("b1", "b1"), push("c1", "c1"), push("end", "end")]
    }));
    let (mut e, _) = t.start();
    let effects = e.apply(ok(&e, "s", json!({})), t.ctx());
    assert_eq!(entered(&effects), ["a1", "a2"]);
    let effects = e.apply(ok(&e, "a1", json!({"big": false})), t.ctx());
    assert_eq!(entered(&effects), ["c1"]);
    let effects = e.apply(ok(&e, "c1", json!({})), t.ctx());
    assert!(entered(&effects).is_empty(), "a2 still running");
    let effects = e.apply(ok(&e, "a2", json!({})), t.ctx());
    assert_eq!(entered(&effects), ["end"]);
}

#[test]
fn a_loop_reactivates_a_step_with_a_new_command_id() {
    let t = T::new(json!({
        "Steps": steps(&["screw", "check", "done"]),
        "Transitions": [
            tr("screw", "check", "always"),
            {"Source": "check", "Target": "screw", "Condition": "results.measure.torque < 40.0", "Priority": 1},
            {"Source": "check", "Target": "done", "Condition": "results.measure.torque >= 40.0", "Priority": 2}
        ],
        "Actions": [push("tighten", "screw"), push("measure", "check")]
    }));
    let (mut e, effects) = t.start();
    assert_eq!(dispatched(&effects)[0].1, "line/j1/tighten/1");
    e.apply(ok(&e, "tighten", json!({})), t.ctx());
    let effects = e.apply(ok(&e, "measure", json!({"torque": 31.0})), t.ctx());
    assert_eq!(
        dispatched(&effects),
        [("tighten".into(), "line/j1/tighten/2".into(), 1)]
    );
    e.apply(ok(&e, "tighten", json!({})), t.ctx());
    assert_eq!(e.actions["measure"].command_id, "line/j1/measure/2");
    let effects = e.apply(ok(&e, "measure", json!({"torque": 44.0})), t.ctx());
    assert_eq!(entered(&effects), ["done"]);
    assert_eq!(finished(&effects), Some(Status::Completed));
}

#[test]
fn a_recipe_that_loops_without_waiting_fails_instead_of_spinning() {
    let t = T::new(json!({
        "Steps": steps(&["a", "b"]),
        "Transitions": [tr("a", "b", "always"), tr("b", "a", "always")],
        "Actions": []
    }));
    let (_, effects) = t.start();
    assert!(matches!(finished(&effects), Some(Status::Failed(m)) if m.contains("loops")));
}

#[test]
fn pause_holds_transitions_and_timers_resume_shifts_them() {
    let mut t = T::new(sequence_timing_out(1, 10));
    let (mut e, _) = t.start();
    let effects = e.apply(ok(&e, "clamp", json!({})), t.ctx());
    let (key, at) = timers(&effects)[0].clone();
    assert_eq!(at, t.now + 10_000);
    e.apply(Input::Pause, t.ctx());
    // The result is recorded, but the step is not left while paused.
    let effects = e.apply(ok(&e, "press_in", json!({"f": 1})), t.ctx());
    assert!(entered(&effects).is_empty());
    assert_eq!(e.actions["press_in"].state, ActionState::Done);
    t.now += 60_000;
    let effects = e.apply(Input::Timer { key }, t.ctx());
    assert!(finished(&effects).is_none(), "timers are held while paused");
    let effects = e.apply(Input::Resume, t.ctx());
    assert_eq!(entered(&effects), ["inspect"]);
}

#[test]
fn a_timeout_while_paused_counts_from_resume() {
    let mut t = T::new(sequence_timing_out(0, 10));
    let (mut e, _) = t.start();
    t.now += 4_000;
    e.apply(Input::Pause, t.ctx());
    t.now += 100_000;
    let effects = e.apply(Input::Resume, t.ctx());
    let (key, at) = timers(&effects)[0].clone();
    assert_eq!(at, t.now + 6_000, "6 s of the timeout were left");
    t.now += 6_000;
    let effects = e.apply(Input::Timer { key }, t.ctx());
    assert!(matches!(finished(&effects), Some(Status::Failed(_))));
}

#[test]
fn stop_and_abort_end_execution_and_cancel_what_runs() {
    for (input, status) in [
        (Input::Stop, Status::Stopped),
        (Input::Abort, Status::Aborted),
    ] {
        let t = T::new(sequence());
        let (mut e, _) = t.start();
        let effects = e.apply(input, t.ctx());
        assert_eq!(finished(&effects), Some(status));
        assert_eq!(e.actions["clamp"].state, ActionState::Cancelled);
        assert!(e.active.is_empty());
        assert!(e.apply(ok(&e, "clamp", json!({})), t.ctx()).is_empty());
    }
}

#[test]
fn a_bare_identifier_tests_the_steps_results() {
    let t = T::new(json!({
        "Steps": steps(&["tighten", "ok", "rework"]),
        "Transitions": [
            {"Source": "tighten", "Target": "ok", "Condition": "torque_ok", "Priority": 1},
            {"Source": "tighten", "Target": "rework", "Condition": "results.tighten.torque_ok == false", "Priority": 2}
        ],
        "Actions": [push("tighten", "tighten")]
    }));
    let (mut e, _) = t.start();
    let effects = e.apply(ok(&e, "tighten", json!({"torque_ok": true})), t.ctx());
    assert_eq!(entered(&effects), ["ok"]);
}

#[test]
fn the_state_survives_serialisation() {
    let t = T::new(branches("simultaneous"));
    let (mut e, _) = t.start();
    e.apply(ok(&e, "prep", json!({})), t.ctx());
    let text = serde_json::to_string(&e).unwrap();
    let back: Execution = serde_json::from_str(&text).unwrap();
    assert_eq!(back, e);
}

/// The recipe of the stored-format fixtures below.
fn stored_format_recipe() -> T {
    T::new(json!({
        "Steps": [{"Name": "load", "Initial": true}, {"Name": "press"}, {"Name": "done"}],
        "Transitions": [{"Source": "load", "Target": "press", "Condition": "always"},
                        {"Source": "press", "Target": "done", "Condition": "elapsed > 100"}],
        "Actions": [
            {"Name": "clamp", "Step": "load", "Qualifier": "N", "Interaction": "push_command", "TypeId": "com.example.clamp.v1", "TimeoutSeconds": 5, "Retry": {"MaxAttempts": 3, "BackoffSeconds": 2}},
            {"Name": "late", "Step": "press", "Qualifier": "D", "Interaction": "push_command", "TypeId": "com.example.late.v1", "TimeoutSeconds": 0, "DelaySeconds": 3},
            {"Name": "air", "Step": "press", "Qualifier": "L", "Interaction": "push_command", "TypeId": "com.example.air.v1", "TimeoutSeconds": 10, "DurationSeconds": 2},
            {"Name": "wait", "Step": "press", "Qualifier": "N", "Interaction": "pull_event", "TypeId": "com.example.w.v1", "TimeoutSeconds": 10, "Equipment": "line-1/cam"}
        ]
    }))
}

/// A paused state with every kind of timer, a kept event and a seen
/// event, serialized by the code before the execution core was split
/// (`Vec` buffers, string timer kinds).
const STORED_PAUSED: &str = r#"{"job":"j/1","scope":"line+a","status":"Running","paused_at_ms":1007010,"started_ms":1000000,"ended_ms":null,"active":{"press":{"activation":1,"entered_ms":1007000}},"activations":{"load":1,"press":1},"actions":{"air":{"activation":1,"state":"Running","command_id":"line%2Ba/j%2F1/air/1","attempt":1,"deadline_ms":1009000,"timer":"limit"},"clamp":{"activation":1,"state":"Done","command_id":"line%2Ba/j%2F1/clamp/1","attempt":2,"deadline_ms":null,"timer":"timeout:2"},"late":{"activation":1,"state":"Scheduled","command_id":"line%2Ba/j%2F1/late/1","attempt":0,"deadline_ms":1010000,"timer":"delay"},"wait":{"activation":1,"state":"Running","command_id":"line%2Ba/j%2F1/wait/1","attempt":1,"deadline_ms":1017000,"timer":"timeout:1"}},"results":{"clamp":{"ok":true}},"params":{"n":2},"early":[{"type_id":"com.example.x.v1","data":{"a":1},"at_ms":1000000,"equipment":"line-1/cam","expires_ms":1050000}],"history":[{"step":"load","activation":1,"entered_ms":1000000,"left_ms":1007000},{"step":"press","activation":1,"entered_ms":1007000,"left_ms":null}],"seen_events":["src\u001f1"]}"#;

/// The same state after an Abort, as serialized by that code.
const STORED_ABORTED: &str = r#"{"job":"j/1","scope":"line+a","status":"Aborted","paused_at_ms":1007010,"started_ms":1000000,"ended_ms":1011020,"active":{},"activations":{"load":1,"press":1},"actions":{"air":{"activation":1,"state":"Cancelled","command_id":"line%2Ba/j%2F1/air/1","attempt":1,"deadline_ms":null,"timer":"limit"},"clamp":{"activation":1,"state":"Done","command_id":"line%2Ba/j%2F1/clamp/1","attempt":2,"deadline_ms":null,"timer":"timeout:2"},"late":{"activation":1,"state":"Cancelled","command_id":"line%2Ba/j%2F1/late/1","attempt":0,"deadline_ms":null,"timer":"delay"},"wait":{"activation":1,"state":"Cancelled","command_id":"line%2Ba/j%2F1/wait/1","attempt":1,"deadline_ms":null,"timer":"timeout:1"}},"results":{"clamp":{"ok":true}},"params":{"n":2},"early":[{"type_id":"com.example.x.v1","data":{"a":1},"at_ms":1000000,"equipment":"line-1/cam","expires_ms":1050000}],"history":[{"step":"load","activation":1,"entered_ms":1000000,"left_ms":1007000},{"step":"press","activation":1,"entered_ms":1007000,"left_ms":1011020}],"seen_events":["src\u001f1"]}"#;

#[test]
fn a_state_stored_in_the_previous_format_loads_and_saves_unchanged() {
    for text in [STORED_PAUSED, STORED_ABORTED] {
        let e: Execution = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&e).unwrap(), text);
    }
}

#[test]
fn the_evolution_of_a_stored_state_is_the_previous_codes() {
    // The effects the code before the split produced for the inputs that
    // led to STORED_PAUSED, then from it: Resume, the timers, Abort.
    let expected = [
        r#"[]"#,
        r#"[Timer { key: "a/1/backoff:2/clamp", at_ms: 1007000 }]"#,
        r#"[Dispatch { command_id: "line%2Ba/j%2F1/clamp/1", action: "clamp", type_id: "com.example.clamp.v1", equipment: None, parameters: {}, attempt: 2 }, Timer { key: "a/1/timeout:2/clamp", at_ms: 1012000 }]"#,
        r#"[StepLeft { step: "load", activation: 1 }, StepEntered { step: "press", activation: 1 }, Timer { key: "s/1/tick/press", at_ms: 1008000 }, Timer { key: "a/1/delay/late", at_ms: 1010000 }, Dispatch { command_id: "line%2Ba/j%2F1/air/1", action: "air", type_id: "com.example.air.v1", equipment: None, parameters: {}, attempt: 1 }, Timer { key: "a/1/limit/air", at_ms: 1009000 }, Timer { key: "a/1/timeout:1/wait", at_ms: 1017000 }]"#,
        r#"[]"#,
        r#"[Timer { key: "a/1/limit/air", at_ms: 1010000 }, Timer { key: "a/1/delay/late", at_ms: 1011000 }, Timer { key: "a/1/timeout:1/wait", at_ms: 1018000 }, Timer { key: "s/1/tick/press", at_ms: 1009010 }]"#,
        r#"[]"#,
        r#"[Dispatch { command_id: "line%2Ba/j%2F1/late/1", action: "late", type_id: "com.example.late.v1", equipment: None, parameters: {}, attempt: 1 }]"#,
        r#"[Timer { key: "s/1/tick/press", at_ms: 1012010 }]"#,
        r#"[StepLeft { step: "press", activation: 1 }, Finished(Aborted)]"#,
    ];
    let mut t = stored_format_recipe();
    let mut params = Map::new();
    params.insert("n".into(), json!(2));
    let mut trace = Vec::new();
    let (mut e, _) = Execution::start("j/1", "line+a", params, t.ctx());
    let ev = Input::Event {
        type_id: "com.example.x.v1".into(),
        data: json!({"a": 1}),
        id: Some("src\u{1f}1".into()),
        equipment: Some("line-1/cam".into()),
        expires_ms: Some(t.now + 50_000),
    };
    trace.push(e.apply(ev, t.ctx()));
    t.now += 5000;
    let key = "a/1/timeout:1/clamp".to_owned();
    trace.push(e.apply(Input::Timer { key }, t.ctx()));
    t.now += 2000;
    let key = "a/1/backoff:2/clamp".to_owned();
    trace.push(e.apply(Input::Timer { key }, t.ctx()));
    trace.push(e.apply(ok(&e, "clamp", json!({"ok": true})), t.ctx()));
    t.now += 10;
    trace.push(e.apply(Input::Pause, t.ctx()));
    assert_eq!(serde_json::to_string(&e).unwrap(), STORED_PAUSED);
    let mut resumed: Execution = serde_json::from_str(STORED_PAUSED).unwrap();
    t.now += 1000;
    trace.push(resumed.apply(Input::Resume, t.ctx()));
    t.now += 3000;
    for key in ["a/1/limit/air", "a/1/delay/late", "s/1/tick/press"] {
        let key = key.to_owned();
        trace.push(resumed.apply(Input::Timer { key }, t.ctx()));
    }
    t.now += 10;
    trace.push(e.apply(Input::Abort, t.ctx()));
    assert_eq!(serde_json::to_string(&e).unwrap(), STORED_ABORTED);
    let trace: Vec<String> = trace.iter().map(|effects| format!("{effects:?}")).collect();
    assert_eq!(trace, expected);
}
