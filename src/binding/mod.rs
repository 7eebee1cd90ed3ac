//! Protocol bindings: how a [`CloudEvent`](crate::CloudEvent) maps onto a
//! transport's messages.
//!
//! Only MQTT v5 exists today ([`mqtt`]); the binding is pure (bytes and
//! properties in, events out), so it is tested without a broker.

pub mod mqtt;
pub(crate) mod port;
pub mod topics;
