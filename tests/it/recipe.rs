//! SFC recipe parsing and validation, and the `microdcs recipe` commands,
//! on the recipes in `examples/recipes/` and on one small recipe per
//! validation rule.

use crate::harness::recipes::{pull_event, push_command};
use microdcs::sfc::condition::Condition;
use microdcs::sfc::recipe::{BranchKind, Interaction, Qualifier, Recipe, RecipeErrors};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/recipes")
}

fn json_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn microdcs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_microdcs"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run microdcs: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------- examples

#[test]
fn rear_axle_example_parses_into_the_executable_recipe() {
    let recipe: Recipe = read(&examples().join("rear-axle.json"))
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recipe.version.as_deref(), Some("1.0.0"));
    assert_eq!(
        recipe.initial_step().map(|s| s.name.as_str()),
        Some("wait_part")
    );
    assert_eq!((recipe.steps.len(), recipe.transitions.len()), (9, 9));
    assert_eq!((recipe.actions.len(), recipe.branches.len()), (13, 1));

    let bearings = recipe.branch("press_bearings").expect("branch");
    assert_eq!(bearings.kind, BranchKind::Simultaneous);
    assert_eq!(bearings.paths, [["press_left"], ["press_right"]]);

    let part = recipe.action("part_present").expect("pull action");
    assert_eq!(part.interaction, Interaction::PullEvent);
    assert_eq!(part.timeout, Duration::ZERO);
    assert_eq!(part.equipment.as_deref(), Some("conveyor"));

    let clamp = recipe.action("clamp").expect("clamp");
    assert_eq!(clamp.retry.max_attempts, 3);
    assert_eq!(clamp.retry.backoff, Duration::from_secs(1));
    assert_eq!(clamp.parameters["ForceKn"], json!(12));
    let tighten = recipe.action("tighten").expect("tighten");
    assert_eq!(tighten.retry.max_attempts, 1, "no Retry: one attempt");
    assert_eq!(tighten.retry.backoff, Duration::ZERO);

    let hint = recipe.action("slow_hint").expect("D action");
    assert_eq!(hint.qualifier, Qualifier::D);
    assert_eq!(hint.delay, Some(Duration::from_secs(20)));
    let light_off = recipe.action("light_off").expect("R action");
    assert_eq!(light_off.qualifier, Qualifier::R);
    assert_eq!(light_off.type_id, "work_light");

    let from_tighten = recipe.transitions_from("tighten");
    let targets: Vec<&str> = from_tighten.iter().map(|t| t.target.as_str()).collect();
    assert_eq!(targets, ["inspect", "rework", "reject"], "by priority");
    assert!(matches!(from_tighten[0].condition, Condition::Expr(_)));
    assert_eq!(
        recipe.transitions_from("clamp")[0].condition,
        Condition::Flag("clamped".into())
    );
    assert_eq!(
        recipe.transitions_from("press_bearings")[0].condition,
        Condition::Always
    );
}

#[test]
fn every_example_recipe_is_valid() {
    let files = json_files(&examples());
    assert!(files.len() >= 2, "{files:?}");
    for file in files {
        if let Err(e) = read(&file).parse::<Recipe>() {
            panic!("{}: {e}", file.display());
        }
    }
}

#[test]
fn every_invalid_example_is_refused() {
    let files = json_files(&examples().join("invalid"));
    assert!(files.len() >= 3, "{files:?}");
    for file in files {
        assert!(
            read(&file).parse::<Recipe>().is_err(),
            "{} is accepted",
            file.display()
        );
    }
}

// ---------------------------------------------------------------- the CLI

