//! The link between a Rust payload type and its CloudEvent `type`/`dataschema`.
//!
//! Generated models implement these traits (the code generator writes the
//! impls from the `x-cloudevent-type` keywords of the JSON Schemas), and so can
//! hand-written payload types. Handlers are routed by [`EventType::TYPE`], so
//! no handler registration ever names a type string.

use serde::{de::DeserializeOwned, Serialize};

/// A payload that travels as the `data` of a CloudEvent.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a CloudEvent payload type",
    label = "handlers take a payload that implements `EventType` as their first argument",
    note = "generated models implement it; for your own type, implement `microdcs::EventType` (or generate it from a JSON Schema with `x-cloudevent-type`)"
)]
pub trait EventType: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The CloudEvent `type` attribute, e.g.
    /// `org.opcfoundation.ISA95-JOBCONTROL_V2.Store.v2`.
    const TYPE: &'static str;
    /// The CloudEvent `dataschema` attribute: the URI of this payload's schema.
    const DATASCHEMA: &'static str;
}

/// A request whose reply has a payload type of its own (an OPC UA method call:
/// request and reply share the CloudEvent `type`, only `dataschema` differs).
pub trait MethodCall: EventType {
    /// The reply payload.
    type Response: EventType;
}
