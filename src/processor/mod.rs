//! Processors: named sets of handlers with a direction, routed by CloudEvent
//! `type`.
//!
//! ```
//! use microdcs::{Processor, Scope, HandlerError};
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Ping { n: u32 }
//! # impl microdcs::EventType for Ping { const TYPE: &'static str = "x.ping.v1"; const DATASCHEMA: &'static str = "urn:ping"; }
//! # #[derive(serde::Serialize, serde::Deserialize)] struct Pong { n: u32 }
//! # impl microdcs::EventType for Pong { const TYPE: &'static str = "x.ping.v1"; const DATASCHEMA: &'static str = "urn:pong"; }
//! async fn ping(p: Ping, scope: Scope) -> Result<Pong, HandlerError> {
//!     Ok(Pong { n: p.n + 1 })
//! }
//! let processor = Processor::northbound("pinger").handle(ping).build();
//! assert_eq!(processor.handled_types(), ["x.ping.v1"]);
//! ```

mod emitter;
mod extract;
mod handler;
mod outcome;
mod validate;

pub(crate) use emitter::Bound;
pub use emitter::Emitter;
pub use extract::{FromContext, Meta, Scope, State};
pub use handler::{Handler, Payload};
pub(crate) use outcome::ReplyBody;
pub use outcome::{Emit, IntoOutcome, Outcome};

use crate::binding::topics::Direction;
use crate::envelope::CloudEvent;
use crate::envelope::EventType;
use crate::error::{ErrorKind, HandlerError};
use crate::validation::SchemaSet;
use handler::{erase, ErasedHandler};
use std::any::{Any, TypeId};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use validate::Validation;

/// What a handler sees besides its payload; extractors read from it.
pub struct RequestContext {
    pub(crate) event: CloudEvent,
    pub(crate) topic: String,
    pub(crate) shared: Arc<Shared>,
}

impl RequestContext {
    /// The incoming event (with data).
    pub fn event(&self) -> &CloudEvent {
        &self.event
    }

    /// The topic it arrived on.
    pub fn topic(&self) -> &str {
        &self.topic
    }
}

pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) direction: Direction,
    pub(crate) states: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    pub(crate) emitter: Emitter,
    pub(crate) dedupe: bool,
}

impl Shared {
    fn state<T: Send + Sync + 'static>(&self) -> Option<Arc<T>> {
        self.states
            .get(&TypeId::of::<T>())
            .and_then(|s| s.clone().downcast::<T>().ok())
    }
}

/// A named set of handlers, routed by CloudEvent `type`. Cheap to clone.
#[derive(Clone)]
pub struct Processor {
    pub(crate) shared: Arc<Shared>,
    handlers: Arc<BTreeMap<String, ErasedHandler>>,
    fallback: Option<ErasedHandler>,
    validation: Arc<Validation>,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("name", &self.shared.name)
            .field("direction", &self.shared.direction)
            .field("types", &self.handled_types())
            .finish()
    }
}

impl Processor {
    /// Starts a processor facing the MES: it receives `commands` and sends
    /// `events`, `data` and `metadata`.
    pub fn northbound(name: impl Into<String>) -> ProcessorBuilder {
        ProcessorBuilder::new(name.into(), Direction::Northbound)
    }

    /// Starts a processor facing equipment: it receives `events`, `data` and
    /// `metadata` and sends `commands`.
    pub fn southbound(name: impl Into<String>) -> ProcessorBuilder {
        ProcessorBuilder::new(name.into(), Direction::Southbound)
    }

    /// The processor's name (the key in the `APP_PROCESSING_*` lists).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Its direction.
    pub fn direction(&self) -> Direction {
        self.shared.direction
    }

    /// The CloudEvent types with a handler, sorted.
    pub fn handled_types(&self) -> Vec<&str> {
        self.handlers.keys().map(String::as_str).collect()
    }

    /// Whether a message of type `ty` would find a handler.
    pub fn handles(&self, ty: &str) -> bool {
        self.fallback.is_some() || self.handlers.contains_key(ty)
    }

    /// Whether its messages are deduplicated by (`source`, `id`) (see
    /// [`ProcessorBuilder::idempotent`]).
    pub fn dedupes(&self) -> bool {
        self.shared.dedupe
    }

    /// The emitter, for sending events outside a request (timers, tasks).
    pub fn emitter(&self) -> Emitter {
        self.shared.emitter.clone()
    }

