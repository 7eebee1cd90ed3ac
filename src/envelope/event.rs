//! The CloudEvent value type.

use super::codec::{ContentType, DecodeError};
use super::correlation::CorrelationId;
use super::event_type::EventType;
use super::time::{format_time, parse_time};
use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use std::collections::BTreeMap;

/// Attribute names recognised by the wire contract (bare, no `ce_` prefix).
/// A user property with one of these names is that attribute; any other is
/// custom metadata.
pub const ATTRIBUTE_NAMES: [&str; 19] = [
    "id",
    "source",
    "specversion",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "traceparent",
    "tracestate",
    "expirytime",
    "expiryinterval",
    "recordedtime",
    "correlationid",
    "causationid",
    "mdcserrorkind",
    "mdcserrormessage",
    "mdcserrorcontext",
    "method",
];

/// Whether `name` is a CloudEvent attribute of the wire contract.
pub fn is_attribute_name(name: &str) -> bool {
    ATTRIBUTE_NAMES.contains(&name)
}

/// A CloudEvent 1.0 with the wire contract's extension attributes.
///
/// `data` holds the encoded payload bytes together with `datacontenttype`;
/// [`CloudEvent::data_as`] decodes them and [`CloudEvent::with_payload`]
/// encodes a typed payload and sets `type`/`dataschema` from its
/// [`EventType`].
#[derive(Debug, Clone, PartialEq)]
pub struct CloudEvent {
    /// `id`: unique per `source`.
    pub id: String,
    /// `source`: who produced the event.
    pub source: String,
    /// `specversion`: always `1.0` on output.
    pub specversion: String,
    /// `type`: what happened / which command; dispatch key.
    pub ty: String,
    /// `datacontenttype`.
    pub datacontenttype: Option<String>,
    /// `dataschema`: URI of the payload schema.
    pub dataschema: Option<String>,
    /// `subject`: the scope (and more) the event is about.
    pub subject: Option<String>,
    /// `time`: when it happened.
    pub time: Option<DateTime<Utc>>,
    /// W3C trace context `traceparent`.
    pub traceparent: Option<String>,
    /// W3C trace context `tracestate`.
    pub tracestate: Option<String>,
    /// `expirytime`: after this instant the event must not be acted on.
    pub expirytime: Option<DateTime<Utc>>,
    /// `expiryinterval`: seconds the event stays valid (MQTT Message Expiry Interval).
    pub expiryinterval: Option<u32>,
    /// `recordedtime`: when the event was recorded.
    pub recordedtime: Option<DateTime<Utc>>,
    /// `correlationid`: ties requests, replies and follow-up events together.
    pub correlationid: Option<CorrelationId>,
    /// `causationid`: the `id` of the event that caused this one.
    pub causationid: Option<String>,
    /// `mdcserrorkind`: set on error replies.
    pub mdcserrorkind: Option<String>,
    /// `mdcserrormessage`: human-readable error text.
    pub mdcserrormessage: Option<String>,
    /// `mdcserrorcontext`: key/value error context (`k=v,k=v` on the wire).
    pub mdcserrorcontext: Vec<(String, String)>,
    /// `method`: `PUT` (default) or `DELETE` for configuration events.
    pub method: Option<String>,
    /// Custom metadata: every user property that is not an attribute. A key
    /// that names an attribute is never written from here.
    pub custom: BTreeMap<String, String>,
    /// The encoded payload.
    pub data: Option<Bytes>,
}

impl CloudEvent {
    /// A new event with a random UUID `id`, the current `time` and
    /// `specversion` 1.0.
    pub fn new(ty: impl Into<String>, source: impl Into<String>) -> Self {
        CloudEvent {
            id: uuid::Uuid::new_v4().to_string(),
            source: source.into(),
            specversion: "1.0".into(),
            ty: ty.into(),
            datacontenttype: None,
            dataschema: None,
            subject: None,
            // Microseconds: what the wire format carries, so an event
            // equals itself after a round trip.
            time: Some(Utc::now().trunc_subsecs(6)),
            traceparent: None,
            tracestate: None,
            expirytime: None,
            expiryinterval: None,
            recordedtime: None,
            correlationid: None,
            causationid: None,
            mdcserrorkind: None,
            mdcserrormessage: None,
            mdcserrorcontext: Vec::new(),
            method: None,
            custom: BTreeMap::new(),
            data: None,
        }
    }

