//! CloudEvents over MQTT v5, binary content mode (structured mode accepted on
//! input).
//!
//! Incoming: the payload is `data`; the Content Type property is
//! `datacontenttype`; Message Expiry Interval is `expiryinterval`; Correlation
//! Data is `correlationid` (any bytes, kept verbatim for the reply); a User
//! Property named like an attribute is that attribute and overrides the MQTT
//! property it duplicates; every other User Property is custom metadata.
//! Outgoing: every attribute is a User Property, plus the MQTT properties that
//! duplicate them.

use crate::envelope::{
    check_mqtt_string, check_topic_level, is_attribute_name, CloudEvent, ContentType,
    CorrelationId, TextError,
};
use crate::error::ErrorKind;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde_json::Value;

/// Content type of a structured-mode message.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";

/// Where the reply to a request goes: the request's Response Topic and its
/// Correlation Data, byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    /// The Response Topic of the request.
    pub topic: String,
    /// The Correlation Data of the request, echoed unchanged.
    pub correlation_data: Option<Bytes>,
}

/// A decoded incoming message.
#[derive(Debug, Clone)]
pub struct Inbound {
    /// The topic it arrived on.
    pub topic: String,
    /// The event.
    pub event: CloudEvent,
    /// Where to reply, if the sender asked for a reply.
    pub reply_to: Option<ReplyTo>,
}

/// A message that could not be turned into a CloudEvent. It still knows
/// where a reply would go and whatever attributes could be read, so the
/// sender gets an error reply that it can correlate.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// The wire error kind.
    pub kind: ErrorKind,
    /// What is wrong, naming the property or attribute.
    pub message: String,
    /// The attributes that could be read (may be incomplete).
    pub partial: CloudEvent,
    /// Where the error reply goes.
    pub reply_to: Option<ReplyTo>,
}

