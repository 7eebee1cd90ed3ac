//! Conversions between [`CloudEvent`] and the CloudEvents SDK's
//! [`cloudevents::Event`] (feature `cloudevents`), so a plant application
//! can hand the station's events to the SDK's other bindings (HTTP, Kafka,
//! NATS, …) and bring events from them back in.
//!
//! The mapping (wire contract §1, §6):
//!
//! | [`CloudEvent`] | [`cloudevents::Event`] |
//! | --- | --- |
//! | `id`, `source`, `type`, `subject`, `datacontenttype`, `time` | the same attributes |
//! | `dataschema` | `dataschema` when it is an absolute URL, else the string extension `mdcsdataschema` |
//! | `expiryinterval` | integer extension |
//! | `expirytime`, `recordedtime` | string extensions, RFC 3339 with microseconds |
//! | `correlationid` | string extension, its attribute text (a UUID, text, or `base64:…`) |
//! | `mdcserrorcontext` | string extension, its wire text (`k=v,k=v`, escaped) |
//! | other extension attributes of the contract | string extensions |
//! | `custom` metadata | one string extension per key that is a valid extension name (`[a-z0-9]{1,20}`) and names no attribute; the rest as a JSON object in the string extension `mdcscustom` |
//! | `data` | binary data |
//!
//! The SDK event is always CloudEvents 1.0 (the station writes nothing
//! else). Coming back, extension values may be strings, integers or
//! booleans (an SDK binding such as HTTP binary mode returns every
//! extension as a string): typed attributes are parsed back, so a
//! `CloudEvent` survives `CloudEvent → Event → HTTP → Event → CloudEvent`
//! unchanged.
//!
//! # Example
//!
//! (The same as in the README's "Using the CloudEvents SDK".)
//!
//! ```
//! use cloudevents::AttributesReader;
//! use microdcs::CloudEvent;
//!
//! let mut e = CloudEvent::new("com.example.part.done.v1", "station-1");
//! e.subject = Some("line-1".into());
//! e.expiryinterval = Some(60);
//! e.custom.insert("shift".into(), "B".into());
//! let sdk: cloudevents::Event = e.clone().into();
//! assert_eq!(sdk.subject(), Some("line-1"));
//! assert_eq!(sdk.extension("shift").map(|v| v.to_string()).as_deref(), Some("B"));
//! let back = CloudEvent::try_from(sdk)?; // Err names the event and the attribute
//! assert_eq!(back, e);
//! # Ok::<_, microdcs::envelope::sdk::SdkConversionError>(())
//! ```

use super::event::{decode_context, encode_context};
use super::{format_time, is_attribute_name, AttributeError, CloudEvent, CorrelationId};
use bytes::Bytes;
use cloudevents::event::{Data, ExtensionValue};
use cloudevents::{AttributesReader, AttributesWriter, Event};
use std::collections::BTreeMap;

/// Extension carrying a `dataschema` that is not an absolute URL (the SDK
/// types `dataschema` as a URL).
pub const DATASCHEMA_EXTENSION: &str = "mdcsdataschema";
/// Extension carrying the custom metadata whose keys cannot be extension
/// names of their own, as a JSON object of strings.
pub const CUSTOM_EXTENSION: &str = "mdcscustom";

/// Why an SDK [`Event`] could not become a [`CloudEvent`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SdkConversionError {
    /// An extension attribute of the wire contract with a value that does
    /// not parse (a time that is not RFC 3339, an interval that is not a
    /// number of seconds).
    #[error("CloudEvents SDK event '{id}': {source}")]
    Attribute {
        /// The event's `id`.
        id: String,
        /// What was wrong.
        source: AttributeError,
    },
    /// The `mdcscustom` extension is not a JSON object of strings.
    #[error("CloudEvents SDK event '{id}': extension 'mdcscustom' is not a JSON object of strings: {reason}")]
    Custom {
        /// The event's `id`.
        id: String,
        /// What the JSON parser said.
        reason: String,
    },
    /// JSON data that could not be serialised back to bytes.
    #[error("CloudEvents SDK event '{id}': its JSON data cannot be encoded: {reason}")]
    Data {
        /// The event's `id`.
        id: String,
        /// What the serialiser said.
        reason: String,
    },
}

