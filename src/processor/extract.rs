//! Handler arguments after the event: extractors.

use super::emitter::Emitter;
use super::RequestContext;
use crate::envelope::CloudEvent;
use crate::error::{ErrorKind, HandlerError};
use std::ops::Deref;
use std::sync::Arc;

/// A value a handler can take as an argument after the typed event.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a handler argument",
    label = "not an extractor",
    note = "after the event, handler arguments must be extractors: `Meta`, `Scope`, `Option<Scope>`, `State<T>` or `Emitter`"
)]
pub trait FromContext: Sized + Send + 'static {
    /// Extracts the value.
    ///
    /// # Errors
    /// The request lacks what the extractor needs (e.g. no subject for
    /// [`Scope`]); the error is sent back to the requester.
    fn from_context(ctx: &RequestContext) -> Result<Self, HandlerError>;
}

/// The incoming CloudEvent's attributes and the topic it came on (the
/// payload is the handler's first argument, so `data` is left out).
#[derive(Debug, Clone)]
pub struct Meta {
    /// The event without its data.
    pub event: CloudEvent,
    /// The topic it arrived on.
    pub topic: String,
}

impl FromContext for Meta {
    fn from_context(ctx: &RequestContext) -> Result<Self, HandlerError> {
        let mut event = ctx.event.clone();
        event.data = None;
        Ok(Meta {
            event,
            topic: ctx.topic.clone(),
        })
    }
}

/// The scope of the request: the `subject` up to its first `/`. Taking
/// `Scope` makes a subject mandatory (`PROPERTY_INVALID`-free: a missing
/// subject answers `MISSING_USER_PROPERTY`); take `Option<Scope>` otherwise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope(pub String);

impl Deref for Scope {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl FromContext for Scope {
    fn from_context(ctx: &RequestContext) -> Result<Self, HandlerError> {
        ctx.event
            .scope()
            .map(|s| Scope(s.to_owned()))
            .ok_or_else(|| {
                HandlerError::terminal(
                    ErrorKind::MissingUserProperty,
                    "the request has no 'subject', so it has no scope",
                )
            })
    }
}

impl FromContext for Option<Scope> {
    fn from_context(ctx: &RequestContext) -> Result<Self, HandlerError> {
        Ok(ctx.event.scope().map(|s| Scope(s.to_owned())))
    }
}

/// Shared state registered with
/// [`ProcessorBuilder::state`](crate::ProcessorBuilder::state).
#[derive(Debug)]
pub struct State<T>(pub Arc<T>);

impl<T> Clone for State<T> {
    fn clone(&self) -> Self {
        State(self.0.clone())
    }
}

impl<T> Deref for State<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<T: Send + Sync + 'static> FromContext for State<T> {
    fn from_context(ctx: &RequestContext) -> Result<Self, HandlerError> {
        ctx.shared.state::<T>().map(State).ok_or_else(|| {
            HandlerError::terminal(
                ErrorKind::InternalLogicError,
                format!(
                    "processor '{}' has no state of type {} (register it with ProcessorBuilder::state)",
                    ctx.shared.name,
                    std::any::type_name::<T>()
                ),
            )
        })
    }
}

impl FromContext for Emitter {
    fn from_context(ctx: &RequestContext) -> Result<Self, HandlerError> {
        Ok(ctx.shared.emitter.clone())
    }
}