    /// Runs the handler for `event`, after checking its payload against the
    /// schema of the handler's payload type (a fallback handler: the schema
    /// the event's `dataschema` names) when the processor's
    /// [`SchemaSet`] knows it (wire contract §6; see
    /// [`validation`](crate::validation)).
    ///
    /// # Errors
    /// `UNKNOWN_PAYLOAD_TYPE` when no handler takes the type,
    /// `PAYLOAD_INVALID` listing every schema violation (path → what was
    /// expected) in its context, otherwise the handler's (or its
    /// extractors') error.
    pub async fn dispatch(&self, event: CloudEvent, topic: &str) -> Result<Outcome, HandlerError> {
        let handler = self
            .handlers
            .get(&event.ty)
            .or(self.fallback.as_ref())
            .cloned();
        let Some(h) = handler else {
            return Err(HandlerError::terminal(
                ErrorKind::UnknownPayloadType,
                format!(
                    "processor '{}' has no handler for type '{}'",
                    self.shared.name, event.ty
                ),
            ));
        };
        self.validation.check(&event, h.dataschema)?;
        let ctx = Arc::new(RequestContext {
            event,
            topic: topic.to_owned(),
            shared: self.shared.clone(),
        });
        (h.call)(ctx).await
    }
}

/// Builds a [`Processor`].
#[must_use = "a processor builder does nothing until `build` is called"]
pub struct ProcessorBuilder {
    name: String,
    direction: Direction,
    handlers: BTreeMap<String, ErasedHandler>,
    fallback: Option<ErasedHandler>,
    states: HashMap<TypeId, Arc<dyn Any + Send + Sync>>,
    dedupe: bool,
    validation: Validation,
}

impl ProcessorBuilder {
    fn new(name: String, direction: Direction) -> Self {
        ProcessorBuilder {
            name,
            direction,
            handlers: BTreeMap::new(),
            fallback: None,
            states: HashMap::new(),
            dedupe: true,
            validation: Validation::new(),
        }
    }

    /// The schemas its payloads are validated against (default:
    /// [`SchemaSet::builtin`]). A plant app with schema documents of its own
    /// passes them here, so its types are validated too:
    ///
    /// ```
    /// use microdcs::{Processor, validation::SchemaSet};
    /// # let my_schema = r#"{"$id": "https://plant.example/schemas/orders/v1/", "$defs": {}}"#;
    /// let schemas = SchemaSet::builtin().with_documents([my_schema])?;
    /// let processor = Processor::northbound("orders").schemas(schemas).build();
    /// # Ok::<(), microdcs::validation::SchemaError>(())
    /// ```
    pub fn schemas(mut self, schemas: SchemaSet) -> Self {
        self.validation.schemas = schemas;
        self
    }

    /// Switches schema validation off for payloads of `T`'s CloudEvent
    /// type: they reach the handler as they are, and only its decoder
    /// judges them.
    pub fn without_validation<T: EventType>(self) -> Self {
        self.without_validation_of(T::TYPE)
    }

    /// [`without_validation`](Self::without_validation) by CloudEvent type
    /// name, for types a fallback handler takes.
    pub fn without_validation_of(mut self, ty: impl Into<String>) -> Self {
        self.validation.off.insert(ty.into());
        self
    }

    /// Validation of `T`'s payloads does not report these members as
    /// missing (a schema's `required`): the handler answers their absence
    /// itself. The job methods answer a missing `JobOrder` or `JobOrderID`
    /// with `InvalidRequest` (wire contract §3), not with an error kind.
    pub fn answers_missing<T: EventType>(mut self, members: &[&'static str]) -> Self {
        self.validation
            .missing_ok
            .entry(T::TYPE.to_owned())
            .or_default()
            .extend_from_slice(members);
        self
    }

    /// Validation of `T`'s payloads leaves a violation located exactly at
    /// one of these instance paths (JSON Pointers, e.g. `/Comment`) to the
    /// handler, which reads that member more leniently than the schema
    /// (violations inside it are still reported).
    pub fn lenient_at<T: EventType>(mut self, paths: &[&'static str]) -> Self {
        self.validation
            .lenient_at
            .entry(T::TYPE.to_owned())
            .or_default()
            .extend_from_slice(paths);
        self
    }

    /// Skips the (`source`, `id`) deduplication for this processor's
    /// messages: for handlers that are idempotent by themselves (the SFC
    /// engine's equipment processor, whose every input is a compare-and-swap
    /// that ignores what it already applied), saving two Redis round trips
    /// per message.
    pub fn idempotent(mut self) -> Self {
        self.dedupe = false;
        self
    }

    /// Adds a handler. Its payload type decides which CloudEvent `type` it
    /// receives; a handler taking a raw `CloudEvent` is the fallback.
    ///
    /// # Panics
    /// When two handlers claim the same type: a wiring bug, caught at start-up.
    pub fn handle<H: Handler<Args>, Args>(mut self, h: H) -> Self {
        match <H::Payload as Payload>::ROUTE {
            Some(ty) => {
                let previous = self.handlers.insert(ty.to_owned(), erase(h));
                assert!(
                    previous.is_none(),
                    "processor '{}': two handlers for type '{ty}'",
                    self.name
                );
            }
            None => {
                assert!(
                    self.fallback.is_none(),
                    "processor '{}': two fallback handlers",
                    self.name
                );
                self.fallback = Some(erase(h));
            }
        }
        self
    }

    /// Registers shared state, available to handlers as [`State<T>`].
    pub fn state<T: Send + Sync + 'static>(mut self, value: T) -> Self {
        self.states.insert(TypeId::of::<T>(), Arc::new(value));
        self
    }

    /// Registers shared state you keep a handle to.
    pub fn state_arc<T: Send + Sync + 'static>(mut self, value: Arc<T>) -> Self {
        self.states.insert(TypeId::of::<T>(), value);
        self
    }

