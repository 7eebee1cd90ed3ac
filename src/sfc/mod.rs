//! SFC recipes (IEC 61131-3 Sequential Function Charts) and their execution.
//!
//! A job's work master carries a recipe (`data`, with `dataschema` the SFC
//! recipe schema's `$id`). Before a recipe is stored or run it is parsed and
//! validated into a [`Recipe`](recipe::Recipe): steps, transitions with
//! compiled conditions, actions, branches.
//!
//! - [`recipe`]: the validated recipe and its parts, [`Recipe::parse`](recipe::Recipe::parse).
//! - [`validate`]: the structural rules a recipe must meet, with errors that
//!   name the element (`Transitions[3].Condition`) and the problem.
//! - [`condition`]: transition conditions: `always`, MicroDCS-style flags,
//!   and CEL expressions over action results and states, job parameters and
//!   the step's elapsed time.
//! - [`graph`]: a Mermaid flowchart of a recipe (`microdcs recipe graph`).
//! - [`net`]: the recipe compiled into steps and transitions with sets of
//!   input and output steps (branches become forks and joins).
//! - [`engine`]: the runtime on every replica: Redis consumer groups,
//!   compare-and-swap of execution states, timers, the `equipment` processor.
//! - `fence`: the check in front of every command: it goes out only while
//!   its job is Running, and never after the job's Aborted, Ended or
//!   Interrupted status event.
//! - `resync`: change entries the engine lost to the stream cap: the scope
//!   is reconciled from the stored job states.
//! - [`exec`]: a job's execution state and its evolution as a pure
//!   function (qualifiers, timers, retries, pause/resume, early events).

pub mod condition;
pub mod engine;
pub mod exec;
mod fence;
pub mod graph;
pub mod net;
pub mod recipe;
mod resync;
pub mod source;
pub mod validate;