/// Whether `name` can be an extension attribute of its own: CloudEvents
/// names are lower-case letters and digits, at most 20 of them; a name of
/// the wire contract or one of this module's carriers is not free.
fn free_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !is_attribute_name(name)
        && name != DATASCHEMA_EXTENSION
        && name != CUSTOM_EXTENSION
}

impl From<CloudEvent> for Event {
    fn from(e: CloudEvent) -> Self {
        let mut out = Event::default();
        out.set_id(e.id);
        out.set_source(e.source);
        out.set_type(e.ty);
        out.set_subject(e.subject);
        out.set_time(e.time);
        match e.dataschema {
            Some(s) => match url::Url::parse(&s) {
                // Only when the URL reads back as the same text: the SDK
                // writes the normalised form.
                Ok(u) if u.as_str() == s => {
                    out.set_dataschema(Some(u));
                }
                _ => out.set_extension(DATASCHEMA_EXTENSION, s),
            },
            None => {
                out.set_dataschema(None as Option<url::Url>);
            }
        }
        let mut text = |name: &str, v: Option<String>| {
            if let Some(v) = v {
                out.set_extension(name, v);
            }
        };
        text("traceparent", e.traceparent);
        text("tracestate", e.tracestate);
        text("expirytime", e.expirytime.as_ref().map(format_time));
        text("recordedtime", e.recordedtime.as_ref().map(format_time));
        text(
            "correlationid",
            e.correlationid.as_ref().map(|c| c.as_str().to_owned()),
        );
        text("causationid", e.causationid);
        text("mdcserrorkind", e.mdcserrorkind);
        text("mdcserrormessage", e.mdcserrormessage);
        text("method", e.method);
        if !e.mdcserrorcontext.is_empty() {
            text(
                "mdcserrorcontext",
                Some(encode_context(&e.mdcserrorcontext)),
            );
        }
        if let Some(v) = e.expiryinterval {
            out.set_extension("expiryinterval", i64::from(v));
        }
        let mut packed = BTreeMap::new();
        for (k, v) in e.custom {
            if free_extension_name(&k) {
                out.set_extension(&k, v);
            } else {
                packed.insert(k, v);
            }
        }
        if !packed.is_empty() {
            // A map of strings always serialises.
            if let Ok(json) = serde_json::to_string(&packed) {
                out.set_extension(CUSTOM_EXTENSION, json);
            }
        }
        // `set_data_unchecked` keeps `datacontenttype` as it is (also
        // absent); `set_data` would require one.
        out.set_datacontenttype(e.datacontenttype);
        if let Some(d) = e.data {
            out.set_data_unchecked(Data::Binary(d.to_vec()));
        }
        out
    }
}

impl TryFrom<Event> for CloudEvent {
    type Error = SdkConversionError;

