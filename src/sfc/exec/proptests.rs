//! Property tests of the evolution: for small valid recipes (sequences,
//! selection and simultaneous branches, every qualifier but `R`) and
//! random input sequences, the invariants every execution keeps.

use super::qualifiers::holds_step;
use super::*;
use proptest::prelude::*;
use serde_json::json;

/// One top-level element after the initial step.
#[derive(Debug, Clone)]
enum Segment {
    Step,
    /// A branch with paths of these many steps.
    Branch {
        simultaneous: bool,
        paths: Vec<usize>,
    },
}

/// One action, assigned to a step by `step_pick`.
#[derive(Debug, Clone)]
struct ActionSpec {
    step_pick: usize,
    qualifier: usize,
    pull: bool,
    type_pick: usize,
    timeout_s: u8,
    max_attempts: u32,
    backoff_s: u8,
}

/// A transition condition.
#[derive(Debug, Clone, Copy)]
enum Cond {
    Always,
    Empty,
    /// `results.<first action of the source step>.ok == true`.
    ResultOk,
}

fn segment() -> impl Strategy<Value = Segment> {
    prop_oneof![
        Just(Segment::Step),
        (any::<bool>(), prop::collection::vec(1..=2usize, 2..=3)).prop_map(
            |(simultaneous, paths)| Segment::Branch {
                simultaneous,
                paths
            }
        ),
    ]
}

fn action_spec() -> impl Strategy<Value = ActionSpec> {
    (
        0..16usize,
        0..7usize,
        any::<bool>(),
        0..2usize,
        0..3u8,
        1..3u32,
        0..2u8,
    )
        .prop_map(
            |(step_pick, qualifier, pull, type_pick, timeout_s, max_attempts, backoff_s)| {
                ActionSpec {
                    step_pick,
                    qualifier,
                    pull,
                    type_pick,
                    timeout_s,
                    max_attempts,
                    backoff_s,
                }
            },
        )
}

fn cond() -> impl Strategy<Value = Cond> {
    prop_oneof![Just(Cond::Always), Just(Cond::Empty), Just(Cond::ResultOk)]
}

/// A valid recipe built from the generated shape.
fn recipe_json(segments: &[Segment], actions: &[ActionSpec], conds: &[Cond]) -> Value {
    let mut steps = vec![json!({"Name": "s0", "Initial": true})];
    let mut step_names = vec!["s0".to_owned()];
    let mut transitions = Vec::new();
    let mut branches = Vec::new();
    // The action names per step, filled in below (for `ResultOk`).
    let mut json_actions = Vec::new();
    let mut first_action: BTreeMap<String, String> = BTreeMap::new();
    let mut n_steps = 1;
    let mut new_step = |steps: &mut Vec<Value>, names: &mut Vec<String>| {
        let name = format!("s{n_steps}");
        n_steps += 1;
        steps.push(json!({"Name": name}));
        names.push(name.clone());
        name
    };
    let mut layout: Vec<(String, bool)> = vec![("s0".into(), true)];
    for (i, seg) in segments.iter().enumerate() {
        match seg {
            Segment::Step => {
                let name = new_step(&mut steps, &mut step_names);
                layout.push((name, true));
            }
            Segment::Branch {
                simultaneous,
                paths,
            } => {
                let b = format!("b{i}");
                let mut json_paths = Vec::new();
                for (p, len) in paths.iter().enumerate() {
                    let path: Vec<String> = (0..*len)
                        .map(|_| new_step(&mut steps, &mut step_names))
                        .collect();
                    if !simultaneous {
                        transitions.push(json!({
                            "Source": b, "Target": path[0], "Condition": "always",
                            "Priority": p
                        }));
                    }
                    json_paths.push(path);
                }
                branches.push(json!({
                    "Name": b,
                    "Type": if *simultaneous { "simultaneous" } else { "selection" },
                    "Branches": json_paths
                }));
                layout.push((b, false));
            }
        }
    }
    for (i, a) in actions.iter().enumerate() {
        let name = format!("a{i}");
        let step = step_names[a.step_pick % step_names.len()].clone();
        let qualifier = ["N", "P", "P0", "P1", "S", "L", "D"][a.qualifier];
        let mut j = json!({
            "Name": name, "Step": step, "Qualifier": qualifier,
            "Interaction": if a.pull { "pull_event" } else { "push_command" },
            "TypeId": if a.pull { format!("com.example.ev{}.v1", a.type_pick) } else { format!("com.example.{name}.v1") },
            "TimeoutSeconds": a.timeout_s,
        });
        if !a.pull {
            j["Retry"] = json!({"MaxAttempts": a.max_attempts, "BackoffSeconds": a.backoff_s});
        }
        match qualifier {
            "L" => j["DurationSeconds"] = json!(2),
            "D" => j["DelaySeconds"] = json!(1),
            _ => {}
        }
        first_action.entry(step).or_insert(name);
        json_actions.push(j);
    }
    for (i, pair) in layout.windows(2).enumerate() {
        let ((source, is_step), (target, _)) = (&pair[0], &pair[1]);
        let condition = match (conds.get(i).copied().unwrap_or(Cond::Always), is_step) {
            (Cond::Empty, _) => String::new(),
            (Cond::ResultOk, true) => match first_action.get(source) {
                Some(a) => format!("results.{a}.ok == true"),
                None => "always".into(),
            },
            _ => "always".into(),
        };
        transitions.push(json!({"Source": source, "Target": target, "Condition": condition}));
    }
    json!({
        "Steps": steps,
        "Transitions": transitions,
        "Branches": branches,
        "Actions": json_actions
    })
}

