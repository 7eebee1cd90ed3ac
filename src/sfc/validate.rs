//! Recipe validation: the rules the JSON Schema cannot express, checked
//! before a recipe is stored and by `microdcs recipe check`.
//!
//! All problems are collected and each names its element
//! ([`RecipeError::location`]). Schema problems come first: the other rules
//! are checked once the recipe fits the schema.
//!
//! - **Schema.** Every member has the schema's type (`Actions[1].TimeoutSeconds`),
//!   required members are present (`Actions[1]`), `Retry.MaxAttempts` ≥ 1.
//! - **Steps.** At least one step, exactly one `Initial` (`Steps`, or the
//!   second initial `Steps[i] 'name'`), names not empty.
//! - **Unique names.** Steps and branches share one namespace
//!   (`Branches[i] 'name'`); action names are unique among actions
//!   (`Actions[i] 'name'`).
//! - **References.** Transition `Source`/`Target` and branch path entries
//!   name a step or branch; an action's `Step` names a step.
//! - **Branches.** At least one path, no empty path
//!   (`Branches[i].Branches[j]`); an element is in at most one path of at
//!   most one branch, a branch is not nested in itself (directly or through
//!   other branches), the initial step is in no branch
//!   (`Branches[i].Branches[j][k]`). Every path of a selection branch has an
//!   entry transition `B → first element`; a simultaneous branch has none
//!   (entering it starts all paths). A path is entered only through its
//!   branch and left only when the branch converges: a transition from a
//!   path element stays in its path (`Transitions[i].Target`).
//! - **Reachability.** Every step is reachable from the initial step,
//!   following transitions, a branch to the first element of each path, and
//!   each path element to the next.
//! - **Conditions.** They compile, and a CEL condition reads only `results`,
//!   `states`, `params`, `elapsed`, action names and its own comprehension
//!   variables (`Transitions[i].Condition`).
//! - **Actions.** `TypeId` is a CloudEvent type: not empty, no white space or
//!   control characters, dot-separated like `com.example.tighten.v1`
//!   (at least two non-empty segments). An `R` action instead names in its
//!   `TypeId` the `S` action it resets, which must exist. `D` needs
//!   `DelaySeconds`, `L` needs `DurationSeconds` (> 0), and neither is
//!   allowed on other qualifiers; times are finite and ≥ 0. `Retry` only on
//!   `push_command`. `Equipment`, when given, is one or more `/`-separated
//!   MQTT topic levels: none empty, none with `+`, `#` or a control character.

use super::condition::{Condition, VARIABLES};
use super::recipe::{
    Action, Branch, BranchKind, Interaction, Qualifier, Recipe, RecipeError, RecipeErrors, Retry,
    Step, Transition,
};
use crate::models::sfc_recipe::{
    SfcActionAssociation, SfcActionQualifier, SfcBranch, SfcBranchType, SfcInteraction, SfcRecipe,
    SfcStep, SfcTransition,
};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::Duration;

/// Type names CEL expressions may use as plain identifiers (`type(x) == int`).
const CEL_TYPE_NAMES: [&str; 11] = [
    "int",
    "uint",
    "double",
    "bool",
    "string",
    "bytes",
    "list",
    "map",
    "null_type",
    "type",
    "dyn",
];

/// Deserializes the wire form; on failure, finds the members at fault.
pub(crate) fn deserialize(value: &Value) -> Result<SfcRecipe, RecipeErrors> {
    let error = match SfcRecipe::deserialize(value) {
        Ok(wire) => return Ok(wire),
        Err(e) => e,
    };
    let mut errors = RecipeErrors::default();
    let Some(object) = value.as_object() else {
        errors.push(
            "Recipe",
            format!(
                "expected a JSON object with Steps, Transitions and Actions, found {}",
                kind(value)
            ),
        );
        return Err(errors);
    };
    // Sections in recipe order, whatever the order of the JSON members.
    for (section, alias) in [
        ("Steps", "steps"),
        ("Transitions", "transitions"),
        ("Actions", "actions"),
        ("Branches", "branches"),
    ] {
        let Some(member) = object.get(section).or_else(|| object.get(alias)) else {
            continue;
        };
        match member {
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let location = format!("{section}[{i}]");
                    let found = match section {
                        "Steps" => element_error::<SfcStep>(item, &location),
                        "Transitions" => element_error::<SfcTransition>(item, &location),
                        "Actions" => element_error::<SfcActionAssociation>(item, &location),
                        _ => element_error::<SfcBranch>(item, &location),
                    };
                    errors.0.extend(found);
                }
            }
            Value::Null if section == "Branches" => {}
            other => errors.push(section, format!("expected an array, found {}", kind(other))),
        }
    }
    if errors.is_empty() {
        // Not in a section: a missing section or a bad top-level member.
        let location = culprit::<SfcRecipe>(object, &error).unwrap_or_else(|| "Recipe".into());
        errors.push(location, error.to_string());
    }
    Err(errors)
}

