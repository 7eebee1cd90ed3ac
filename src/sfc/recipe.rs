//! A validated SFC recipe: the generated `SfcRecipe` (the wire form, see
//! `schemas/sfc-recipe.schema.json`) checked and turned into the shape the
//! engine executes.
//!
//! # Structure and meaning
//!
//! Elements are steps and branches, both referred to by name. A transition
//! goes from an element (`Source`) to an element (`Target`).
//!
//! - A **simultaneous** branch `B` is entered by a transition `X → B`; all
//!   its paths start. Each path is a sequence of elements; consecutive
//!   elements are joined by the recipe's transition between them, or, when
//!   the recipe has none, by an implicit `always` transition. `B` converges
//!   when every path has finished (its last element is complete); then the
//!   transitions with `Source = B` are evaluated (the exit). No exit: the
//!   branch's paths simply end.
//! - A **selection** branch `B` is entered by `X → B`; of the transitions
//!   `B → first element of a path` (the entry transitions), the enabled one
//!   with the lowest `Priority` picks the path. `B` converges when the
//!   chosen path has finished; transitions `B → element outside B` are its
//!   exits.
//! - A path element may itself be a branch (nesting).
//!
//! # Conventions beyond the schema
//!
//! - An **`R` action names the `S` action it resets in its `TypeId`**: the
//!   `R` association `{"Name": "light_off", "Qualifier": "R", "TypeId":
//!   "work_light", …}` resets the stored action whose `Name` is
//!   `work_light` (association names are unique, so the reset cannot share
//!   the stored action's name as in IEC 61131-3). Its `Interaction`,
//!   `TimeoutSeconds` and `Parameters` are not used.
//! - `TimeoutSeconds: 0` means no timeout: wait for the result or event for
//!   as long as the step is active (or, for `S`, until it is reset).
//! - Defaults: no `Priority` is 0; no `Retry` is one attempt, no back-off
//!   (a timeout fails the job); no `BackoffSeconds` is 0; no `Parameters`
//!   is `{}`; no `Equipment` addresses the job's scope.
//! - Conditions: see [`condition`](super::condition).
//!
//! The rules a valid recipe meets, and the location syntax of
//! [`RecipeError`], are in [`validate`](super::validate).

use std::time::Duration;

/// The action qualifiers of IEC 61131-3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Qualifier {
    /// Non-stored: runs while the step is active; the step waits for it.
    N,
    /// Pulse on entry (same as `P1`).
    P,
    /// Pulse on exit.
    P0,
    /// Pulse on entry.
    P1,
    /// Set (stored): keeps running after the step is left, until reset.
    S,
    /// Reset a stored action.
    R,
    /// Time limited.
    L,
    /// Time delayed.
    D,
}

/// How an action talks to equipment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Interaction {
    /// Send a command and wait for its result.
    PushCommand,
    /// Wait for an event from the equipment.
    PullEvent,
}

/// Retry policy of a `push_command`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    /// Sends in total, the first included (1: no retry).
    pub max_attempts: u32,
    /// Pause before each re-send.
    pub backoff: Duration,
}

/// An action associated with a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Action {
    /// Unique name; conditions see its result under this name.
    pub name: String,
    /// The step it belongs to.
    pub step: String,
    /// When it runs.
    pub qualifier: Qualifier,
    /// Push or pull.
    pub interaction: Interaction,
    /// CloudEvent type sent or awaited.
    pub type_id: String,
    /// How long to wait for the result/event (zero: no timeout).
    pub timeout: Duration,
    /// The command's data (`push_command`).
    pub parameters: serde_json::Map<String, serde_json::Value>,
    /// Re-sends on timeout (`max_attempts` 1 when absent).
    pub retry: Retry,
    /// `D`: delay after step entry.
    pub delay: Option<Duration>,
    /// `L`: time limit.
    pub duration: Option<Duration>,
    /// Equipment (subject) addressed; `None`: the job's scope.
    pub equipment: Option<String>,
}

/// A transition.
#[derive(Debug, Clone)]
pub struct Transition {
    /// Source element (step or branch).
    pub source: String,
    /// Target element (step or branch).
    pub target: String,
    /// The condition, compiled.
    pub condition: super::condition::Condition,
    /// Lower fires first.
    pub priority: i32,
}

/// Selection or simultaneous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BranchKind {
    /// One path, chosen by the entry transitions.
    Selection,
    /// All paths, joined at the end.
    Simultaneous,
}

