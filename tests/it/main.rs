//! The integration tests, as one test binary: the crate is linked once, not
//! once per file. Each module is one former `tests/<name>.rs` and its tests
//! keep their names under it (`it::jobs::…`, `it::sfc_chaos::…`); the shared
//! harness (real Mosquitto and Redis child processes, a station on a runtime
//! of its own, test equipment, recipe builders) is [`harness`].
//!
//! `cargo nextest run --test it` runs them all, each test in a process of
//! its own; `cargo nextest run --test it -E 'test(/^sfc::/)'` runs one
//! module.

mod harness;

mod abuse;
mod audit;
mod config;
mod init;
mod jobs;
mod models;
mod msgpack;
mod observe_http;
#[cfg(feature = "opcua")]
mod opcua;
#[cfg(feature = "opcua")]
mod opcua_attack;
mod opcua_follow;
mod operator;
mod publisher;
mod recipe;
mod security;
mod sfc;
mod sfc_chaos;
mod sim;
mod traces;
mod transport_mqtt;
mod validation;
#[cfg(feature = "cloudevents")]
mod webhook;
#[cfg(all(feature = "cloudevents", feature = "tls"))]
mod webhook_https;