/// The error of one array element, located at its member if possible.
fn element_error<T: DeserializeOwned>(item: &Value, location: &str) -> Option<RecipeError> {
    let error = T::deserialize(item).err()?;
    let location = match item.as_object() {
        Some(object) => match culprit::<T>(object, &error) {
            Some(member) => format!("{location}.{member}"),
            None => location.to_owned(),
        },
        None => location.to_owned(),
    };
    Some(RecipeError::new(location, error.to_string()))
}

/// The member of `object` that causes `error`: the one whose removal
/// changes the error. serde reports a member's error while it walks the
/// members, and missing members only after the walk, so removing a good
/// member leaves the error as it is.
fn culprit<T: DeserializeOwned>(
    object: &serde_json::Map<String, Value>,
    error: &serde_json::Error,
) -> Option<String> {
    let message = error.to_string();
    object.keys().find_map(|key| {
        let mut without = object.clone();
        without.remove(key);
        match T::deserialize(&Value::Object(without)) {
            Err(e) if e.to_string() == message => None,
            _ => Some(key.clone()),
        }
    })
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Checks `text` as a CloudEvent `type` the way recipes use it:
/// not empty, no white space or control characters, at least two
/// dot-separated non-empty segments (reverse-DNS style,
/// `com.example.tighten.v1`).
///
/// # Errors
///
/// What is wrong with it.
pub fn check_cloudevent_type(text: &str) -> Result<(), CloudEventTypeError> {
    if text.is_empty() {
        return Err(CloudEventTypeError::Empty);
    }
    if let Some(c) = text.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(CloudEventTypeError::BadCharacter(c));
    }
    if !text.contains('.') {
        return Err(CloudEventTypeError::NoDot);
    }
    if text.split('.').any(str::is_empty) {
        return Err(CloudEventTypeError::EmptySegment);
    }
    Ok(())
}

/// What is wrong with a CloudEvent `type` (see [`check_cloudevent_type`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CloudEventTypeError {
    /// The type is empty.
    #[error("it is empty")]
    Empty,
    /// The type contains white space or a control character.
    #[error("it contains the character {0:?}")]
    BadCharacter(char),
    /// The type has a single segment.
    #[error("it has no dot; use a reverse-DNS name like com.example.tighten.v1")]
    NoDot,
    /// Two dots in a row, or a dot at either end.
    #[error("it has an empty segment between dots")]
    EmptySegment,
}

/// Where a name is defined.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Element {
    Step(usize),
    Branch(usize),
}

/// Position of an element inside a branch: (branch index, path index,
/// position in the path).
type Place = (usize, usize, usize);