/// A branch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Branch {
    /// Unique name.
    pub name: String,
    /// Its kind.
    pub kind: BranchKind,
    /// The paths: sequences of element names.
    pub paths: Vec<Vec<String>>,
}

/// A step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Unique name.
    pub name: String,
    /// The initial step (exactly one).
    pub initial: bool,
}

/// A validated recipe. Construct it with [`Recipe::parse`].
#[derive(Debug, Clone)]
pub struct Recipe {
    /// The recipe's own version, if given.
    pub version: Option<String>,
    /// Steps in recipe order.
    pub steps: Vec<Step>,
    /// Transitions in recipe order.
    pub transitions: Vec<Transition>,
    /// Actions in recipe order.
    pub actions: Vec<Action>,
    /// Branches in recipe order.
    pub branches: Vec<Branch>,
}

/// One problem in a recipe: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipeError {
    /// The element, as a path into the recipe JSON with 0-based indices:
    /// `Steps[2] 'press'` (a whole element, with its name),
    /// `Transitions[3].Condition`, `Branches[0].Branches[1][0]` (a member),
    /// `Steps` (the collection), `Recipe` (the document), or
    /// `line 3, column 7` (JSON syntax).
    pub location: String,
    /// What is wrong, and usually how to fix it.
    pub message: String,
}

impl RecipeError {
    /// An error at `location`.
    pub fn new(location: impl Into<String>, message: impl Into<String>) -> Self {
        RecipeError {
            location: location.into(),
            message: message.into(),
        }
    }
}

impl std::fmt::Display for RecipeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

impl std::error::Error for RecipeError {}

/// Every problem found in a recipe (never empty when returned as an error).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecipeErrors(pub Vec<RecipeError>);

impl RecipeErrors {
    /// The problems, in recipe order.
    #[must_use]
    pub fn errors(&self) -> &[RecipeError] {
        &self.0
    }

    /// How many problems.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over the problems.
    pub fn iter(&self) -> std::slice::Iter<'_, RecipeError> {
        self.0.iter()
    }

    /// Whether some problem is at exactly `location` (handy in tests).
    #[must_use]
    pub fn has(&self, location: &str) -> bool {
        self.0.iter().any(|e| e.location == location)
    }

    pub(crate) fn push(&mut self, location: impl Into<String>, message: impl Into<String>) {
        self.0.push(RecipeError::new(location, message));
    }
}

