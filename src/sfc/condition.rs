//! Transition conditions: the three forms a recipe's `Condition` can take,
//! compiled once when the recipe is validated and evaluated by the engine
//! whenever something the source step depends on changes.
//!
//! | text | form | true when |
//! |---|---|---|
//! | `""`, `always` (any case, trimmed) | [`Condition::Always`] | all non-stored actions of the source step are completed (decided by the engine) |
//! | a bare identifier, e.g. `torque_ok` | [`Condition::Flag`] | the source step's merged action results have that field with the value `true` |
//! | anything else | [`Condition::Expr`] | the [CEL](https://cel.dev) expression yields `true` |
//!
//! A CEL expression sees these variables:
//!
//! - `results`: map, action name → the result data (JSON) of the latest
//!   completed activation of that action in this job;
//! - `states`: map, action name → `"pending"`, `"running"`, `"done"`,
//!   `"failed"` or `"cancelled"`;
//! - `params`: map, job parameter ID → value;
//! - `elapsed`: double, seconds the source step has been active;
//! - every completed action whose name is an identifier, bound directly to
//!   its result, so `tighten.ok` is `results.tighten.ok` (the four names
//!   above win over an action of the same name).
//!
//! JSON maps onto CEL as you would expect: objects are maps, arrays lists,
//! integral numbers `int` (`uint` above `i64::MAX`), other numbers `double`.
//!
//! A condition that reads a result which is not there yet (the action has not
//! completed, or its result lacks the field) is simply not enabled: it
//! evaluates to `false`, not to an error. Recipe validation has already
//! checked that every variable it names exists, so this cannot hide a typo in
//! a variable name (it can hide one in a field name).
//!
//! ```
//! use microdcs::sfc::condition::{Condition, ConditionContext};
//! use serde_json::json;
//! use std::collections::BTreeMap;
//!
//! let condition = Condition::compile("tighten.torque_nm < 50.0 && params.mode == 'fast'")?;
//! let results = json!({"tighten": {"torque_nm": 42}});
//! let params = json!({"mode": "fast"});
//! let empty = serde_json::Map::new();
//! let ctx = ConditionContext {
//!     results: results.as_object().unwrap(),
//!     states: &BTreeMap::new(),
//!     params: params.as_object().unwrap(),
//!     step_results: &empty,
//!     elapsed_seconds: 1.5,
//! };
//! assert_eq!(condition.evaluate(&ctx), Ok(true));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, OnceLock};

use cel::common::ast::{EntryExpr, Expr, IdedExpr};

/// The variables every CEL condition sees besides the action names.
pub const VARIABLES: [&str; 4] = ["results", "states", "params", "elapsed"];

/// A compiled transition condition.
#[derive(Debug, Clone, PartialEq)]
pub enum Condition {
    /// `""` or `always`: all non-stored actions of the source step are
    /// completed. [`Condition::evaluate`] returns `true`; the engine adds
    /// the completion requirement.
    Always,
    /// A bare identifier (MicroDCS style): true when the source step's merged
    /// action results contain this field with the value `true`.
    Flag(String),
    /// A CEL expression.
    Expr(CompiledCel),
}

/// A compiled CEL expression, cheap to clone.
#[derive(Clone)]
pub struct CompiledCel {
    source: String,
    program: Arc<cel::Program>,
}

impl CompiledCel {
    /// The expression as written (trimmed).
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The variables the expression reads from outside (identifiers that are
    /// not bound by a comprehension such as `all(x, …)`), e.g. `results` and
    /// `tighten` for `results.press.ok && tighten.ok`.
    #[must_use]
    pub fn free_variables(&self) -> BTreeSet<String> {
        let mut free = BTreeSet::new();
        collect_free(self.program.expression(), &mut Vec::new(), &mut free);
        free
    }
}

impl fmt::Debug for CompiledCel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CompiledCel").field(&self.source).finish()
    }
}

/// Two compiled expressions are equal when their sources are.
impl PartialEq for CompiledCel {
    fn eq(&self, other: &Self) -> bool {
        self.source == other.source
    }
}

/// What a condition is evaluated against. The engine builds it from the
/// job's execution state.
#[derive(Debug, Clone, Copy)]
pub struct ConditionContext<'a> {
    /// Action name → result data (JSON) of the actions completed in this job
    /// so far, latest activation.
    pub results: &'a serde_json::Map<String, Value>,
    /// Action name → `"pending"`, `"running"`, `"done"`, `"failed"` or
    /// `"cancelled"`.
    pub states: &'a BTreeMap<String, String>,
    /// Job parameters by ID.
    pub params: &'a serde_json::Map<String, Value>,
    /// The result fields of the source step's actions, merged (what a
    /// [`Condition::Flag`] looks at).
    pub step_results: &'a serde_json::Map<String, Value>,
    /// How long the source step has been active, in seconds.
    pub elapsed_seconds: f64,
}