/// Validates the wire form and builds the typed recipe.
///
/// # Errors
///
/// Every broken rule (see the [module documentation](self)), each with its
/// location.
pub fn validate(wire: &SfcRecipe) -> Result<Recipe, RecipeErrors> {
    let mut errors = RecipeErrors::default();
    let no_branches = Vec::new();
    let wire_branches = wire.branches.as_ref().unwrap_or(&no_branches);

    let step_loc = |i: usize| format!("Steps[{i}] '{}'", wire.steps[i].name);
    let branch_loc = |i: usize| format!("Branches[{i}] '{}'", wire_branches[i].name);
    let element_loc = |e: Element| match e {
        Element::Step(i) => step_loc(i),
        Element::Branch(i) => branch_loc(i),
    };

    // Names of steps and branches (one namespace).
    let mut elements: HashMap<&str, Element> = HashMap::new();
    for (i, step) in wire.steps.iter().enumerate() {
        if step.name.is_empty() {
            errors.push(format!("Steps[{i}].Name"), "the name is empty");
        } else if let Some(first) = elements.get(step.name.as_str()) {
            errors.push(
                step_loc(i),
                format!(
                    "the name '{}' is already used by {}",
                    step.name,
                    element_loc(*first)
                ),
            );
        } else {
            elements.insert(&step.name, Element::Step(i));
        }
    }
    for (i, branch) in wire_branches.iter().enumerate() {
        if branch.name.is_empty() {
            errors.push(format!("Branches[{i}].Name"), "the name is empty");
        } else if let Some(first) = elements.get(branch.name.as_str()) {
            errors.push(
                branch_loc(i),
                format!(
                    "the name '{}' is already used by {} (steps and branches share names)",
                    branch.name,
                    element_loc(*first)
                ),
            );
        } else {
            elements.insert(&branch.name, Element::Branch(i));
        }
    }

    // Exactly one initial step.
    let initials: Vec<usize> = (0..wire.steps.len())
        .filter(|&i| wire.steps[i].initial == Some(true))
        .collect();
    match initials.as_slice() {
        [] if wire.steps.is_empty() => errors.push(
            "Steps",
            "there are no steps; a recipe needs at least its initial step",
        ),
        [] => errors.push(
            "Steps",
            "no initial step: mark exactly one step with \"Initial\": true",
        ),
        [_] => {}
        [first, rest @ ..] => {
            for &i in rest {
                errors.push(
                    step_loc(i),
                    format!(
                        "a second initial step ({} is initial already); exactly one step is initial",
                        step_loc(*first)
                    ),
                );
            }
        }
    }
    let initial = initials.first().map(|&i| wire.steps[i].name.as_str());

    // Branch paths: resolved, non-empty, disjoint, initial step outside.
    let mut places: HashMap<&str, Place> = HashMap::new();
    for (b, branch) in wire_branches.iter().enumerate() {
        if branch.branches.is_empty() {
            errors.push(
                branch_loc(b),
                "the branch has no paths; list at least one in \"Branches\"",
            );
        }
        for (p, path) in branch.branches.iter().enumerate() {
            if path.is_empty() {
                errors.push(
                    format!("Branches[{b}].Branches[{p}]"),
                    "the path is empty; a path lists at least one step or branch",
                );
            }
            for (k, name) in path.iter().enumerate() {
                let location = format!("Branches[{b}].Branches[{p}][{k}]");
                if *name == branch.name {
                    errors.push(location, format!("branch '{name}' contains itself"));
                    continue;
                }
                if !elements.contains_key(name.as_str()) {
                    errors.push(location, format!("'{name}' is not a step or branch"));
                    continue;
                }
                if let Some(&(b2, p2, k2)) = places.get(name.as_str()) {
                    errors.push(
                        location,
                        format!(
                            "'{name}' is already in Branches[{b2}].Branches[{p2}][{k2}]; \
                             an element belongs to one path only"
                        ),
                    );
                    continue;
                }
                if Some(name.as_str()) == initial {
                    errors.push(
                        location,
                        format!(
                            "the initial step '{name}' cannot be inside a branch; \
                             enter the branch by a transition from it"
                        ),
                    );
                }
                places.insert(name, (b, p, k));
            }
        }
    }

    // No branch nested in itself through other branches. (Directly in
    // itself is reported above and never placed.)
    for (b, branch) in wire_branches.iter().enumerate() {
        if elements.get(branch.name.as_str()) != Some(&Element::Branch(b)) {
            continue;
        }
        let mut chain = vec![b];
        let mut current = branch.name.as_str();
        while let Some(&(parent, _, _)) = places.get(current) {
            if parent == b {
                // Report each cycle once, at its first branch.
                if chain.iter().all(|&c| c >= b) {
                    // `chain` lists containers upwards (b is in chain[1], …);
                    // written downwards from b it reads b contains chain[n-1] ….
                    let names: Vec<String> = std::iter::once(&b)
                        .chain(chain[1..].iter().rev())
                        .chain(std::iter::once(&b))
                        .map(|&c| format!("'{}'", wire_branches[c].name))
                        .collect();
                    errors.push(
                        branch_loc(b),
                        format!(
                            "the branch is nested in itself: {}",
                            names.join(" contains ")
                        ),
                    );
                }
                break;
            }
            if chain.contains(&parent) {
                break; // a cycle further up, reported at its own branch
            }
            chain.push(parent);
            current = wire_branches[parent].name.as_str();
        }
    }

    let action_names: HashSet<&str> = wire.actions.iter().map(|a| a.name.as_str()).collect();

    // Transitions.
    let mut transitions = Vec::with_capacity(wire.transitions.len());
    for (i, t) in wire.transitions.iter().enumerate() {
        let source = elements.get(t.source.as_str()).copied();
        let target = elements.get(t.target.as_str()).copied();
        if source.is_none() {
            errors.push(
                format!("Transitions[{i}].Source"),
                format!("'{}' is not a step or branch", t.source),
            );
        }
        if target.is_none() {
            errors.push(
                format!("Transitions[{i}].Target"),
                format!("'{}' is not a step or branch", t.target),
            );
        }
        if source.is_some() && target.is_some() {
            check_transition_shape(i, t, &places, wire_branches, &mut errors);
        }
        match Condition::compile(&t.condition) {
            Ok(condition) => {
                if let Condition::Expr(cel) = &condition {
                    for var in cel.free_variables() {
                        if !VARIABLES.contains(&var.as_str())
                            && !action_names.contains(var.as_str())
                            && !CEL_TYPE_NAMES.contains(&var.as_str())
                        {
                            errors.push(
                                format!("Transitions[{i}].Condition"),
                                format!(
                                    "unknown variable '{var}': a condition reads results, states, \
                                     params, elapsed and the actions by name"
                                ),
                            );
                        }
                    }
                }
                transitions.push(Transition {
                    source: t.source.clone(),
                    target: t.target.clone(),
                    condition,
                    priority: t.priority.unwrap_or(0),
                });
            }
            Err(message) => errors.push(
                format!("Transitions[{i}].Condition"),
                format!("does not compile: {message}"),
            ),
        }
    }

    // Selection branches: an entry transition per path.
    for (b, branch) in wire_branches.iter().enumerate() {
        if branch.type_ != SfcBranchType::Selection {
            continue;
        }
        for (p, path) in branch.branches.iter().enumerate() {
            let Some(first) = path.first() else { continue };
            let entered = wire
                .transitions
                .iter()
                .any(|t| t.source == branch.name && t.target == *first);
            if !entered {
                errors.push(
                    format!("Branches[{b}].Branches[{p}]"),
                    format!(
                        "selection branch '{}' has no entry transition '{}' → '{first}'; \
                         add one whose condition picks this path",
                        branch.name, branch.name
                    ),
                );
            }
        }
    }

    // Reachability from the initial step.
    if let Some(initial) = initial {
        let reached = reachable(initial, wire, wire_branches);
        for (i, step) in wire.steps.iter().enumerate() {
            if !step.name.is_empty() && !reached.contains(step.name.as_str()) {
                errors.push(
                    step_loc(i),
                    format!("the step is not reachable from the initial step '{initial}'"),
                );
            }
        }
    }

    // Actions.
    let mut actions = Vec::with_capacity(wire.actions.len());
    let mut action_index: HashMap<&str, usize> = HashMap::new();
    for (i, a) in wire.actions.iter().enumerate() {
        if a.name.is_empty() {
            errors.push(format!("Actions[{i}].Name"), "the name is empty");
        } else if let Some(first) = action_index.get(a.name.as_str()) {
            errors.push(
                format!("Actions[{i}] '{}'", a.name),
                format!(
                    "the action name '{}' is already used by Actions[{first}]",
                    a.name
                ),
            );
        } else {
            action_index.insert(&a.name, i);
        }
        if let Some(action) = check_action(i, a, wire, &elements, &mut errors) {
            actions.push(action);
        }
    }

    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Recipe {
        version: wire.version.clone(),
        steps: wire
            .steps
            .iter()
            .map(|s| Step {
                name: s.name.clone(),
                initial: s.initial == Some(true),
            })
            .collect(),
        transitions,
        actions,
        branches: wire_branches
            .iter()
            .map(|b| Branch {
                name: b.name.clone(),
                kind: match b.type_ {
                    SfcBranchType::Selection => BranchKind::Selection,
                    SfcBranchType::Simultaneous => BranchKind::Simultaneous,
                },
                paths: b.branches.clone(),
            })
            .collect(),
    })
}

