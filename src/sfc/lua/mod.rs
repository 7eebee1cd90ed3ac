//! The SFC runtime's Redis scripts: each in its own `.lua` file beside
//! this one, loaded once (`EVALSHA`, falling back to `EVAL` after a Redis
//! restart), all in one place. Each script is one atomic step whose
//! atomicity the engine relies on; the file says why.

use redis::Script;
use std::sync::LazyLock;

/// The compare-and-swap of a job's execution state with its timers, work
/// items and waiting sets (`exec_apply.lua`).
pub(super) static EXEC_APPLY: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("exec_apply.lua")));

/// Keeps an event for a job that does not take it yet, unless one does by
/// now (`early_push.lua`).
pub(super) static EARLY_PUSH: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("early_push.lua")));

/// Moves due timers into the work stream, each once (`timers_due.lua`).
pub(super) static TIMERS_DUE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("timers_due.lua")));

/// Takes a dispatch lease while the job is Running, holds the dispatch
/// while it is Interrupted (`dispatch_lease.lua`).
pub(super) static TAKE_DISPATCH_LEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("dispatch_lease.lua")));

/// Puts a resumed job's held dispatches back into the work stream
/// (`dispatch_resume.lua`).
pub(super) static RESUME_HELD: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("dispatch_resume.lua")));