impl Condition {
    /// Compiles a recipe's condition text.
    ///
    /// # Errors
    ///
    /// The CEL parser's message (with line and column) when the text is
    /// neither `always`, nor empty, nor an identifier, nor valid CEL.
    pub fn compile(text: &str) -> Result<Condition, CompileError> {
        let text = text.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("always") {
            return Ok(Condition::Always);
        }
        if is_identifier(text) && !is_cel_reserved(text) {
            return Ok(Condition::Flag(text.to_owned()));
        }
        match cel::Program::compile(text) {
            Ok(program) => Ok(Condition::Expr(CompiledCel {
                source: text.to_owned(),
                program: Arc::new(program),
            })),
            Err(errors) => Err(CompileError {
                problems: errors
                    .errors
                    .iter()
                    .map(|e| SyntaxProblem {
                        line: e.pos.0,
                        column: e.pos.1 + 1,
                        message: e.msg.clone(),
                    })
                    .collect(),
            }),
        }
    }

    /// Evaluates the condition.
    ///
    /// [`Condition::Always`] is `true` here: that the source step's
    /// non-stored actions are completed is the engine's part. A CEL
    /// expression that reads a result that is not there yet is `false`.
    ///
    /// # Errors
    ///
    /// A CEL expression that fails for another reason (no such operator for
    /// the operand types, division by zero, …) or yields something other
    /// than a bool.
    pub fn evaluate(&self, ctx: &ConditionContext<'_>) -> Result<bool, EvalError> {
        match self {
            Condition::Always => Ok(true),
            Condition::Flag(field) => Ok(ctx.step_results.get(field) == Some(&Value::Bool(true))),
            Condition::Expr(cel) => evaluate_cel(cel, ctx),
        }
    }
}

/// A condition text that is not valid CEL: every problem the parser found,
/// shown as `line L, column C: message`, joined by `; `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", display_problems(.problems))]
pub struct CompileError {
    /// The parser's problems, in its order.
    pub problems: Vec<SyntaxProblem>,
}

/// One problem the CEL parser found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}, column {column}: {message}")]
pub struct SyntaxProblem {
    /// Line, as the parser counts (from 1).
    pub line: isize,
    /// Column, from 1.
    pub column: isize,
    /// The parser's message.
    pub message: String,
}

fn display_problems(problems: &[SyntaxProblem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// A CEL condition that could not be evaluated to a bool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// The expression yields something other than a bool.
    #[error("condition `{condition}` yields {yields}, not a bool")]
    NotBool {
        /// The condition's CEL source.
        condition: String,
        /// The CEL type it yields.
        yields: String,
    },
    /// The evaluation failed (no such operator for the operand types,
    /// division by zero, …).
    #[error("condition `{condition}` failed: {reason}")]
    Failed {
        /// The condition's CEL source.
        condition: String,
        /// CEL's message.
        reason: String,
    },
}

/// `always`, the flag name, or the CEL source: how a recipe writes it.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Condition::Always => f.write_str("always"),
            Condition::Flag(name) => f.write_str(name),
            Condition::Expr(cel) => f.write_str(&cel.source),
        }
    }
}

fn evaluate_cel(cel: &CompiledCel, ctx: &ConditionContext<'_>) -> Result<bool, EvalError> {
    let mut context = cel::Context::with_env(Arc::clone(stdlib()));
    for (name, result) in ctx.results {
        if is_identifier(name) && !is_cel_reserved(name) && !VARIABLES.contains(&name.as_str()) {
            context.add_variable_from_value(name.as_str(), json_to_cel(result));
        }
    }
    context.add_variable_from_value("results", map_to_cel(ctx.results));
    context.add_variable_from_value(
        "states",
        ctx.states
            .iter()
            .map(|(k, v)| (k.clone(), cel::Value::from(v.as_str())))
            .collect::<HashMap<String, cel::Value>>(),
    );
    context.add_variable_from_value("params", map_to_cel(ctx.params));
    context.add_variable_from_value("elapsed", cel::Value::Float(ctx.elapsed_seconds));
    match cel.program.execute(&context) {
        Ok(cel::Value::Bool(b)) => Ok(b),
        Ok(other) => Err(EvalError::NotBool {
            condition: cel.source.clone(),
            yields: other.type_of().to_string(),
        }),
        // Missing data: the action has not completed (yet) or its result
        // lacks the field. The transition is just not enabled.
        Err(cel::ExecutionError::NoSuchKey(_) | cel::ExecutionError::UndeclaredReference(_)) => {
            Ok(false)
        }
        Err(e) => Err(EvalError::Failed {
            condition: cel.source.clone(),
            reason: e.to_string(),
        }),
    }
}