/// A path is entered only through its branch and left only when the branch
/// converges.
fn check_transition_shape(
    i: usize,
    t: &SfcTransition,
    places: &HashMap<&str, Place>,
    branches: &[SfcBranch],
    errors: &mut RecipeErrors,
) {
    let source_place = places.get(t.source.as_str()).copied();
    if let Some((b, p, k)) = places.get(t.target.as_str()).copied() {
        let branch = &branches[b];
        let same_path = source_place.is_some_and(|(sb, sp, _)| sb == b && sp == p);
        if same_path {
            return;
        }
        if t.source == branch.name {
            match (branch.type_, k) {
                (SfcBranchType::Selection, 0) => {}
                (SfcBranchType::Simultaneous, 0) => errors.push(
                    format!("Transitions[{i}]"),
                    format!(
                        "'{}' is a simultaneous branch: entering it starts all its paths, \
                         so it has no entry transitions; remove this one (or make the \
                         branch a selection)",
                        branch.name
                    ),
                ),
                _ => errors.push(
                    format!("Transitions[{i}].Target"),
                    format!(
                        "'{}' is not the first element of its path in '{}'; an entry \
                         transition leads to a path's first element",
                        t.target, branch.name
                    ),
                ),
            }
        } else {
            errors.push(
                format!("Transitions[{i}].Target"),
                format!(
                    "'{}' is inside branch '{}'; enter the branch by a transition to '{}'",
                    t.target, branch.name, branch.name
                ),
            );
        }
        return;
    }
    if let Some((b, _, _)) = source_place {
        errors.push(
            format!("Transitions[{i}].Target"),
            format!(
                "'{}' leaves the path of '{}' in branch '{}'; a path ends at its last \
                 element, and the branch is left by a transition from '{}'",
                t.target, t.source, branches[b].name, branches[b].name
            ),
        );
    }
}

