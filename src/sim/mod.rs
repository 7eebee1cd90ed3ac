//! An equipment simulator: the other end of a station's southbound
//! processor, for the demo, the tests and the benchmark.
//!
//! It subscribes `{prefix}/+/commands` (and deeper, see
//! [`SimConfig::wildcard_levels`]), decodes each command as a CloudEvent
//! ([`crate::binding::mqtt::decode`]) and, following the first matching
//! [`Rule`] of its [`SimConfig`], answers on the command's Response Topic
//! with the command's Correlation Data echoed byte for byte: same `type`, a
//! fresh `id`, `causationid` = the command's `id`, `correlationid` copied,
//! `source` = [`SimConfig::source`], and the rendered result as `data` — or
//! `mdcserrorkind`/`mdcserrormessage` when the rule makes it fail. Then it
//! publishes the rule's events to `{prefix}/{subject}/events` (or `data`)
//! with `correlationid` = the command's `jobid` metadata, which is what a
//! waiting `pull_event` action of that job matches.
//!
//! Everything random (delays, failures, lost commands, duplicate replies,
//! `random.*` placeholders) comes from one generator seeded with
//! [`SimConfig::seed`], drawn in the order commands arrive: the same
//! sequence of commands gets the same decisions. A command whose
//! (`source`, `id`) was seen before gets the same reply again (same reply
//! `id` too, so a station that already processed it drops it), and no
//! second round of events: idempotent equipment. A lost command is not
//! remembered, so its re-delivery is decided afresh.
//!
//! # Templates
//!
//! A rule's `result` and an event's `data` are any JSON. Strings may hold
//! placeholders; a string that is exactly one placeholder becomes its JSON
//! value (`"{{param.Force}}"` → `12.5`), inside longer strings they are
//! substituted as text (`"job {{jobid}}"`):
//!
//! | placeholder | value |
//! |---|---|
//! | `{{param}}`, `{{param.X}}`, `{{param.X.0.Y}}` | the command's data, or a field of it (`null` if absent) |
//! | `{{seq}}` | the command's number, 1 for the first (re-deliveries excluded) |
//! | `{{random.f64 A B}}` | a seeded number in `[A, B)` |
//! | `{{random.int A B}}` | a seeded integer in `[A, B]` |
//! | `{{id}}`, `{{type}}`, `{{subject}}`, `{{jobid}}` | the command's attributes |
//! | `{{now}}` | the current time, RFC 3339 |
//!
//! Unknown placeholders are errors when the simulator is created, not when
//! the first command arrives.
//!
//! # Example
//!
//! ```no_run
//! use microdcs::sim::{Delay, Rule, SimConfig, Simulator};
//! use serde_json::json;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config = SimConfig::new("localhost", 1883).rule(
//!     Rule::new("com.example.press.Press.v1")
//!         .delay(Delay::range(20, 80))
//!         .result(json!({ "Force": "{{param.Force}}", "Seq": "{{seq}}" })),
//! );
//! let sim = Simulator::new(config)?;
//! let handle = sim.handle();
//! let task = tokio::spawn(sim.run(std::future::pending()));
//! handle.ready().await; // subscribed: commands from now on are answered
//! // … run the station …
//! handle.shutdown();
//! let stats = task.await?;
//! println!("{stats}");
//! # Ok(())
//! # }
//! ```

mod config;
mod equipment;
mod rng;
mod run;
mod template;

pub use config::{Delay, EmitIntent, EmitSpec, Rule, SimConfig};
pub use run::{SimHandle, SimStats, Simulator};

/// Why a simulator configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The file cannot be read or parsed.
    #[error("simulator configuration {origin}: {reason}")]
    Config {
        /// The file (or `TOML`/`JSON` for text).
        origin: String,
        /// What is wrong, as the parser says it.
        reason: String,
    },
    /// A rule is invalid.
    #[error("simulator rule '{type_id}': {reason}")]
    Rule {
        /// The rule's `type_id`.
        type_id: String,
        /// What is wrong.
        reason: String,
    },
    /// A result or event template has a bad placeholder.
    #[error("simulator template of {template}: {reason}")]
    Template {
        /// Which template (`rule 'x' result`, `rule 'x' event 'y' data`).
        template: String,
        /// What is wrong.
        reason: String,
    },
}