/// One input, with picks resolved against the state when it is applied.
#[derive(Debug, Clone)]
enum InputSpec {
    Result { pick: usize, ok: bool, flag: bool },
    Event { type_pick: usize, id: Option<u8> },
    Unsent { pick: usize },
    Timer { pick: usize },
    Advance { ms: u64 },
    Pause,
    Resume,
    Stop,
    Abort,
}

fn input_spec() -> impl Strategy<Value = InputSpec> {
    prop_oneof![
        6 => (any::<usize>(), prop::bool::weighted(0.9), any::<bool>())
            .prop_map(|(pick, ok, flag)| InputSpec::Result { pick, ok, flag }),
        3 => (0..2usize, prop::option::of(0..4u8))
            .prop_map(|(type_pick, id)| InputSpec::Event { type_pick, id }),
        1 => any::<usize>().prop_map(|pick| InputSpec::Unsent { pick }),
        5 => any::<usize>().prop_map(|pick| InputSpec::Timer { pick }),
        2 => (0..3000u64).prop_map(|ms| InputSpec::Advance { ms }),
        1 => Just(InputSpec::Pause),
        1 => Just(InputSpec::Resume),
        1 => prop_oneof![Just(InputSpec::Stop), Just(InputSpec::Abort)],
    ]
}

/// The run of a generated recipe: the state, the clock, the timers set.
struct Run {
    recipe: Recipe,
    net: Net,
    now: u64,
    timers: BTreeMap<String, u64>,
}

impl Run {
    fn ctx(&self) -> EvolutionContext<'_> {
        EvolutionContext {
            recipe: &self.recipe,
            net: &self.net,
            now_ms: self.now,
        }
    }

    fn note(&mut self, effects: &[Effect]) {
        for f in effects {
            if let Effect::Timer { key, at_ms } = f {
                self.timers.insert(key.clone(), *at_ms);
            }
        }
    }

    /// The input `spec` stands for now; `None` when it only moves time.
    fn input(&mut self, spec: &InputSpec, e: &Execution) -> Option<Input> {
        let run_at = |pick: usize| {
            let runs: Vec<&ActionRun> = e.actions.values().collect();
            (!runs.is_empty()).then(|| runs[pick % runs.len()].clone())
        };
        match *spec {
            InputSpec::Result { pick, ok, flag } => run_at(pick).map(|r| Input::Result {
                command_id: r.command_id,
                outcome: if ok {
                    Ok(json!({"ok": flag}))
                } else {
                    Err("boom".into())
                },
            }),
            InputSpec::Event { type_pick, id } => Some(Input::Event {
                type_id: format!("com.example.ev{type_pick}.v1"),
                data: json!({"ok": true}),
                id: id.map(|i| format!("cam\u{1f}{i}")),
                equipment: None,
                expires_ms: None,
            }),
            InputSpec::Unsent { pick } => run_at(pick).map(|r| Input::Unsent {
                command_id: r.command_id,
                attempt: r.attempt,
                reason: "expired".into(),
            }),
            InputSpec::Timer { pick } => {
                if self.timers.is_empty() {
                    return None;
                }
                let (key, at) = self.timers.iter().nth(pick % self.timers.len())?;
                let (key, at) = (key.clone(), *at);
                self.now = self.now.max(at);
                Some(Input::Timer { key })
            }
            InputSpec::Advance { ms } => {
                self.now += ms;
                None
            }
            InputSpec::Pause => Some(Input::Pause),
            InputSpec::Resume => Some(Input::Resume),
            InputSpec::Stop => Some(Input::Stop),
            InputSpec::Abort => Some(Input::Abort),
        }
    }
}

/// No outstanding action that holds its step outlives the step's
/// activation: what runs in an inactive step is only what the qualifiers
/// let run past it (P, P1, S, P0).
fn no_holding_action_runs_in_an_inactive_step(
    e: &Execution,
    recipe: &Recipe,
) -> Result<(), String> {
    for (name, run) in &e.actions {
        let Some(action) = recipe.action(name) else {
            return Err(format!("run of unknown action {name}"));
        };
        if holds_step(action.qualifier) && run.state.is_outstanding() {
            let active = e
                .active
                .get(&action.step)
                .is_some_and(|s| s.activation == run.activation);
            if !active {
                return Err(format!(
                    "{name} ({:?}) is {:?} but step {} activation {} is not active",
                    action.qualifier, run.state, action.step, run.activation
                ));
            }
        }
    }
    Ok(())
}