/// CEL's standard environment (functions, macros), built once: building it
/// costs more than evaluating a typical condition.
fn stdlib() -> &'static Arc<cel::Env> {
    static STDLIB: OnceLock<Arc<cel::Env>> = OnceLock::new();
    STDLIB.get_or_init(|| Arc::new(cel::Env::stdlib()))
}

fn map_to_cel(map: &serde_json::Map<String, Value>) -> cel::Value {
    map.iter()
        .map(|(k, v)| (k.clone(), json_to_cel(v)))
        .collect::<HashMap<String, cel::Value>>()
        .into()
}

/// JSON to CEL: integral numbers become `int` (or `uint` when too large),
/// others `double`, so `count == 3` and `torque < 50.0` both read naturally.
fn json_to_cel(value: &Value) -> cel::Value {
    match value {
        Value::Null => cel::Value::Null,
        Value::Bool(b) => cel::Value::Bool(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                cel::Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                cel::Value::UInt(u)
            } else {
                cel::Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => cel::Value::from(s.as_str()),
        Value::Array(items) => items.iter().map(json_to_cel).collect::<Vec<_>>().into(),
        Value::Object(map) => map_to_cel(map),
    }
}

/// Identifiers read by `expr` that no enclosing comprehension binds.
fn collect_free(expr: &IdedExpr, bound: &mut Vec<String>, free: &mut BTreeSet<String>) {
    match &expr.expr {
        Expr::Unspecified | Expr::Literal(_) => {}
        Expr::Ident(name) => {
            if !bound.iter().any(|b| b == name) {
                free.insert(name.clone());
            }
        }
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                collect_free(target, bound, free);
            }
            for arg in &call.args {
                collect_free(arg, bound, free);
            }
        }
        Expr::Select(select) => collect_free(&select.operand, bound, free),
        Expr::List(list) => {
            for element in &list.elements {
                collect_free(element, bound, free);
            }
        }
        Expr::Map(map) => {
            for entry in &map.entries {
                collect_entry(&entry.expr, bound, free);
            }
        }
        Expr::Struct(s) => {
            for entry in &s.entries {
                collect_entry(&entry.expr, bound, free);
            }
        }
        Expr::Comprehension(c) => {
            collect_free(&c.iter_range, bound, free);
            collect_free(&c.accu_init, bound, free);
            let depth = bound.len();
            bound.push(c.iter_var.clone());
            bound.extend(c.iter_var2.iter().cloned());
            bound.push(c.accu_var.clone());
            collect_free(&c.loop_cond, bound, free);
            collect_free(&c.loop_step, bound, free);
            collect_free(&c.result, bound, free);
            bound.truncate(depth);
        }
    }
}

fn collect_entry(entry: &EntryExpr, bound: &mut Vec<String>, free: &mut BTreeSet<String>) {
    match entry {
        EntryExpr::StructField(field) => collect_free(&field.value, bound, free),
        EntryExpr::MapEntry(entry) => {
            collect_free(&entry.key, bound, free);
            collect_free(&entry.value, bound, free);
        }
    }
}