impl<'a> IntoIterator for &'a RecipeErrors {
    type Item = &'a RecipeError;
    type IntoIter = std::slice::Iter<'a, RecipeError>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// `invalid SFC recipe: <location>: <message>; <location>: <message>; …`
/// on one line, so it fits a reply's error message.
impl std::fmt::Display for RecipeErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid SFC recipe: ")?;
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RecipeErrors {}

/// Checks `value` against the recipe schema; every violation becomes a
/// [`RecipeError`] located as the semantic checks locate theirs
/// (`/Steps/2/Name` → `Steps[2].Name`, the whole recipe → `Recipe`).
fn schema_check(value: &serde_json::Value) -> Result<(), RecipeErrors> {
    let schemas = crate::validation::SchemaSet::builtin();
    schemas
        .check(crate::models::sfc_recipe::SCHEMA_ID, value)
        .map_err(|violations| {
            let mut errors = RecipeErrors::default();
            for v in violations.iter() {
                errors.push(location(&v.path), v.message.clone());
            }
            if violations.total > violations.list.len() {
                errors.push(
                    "Recipe",
                    format!(
                        "and {} more schema violations",
                        violations.total - violations.list.len()
                    ),
                );
            }
            errors
        })
}

/// A JSON Pointer as a recipe location: `/Steps/2/Name` → `Steps[2].Name`.
fn location(pointer: &str) -> String {
    let mut out = String::new();
    for segment in pointer.split('/').skip(1).filter(|s| !s.is_empty()) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if segment.bytes().all(|b| b.is_ascii_digit()) {
            out.push_str(&format!("[{segment}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(&segment);
        }
    }
    if out.is_empty() {
        "Recipe".to_owned()
    } else {
        out
    }
}

impl Recipe {
    /// Parses and validates a recipe given as JSON (the `data` of an
    /// extended work master).
    ///
    /// # Errors
    ///
    /// Every problem found, each with its location: first every violation
    /// of the recipe schema (`schemas/sfc-recipe.schema.json`, checked with
    /// [`validation`](crate::validation): `Actions[1].TimeoutSeconds: "ten"
    /// is not of type "number"`); a recipe that fits the schema is then
    /// checked against every rule of [`validate`](super::validate).
    ///
    /// # Example
    ///
    /// ```
    /// use microdcs::sfc::recipe::Recipe;
    /// use serde_json::json;
    ///
    /// let recipe = Recipe::parse(&json!({
    ///     "Steps": [{"Name": "load", "Initial": true}, {"Name": "press"}],
    ///     "Transitions": [{"Source": "load", "Target": "press", "Condition": "part.present"}],
    ///     "Actions": [
    ///         {"Name": "part", "Step": "load", "Qualifier": "N", "Interaction": "pull_event",
    ///          "TypeId": "com.example.part.v1", "TimeoutSeconds": 60},
    ///         {"Name": "press", "Step": "press", "Qualifier": "N", "Interaction": "push_command",
    ///          "TypeId": "com.example.press.v1", "TimeoutSeconds": 10,
    ///          "Retry": {"MaxAttempts": 3, "BackoffSeconds": 0.5}}
    ///     ]
    /// })).map_err(|e| e.to_string())?;
    /// assert_eq!(recipe.initial_step().map(|s| s.name.as_str()), Some("load"));
    /// assert_eq!(recipe.actions[1].retry.max_attempts, 3);
    ///
    /// let errors = Recipe::parse(&json!({
    ///     "Steps": [{"Name": "load"}],
    ///     "Transitions": [{"Source": "load", "Target": "nowhere", "Condition": "always"}],
    ///     "Actions": []
    /// })).unwrap_err();
    /// assert!(errors.has("Steps"));                  // no initial step
    /// assert!(errors.has("Transitions[0].Target"));  // unknown target
    /// # Ok::<(), String>(())
    /// ```
    pub fn parse(value: &serde_json::Value) -> Result<Recipe, RecipeErrors> {
        schema_check(value)?;
        let wire = super::validate::deserialize(value)?;
        super::validate::validate(&wire)
    }

    /// The initial step (validation guarantees there is exactly one;
    /// `None` only for a `Recipe` assembled by hand without one).
    #[must_use]
    pub fn initial_step(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.initial)
    }

    /// The step named `name`.
    #[must_use]
    pub fn step(&self, name: &str) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }

    /// The branch named `name`.
    #[must_use]
    pub fn branch(&self, name: &str) -> Option<&Branch> {
        self.branches.iter().find(|b| b.name == name)
    }

    /// The action named `name`.
    #[must_use]
    pub fn action(&self, name: &str) -> Option<&Action> {
        self.actions.iter().find(|a| a.name == name)
    }

    /// The actions of step `step`, in recipe order.
    pub fn actions_of<'a>(&'a self, step: &'a str) -> impl Iterator<Item = &'a Action> + 'a {
        self.actions.iter().filter(move |a| a.step == step)
    }

    /// The `pull_event` actions, in recipe order.
    pub fn pull_actions(&self) -> impl Iterator<Item = &Action> + '_ {
        self.actions
            .iter()
            .filter(|a| a.interaction == Interaction::PullEvent)
    }

    /// The transitions leaving `source` (a step or branch), lowest
    /// `Priority` first, recipe order among equal priorities.
    #[must_use]
    pub fn transitions_from(&self, source: &str) -> Vec<&Transition> {
        let mut out: Vec<&Transition> = self
            .transitions
            .iter()
            .filter(|t| t.source == source)
            .collect();
        out.sort_by_key(|t| t.priority);
        out
    }

    /// The branch whose path contains `element` directly, with the path's
    /// index and the element's position in it.
    #[must_use]
    pub fn enclosing_branch(&self, element: &str) -> Option<(&Branch, usize, usize)> {
        self.branches.iter().find_map(|b| {
            b.paths
                .iter()
                .enumerate()
                .find_map(|(p, path)| path.iter().position(|e| e == element).map(|i| (b, p, i)))
        })
    }
}

/// Parses the JSON text of a recipe; see [`Recipe::parse`].
impl std::str::FromStr for Recipe {
    type Err = RecipeErrors;

    fn from_str(text: &str) -> Result<Recipe, RecipeErrors> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
            RecipeErrors(vec![RecipeError::new(
                format!("line {}, column {}", e.line(), e.column()),
                format!("not valid JSON ({e})"),
            )])
        })?;
        Recipe::parse(&value)
    }
}