/// Elements reachable from `initial`: transitions, branch → first element
/// of each path, path element → next element.
fn reachable<'a>(
    initial: &'a str,
    wire: &'a SfcRecipe,
    branches: &'a [SfcBranch],
) -> HashSet<&'a str> {
    let mut edges: HashMap<&str, Vec<&str>> = HashMap::new();
    for t in &wire.transitions {
        edges.entry(&t.source).or_default().push(&t.target);
    }
    for branch in branches {
        for path in &branch.branches {
            if let Some(first) = path.first() {
                edges.entry(&branch.name).or_default().push(first);
            }
            for pair in path.windows(2) {
                edges.entry(&pair[0]).or_default().push(&pair[1]);
            }
        }
    }
    let mut seen = HashSet::from([initial]);
    let mut queue = VecDeque::from([initial]);
    while let Some(node) = queue.pop_front() {
        for &next in edges.get(node).into_iter().flatten() {
            if seen.insert(next) {
                queue.push_back(next);
            }
        }
    }
    seen
}

fn check_action(
    i: usize,
    a: &SfcActionAssociation,
    wire: &SfcRecipe,
    elements: &HashMap<&str, Element>,
    errors: &mut RecipeErrors,
) -> Option<Action> {
    let at = |member: &str| format!("Actions[{i}].{member}");
    let before = errors.len();

    match elements.get(a.step.as_str()) {
        Some(Element::Step(_)) => {}
        Some(Element::Branch(_)) => errors.push(
            at("Step"),
            format!("'{}' is a branch; an action belongs to a step", a.step),
        ),
        None => errors.push(at("Step"), format!("'{}' is not a step", a.step)),
    }

    if a.qualifier == SfcActionQualifier::R {
        match wire.actions.iter().find(|s| s.name == a.type_id) {
            Some(s) if s.qualifier == SfcActionQualifier::S => {}
            Some(s) => errors.push(
                at("TypeId"),
                format!(
                    "an R action resets the S action named in its TypeId, but '{}' has \
                     qualifier {}",
                    s.name, s.qualifier
                ),
            ),
            None => errors.push(
                at("TypeId"),
                format!(
                    "an R action names in its TypeId the S action it resets; there is no \
                     action '{}'",
                    a.type_id
                ),
            ),
        }
    } else if let Err(why) = check_cloudevent_type(&a.type_id) {
        errors.push(
            at("TypeId"),
            format!("'{}' is not a valid CloudEvent type: {why}", a.type_id),
        );
    }

    let delay = timed_member(
        "DelaySeconds",
        a.delay_seconds,
        a.qualifier == SfcActionQualifier::D,
        "D",
        &at,
        errors,
    );
    let duration = timed_member(
        "DurationSeconds",
        a.duration_seconds,
        a.qualifier == SfcActionQualifier::L,
        "L",
        &at,
        errors,
    );
    if a.qualifier == SfcActionQualifier::L && duration == Some(Duration::ZERO) {
        errors.push(
            at("DurationSeconds"),
            "qualifier L needs a time limit above 0",
        );
    }

    let mut retry = Retry {
        max_attempts: 1,
        backoff: Duration::ZERO,
    };
    if let Some(policy) = &a.retry {
        if a.interaction == SfcInteraction::PullEvent {
            errors.push(
                at("Retry"),
                "a pull_event sends nothing, so there is nothing to retry; Retry applies \
                 to push_command",
            );
        }
        retry.max_attempts = policy.max_attempts.get();
        if let Some(backoff) = policy.backoff_seconds {
            match Duration::try_from_secs_f64(backoff) {
                Ok(d) => retry.backoff = d,
                Err(_) => errors.push(
                    at("Retry.BackoffSeconds"),
                    format!("{backoff} is not a time in seconds (finite, 0 or more)"),
                ),
            }
        }
    }

    match a.equipment.as_deref() {
        Some("") => errors.push(
            at("Equipment"),
            "Equipment is empty; omit it to address the job's scope",
        ),
        // Each level becomes a topic level and part of the command's
        // subject (wire contract §8).
        Some(eq) => {
            if let Err(e) = crate::envelope::check_topic_path("Equipment", eq) {
                errors.push(at("Equipment"), e.to_string());
            }
        }
        None => {}
    }

    if errors.len() > before {
        return None;
    }
    Some(Action {
        name: a.name.clone(),
        step: a.step.clone(),
        qualifier: match a.qualifier {
            SfcActionQualifier::N => Qualifier::N,
            SfcActionQualifier::P => Qualifier::P,
            SfcActionQualifier::P0 => Qualifier::P0,
            SfcActionQualifier::P1 => Qualifier::P1,
            SfcActionQualifier::S => Qualifier::S,
            SfcActionQualifier::R => Qualifier::R,
            SfcActionQualifier::L => Qualifier::L,
            SfcActionQualifier::D => Qualifier::D,
        },
        interaction: match a.interaction {
            SfcInteraction::PushCommand => Interaction::PushCommand,
            SfcInteraction::PullEvent => Interaction::PullEvent,
        },
        type_id: a.type_id.clone(),
        timeout: Duration::from_secs(u64::from(a.timeout_seconds)),
        parameters: a.parameters.clone().unwrap_or_default(),
        retry,
        delay,
        duration,
        equipment: a.equipment.clone(),
    })
}