    /// Finishes the processor.
    pub fn build(self) -> Processor {
        let emitter = Emitter::new(&self.name, self.direction);
        Processor {
            shared: Arc::new(Shared {
                name: self.name,
                direction: self.direction,
                states: self.states,
                emitter,
                dedupe: self.dedupe,
            }),
            handlers: Arc::new(self.handlers),
            fallback: self.fallback,
            validation: Arc::new(self.validation),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{ContentType, EventType};
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Cmd {
        #[serde(rename = "N")]
        n: u32,
    }
    impl EventType for Cmd {
        const TYPE: &'static str = "t.cmd.v1";
        const DATASCHEMA: &'static str = "urn:cmd";
    }

    async fn double(c: Cmd, scope: Scope, factor: State<u32>) -> Cmd {
        let _ = scope;
        Cmd { n: c.n * *factor }
    }

    async fn anything(e: CloudEvent) -> Result<(), HandlerError> {
        if e.ty == "t.fail.v1" {
            return Err(HandlerError::terminal(ErrorKind::StateInvalid, "no"));
        }
        Ok(())
    }

    fn event(ty: &str, subject: Option<&str>, body: &str) -> CloudEvent {
        let mut e = CloudEvent::new(ty, "test");
        e.subject = subject.map(str::to_owned);
        e.datacontenttype = Some(ContentType::Json.header().into());
        e.data = Some(bytes::Bytes::from(body.to_owned()));
        e
    }

    fn reply_n(o: &Outcome) -> u32 {
        let body = o.reply.as_ref().unwrap();
        assert_eq!(body.dataschema.as_deref(), Some("urn:cmd"));
        serde_json::from_slice::<Cmd>(body.data.as_ref().unwrap())
            .unwrap()
            .n
    }

    #[tokio::test]
    async fn routes_by_payload_type_and_runs_extractors() {
        let p = Processor::northbound("p")
            .handle(double)
            .state(3u32)
            .build();
        let o = p
            .dispatch(
                event("t.cmd.v1", Some("cell/1"), r#"{"N":2}"#),
                "x/commands",
            )
            .await
            .unwrap();
        assert_eq!(reply_n(&o), 6);
    }

    #[tokio::test]
    async fn errors_name_what_is_wrong() {
        let p = Processor::northbound("p").handle(double).build();
        let kind = |r: Result<Outcome, HandlerError>| r.unwrap_err().kind();
        assert_eq!(
            kind(p.dispatch(event("t.other.v1", Some("s"), "{}"), "t").await),
            ErrorKind::UnknownPayloadType
        );
        assert_eq!(
            kind(
                p.dispatch(event("t.cmd.v1", Some("s"), r#"{"M":1}"#), "t")
                    .await
            ),
            ErrorKind::PayloadInvalid
        );
        assert_eq!(
            kind(p.dispatch(event("t.cmd.v1", None, r#"{"N":1}"#), "t").await),
            ErrorKind::MissingUserProperty
        );
        let missing_state = p
            .dispatch(event("t.cmd.v1", Some("s"), r#"{"N":1}"#), "t")
            .await
            .unwrap_err();
        assert_eq!(missing_state.kind(), ErrorKind::InternalLogicError);
        assert!(
            missing_state.message().contains("u32"),
            "{}",
            missing_state.message()
        );
        let mut bad_ct = event("t.cmd.v1", Some("s"), "{}");
        bad_ct.datacontenttype = Some("text/csv".into());
        assert_eq!(
            kind(p.dispatch(bad_ct, "t").await),
            ErrorKind::UnsupportedContentType
        );
    }

    #[tokio::test]
    async fn raw_event_handler_is_the_fallback() {
        let p = Processor::southbound("eq")
            .handle(double)
            .handle(anything)
            .state(1u32)
            .build();
        assert!(p.handles("t.whatever.v1"));
        assert!(p
            .dispatch(event("t.whatever.v1", None, ""), "t")
            .await
            .is_ok());
        assert_eq!(
            p.dispatch(event("t.fail.v1", None, ""), "t")
                .await
                .unwrap_err()
                .kind(),
            ErrorKind::StateInvalid
        );
        assert_eq!(
            reply_n(
                &p.dispatch(event("t.cmd.v1", Some("s"), r#"{"N":5}"#), "t")
                    .await
                    .unwrap()
            ),
            5
        );
    }

    /// A lenient reader of Store requests, as the job processor has.
    #[derive(Serialize, Deserialize)]
    struct LenientStore {
        #[serde(rename = "JobOrder", default)]
        job_order: Option<serde_json::Value>,
    }
    impl EventType for LenientStore {
        const TYPE: &'static str = "org.opcfoundation.ISA95-JOBCONTROL_V2.Store.v2";
        const DATASCHEMA: &'static str =
            <crate::models::isa95_jobcontrol::StoreCall as EventType>::DATASCHEMA;
    }

    async fn lenient_store(_s: LenientStore) -> Result<(), HandlerError> {
        Ok(())
    }

    fn paths(e: &HandlerError) -> Vec<&str> {
        e.context_entries()
            .iter()
            .map(|(k, _)| k.as_str())
            .collect()
    }

    #[tokio::test]
    async fn payloads_are_checked_against_the_handlers_schema_before_it_runs() {
        let bad = r#"{"JobOrder": {"JobOrderID": 1}, "Comment": {"Text": "one"}}"#;
        let strict = Processor::northbound("p").handle(lenient_store).build();
        let e = strict
            .dispatch(event(LenientStore::TYPE, Some("s"), bad), "t")
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PayloadInvalid);
        assert_eq!(paths(&e), ["/Comment", "/JobOrder/JobOrderID"]);

        // Exempt what the handler answers itself; the rest is still checked.
        let lenient = Processor::northbound("p")
            .handle(lenient_store)
            .answers_missing::<LenientStore>(&["JobOrder"])
            .lenient_at::<LenientStore>(&["/Comment"])
            .build();
        let e = lenient
            .dispatch(event(LenientStore::TYPE, Some("s"), bad), "t")
            .await
            .unwrap_err();
        assert_eq!(paths(&e), ["/JobOrder/JobOrderID"]);
        assert!(lenient
            .dispatch(
                event(LenientStore::TYPE, Some("s"), r#"{"Comment": {}}"#),
                "t"
            )
            .await
            .is_ok());

        // Switched off: only the handler's decoder judges.
        let off = Processor::northbound("p")
            .handle(lenient_store)
            .without_validation::<LenientStore>()
            .build();
        assert!(off
            .dispatch(event(LenientStore::TYPE, Some("s"), bad), "t")
            .await
            .is_ok());
    }

    #[tokio::test]
    async fn a_fallback_handler_is_checked_against_the_events_dataschema() {
        let p = Processor::southbound("eq").handle(anything).build();
        let mut e = event("t.any.v1", None, r#"{"JobOrder": 5}"#);
        assert!(p.dispatch(e.clone(), "t").await.is_ok(), "no dataschema");
        e.dataschema = Some("urn:unknown".into());
        assert!(p.dispatch(e.clone(), "t").await.is_ok(), "unknown schema");
        e.dataschema = Some(LenientStore::DATASCHEMA.into());
        let err = p.dispatch(e, "t").await.unwrap_err();
        assert_eq!(paths(&err), ["/JobOrder"]);
        assert!(err.message().contains(LenientStore::DATASCHEMA));
    }

    #[test]
    #[should_panic(expected = "two handlers for type 't.cmd.v1'")]
    fn two_handlers_for_one_type_are_a_startup_error() {
        let _ = Processor::northbound("p").handle(double).handle(double);
    }
}