/// Every dispatch of an action with a timeout or a time limit comes with
/// the timer of that send.
fn every_dispatch_has_its_timer(effects: &[Effect], recipe: &Recipe) -> Result<(), String> {
    for f in effects {
        let Effect::Dispatch {
            command_id,
            action,
            attempt,
            ..
        } = f
        else {
            continue;
        };
        let Some(a) = recipe.action(action) else {
            return Err(format!("dispatch of unknown action {action}"));
        };
        let limited = a.qualifier == crate::sfc::recipe::Qualifier::L && a.duration.is_some();
        if a.timeout.is_zero() && !limited {
            continue;
        }
        let Ok(id) = command_id.parse::<CommandId>() else {
            return Err(format!("dispatch with a bad command id {command_id}"));
        };
        let timed = effects.iter().any(|t| match t {
            Effect::Timer { key, .. } => matches!(
                key.parse::<TimerKey>(),
                Ok(TimerKey::Action { action: ta, activation, kind })
                    if &ta == action
                        && activation == id.activation
                        && (kind == TimerKind::Timeout(*attempt) || kind == TimerKind::Limit)
            ),
            _ => false,
        });
        if !timed {
            return Err(format!(
                "dispatch {command_id} #{attempt} without a timer: {effects:?}"
            ));
        }
    }
    Ok(())
}

/// What a replayed input may still produce: the tick timers it produced
/// the first time (re-setting a timer under its key is idempotent).
fn only_repeated_ticks(again: &[Effect], first: &[Effect]) -> bool {
    again.iter().all(|f| match f {
        Effect::Timer { key, .. } => {
            matches!(key.parse::<TimerKey>(), Ok(TimerKey::Tick { .. })) && first.contains(f)
        }
        _ => false,
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn the_evolution_keeps_its_invariants(
        segments in prop::collection::vec(segment(), 0..4),
        actions in prop::collection::vec(action_spec(), 0..8),
        conds in prop::collection::vec(cond(), 4),
        inputs in prop::collection::vec(input_spec(), 1..40),
    ) {
        let json = recipe_json(&segments, &actions, &conds);
        let recipe = Recipe::parse(&json).map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
        let net = Net::compile(&recipe).map_err(|e| TestCaseError::fail(format!("{e}: {json}")))?;
        let mut run = Run { recipe, net, now: 1_000_000, timers: BTreeMap::new() };
        let (mut e, effects) = Execution::start("j1", "line", Map::new(), run.ctx());
        run.note(&effects);
        no_holding_action_runs_in_an_inactive_step(&e, &run.recipe).map_err(TestCaseError::fail)?;
        every_dispatch_has_its_timer(&effects, &run.recipe).map_err(TestCaseError::fail)?;
        for spec in &inputs {
            let Some(input) = run.input(spec, &e) else { continue };
            let was_finished = e.is_finished();
            let before = e.clone();
            let effects = e.apply(input.clone(), run.ctx());
            run.note(&effects);
            if was_finished {
                prop_assert!(effects.is_empty(), "a finished job produced {:?}", effects);
                prop_assert_eq!(&e, &before, "a finished job changed");
                continue;
            }
            no_holding_action_runs_in_an_inactive_step(&e, &run.recipe).map_err(TestCaseError::fail)?;
            every_dispatch_has_its_timer(&effects, &run.recipe).map_err(TestCaseError::fail)?;
            // The runtime deletes the timers a new state no longer has armed:
            // each of them, had it fired at any time after, would have done
            // what a timer matching nothing does.
            let armed = e.armed_timers();
            for key in before.armed_timers().difference(&armed) {
                for later in [0, 1, 3_600_000] {
                    let ctx = EvolutionContext { now_ms: run.now + later, ..run.ctx() };
                    let mut fired = e.clone();
                    let by_key = fired.apply(Input::Timer { key: key.clone() }, ctx);
                    let mut none = e.clone();
                    let by_nothing = none.apply(Input::Timer { key: "a/0/limit/-".into() }, ctx);
                    prop_assert!(
                        by_key == by_nothing && fired == none,
                        "disarmed timer {} still acts: {:?}", key, by_key
                    );
                }
            }
            prop_assert_eq!(
                effects.iter().any(|f| matches!(f, Effect::Finished(_))),
                e.is_finished(),
                "Finished is reported exactly when the job ends"
            );
            if matches!(
                input,
                Input::Result { .. } | Input::Timer { .. } | Input::Pause | Input::Resume | Input::Unsent { .. }
            ) || matches!(&input, Input::Event { id: Some(_), .. })
            {
                let settled = e.clone();
                let again = e.apply(input.clone(), run.ctx());
                prop_assert!(
                    only_repeated_ticks(&again, &effects),
                    "replaying {:?} produced {:?}", input, again
                );
                prop_assert_eq!(&e, &settled, "replaying {:?} changed the state", input);
            }
        }
    }
}