    /// A new event carrying a typed payload encoded as JSON, with `type` and
    /// `dataschema` taken from the payload's [`EventType`].
    ///
    /// # Errors
    /// The payload cannot be serialised.
    pub fn with_payload<T: EventType>(
        source: impl Into<String>,
        payload: &T,
    ) -> Result<Self, String> {
        let mut e = CloudEvent::new(T::TYPE, source);
        e.dataschema = Some(T::DATASCHEMA.to_owned());
        e.set_data(ContentType::Json, payload)?;
        Ok(e)
    }

    /// Encodes `payload` with `ct` and sets `data` and `datacontenttype`.
    ///
    /// # Errors
    /// The payload cannot be serialised.
    pub fn set_data<T: serde::Serialize + ?Sized>(
        &mut self,
        ct: ContentType,
        payload: &T,
    ) -> Result<(), String> {
        self.data = Some(ct.encode(payload).map_err(|e| e.to_string())?);
        self.datacontenttype = Some(ct.header().to_owned());
        Ok(())
    }

    /// The content type of `data` (JSON when absent, as for replies).
    ///
    /// # Errors
    /// The declared content type is not supported.
    pub fn content_type(&self) -> Result<ContentType, DecodeError> {
        match &self.datacontenttype {
            None => Ok(ContentType::Json),
            Some(v) => ContentType::parse(v),
        }
    }

    /// Decodes `data` as `T` according to `datacontenttype`.
    ///
    /// # Errors
    /// Unsupported content type, no data, or bytes that do not decode as `T`.
    pub fn data_as<T: serde::de::DeserializeOwned>(&self) -> Result<T, DecodeError> {
        let ct = self.content_type()?;
        match &self.data {
            Some(b) if !b.is_empty() => ct.decode(b),
            _ => Err(DecodeError::Empty),
        }
    }

    /// The scope: the part of `subject` before the first `/`.
    pub fn scope(&self) -> Option<&str> {
        self.subject
            .as_deref()
            .map(|s| s.split('/').next().unwrap_or(s))
            .filter(|s| !s.is_empty())
    }

    /// Whether `expirytime` has passed at `now`.
    pub fn is_expired(&self, now: DateTime<Utc>) -> bool {
        self.expirytime.is_some_and(|t| t <= now)
    }

    /// Every non-null attribute as wire text, in [`ATTRIBUTE_NAMES`] order.
    pub fn attributes(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::with_capacity(12);
        let mut put = |k: &'static str, v: Option<String>| {
            if let Some(v) = v {
                out.push((k, v));
            }
        };
        put("id", Some(self.id.clone()));
        put("source", Some(self.source.clone()));
        put("specversion", Some(self.specversion.clone()));
        put("type", Some(self.ty.clone()));
        put("datacontenttype", self.datacontenttype.clone());
        put("dataschema", self.dataschema.clone());
        put("subject", self.subject.clone());
        put("time", self.time.as_ref().map(format_time));
        put("traceparent", self.traceparent.clone());
        put("tracestate", self.tracestate.clone());
        put("expirytime", self.expirytime.as_ref().map(format_time));
        put("expiryinterval", self.expiryinterval.map(|v| v.to_string()));
        put("recordedtime", self.recordedtime.as_ref().map(format_time));
        put(
            "correlationid",
            self.correlationid.as_ref().map(|c| c.as_str().to_owned()),
        );
        put("causationid", self.causationid.clone());
        put("mdcserrorkind", self.mdcserrorkind.clone());
        put("mdcserrormessage", self.mdcserrormessage.clone());
        if !self.mdcserrorcontext.is_empty() {
            put(
                "mdcserrorcontext",
                Some(encode_context(&self.mdcserrorcontext)),
            );
        }
        put("method", self.method.clone());
        out
    }

    /// Sets one attribute from its wire text.
    ///
    /// # Errors
    /// `name` is not an attribute, or the value does not parse (a time that is
    /// not RFC 3339, an interval that is not a number); the message names both.
    pub fn set_attribute(&mut self, name: &str, value: &str) -> Result<(), AttributeError> {
        let time = |v: &str| {
            parse_time(v).map_err(|reason| AttributeError::InvalidTime {
                name: name.to_owned(),
                reason,
            })
        };
        let v = value.to_owned();
        match name {
            "id" => self.id = v,
            "source" => self.source = v,
            "specversion" => self.specversion = v,
            "type" => self.ty = v,
            "datacontenttype" => self.datacontenttype = Some(v),
            "dataschema" => self.dataschema = Some(v),
            "subject" => self.subject = Some(v),
            "time" => self.time = Some(time(value)?),
            "traceparent" => self.traceparent = Some(v),
            "tracestate" => self.tracestate = Some(v),
            "expirytime" => self.expirytime = Some(time(value)?),
            "expiryinterval" => {
                self.expiryinterval =
                    Some(
                        value
                            .trim()
                            .parse()
                            .map_err(|_| AttributeError::InvalidInterval {
                                value: value.to_owned(),
                            })?,
                    );
            }
            "recordedtime" => self.recordedtime = Some(time(value)?),
            "correlationid" => self.correlationid = Some(CorrelationId::from_text(v)),
            "causationid" => self.causationid = Some(v),
            "mdcserrorkind" => self.mdcserrorkind = Some(v),
            "mdcserrormessage" => self.mdcserrormessage = Some(v),
            "mdcserrorcontext" => self.mdcserrorcontext = decode_context(value),
            "method" => self.method = Some(v),
            _ => {
                return Err(AttributeError::Unknown {
                    name: name.to_owned(),
                })
            }
        }
        Ok(())
    }
}