/// Decodes one MQTT v5 PUBLISH into a CloudEvent.
///
/// # Errors
/// A [`Rejected`] describing the first problem: unsupported content type,
/// missing `type`/`id`/`source`/`specversion`, an unsupported `specversion`,
/// an attribute that does not parse, or a structured-mode body that is not a
/// CloudEvent JSON object.
pub fn decode(
    topic: &str,
    payload: Bytes,
    props: Option<&PublishProperties>,
) -> Result<Inbound, Box<Rejected>> {
    let mut event = CloudEvent::new("", "");
    event.id.clear();
    event.specversion.clear();
    event.time = None;
    // A Response Topic the station could never publish to is no address:
    // the message is rejected below, without an error reply.
    let bad_response_topic = props
        .and_then(|p| p.response_topic.as_deref())
        .and_then(|t| check_topic_name("Response Topic", t).err());
    let reply_to = props.and_then(|p| {
        p.response_topic
            .as_ref()
            .filter(|t| !t.is_empty() && bad_response_topic.is_none())
            .map(|t| ReplyTo {
                topic: t.clone(),
                correlation_data: p.correlation_data.clone(),
            })
    });
    let reject = |kind, message: String, partial: &CloudEvent| {
        Box::new(Rejected {
            kind,
            message,
            partial: partial.clone(),
            reply_to: reply_to.clone(),
        })
    };

    // MQTT properties first; user properties named like attributes override.
    if let Some(p) = props {
        event.datacontenttype = p.content_type.clone();
        event.expiryinterval = p.message_expiry_interval;
        event.correlationid = p.correlation_data.clone().map(CorrelationId::from_bytes);
    }
    let mut bad_attribute = None;
    if let Some(p) = props {
        for (k, v) in &p.user_properties {
            // Brokers check this already (Mosquitto does); one that does
            // not must not make us echo a string that ends our connection.
            if let Err(e) = check_mqtt_string("user property name", k).and_then(|()| {
                check_mqtt_string(&format!("user property '{}'", k.escape_debug()), v)
            }) {
                bad_attribute.get_or_insert(e.to_string());
                continue;
            }
            if is_attribute_name(k) {
                if let Err(e) = event.set_attribute(k, v) {
                    bad_attribute.get_or_insert(e.to_string());
                }
            } else {
                event.custom.insert(k.clone(), v.clone());
            }
        }
    }
    if let Some(e) = bad_attribute {
        return Err(reject(ErrorKind::UserPropertyInvalid, e, &event));
    }
    if let Some(e) = bad_response_topic {
        return Err(reject(ErrorKind::PropertyInvalid, e.to_string(), &event));
    }
    if let Some(e) = props
        .and_then(|p| p.content_type.as_deref())
        .and_then(|ct| check_mqtt_string("Content Type", ct).err())
    {
        event.datacontenttype = None;
        return Err(reject(ErrorKind::PropertyInvalid, e.to_string(), &event));
    }

    let structured = event.datacontenttype.as_deref().is_some_and(|ct| {
        ct.split(';')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case(STRUCTURED_CONTENT_TYPE)
    });
    if structured {
        event.datacontenttype = None;
        if let Err(m) = read_structured(&mut event, &payload) {
            return Err(reject(ErrorKind::PayloadInvalid, m, &event));
        }
    } else {
        event.data = if payload.is_empty() {
            None
        } else {
            Some(payload)
        };
    }

    for (name, value) in [
        ("type", &event.ty),
        ("id", &event.id),
        ("source", &event.source),
        ("specversion", &event.specversion),
    ] {
        if value.is_empty() {
            return Err(reject(
                ErrorKind::MissingUserProperty,
                format!("required CloudEvent attribute '{name}' is missing"),
                &event,
            ));
        }
    }
    if let Err(e) = check_subject(&event) {
        return Err(reject(ErrorKind::PropertyInvalid, e.to_string(), &event));
    }
    if event.specversion != "1.0" {
        return Err(reject(
            ErrorKind::UnsupportedVersion,
            format!(
                "specversion '{}' is not supported (only 1.0)",
                event.specversion
            ),
            &event,
        ));
    }
    if event.datacontenttype.is_some() {
        if let Err(e) = event.content_type() {
            return Err(reject(
                ErrorKind::UnsupportedContentType,
                e.to_string(),
                &event,
            ));
        }
    }
    Ok(Inbound {
        topic: topic.to_owned(),
        event,
        reply_to,
    })
}

fn read_structured(event: &mut CloudEvent, payload: &[u8]) -> Result<(), String> {
    let v: Value = serde_json::from_slice(payload)
        .map_err(|e| format!("structured-mode body is not JSON: {e}"))?;
    let Value::Object(map) = v else {
        return Err("structured-mode body is not a JSON object".into());
    };
    for (k, v) in map {
        match k.as_str() {
            "data" => {
                let ct = event.content_type().map_err(|e| e.to_string())?;
                event.data = Some(match (&v, ct) {
                    (Value::String(s), ContentType::OctetStream) => {
                        Bytes::from(s.clone().into_bytes())
                    }
                    _ => ct.encode(&v).map_err(|e| e.to_string())?,
                });
            }
            "data_base64" => {
                let s = v.as_str().ok_or("'data_base64' is not a string")?;
                event.data = Some(Bytes::from(
                    decode_base64(s).ok_or("'data_base64' is not valid base64")?,
                ));
            }
            _ => {
                let text = match v {
                    Value::String(s) => s,
                    Value::Null => continue,
                    other => other.to_string(),
                };
                check_mqtt_string(&format!("member '{}'", k.escape_debug()), &text)
                    .and_then(|()| check_mqtt_string("member name", &k))
                    .map_err(|e| e.to_string())?;
                if is_attribute_name(&k) {
                    event.set_attribute(&k, &text).map_err(|e| e.to_string())?;
                } else {
                    event.custom.insert(k, text);
                }
            }
        }
    }
    Ok(())
}

fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let compact: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(compact).ok()
}

/// Checks the scope of an event's `subject` (the part before the first
/// `/`): it becomes a topic level of status events and retained topics, so
/// it must be one (wire contract §8).
///
/// # Errors
/// The scope is empty or contains `+`, `#`, U+0000 or a control character.
pub fn check_subject(event: &CloudEvent) -> Result<(), TextError> {
    let Some(subject) = event.subject.as_deref() else {
        return Ok(());
    };
    let scope = subject.split('/').next().unwrap_or(subject);
    check_topic_level("subject", scope)
}

/// Checks a topic name the station would publish to: not empty, a valid
/// MQTT string, no wildcard.
///
/// # Errors
/// The first problem found.
pub fn check_topic_name(what: &str, topic: &str) -> Result<(), TextError> {
    if topic.is_empty() {
        return Err(TextError::Empty {
            what: what.to_owned(),
        });
    }
    check_mqtt_string(what, topic)?;
    match topic.chars().find(|c| matches!(c, '+' | '#')) {
        None => Ok(()),
        Some(ch) => Err(TextError::Wildcard {
            what: what.to_owned(),
            text: topic.to_owned(),
            ch,
        }),
    }
}

/// An encoded outgoing message: payload and properties.
#[derive(Debug, Clone)]
pub struct Outbound {
    /// The payload (`data`, or empty).
    pub payload: Bytes,
    /// The MQTT v5 properties.
    pub properties: PublishProperties,
}

/// Encodes a CloudEvent in binary content mode.
///
/// `correlation_data` overrides the Correlation Data derived from
/// `correlationid` (used for replies, which echo the request's bytes).
pub fn encode(event: &CloudEvent, correlation_data: Option<Bytes>) -> Outbound {
    let mut props = PublishProperties::default();
    let mut user = Vec::with_capacity(16);
    for (k, v) in event.attributes() {
        user.push((k.to_owned(), v));
    }
    // Custom metadata never shadows an attribute: no injection.
    for (k, v) in &event.custom {
        if !is_attribute_name(k) {
            user.push((k.clone(), v.clone()));
        }
    }
    props.user_properties = user;
    let ct = event.datacontenttype.clone();
    props.payload_format_indicator = Some(match ct.as_deref().map(ContentType::parse) {
        Some(Ok(ContentType::Json)) => 1,
        Some(Ok(ContentType::MsgPack)) => 1,
        _ => 0,
    });
    props.content_type = ct;
    props.correlation_data =
        correlation_data.or_else(|| event.correlationid.as_ref().map(|c| c.as_bytes().clone()));
    props.message_expiry_interval = event.expiryinterval;
    Outbound {
        payload: event.data.clone().unwrap_or_default(),
        properties: props,
    }
}