/// `DelaySeconds` / `DurationSeconds`: required by one qualifier, refused
/// by the others, a valid time.
fn timed_member(
    member: &str,
    seconds: Option<f64>,
    required: bool,
    qualifier: &str,
    at: &dyn Fn(&str) -> String,
    errors: &mut RecipeErrors,
) -> Option<Duration> {
    match (seconds, required) {
        (None, false) => None,
        (None, true) => {
            errors.push(at(member), format!("qualifier {qualifier} needs {member}"));
            None
        }
        (Some(_), false) => {
            errors.push(
                at(member),
                format!("{member} applies only to qualifier {qualifier}"),
            );
            None
        }
        (Some(s), true) => match Duration::try_from_secs_f64(s) {
            Ok(d) => Some(d),
            Err(_) => {
                errors.push(
                    at(member),
                    format!("{s} is not a time in seconds (finite, 0 or more)"),
                );
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cloudevent_types() {
        assert!(check_cloudevent_type("com.example.tighten.v1").is_ok());
        assert!(check_cloudevent_type("a.b").is_ok());
        assert!(check_cloudevent_type("org.opcfoundation.ISA95-JOBCONTROL_V2.Store.v2").is_ok());
        for bad in [
            "",
            "tighten",
            "com..x",
            ".com.x",
            "com.x.",
            "com.ex ample",
            "com.x\n",
        ] {
            assert!(check_cloudevent_type(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn culprit_is_the_member_whose_removal_changes_the_error() {
        let item = serde_json::json!({"Name": "a", "Step": "s", "Qualifier": "N",
            "Interaction": "push_command", "TypeId": "a.b", "TimeoutSeconds": "ten"});
        let error = element_error::<SfcActionAssociation>(&item, "Actions[0]");
        assert_eq!(
            error.map(|e| e.location),
            Some("Actions[0].TimeoutSeconds".to_owned())
        );
        let missing = serde_json::json!({"Name": "a"});
        let error = element_error::<SfcStep>(&missing, "Steps[0]");
        assert!(error.is_none());
        let missing = serde_json::json!({"Initial": true});
        let error = element_error::<SfcStep>(&missing, "Steps[0]");
        assert_eq!(error.map(|e| e.location), Some("Steps[0]".to_owned()));
    }
}