/// `k=v,k=v`, with `%`, `,` and `=` percent-escaped so any text survives.
/// Why [`CloudEvent::set_attribute`] refused a value; the message names the
/// attribute.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AttributeError {
    /// The name is not a CloudEvent attribute.
    #[error("'{name}' is not a CloudEvent attribute")]
    Unknown {
        /// The name given.
        name: String,
    },
    /// A time attribute that is not RFC 3339.
    #[error("attribute '{name}': {reason}")]
    InvalidTime {
        /// The attribute.
        name: String,
        /// What the time parser said.
        reason: String,
    },
    /// `expiryinterval` that is not a number of seconds.
    #[error("attribute 'expiryinterval': '{value}' is not a number of seconds")]
    InvalidInterval {
        /// The text given.
        value: String,
    },
}

pub(super) fn encode_context(ctx: &[(String, String)]) -> String {
    fn esc(s: &str) -> String {
        s.replace('%', "%25")
            .replace(',', "%2C")
            .replace('=', "%3D")
    }
    ctx.iter()
        .map(|(k, v)| format!("{}={}", esc(k), esc(v)))
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn decode_context(s: &str) -> Vec<(String, String)> {
    fn unesc(s: &str) -> String {
        s.replace("%2C", ",")
            .replace("%3D", "=")
            .replace("%25", "%")
    }
    s.split(',')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (unesc(k.trim()), unesc(v.trim())),
            None => (unesc(p.trim()), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_round_trip_through_wire_text() {
        let mut e = CloudEvent::new("t.v1", "src");
        e.subject = Some("machine-42/part".into());
        e.expiryinterval = Some(30);
        e.correlationid = Some(CorrelationId::new_uuid());
        e.mdcserrorcontext = vec![("job".into(), "J,1".into()), ("a=b".into(), "%".into())];
        let mut back = CloudEvent::new("", "");
        back.time = None;
        for (k, v) in e.attributes() {
            back.set_attribute(k, &v).unwrap();
        }
        assert_eq!(back, e);
        assert_eq!(e.scope(), Some("machine-42"));
    }

    #[test]
    fn bad_attribute_values_are_named() {
        let mut e = CloudEvent::new("t", "s");
        let err = e.set_attribute("time", "noon").unwrap_err().to_string();
        assert!(err.contains("time"), "{err}");
        let err = e.set_attribute("expiryinterval", "-1").unwrap_err();
        assert_eq!(
            err.to_string(),
            "attribute 'expiryinterval': '-1' is not a number of seconds"
        );
        assert_eq!(
            e.set_attribute("x-custom", "1").unwrap_err().to_string(),
            "'x-custom' is not a CloudEvent attribute"
        );
        assert!(e.set_attribute("x-custom", "1").is_err());
    }
}
