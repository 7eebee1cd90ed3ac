//! Transports move encoded CloudEvents between brokers and processors.
//!
//! [`mqtt::MqttTransport`] is the production transport;
//! [`msgpack::MsgpackTransport`] serves MessagePack-RPC sidecars (wire
//! contract §5) with the same processors. Processors never see a transport
//! directly: they publish through an [`Emitter`](crate::Emitter), which
//! talks to the [`Publisher`] trait, so one processor can be bound to
//! several transports.
//!
//! The dependency goes one way: the transport routes messages to
//! [`Processor`](crate::Processor)s and the processors know nothing of it.
//! What both sides share — the topic layout ([`TopicBinding`],
//! [`Direction`], [`Intent`]), the CloudEvent ↔ MQTT mapping ([`binding`])
//! and the publishing port ([`Publisher`], [`Outgoing`], [`TransportError`])
//! — lives in the crate-private `binding` module, which depends on neither;
//! it is re-exported here.

mod acks;
mod disposition;
pub mod mqtt;
pub mod msgpack;
mod pending;
mod replies;
pub mod takeover;

pub use crate::binding::mqtt as binding;
pub use crate::binding::port::{BoxFuture, Outgoing, Publisher, TransportError};
pub use crate::binding::topics;
pub use crate::binding::topics::{Direction, Intent, TopicBinding};
