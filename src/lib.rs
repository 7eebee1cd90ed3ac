//! # microdcs
//!
//! Distributed sequence control for manufacturing stations (ISA-95 level 2):
//! job orders from an MES over MQTT v5 as CloudEvents, the OPC UA Machinery
//! Jobs state machine, SFC recipes executed by every replica through Redis,
//! and equipment behind southbound processors.
//!
//! # Layout
//!
//! The modules follow a message from the wire inwards:
//!
//! - [`envelope`]: the CloudEvent value type, its extension attributes, payload
//!   codecs (JSON, MessagePack) and the [`EventType`] link between a Rust
//!   payload type and its CloudEvent `type`/`dataschema`.
//! - [`binding`]: how a CloudEvent maps onto an MQTT v5 PUBLISH (binary mode
//!   out, binary and structured mode in). Pure, no I/O.
//! - [`transport`]: topics (§2 of the wire contract) and the MQTT transport
//!   on rumqttc: subscriptions, manual acknowledgements, replies, dead
//!   letters, reconnects, graceful shutdown.
//! - [`dedupe`]: exactly-once effects per (`source`, `id`) in Redis.
//! - [`processor`]: handlers as plain async functions, extractors, routing by
//!   type, emitting events.
//! - [`jobs`]: job management: the job order state machine (a pure function
//!   built from the NodeSet), Redis persistence with compare-and-swap, the
//!   built-in `machinery-jobs` processor.
//! - [`sfc`]: SFC recipes: validation, conditions (CEL), Mermaid graphs, the
//!   compiled net, the pure evolution and the Redis-coordinated engine with
//!   its `equipment` processor.
//! - [`publisher`]: the MES publisher of retained topics (state index,
//!   orders, results), run on one replica through [`singleton`].
//! - [`app`]: wires processors, transports, background tasks and shutdown;
//!   [`station`] builds a whole station from configuration.
//! - [`config`]: TOML file plus environment (MicroDCS-compatible `APP_*`).
//! - [`models`]: types generated at build time from the OPC UA NodeSets in
//!   `companion-specs/` and the JSON Schemas in `schemas/`.
//! - [`metrics`], [`error`]: counters and the wire error kinds.
//! - [`runtime`]: shutdown, backoff and the one clock (Redis's) for
//!   decisions that span replicas.
//! - `sim` (cargo feature `sim`, on by default: the binary's `sim`
//!   command): an equipment simulator answering southbound commands by
//!   seeded rules (demo, tests, benchmark).
//! - `testkit` (cargo feature `testkit`, off by default): local
//!   Mosquitto/Redis child processes, a test MQTT client and the scripted
//!   MES, for tests, the benchmark and the demo.

pub mod app;
pub mod binding;
pub mod config;
pub mod dedupe;
pub mod envelope;
pub mod error;
pub mod jobs;
pub mod metrics;
pub mod models;
pub mod processor;
pub mod publisher;
pub mod runtime;
pub mod sfc;
#[cfg(feature = "sim")]
pub mod sim;
pub mod singleton;
pub mod station;
pub mod telemetry;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod transport;

pub use app::{App, AppBuilder, AppError, Shutdown};
pub use envelope::{CloudEvent, ContentType, CorrelationId, EventType, MethodCall};
pub use error::{ErrorKind, HandlerError, ResultExt};
pub use processor::{
    Emit, Emitter, FromContext, Handler, IntoOutcome, Meta, Outcome, Processor, ProcessorBuilder,
    Scope, State,
};
pub use transport::{Direction, Intent, TopicBinding};
