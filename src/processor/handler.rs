//! Plain async functions as handlers.
//!
//! A handler is `async fn(Payload, Extractor…) -> impl IntoOutcome`. The
//! payload type decides which CloudEvent `type` it receives
//! ([`EventType::TYPE`]); taking a raw [`CloudEvent`] instead makes it the
//! processor's fallback for every type without a handler of its own.

use super::extract::FromContext;
use super::outcome::{IntoOutcome, Outcome};
use super::RequestContext;
use crate::binding::port::BoxFuture;
use crate::envelope::{CloudEvent, DecodeError, EventType};
use crate::error::{ErrorKind, HandlerError};
use std::future::Future;
use std::sync::Arc;

/// The first handler argument: the typed payload (or the raw event).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the first argument of a handler",
    label = "the first argument must be the event payload",
    note = "use a type that implements `EventType` (a generated model, or your own) or `CloudEvent` for a fallback handler"
)]
pub trait Payload: Sized + Send + 'static {
    /// The CloudEvent `type` this payload is routed by; `None` for the raw
    /// event (fallback).
    const ROUTE: Option<&'static str>;

    /// The `dataschema` URI its payloads are validated against before the
    /// handler runs (when the processor's [`SchemaSet`](crate::validation::SchemaSet)
    /// knows it); `None` for the raw event, whose own `dataschema` is used.
    const ROUTE_SCHEMA: Option<&'static str> = None;

    /// Reads the payload out of the event.
    ///
    /// # Errors
    /// `UNSUPPORTED_CONTENT_TYPE` or `PAYLOAD_INVALID` naming the problem.
    fn from_event(event: &CloudEvent) -> Result<Self, HandlerError>;
}

impl<T: EventType> Payload for T {
    const ROUTE: Option<&'static str> = Some(T::TYPE);
    const ROUTE_SCHEMA: Option<&'static str> = Some(T::DATASCHEMA);

    fn from_event(event: &CloudEvent) -> Result<Self, HandlerError> {
        event.data_as::<T>().map_err(|e| match e {
            DecodeError::UnsupportedContentType(_) => {
                HandlerError::terminal(ErrorKind::UnsupportedContentType, e.to_string())
            }
            _ => HandlerError::terminal(ErrorKind::PayloadInvalid, format!("{}: {e}", T::TYPE)),
        })
    }
}

impl Payload for CloudEvent {
    const ROUTE: Option<&'static str> = None;

    fn from_event(event: &CloudEvent) -> Result<Self, HandlerError> {
        Ok(event.clone())
    }
}

/// Implemented for async functions whose first argument is a [`Payload`],
/// whose other arguments are [`FromContext`] extractors (up to six), and
/// whose output is [`IntoOutcome`].
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a handler",
    label = "handlers are `async fn(Payload, Extractor…) -> impl IntoOutcome`",
    note = "the first argument must implement `EventType` (or be `CloudEvent`), the others `FromContext` (Meta, Scope, State<T>, Emitter), and the future must be `Send`"
)]
pub trait Handler<Args>: Clone + Send + Sync + 'static {
    /// The payload type (decides routing).
    type Payload: Payload;

    /// Runs the handler.
    fn call(
        self,
        payload: Self::Payload,
        ctx: Arc<RequestContext>,
    ) -> BoxFuture<'static, Result<Outcome, HandlerError>>;
}

macro_rules! impl_handler {
    ($($x:ident),*) => {
        #[allow(non_snake_case, unused_variables)]
        impl<F, Fut, P, R, $($x,)*> Handler<(P, $($x,)*)> for F
        where
            F: Fn(P, $($x,)*) -> Fut + Clone + Send + Sync + 'static,
            Fut: Future<Output = R> + Send + 'static,
            P: Payload,
            R: IntoOutcome,
            $($x: FromContext,)*
        {
            type Payload = P;

            fn call(self, payload: P, ctx: Arc<RequestContext>) -> BoxFuture<'static, Result<Outcome, HandlerError>> {
                Box::pin(async move {
                    $(let $x = $x::from_context(&ctx)?;)*
                    (self)(payload, $($x,)*).await.into_outcome()
                })
            }
        }
    };
}

impl_handler!();
impl_handler!(A);
impl_handler!(A, B);
impl_handler!(A, B, C);
impl_handler!(A, B, C, D);
impl_handler!(A, B, C, D, E);
impl_handler!(A, B, C, D, E, G);

/// A handler with its types erased, as the router stores it.
pub(crate) type ErasedFn = Arc<
    dyn Fn(Arc<RequestContext>) -> BoxFuture<'static, Result<Outcome, HandlerError>> + Send + Sync,
>;

/// A handler as the router stores it: the erased function and the schema
/// of its payload type.
#[derive(Clone)]
pub(crate) struct ErasedHandler {
    pub(crate) call: ErasedFn,
    pub(crate) dataschema: Option<&'static str>,
}

pub(crate) fn erase<H: Handler<Args>, Args>(h: H) -> ErasedHandler {
    ErasedHandler {
        call: Arc::new(move |ctx: Arc<RequestContext>| {
            let h = h.clone();
            Box::pin(async move {
                let payload = H::Payload::from_event(&ctx.event)?;
                h.call(payload, ctx).await
            })
        }),
        dataschema: <H::Payload as Payload>::ROUTE_SCHEMA,
    }
}