    /// # Errors
    /// A typed extension attribute does not parse, or `mdcscustom` is not a
    /// JSON object of strings; the error names the event and the attribute.
    fn try_from(mut ev: Event) -> Result<Self, Self::Error> {
        let id = ev.id().to_owned();
        let mut e = CloudEvent::new(ev.ty(), ev.source().as_str());
        e.id.clone_from(&id);
        e.specversion = ev.specversion().to_string();
        e.subject = ev.subject().map(str::to_owned);
        e.time = ev.time().copied();
        e.datacontenttype = ev.datacontenttype().map(str::to_owned);
        e.dataschema = ev.dataschema().map(|u| u.as_str().to_owned());
        let attr = |source| SdkConversionError::Attribute {
            id: id.clone(),
            source,
        };
        for (name, value) in ev.iter_extensions() {
            let text = match value {
                ExtensionValue::String(s) => s.clone(),
                other => other.to_string(),
            };
            match name {
                DATASCHEMA_EXTENSION => e.dataschema = Some(text),
                CUSTOM_EXTENSION => {
                    let packed: BTreeMap<String, String> =
                        serde_json::from_str(&text).map_err(|err| SdkConversionError::Custom {
                            id: id.clone(),
                            reason: err.to_string(),
                        })?;
                    e.custom.extend(packed);
                }
                // Kept as the exact text (`set_attribute` would re-render
                // bytes that only look like a UUID differently).
                "correlationid" => e.correlationid = Some(CorrelationId::from_text(text)),
                "mdcserrorcontext" => e.mdcserrorcontext = decode_context(&text),
                n if is_attribute_name(n) => e.set_attribute(n, &text).map_err(attr)?,
                n => {
                    e.custom.insert(n.to_owned(), text);
                }
            }
        }
        e.data = match ev.take_data().2 {
            None => None,
            Some(Data::Binary(b)) => Some(Bytes::from(b)),
            Some(Data::String(s)) => Some(Bytes::from(s.into_bytes())),
            Some(Data::Json(v)) => Some(Bytes::from(serde_json::to_vec(&v).map_err(|err| {
                SdkConversionError::Data {
                    id: id.clone(),
                    reason: err.to_string(),
                }
            })?)),
        };
        Ok(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, TimeZone, Utc};
    use cloudevents::binding::http::{builder::Builder, Serializer};
    use cloudevents::message::BinaryDeserializer;
    use proptest::prelude::*;

    /// Builds an `http::Request` through the SDK's binary-mode HTTP
    /// binding (what the webhook sink does).
    struct RequestBuilder(Option<http::request::Builder>);

    impl Builder<http::Request<Vec<u8>>> for RequestBuilder {
        fn header(&mut self, key: &str, value: http::HeaderValue) {
            self.0 = self.0.take().map(|b| b.header(key, value));
        }
        fn body(&mut self, bytes: Vec<u8>) -> cloudevents::message::Result<http::Request<Vec<u8>>> {
            self.0
                .take()
                .unwrap()
                .body(bytes)
                .map_err(|e| cloudevents::message::Error::Other {
                    source: Box::new(e),
                })
        }
        fn finish(&mut self) -> cloudevents::message::Result<http::Request<Vec<u8>>> {
            self.body(Vec::new())
        }
    }

    fn through_http(ev: Event) -> Event {
        let req = BinaryDeserializer::deserialize_binary(
            ev,
            Serializer::new(RequestBuilder(Some(http::Request::post("http://x/")))),
        )
        .unwrap();
        let (parts, body) = req.into_parts();
        cloudevents::binding::http::to_event(&parts.headers, body).unwrap()
    }

    /// Header-safe text (visible ASCII and inner spaces), as the HTTP
    /// binding carries it; correlation bytes below are ASCII for the same
    /// reason (the SDK reads no header that is not; the webhook sink
    /// percent-encodes such values as the HTTP binding spec asks).
    const TEXT: &str = "[!-~]([ -~]{0,10}[!-~])?";

    fn time() -> impl Strategy<Value = DateTime<Utc>> {
        (0i64..4_000_000_000, 0u32..1_000_000)
            .prop_map(|(s, us)| Utc.timestamp_opt(s, us * 1000).single().unwrap())
    }

    prop_compose! {
        /// Correlation bytes up to `high` (`0x7f` for the HTTP binding).
        fn event(high: u8)(
            id in TEXT, source in TEXT, ty in TEXT,
            subject in proptest::option::of(TEXT),
            datacontenttype in proptest::option::of(prop_oneof![Just("application/json".to_owned()), Just("application/msgpack".to_owned())]),
            dataschema in proptest::option::of(prop_oneof![
                "https://example\\.com/[a-z]{1,8}/v[0-9]\\.json".prop_map(|s| s),
                TEXT.prop_map(|s| s),
            ]),
            t in proptest::option::of(time()),
            expirytime in proptest::option::of(time()),
            recordedtime in proptest::option::of(time()),
            expiryinterval in proptest::option::of(any::<u32>()),
            corr in proptest::option::of(proptest::collection::vec(0u8..=high, 1..20)),
            texts in proptest::collection::vec(proptest::option::of(TEXT), 7),
            ctx in proptest::collection::vec(("[a-zA-Z0-9,=%_.-]{0,6}", "[a-zA-Z0-9,=%_.-]{0,6}"), 0..3),
            custom in proptest::collection::btree_map(
                prop_oneof!["[a-z0-9]{1,8}".prop_map(|s| s), "[A-Za-z_-]{1,8}".prop_map(|s| s), Just("id".to_owned())],
                TEXT, 0..4),
            data in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..40)),
        ) -> CloudEvent {
            let mut e = CloudEvent::new(ty, source);
            e.id = id;
            e.subject = subject;
            e.datacontenttype = datacontenttype;
            e.dataschema = dataschema;
            e.time = t;
            e.expirytime = expirytime;
            e.recordedtime = recordedtime;
            e.expiryinterval = expiryinterval;
            e.correlationid = corr.map(|b| CorrelationId::from_bytes(Bytes::from(b)));
            let mut t = texts.into_iter();
            e.traceparent = t.next().flatten();
            e.tracestate = t.next().flatten();
            e.causationid = t.next().flatten();
            e.mdcserrorkind = t.next().flatten();
            e.mdcserrormessage = t.next().flatten();
            e.method = t.next().flatten();
            // An empty pair list is how "no context" reads back.
            e.mdcserrorcontext = ctx.into_iter().filter(|(k, v)| !(k.is_empty() && v.is_empty())).collect();
            e.custom = custom;
            e.data = data.map(Bytes::from);
            e
        }
    }

    proptest! {
        #[test]
        fn cloud_event_survives_the_sdk_event(e in event(0xff)) {
            let sdk: Event = e.clone().into();
            prop_assert_eq!(CloudEvent::try_from(sdk).unwrap(), e);
        }

        #[test]
        fn cloud_event_survives_the_sdk_http_binary_binding(e in event(0x7f)) {
            let sdk: Event = e.clone().into();
            let back = through_http(sdk);
            prop_assert_eq!(CloudEvent::try_from(back).unwrap(), e);
        }

        #[test]
        fn sdk_event_survives_the_cloud_event(
            id in TEXT, ty in TEXT, n in any::<i64>(), flag in any::<bool>(),
            ext in "[a-z]{1,8}x", text in TEXT,
        ) {
            let mut ev = Event::default();
            ev.set_id(id);
            ev.set_type(ty);
            ev.set_source("urn:test");
            ev.set_time(Some(Utc.timestamp_opt(1_700_000_000, 5000).single().unwrap()));
            ev.set_extension(&ext, text);
            ev.set_data("application/json", Data::Binary(br#"{"a":1}"#.to_vec()));
            ev.set_extension("expiryinterval", (n as u32) as i64);
            let e = CloudEvent::try_from(ev.clone()).unwrap();
            prop_assert_eq!(e.expiryinterval, Some(n as u32));
            let again: Event = e.into();
            prop_assert_eq!(again, ev.clone());
            // Booleans and integers of unknown extensions come back as their
            // text (the custom metadata are strings).
            let mut typed = ev;
            typed.set_extension("flag", flag);
            let e = CloudEvent::try_from(typed).unwrap();
            prop_assert_eq!(e.custom.get("flag").cloned(), Some(flag.to_string()));
        }
    }

    #[test]
    fn a_bad_typed_extension_is_named() {
        let mut ev = Event::default();
        ev.set_id("e-1");
        ev.set_extension("expirytime", "soon");
        let err = CloudEvent::try_from(ev).unwrap_err().to_string();
        assert!(err.contains("e-1") && err.contains("expirytime"), "{err}");
        let mut ev = Event::default();
        ev.set_extension(CUSTOM_EXTENSION, "[1]");
        let err = CloudEvent::try_from(ev).unwrap_err().to_string();
        assert!(err.contains("mdcscustom"), "{err}");
    }

    #[test]
    fn json_data_from_an_sdk_event_becomes_bytes() {
        let mut ev = Event::default();
        ev.set_data("application/json", serde_json::json!({"JobOrderID": "j1"}));
        let e = CloudEvent::try_from(ev).unwrap();
        let v: serde_json::Value = e.data_as().unwrap();
        assert_eq!(v["JobOrderID"], "j1");
    }
}