/// Checks a PUBLISH the station is about to send against MQTT v5's string
/// and topic rules (§1.5.4, §4.7): the topic name, every user property, the
/// Content Type and the Response Topic. The last line of defence: values
/// are checked where they enter, but a packet that slipped through must
/// fail on its own instead of ending the connection for everyone.
///
/// # Errors
/// The first string that MQTT does not allow, named.
pub fn check_outbound(topic: &str, properties: &PublishProperties) -> Result<(), TextError> {
    check_topic_name("topic", topic)?;
    for (k, v) in &properties.user_properties {
        check_mqtt_string("user property name", k)?;
        check_mqtt_string(&format!("user property '{k}'"), v)?;
    }
    if let Some(ct) = &properties.content_type {
        check_mqtt_string("Content Type", ct)?;
    }
    if let Some(rt) = &properties.response_topic {
        check_topic_name("Response Topic", rt)?;
    }
    if let Some(cd) = &properties.correlation_data {
        if cd.len() > crate::envelope::MAX_MQTT_STRING {
            return Err(TextError::TooLong {
                what: "Correlation Data".into(),
                len: cd.len(),
                max: crate::envelope::MAX_MQTT_STRING,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(user: &[(&str, &str)]) -> PublishProperties {
        PublishProperties {
            user_properties: user
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }
    }

    const BASE: [(&str, &str); 4] = [
        ("specversion", "1.0"),
        ("id", "1"),
        ("source", "mes"),
        ("type", "t.v1"),
    ];

    #[test]
    fn user_properties_become_attributes_and_custom_metadata() {
        let mut p = props(&BASE);
        p.user_properties
            .push(("subject".into(), "machine-42".into()));
        p.user_properties.push(("plant".into(), "north".into()));
        p.content_type = Some("application/json".into());
        p.response_topic = Some("mes/replies".into());
        p.correlation_data = Some(Bytes::from_static(b"abc"));
        p.message_expiry_interval = Some(60);
        let i = decode("app/jobs/commands", Bytes::from_static(b"{}"), Some(&p)).unwrap();
        assert_eq!(i.event.ty, "t.v1");
        assert_eq!(i.event.subject.as_deref(), Some("machine-42"));
        assert_eq!(
            i.event.custom.get("plant").map(String::as_str),
            Some("north")
        );
        assert_eq!(i.event.expiryinterval, Some(60));
        assert_eq!(
            i.event.correlationid.as_ref().map(|c| c.as_str()),
            Some("abc")
        );
        let r = i.reply_to.unwrap();
        assert_eq!(r.topic, "mes/replies");
        assert_eq!(r.correlation_data.as_deref(), Some(&b"abc"[..]));
    }

    #[test]
    fn attribute_user_property_overrides_mqtt_property() {
        let mut p = props(&BASE);
        p.user_properties
            .push(("datacontenttype".into(), "application/msgpack".into()));
        p.user_properties
            .push(("expiryinterval".into(), "5".into()));
        p.content_type = Some("application/json".into());
        p.message_expiry_interval = Some(60);
        let i = decode("t", Bytes::new(), Some(&p)).unwrap();
        assert_eq!(
            i.event.datacontenttype.as_deref(),
            Some("application/msgpack")
        );
        assert_eq!(i.event.expiryinterval, Some(5));
    }

    #[test]
    fn missing_required_attributes_are_rejected_by_name() {
        for missing in ["type", "id", "source", "specversion"] {
            let user: Vec<_> = BASE
                .iter()
                .copied()
                .filter(|(k, _)| *k != missing)
                .collect();
            let r = decode("t", Bytes::new(), Some(&props(&user))).unwrap_err();
            assert_eq!(r.kind, ErrorKind::MissingUserProperty);
            assert!(r.message.contains(missing), "{}", r.message);
        }
        let r = decode("t", Bytes::new(), None).unwrap_err();
        assert_eq!(r.kind, ErrorKind::MissingUserProperty);
    }

    #[test]
    fn unsupported_content_type_and_version_are_rejected() {
        let mut p = props(&BASE);
        p.content_type = Some("text/plain".into());
        assert_eq!(
            decode("t", Bytes::new(), Some(&p)).unwrap_err().kind,
            ErrorKind::UnsupportedContentType
        );
        let mut p = props(&BASE);
        p.user_properties[0].1 = "0.3".into();
        assert_eq!(
            decode("t", Bytes::new(), Some(&p)).unwrap_err().kind,
            ErrorKind::UnsupportedVersion
        );
    }

    #[test]
    fn structured_mode_is_accepted() {
        let body = br#"{"specversion":"1.0","id":"9","source":"mes","type":"t.v1","subject":"s","datacontenttype":"application/json","data":{"A":1},"plant":"x"}"#;
        let p = PublishProperties {
            content_type: Some(STRUCTURED_CONTENT_TYPE.into()),
            ..Default::default()
        };
        let i = decode("t", Bytes::from_static(body), Some(&p)).unwrap();
        assert_eq!(i.event.id, "9");
        assert_eq!(i.event.data_as::<serde_json::Value>().unwrap()["A"], 1);
        assert_eq!(i.event.custom["plant"], "x");
        let body = br#"{"specversion":"1.0","id":"9","source":"mes","type":"t","datacontenttype":"application/octet-stream","data_base64":"aGVsbG8="}"#;
        let i = decode("t", Bytes::from_static(body), Some(&p)).unwrap();
        assert_eq!(i.event.data.as_deref(), Some(&b"hello"[..]));
    }

    #[test]
    fn encode_never_lets_custom_metadata_shadow_attributes() {
        let mut e = CloudEvent::new("t.v1", "station");
        e.custom.insert("type".into(), "evil".into());
        e.custom.insert("plant".into(), "north".into());
        e.set_data(ContentType::Json, &serde_json::json!({"a":1}))
            .unwrap();
        e.correlationid = Some(CorrelationId::from_text("req-1"));
        let o = encode(&e, None);
        let types: Vec<_> = o
            .properties
            .user_properties
            .iter()
            .filter(|(k, _)| k == "type")
            .collect();
        assert_eq!(types.len(), 1);
        assert_eq!(types[0].1, "t.v1");
        assert_eq!(
            o.properties.content_type.as_deref(),
            Some(ContentType::DEFAULT_HEADER)
        );
        assert_eq!(o.properties.payload_format_indicator, Some(1));
        assert_eq!(
            o.properties.correlation_data.as_deref(),
            Some(&b"req-1"[..])
        );
        // and it decodes back to the same event
        let back = decode("t", o.payload, Some(&o.properties)).unwrap().event;
        assert_eq!(back.ty, e.ty);
        assert_eq!(back.custom.get("plant").map(String::as_str), Some("north"));
        assert!(!back.custom.contains_key("type"));
        let t = back
            .attributes()
            .into_iter()
            .find(|(k, _)| *k == "time")
            .unwrap()
            .1;
        assert!(t.ends_with('Z'), "{t}");
    }

    proptest::proptest! {
        /// Whatever a client sends, what the station builds from an accepted
        /// message (a reply echoing its attributes and Correlation Data) is a
        /// packet MQTT allows.
        #[test]
        fn every_packet_built_from_accepted_input_passes_mqtt_rules(
            attrs in proptest::collection::vec(
                (proptest::sample::select(crate::envelope::ATTRIBUTE_NAMES.to_vec()), ".{0,12}"),
                0..8,
            ),
            custom in proptest::collection::vec(("[a-z]{1,6}", ".{0,12}"), 0..4),
            corr in proptest::collection::vec(proptest::num::u8::ANY, 0..40),
            ct in proptest::option::of(".{0,20}"),
        ) {
            let mut p = props(&BASE);
            for (k, v) in &attrs {
                p.user_properties.push((k.to_string(), v.clone()));
            }
            p.user_properties.extend(custom);
            p.correlation_data = Some(Bytes::from(corr.clone()));
            p.content_type = ct;
            p.response_topic = Some("mes/replies".into());
            if let Ok(i) = decode("app/commands", Bytes::new(), Some(&p)) {
                let mut reply = CloudEvent::new(i.event.ty.clone(), "station");
                reply.subject = i.event.subject.clone();
                reply.correlationid = i.event.correlationid.clone();
                reply.causationid = Some(i.event.id.clone());
                reply.traceparent = i.event.traceparent.clone();
                reply.tracestate = i.event.tracestate.clone();
                reply.custom = i.event.custom.clone();
                let out = encode(&reply, i.reply_to.as_ref().and_then(|r| r.correlation_data.clone()));
                proptest::prop_assert!(check_outbound("mes/replies", &out.properties).is_ok(), "{:?}", out.properties);
                proptest::prop_assert_eq!(out.properties.correlation_data.as_deref(), Some(&corr[..]));
            }
        }
    }
}