#[test]
fn recipe_check_prints_the_counts_of_a_valid_recipe() {
    let file = examples().join("rear-axle.json");
    let out = microdcs(&["recipe", "check", &file.to_string_lossy()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "OK: 9 steps, 9 transitions, 13 actions, 1 branches\n"
    );
}

#[test]
fn recipe_check_lists_every_problem_with_its_location() {
    let file = examples().join("invalid/broken-references.json");
    let out = microdcs(&["recipe", "check", &file.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("invalid SFC recipe (3 problems)"),
        "{stderr}"
    );
    for line in [
        "  Transitions[1].Target: 'unload' is not a step or branch",
        "  Steps[2] 'orphan': the step is not reachable from the initial step 'load'",
        "  Actions[0].Step: 'pres' is not a step",
    ] {
        assert!(stderr.contains(line), "missing {line:?} in\n{stderr}");
    }
}

#[test]
fn recipe_check_reads_the_recipe_of_a_work_master() {
    let recipe: Value = serde_json::from_str(&read(&examples().join("rear-axle.json")))
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let work_master = dir.path().join("wm.json");
    let document = json!({
        "ID": "WM-AXLE-1",
        "Description": {"Text": "Rear axle"},
        "data": recipe,
        "dataschema": microdcs::models::sfc_recipe::SCHEMA_ID,
    });
    std::fs::write(&work_master, document.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let out = microdcs(&["recipe", "check", &work_master.to_string_lossy()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).starts_with("OK: 9 steps"));

    // An invalid recipe in a work master is reported as such.
    let mut broken = document.clone();
    broken["data"]["Steps"][0]["Initial"] = json!(false);
    std::fs::write(&work_master, broken.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let out = microdcs(&["recipe", "check", &work_master.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(stderr.contains("in work master 'WM-AXLE-1'"), "{stderr}");
    assert!(stderr.contains("  Steps: no initial step"), "{stderr}");

    // Data of another schema is not an SFC recipe.
    let mut other = document;
    other["dataschema"] = json!("https://example.com/schemas/bpmn/v1/");
    std::fs::write(&work_master, other.to_string()).unwrap_or_else(|e| panic!("{e}"));
    let out = microdcs(&["recipe", "check", &work_master.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("  dataschema: the work master's data follows"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn recipe_check_points_at_json_syntax_errors() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("bad.json");
    std::fs::write(&file, "{\n  \"Steps\": [\n}").unwrap_or_else(|e| panic!("{e}"));
    let out = microdcs(&["recipe", "check", &file.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("  line 3, column 1: not valid JSON"),
        "{stderr}"
    );

    let out = microdcs(&["recipe", "check", "/nonexistent/recipe.json"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("cannot read /nonexistent/recipe.json"));
}

#[test]
fn recipe_graph_prints_a_mermaid_flowchart() {
    let file = examples().join("rear-axle.json");
    let out = microdcs(&["recipe", "graph", &file.to_string_lossy()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert!(stdout.starts_with("flowchart TD\n"), "{stdout}");
    for expected in [
        "s0[[\"<b>wait_part</b><br/>N part_present: pull com.example.axle.part-present.v1\"]]:::initial",
        "subgraph b0[\"press_bearings (simultaneous)\"]",
        "b0_fork[\"═══ press_bearings ═══\"]:::simultaneous",
        "s1 -->|\"clamped\"| b0_fork",
        "b0_join -->|\"always\"| s4",
        "s4 -->|\"tighten.torque_nm #lt; 40.0 [priority 1]\"| s5",
        "b0_fork -.-> s2",
        "s3 -.-> b0_join",
        "R light_off: resets work_light",
        "D 20s slow_hint: push com.example.hmi.hint.v1",
    ] {
        assert!(stdout.contains(expected), "missing {expected:?} in\n{stdout}");
    }

    let invalid = examples().join("invalid/no-initial-step.json");
    let out = microdcs(&["recipe", "graph", &invalid.to_string_lossy()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(text(&out.stderr).contains("  Steps: no initial step"));
}

#[test]
fn recipe_commands_without_a_file_are_usage_errors() {
    let out = microdcs(&["recipe", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("microdcs recipe check --help"));
    let out = microdcs(&["recipe", "--help"]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("graph FILE"));
}

// ---------------------------------------------------------------- the rules

/// A valid recipe to break: load (initial) → press → done, one action each.
fn base() -> Value {
    json!({
        "Steps": [{"Name": "load", "Initial": true}, {"Name": "press"}, {"Name": "done"}],
        "Transitions": [
            {"Source": "load", "Target": "press", "Condition": "part.present"},
            {"Source": "press", "Target": "done", "Condition": "always"}
        ],
        "Actions": [
            pull_event("part", "load", "com.example.part.v1", 0),
            push_command("press", "press", "N", "com.example.press.v1", 10)
        ]
    })
}

/// A recipe with a simultaneous branch `both` of paths `[a]`, `[b]`.
fn with_branch(kind: &str) -> Value {
    json!({
        "Steps": [{"Name": "start", "Initial": true}, {"Name": "a"}, {"Name": "b"}, {"Name": "end"}],
        "Branches": [{"Name": "both", "Type": kind, "Branches": [["a"], ["b"]]}],
        "Transitions": [
            {"Source": "start", "Target": "both", "Condition": "always"},
            {"Source": "both", "Target": "end", "Condition": "always"}
        ],
        "Actions": []
    })
}

fn errors(recipe: &Value) -> RecipeErrors {
    match Recipe::parse(recipe) {
        Ok(_) => panic!("accepted: {recipe:#}"),
        Err(e) => e,
    }
}

/// Asserts a problem at exactly `location` whose message contains `words`.
#[track_caller]
fn assert_problem(recipe: &Value, location: &str, words: &str) {
    let errors = errors(recipe);
    assert!(
        errors
            .iter()
            .any(|e| e.location == location && e.message.contains(words)),
        "no problem at {location:?} mentioning {words:?}; got:\n{}",
        errors
            .iter()
            .map(|e| format!("  {e}"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn the_base_recipes_are_valid() {
    let recipe = Recipe::parse(&base()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recipe.transitions[0].priority, 0, "no Priority is 0");
    assert!(recipe.actions[0].parameters.is_empty());
    Recipe::parse(&with_branch("simultaneous")).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn exactly_one_initial_step() {
    let mut r = base();
    r["Steps"][0]["Initial"] = json!(false);
    assert_problem(&r, "Steps", "no initial step");

    let mut r = base();
    r["Steps"][1]["Initial"] = json!(true);
    assert_problem(&r, "Steps[1] 'press'", "second initial step");

    let mut r = base();
    r["Steps"] = json!([]);
    r["Transitions"] = json!([]);
    r["Actions"] = json!([]);
    assert_problem(&r, "Steps", "no steps");
}

#[test]
fn names_are_unique() {
    let mut r = base();
    r["Steps"][2]["Name"] = json!("press");
    assert_problem(&r, "Steps[2] 'press'", "already used by Steps[1] 'press'");

    let mut r = with_branch("simultaneous");
    r["Branches"][0]["Name"] = json!("end");
    assert_problem(&r, "Branches[0] 'end'", "already used by Steps[3] 'end'");

    let mut r = base();
    r["Actions"][1]["Name"] = json!("part");
    assert_problem(&r, "Actions[1] 'part'", "already used by Actions[0]");

    let mut r = base();
    r["Steps"][2]["Name"] = json!("");
    assert_problem(&r, "Steps[2].Name", "empty");
}

#[test]
fn references_resolve() {
    let mut r = base();
    r["Transitions"][0]["Source"] = json!("lod");
    assert_problem(&r, "Transitions[0].Source", "'lod' is not a step or branch");

    let mut r = base();
    r["Transitions"][1]["Target"] = json!("dne");
    assert_problem(&r, "Transitions[1].Target", "'dne' is not a step or branch");

    let mut r = base();
    r["Actions"][1]["Step"] = json!("pres");
    assert_problem(&r, "Actions[1].Step", "'pres' is not a step");

    let mut r = with_branch("simultaneous");
    r["Actions"] = json!([push_command("x", "both", "N", "com.example.x.v1", 1)]);
    assert_problem(&r, "Actions[0].Step", "'both' is a branch");

    let mut r = with_branch("simultaneous");
    r["Branches"][0]["Branches"][1][0] = json!("c");
    assert_problem(
        &r,
        "Branches[0].Branches[1][0]",
        "'c' is not a step or branch",
    );
}

#[test]
fn every_step_is_reachable() {
    let mut r = base();
    r["Transitions"] = json!([{"Source": "load", "Target": "press", "Condition": "always"}]);
    assert_problem(
        &r,
        "Steps[2] 'done'",
        "not reachable from the initial step 'load'",
    );

    // Reached through a branch: entry to all paths, path to path, exits.
    let r = json!({
        "Steps": [{"Name": "s", "Initial": true}, {"Name": "a1"}, {"Name": "a2"},
                  {"Name": "b1"}, {"Name": "after"}],
        "Branches": [{"Name": "B", "Type": "simultaneous", "Branches": [["a1", "a2"], ["b1"]]}],
        "Transitions": [
            {"Source": "s", "Target": "B", "Condition": "always"},
            {"Source": "B", "Target": "after", "Condition": "always"}
        ],
        "Actions": []
    });
    Recipe::parse(&r).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn branch_paths_are_well_formed_and_disjoint() {
    let mut r = with_branch("simultaneous");
    r["Branches"][0]["Branches"] = json!([]);
    assert_problem(&r, "Branches[0] 'both'", "no paths");

    let mut r = with_branch("simultaneous");
    r["Branches"][0]["Branches"] = json!([["a"], [], ["b"]]);
    assert_problem(&r, "Branches[0].Branches[1]", "empty");

    let mut r = with_branch("simultaneous");
    r["Branches"][0]["Branches"] = json!([["a", "b"], ["b"]]);
    assert_problem(
        &r,
        "Branches[0].Branches[1][0]",
        "already in Branches[0].Branches[0][1]",
    );

    let mut r = with_branch("simultaneous");
    r["Steps"] = json!([{"Name": "start", "Initial": true}, {"Name": "a"}, {"Name": "b"},
                        {"Name": "end"}, {"Name": "c"}]);
    r["Branches"] = json!([
        {"Name": "both", "Type": "simultaneous", "Branches": [["a"], ["b"]]},
        {"Name": "other", "Type": "simultaneous", "Branches": [["c"], ["a"]]}
    ]);
    assert_problem(
        &r,
        "Branches[1].Branches[1][0]",
        "already in Branches[0].Branches[0][0]",
    );

    let mut r = with_branch("simultaneous");
    r["Branches"][0]["Branches"][1] = json!(["start"]);
    assert_problem(
        &r,
        "Branches[0].Branches[1][0]",
        "initial step 'start' cannot be inside",
    );
}

#[test]
fn a_branch_is_not_nested_in_itself() {
    let mut r = with_branch("simultaneous");
    r["Branches"][0]["Branches"][1] = json!(["b", "both"]);
    assert_problem(&r, "Branches[0].Branches[1][1]", "contains itself");

    let r = json!({
        "Steps": [{"Name": "s", "Initial": true}, {"Name": "a"}, {"Name": "b"}],
        "Branches": [
            {"Name": "X", "Type": "simultaneous", "Branches": [["a", "Y"]]},
            {"Name": "Y", "Type": "simultaneous", "Branches": [["b", "X"]]}
        ],
        "Transitions": [{"Source": "s", "Target": "X", "Condition": "always"}],
        "Actions": []
    });
    assert_problem(
        &r,
        "Branches[0] 'X'",
        "nested in itself: 'X' contains 'Y' contains 'X'",
    );
    assert!(!errors(&r).has("Branches[1] 'Y'"), "one report per cycle");

    let r = json!({
        "Steps": [{"Name": "s", "Initial": true}],
        "Branches": [
            {"Name": "X", "Type": "simultaneous", "Branches": [["Y"]]},
            {"Name": "Y", "Type": "selection", "Branches": [["Z"]]},
            {"Name": "Z", "Type": "simultaneous", "Branches": [["X"]]}
        ],
        "Transitions": [],
        "Actions": []
    });
    assert_problem(
        &r,
        "Branches[0] 'X'",
        "nested in itself: 'X' contains 'Y' contains 'Z' contains 'X'",
    );
}

#[test]
fn selection_paths_need_entry_transitions() {
    let r = with_branch("selection");
    assert_problem(
        &r,
        "Branches[0].Branches[0]",
        "no entry transition 'both' → 'a'",
    );
    assert_problem(
        &r,
        "Branches[0].Branches[1]",
        "no entry transition 'both' → 'b'",
    );

    let mut r = with_branch("selection");
    if let Some(ts) = r["Transitions"].as_array_mut() {
        ts.push(json!({"Source": "both", "Target": "a", "Condition": "params.left"}));
        ts.push(json!({"Source": "both", "Target": "b", "Condition": "true", "Priority": 1}));
    }
    let recipe = Recipe::parse(&r).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recipe.branches[0].kind, BranchKind::Selection);
}

#[test]
fn simultaneous_branches_have_no_entry_transitions() {
    let mut r = with_branch("simultaneous");
    if let Some(ts) = r["Transitions"].as_array_mut() {
        ts.push(json!({"Source": "both", "Target": "a", "Condition": "always"}));
    }
    assert_problem(&r, "Transitions[2]", "simultaneous branch");
}

#[test]
fn paths_are_entered_through_their_branch_and_left_when_it_converges() {
    let mut r = with_branch("simultaneous");
    if let Some(ts) = r["Transitions"].as_array_mut() {
        ts.push(json!({"Source": "start", "Target": "a", "Condition": "always"}));
    }
    assert_problem(&r, "Transitions[2].Target", "'a' is inside branch 'both'");

    let mut r = with_branch("simultaneous");
    if let Some(ts) = r["Transitions"].as_array_mut() {
        ts.push(json!({"Source": "a", "Target": "end", "Condition": "always"}));
    }
    assert_problem(&r, "Transitions[2].Target", "leaves the path of 'a'");

    let mut r = with_branch("selection");
    r["Branches"][0]["Branches"] = json!([["a", "b"]]);
    if let Some(ts) = r["Transitions"].as_array_mut() {
        ts.push(json!({"Source": "both", "Target": "a", "Condition": "always"}));
        ts.push(json!({"Source": "both", "Target": "b", "Condition": "always"}));
    }
    assert_problem(&r, "Transitions[3].Target", "not the first element");

    // A loop inside a path is fine.
    let mut r = with_branch("simultaneous");
    r["Branches"][0]["Branches"] = json!([["a", "b"]]);
    if let Some(ts) = r["Transitions"].as_array_mut() {
        ts.push(json!({"Source": "a", "Target": "b", "Condition": "always"}));
        ts.push(json!({"Source": "b", "Target": "a", "Condition": "elapsed > 5.0", "Priority": 1}));
    }
    Recipe::parse(&r).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn conditions_compile_and_name_known_variables() {
    let mut r = base();
    r["Transitions"][0]["Condition"] = json!("part.present &&");
    assert_problem(
        &r,
        "Transitions[0].Condition",
        "does not compile: line 1, column",
    );

    let mut r = base();
    r["Transitions"][0]["Condition"] = json!("prat.present == true");
    assert_problem(&r, "Transitions[0].Condition", "unknown variable 'prat'");

    let mut r = base();
    r["Transitions"][0]["Condition"] = json!(
        "results.part.n > 2 && states.press != 'failed' && params.x.all(v, v > 0) \
               && elapsed < 9.0 && type(part) == map"
    );
    Recipe::parse(&r).unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn qualifier_times_are_present_and_valid() {
    let mut r = base();
    r["Actions"][1]["Qualifier"] = json!("D");
    assert_problem(
        &r,
        "Actions[1].DelaySeconds",
        "qualifier D needs DelaySeconds",
    );
    r["Actions"][1]["DelaySeconds"] = json!(-1.0);
    // The recipe schema's `minimum` (checked before the semantic rules).
    assert_problem(&r, "Actions[1].DelaySeconds", "less than the minimum of 0");
    r["Actions"][1]["DelaySeconds"] = json!(2.5);
    let recipe = Recipe::parse(&r).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recipe.actions[1].delay, Some(Duration::from_millis(2500)));

    let mut r = base();
    r["Actions"][1]["Qualifier"] = json!("L");
    assert_problem(
        &r,
        "Actions[1].DurationSeconds",
        "qualifier L needs DurationSeconds",
    );
    r["Actions"][1]["DurationSeconds"] = json!(0);
    assert_problem(&r, "Actions[1].DurationSeconds", "above 0");
    r["Actions"][1]["DurationSeconds"] = json!(3);
    let recipe = Recipe::parse(&r).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recipe.actions[1].duration, Some(Duration::from_secs(3)));

    let mut r = base();
    r["Actions"][1]["DelaySeconds"] = json!(1);
    assert_problem(&r, "Actions[1].DelaySeconds", "only to qualifier D");
}

#[test]
fn r_names_the_s_action_it_resets_in_its_type_id() {
    let mut r = base();
    if let Some(actions) = r["Actions"].as_array_mut() {
        actions.push(push_command(
            "light",
            "load",
            "S",
            "com.example.light.v1",
            0,
        ));
        actions.push(push_command("light_off", "done", "R", "light", 0));
    }
    let recipe = Recipe::parse(&r).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        recipe.action("light_off").map(|a| a.type_id.as_str()),
        Some("light")
    );

    let mut bad = r.clone();
    bad["Actions"][3]["TypeId"] = json!("lamp");
    assert_problem(&bad, "Actions[3].TypeId", "there is no action 'lamp'");

    let mut bad = r;
    bad["Actions"][3]["TypeId"] = json!("press");
    assert_problem(&bad, "Actions[3].TypeId", "'press' has qualifier N");
}

#[test]
fn type_ids_are_cloudevent_types() {
    for (type_id, words) in [
        ("", "empty"),
        ("press", "no dot"),
        ("com.example press.v1", "character ' '"),
        ("com..press", "empty segment"),
    ] {
        let mut r = base();
        r["Actions"][1]["TypeId"] = json!(type_id);
        assert_problem(&r, "Actions[1].TypeId", words);
    }
}

#[test]
fn retries_are_for_push_commands_with_at_least_one_attempt() {
    let mut r = base();
    r["Actions"][1]["Retry"] = json!({"MaxAttempts": 0});
    assert_problem(
        &r,
        "Actions[1].Retry.MaxAttempts",
        "less than the minimum of 1",
    );

    let mut r = base();
    r["Actions"][1]["Retry"] = json!({"MaxAttempts": 2, "BackoffSeconds": -1});
    assert_problem(
        &r,
        "Actions[1].Retry.BackoffSeconds",
        "less than the minimum of 0",
    );

    let mut r = base();
    r["Actions"][0]["Retry"] = json!({"MaxAttempts": 2});
    assert_problem(&r, "Actions[0].Retry", "push_command");

    let mut r = base();
    r["Actions"][1]["Equipment"] = json!("");
    assert_problem(&r, "Actions[1].Equipment", "empty");
}

#[test]
fn schema_violations_name_the_member() {
    let mut r = base();
    r["Actions"][1]["TimeoutSeconds"] = json!("10s");
    assert_problem(&r, "Actions[1].TimeoutSeconds", "is not of type");

    let mut r = base();
    r["Actions"][1]["Qualifier"] = json!("X");
    assert_problem(&r, "Actions[1].Qualifier", "is not one of");

    let mut r = base();
    if let Some(a) = r["Actions"][1].as_object_mut() {
        a.remove("Interaction");
    }
    assert_problem(&r, "Actions[1]", "\"Interaction\" is a required property");

    let mut r = base();
    r["Transitions"] = json!({"Source": "load"});
    assert_problem(&r, "Transitions", "is not of type \"array\"");

    let mut r = base();
    if let Some(o) = r.as_object_mut() {
        o.remove("Actions");
    }
    assert_problem(&r, "Recipe", "\"Actions\" is a required property");

    let mut r = base();
    r["Version"] = json!(1);
    assert_problem(&r, "Version", "is not of type \"string\"");

    assert_problem(&json!([1, 2]), "Recipe", "is not of type \"object\"");
}

#[test]
fn all_problems_are_reported_at_once() {
    let mut r = base();
    r["Steps"][0]["Initial"] = json!(false);
    r["Transitions"][0]["Condition"] = json!("(");
    r["Actions"][1]["TypeId"] = json!("x");
    r["Actions"][1]["Step"] = json!("nowhere");
    let errors = errors(&r);
    assert_eq!(errors.len(), 4, "{errors}");
    let shown = errors.to_string();
    assert!(
        shown.starts_with("invalid SFC recipe: Steps: no initial step"),
        "{shown}"
    );
    for location in [
        "Transitions[0].Condition",
        "Actions[1].TypeId",
        "Actions[1].Step",
    ] {
        assert!(errors.has(location), "{shown}");
        assert!(shown.contains(&format!("; {location}: ")), "{shown}");
    }
}

#[test]
fn json_syntax_errors_have_a_line_and_column() {
    let Err(errors) = "{\"Steps\": [}".parse::<Recipe>() else {
        panic!("accepted");
    };
    assert_eq!(errors.len(), 1);
    assert_eq!(errors.errors()[0].location, "line 1, column 12");
}
