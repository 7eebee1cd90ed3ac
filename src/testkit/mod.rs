//! Helpers for tests, the benchmark and the demo (cargo feature `testkit`,
//! not in the default build): local Mosquitto and Redis child processes
//! ([`devenv`]), a plain MQTT v5 client ([`mqtt`]) and the scripted MES
//! ([`mes`]) that drives a station through the wire contract only.
//!
//! A plant application does not need any of it; a crate's tests get it with
//! a dev-dependency on `microdcs` with `features = ["testkit"]`.

pub mod devenv;
pub mod mes;
pub mod mqtt;

pub use mes::Mes;
pub use mqtt::TestClient;

/// What a testkit client failed at.
#[derive(Debug, thiserror::Error)]
pub enum TestkitError {
    /// No CONNACK in time.
    #[error("MQTT client '{client}' did not connect to 127.0.0.1:{port} within 10 s")]
    Connect {
        /// The client id.
        client: String,
        /// The broker's port.
        port: u16,
    },
    /// A subscription failed or was not acknowledged in time.
    #[error("'{client}' cannot subscribe {filters:?}: {why}")]
    Subscribe {
        /// The client id.
        client: String,
        /// The topic filters.
        filters: Vec<String>,
        /// Why.
        why: String,
    },
    /// A publish request could not be queued.
    #[error("'{client}' cannot publish to {topic}: {why}")]
    Publish {
        /// The client id.
        client: String,
        /// The topic.
        topic: String,
        /// Why.
        why: String,
    },
}
