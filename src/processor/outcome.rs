//! What a handler returns: a reply, events to emit, or both.

use crate::binding::topics::Intent;
use crate::envelope::{CloudEvent, ContentType, EventType};
use crate::error::{ErrorKind, HandlerError};

/// An event a processor sends (outside or alongside a reply).
///
/// ```
/// # use microdcs::{Emit, Intent};
/// # #[derive(serde::Serialize, serde::Deserialize)] struct Done { ok: bool }
/// # impl microdcs::EventType for Done { const TYPE: &'static str = "x.done.v1"; const DATASCHEMA: &'static str = "urn:x"; }
/// let e = Emit::new(&Done { ok: true }).subject("machine-42").intent(Intent::Data);
/// ```
#[derive(Debug, Clone)]
pub struct Emit {
    pub(crate) event: Result<CloudEvent, String>,
    pub(crate) intent: Intent,
    pub(crate) retain: bool,
    pub(crate) qos: Option<u8>,
    pub(crate) shared_response: bool,
}

impl Emit {
    /// An event carrying `payload` (JSON), typed by its [`EventType`], on the
    /// `events` intent. `source` is filled in when it is sent.
    pub fn new<T: EventType>(payload: &T) -> Self {
        Emit {
            event: CloudEvent::with_payload("", payload),
            intent: Intent::Events,
            retain: false,
            qos: None,
            shared_response: false,
        }
    }

    /// An event built by hand (any `type`, any content type).
    pub fn raw(event: CloudEvent) -> Self {
        Emit {
            event: Ok(event),
            intent: Intent::Events,
            retain: false,
            qos: None,
            shared_response: false,
        }
    }

    /// Sets the `subject` (which also selects the topic level).
    #[must_use]
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        if let Ok(e) = &mut self.event {
            e.subject = Some(subject.into());
        }
        self
    }

    /// Sets the intent (topic suffix).
    #[must_use]
    pub fn intent(mut self, intent: Intent) -> Self {
        self.intent = intent;
        self
    }

    /// Publishes it retained.
    #[must_use]
    pub fn retain(mut self, retain: bool) -> Self {
        self.retain = retain;
        self
    }

    /// Overrides the QoS (default: the configured events QoS).
    #[must_use]
    pub fn qos(mut self, qos: u8) -> Self {
        self.qos = Some(qos.min(1));
        self
    }

    /// Asks the receiver to reply to the binding's
    /// [`shared_response_topic`](crate::TopicBinding::shared_response_topic)
    /// (which every replica receives) instead of not replying: for commands
    /// whose result any replica may process. Without such a topic on the
    /// binding nothing changes.
    #[must_use]
    pub fn shared_response(mut self) -> Self {
        self.shared_response = true;
        self
    }

    /// Encodes the payload as MessagePack instead of JSON.
    #[must_use]
    pub fn msgpack(mut self) -> Self {
        if let Ok(e) = &mut self.event {
            if let Some(Ok(v)) = e
                .data
                .as_ref()
                .map(|d| serde_json::from_slice::<serde_json::Value>(d))
            {
                if let Err(err) = e.set_data(ContentType::MsgPack, &v) {
                    self.event = Err(err);
                }
            }
        }
        self
    }

    /// Edits the underlying CloudEvent (extension attributes, custom metadata).
    #[must_use]
    pub fn map_event(mut self, f: impl FnOnce(&mut CloudEvent)) -> Self {
        if let Ok(e) = &mut self.event {
            f(e);
        }
        self
    }
}

/// The reply part of an [`Outcome`].
#[derive(Debug, Clone)]
pub(crate) struct ReplyBody {
    pub(crate) dataschema: Option<String>,
    pub(crate) data: Result<bytes::Bytes, String>,
}

/// The full result of handling one message.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub(crate) reply: Option<ReplyBody>,
    pub(crate) events: Vec<Emit>,
}

impl Outcome {
    /// No reply, no events.
    pub fn none() -> Self {
        Outcome::default()
    }

    /// A reply carrying `payload`; `type` is the request's, `dataschema`
    /// the payload's.
    pub fn reply<T: EventType>(payload: &T) -> Self {
        Outcome {
            reply: Some(ReplyBody {
                dataschema: Some(T::DATASCHEMA.to_owned()),
                data: ContentType::Json.encode(payload).map_err(|e| e.to_string()),
            }),
            events: Vec::new(),
        }
    }

    /// Adds an event to emit after the reply.
    #[must_use]
    pub fn emit(mut self, e: Emit) -> Self {
        self.events.push(e);
        self
    }
}

/// Anything a handler may return.
#[diagnostic::on_unimplemented(
    message = "a handler cannot return `{Self}`",
    label = "return `()`, a reply payload (an `EventType`), an `Outcome`, or a `Result` of one of these with an error convertible into `HandlerError`"
)]
pub trait IntoOutcome {
    /// Converts into the outcome or the error.
    ///
    /// # Errors
    /// The handler's error.
    fn into_outcome(self) -> Result<Outcome, HandlerError>;
}

impl IntoOutcome for () {
    fn into_outcome(self) -> Result<Outcome, HandlerError> {
        Ok(Outcome::none())
    }
}

impl IntoOutcome for Outcome {
    fn into_outcome(self) -> Result<Outcome, HandlerError> {
        Ok(self)
    }
}

impl<T: EventType> IntoOutcome for T {
    fn into_outcome(self) -> Result<Outcome, HandlerError> {
        Ok(Outcome::reply(&self))
    }
}

impl<T: IntoOutcome, E: Into<HandlerError>> IntoOutcome for Result<T, E> {
    fn into_outcome(self) -> Result<Outcome, HandlerError> {
        self.map_err(Into::into)?.into_outcome()
    }
}

impl From<crate::binding::port::TransportError> for HandlerError {
    fn from(e: crate::binding::port::TransportError) -> Self {
        use crate::binding::port::TransportError as T;
        match e {
            T::Timeout { .. } => HandlerError::terminal(ErrorKind::Timeout, e.to_string()),
            T::Invalid { .. } => HandlerError::terminal(ErrorKind::PropertyInvalid, e.to_string()),
            T::Closed(_) | T::Publish { .. } => {
                HandlerError::retryable(ErrorKind::CommunicationError, e.to_string())
            }
        }
    }
}
