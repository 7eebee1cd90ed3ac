//! Transports move encoded CloudEvents between brokers and processors.
//!
//! [`mqtt::MqttTransport`] is the production transport. Processors never see
//! it directly: they publish through an [`Emitter`](crate::Emitter), which
//! talks to the [`Publisher`] trait, so one processor can be bound to
//! several transports.
//!
//! The dependency goes one way: the transport routes messages to
//! [`processor`](crate::processor)s and the processors know nothing of it.
//! What both sides share — the topic layout ([`TopicBinding`],
//! [`Direction`], [`Intent`]) and the publishing port ([`Publisher`],
//! [`Outgoing`], [`TransportError`]) — lives in [`crate::binding`], which
//! depends on neither; it is re-exported here under its familiar paths.

mod acks;
pub mod mqtt;
mod pending;
pub mod takeover;

pub use crate::binding::port::{BoxFuture, Outgoing, Publisher, TransportError};
pub use crate::binding::topics;
pub use crate::binding::topics::{Direction, Intent, TopicBinding};