/// `^[A-Za-z_][A-Za-z0-9_]*$`.
pub(crate) fn is_identifier(text: &str) -> bool {
    let mut chars = text.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// CEL literals and reserved words, which are never a flag or a variable.
pub(crate) fn is_cel_reserved(text: &str) -> bool {
    matches!(
        text,
        "true"
            | "false"
            | "null"
            | "in"
            | "as"
            | "break"
            | "const"
            | "continue"
            | "else"
            | "for"
            | "function"
            | "if"
            | "import"
            | "let"
            | "loop"
            | "package"
            | "namespace"
            | "return"
            | "var"
            | "void"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Fixture {
        results: serde_json::Map<String, Value>,
        states: BTreeMap<String, String>,
        params: serde_json::Map<String, Value>,
        step_results: serde_json::Map<String, Value>,
        elapsed: f64,
    }

    impl Fixture {
        fn new() -> Self {
            let obj = |v: Value| v.as_object().cloned().unwrap_or_default();
            Fixture {
                results: obj(json!({
                    "tighten": {"torque_nm": 42, "ok": true, "angle": 12.5},
                    "inspect": {"ok": false, "defects": ["scratch"]},
                    "odd-name": {"ok": true}
                })),
                states: [
                    ("tighten", "done"),
                    ("inspect", "done"),
                    ("press", "running"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
                params: obj(json!({"variant": "RA-7", "max_torque": 50.0, "count": 3})),
                step_results: obj(json!({"torque_ok": true, "other": "true"})),
                elapsed: 2.5,
            }
        }

        fn eval(&self, text: &str) -> Result<bool, String> {
            let ctx = ConditionContext {
                results: &self.results,
                states: &self.states,
                params: &self.params,
                step_results: &self.step_results,
                elapsed_seconds: self.elapsed,
            };
            Condition::compile(text)
                .map_err(|e| e.to_string())?
                .evaluate(&ctx)
                .map_err(|e| e.to_string())
        }
    }

    #[test]
    fn empty_and_always_are_the_completion_condition() {
        for text in ["", "  ", "always", "ALWAYS", " Always "] {
            assert_eq!(Condition::compile(text), Ok(Condition::Always), "{text:?}");
        }
        assert_eq!(Fixture::new().eval("always"), Ok(true));
    }

    #[test]
    fn bare_identifier_is_a_flag_on_the_step_results() {
        assert_eq!(
            Condition::compile(" torque_ok "),
            Ok(Condition::Flag("torque_ok".into()))
        );
        let f = Fixture::new();
        assert_eq!(f.eval("torque_ok"), Ok(true));
        // Only a JSON `true` counts, not a truthy string or a missing field.
        assert_eq!(f.eval("other"), Ok(false));
        assert_eq!(f.eval("missing"), Ok(false));
    }

    #[test]
    fn cel_literals_are_not_flags() {
        assert!(matches!(Condition::compile("true"), Ok(Condition::Expr(_))));
        assert_eq!(Fixture::new().eval("true"), Ok(true));
        assert_eq!(Fixture::new().eval("false"), Ok(false));
    }

    #[test]
    fn cel_reads_results_states_params_and_elapsed() {
        let f = Fixture::new();
        assert_eq!(f.eval("results.tighten.torque_nm < 50.0"), Ok(true));
        assert_eq!(f.eval("tighten.ok == true"), Ok(true));
        assert_eq!(f.eval("tighten.ok && !inspect.ok"), Ok(true));
        assert_eq!(f.eval("results['odd-name'].ok"), Ok(true));
        assert_eq!(f.eval("states.press == 'running'"), Ok(true));
        assert_eq!(
            f.eval("params.variant == 'RA-7' && params.count == 3"),
            Ok(true)
        );
        assert_eq!(f.eval("tighten.torque_nm <= params.max_torque"), Ok(true));
        assert_eq!(f.eval("elapsed > 2.0"), Ok(true));
        assert_eq!(f.eval("size(inspect.defects) == 1"), Ok(true));
        assert_eq!(f.eval("inspect.defects.all(d, d == 'scratch')"), Ok(true));
        assert_eq!(f.eval("tighten.angle == 12.5"), Ok(true));
    }

    #[test]
    fn missing_results_are_not_enabled_yet() {
        let f = Fixture::new();
        assert_eq!(f.eval("press.ok"), Ok(false));
        assert_eq!(f.eval("results.press.ok"), Ok(false));
        assert_eq!(f.eval("tighten.no_such_field == 1"), Ok(false));
    }

    #[test]
    fn non_bool_results_are_errors() {
        let f = Fixture::new();
        let err = f.eval("tighten.torque_nm + 1").unwrap_err();
        assert!(err.contains("not a bool"), "{err}");
        assert!(f.eval("params.variant").is_err());
        assert!(f.eval("'text'").is_err());
    }

    #[test]
    fn type_errors_are_errors() {
        let f = Fixture::new();
        assert!(f.eval("params.variant < 3").is_err());
        assert!(f.eval("1 / 0 == 1").is_err());
    }

    #[test]
    fn syntax_errors_do_not_compile_and_say_where() {
        let err = Condition::compile("tighten.ok &&").unwrap_err();
        assert_eq!(err.problems[0].line, 1);
        let err = err.to_string();
        assert!(err.starts_with("line 1, column"), "{err}");
        assert!(Condition::compile("a ==== b").is_err());
        assert!(Condition::compile("(").is_err());
    }

    #[test]
    fn free_variables_skip_comprehension_variables() {
        let Ok(Condition::Expr(cel)) =
            Condition::compile("results.a.ok && b.x.all(v, v > limit) && {'k': c}.k")
        else {
            panic!("not CEL");
        };
        let free: Vec<String> = cel.free_variables().into_iter().collect();
        assert_eq!(free, ["b", "c", "limit", "results"]);
    }

    #[test]
    fn display_gives_back_the_text() {
        for text in ["always", "torque_ok", "tighten.ok == true"] {
            let c = Condition::compile(text).unwrap();
            assert_eq!(c.to_string(), text);
        }
        assert_eq!(Condition::compile("").unwrap().to_string(), "always");
    }

    #[test]
    fn conditions_can_be_shared_between_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Condition>();
    }

    #[test]
    fn identifiers() {
        assert!(is_identifier("a_1"));
        assert!(is_identifier("_x"));
        assert!(!is_identifier("1a"));
        assert!(!is_identifier("a-b"));
        assert!(!is_identifier("a.b"));
        assert!(!is_identifier(""));
    }
}
