//! CloudEvent map ↔ [`CloudEvent`] (wire contract §5, MicroDCS's
//! `CloudEvent.to_dict`/`from_dict`): attribute names as keys, `data` as
//! binary, custom metadata flattened into the map.
//!
//! Incoming maps are turned into what an MQTT v5 PUBLISH of the same event
//! would carry (user properties and payload) and decoded by the MQTT
//! binding, so both transports apply one set of attribute rules: the same
//! required attributes, the same string checks (§8), custom metadata that
//! can never overwrite an attribute (§1). It also makes a dead letter of
//! either transport the same kind of record (`crate::dlq`).

use super::value::Value;
use crate::binding::mqtt::{self as mb, Inbound, Rejected};
use crate::envelope::{is_attribute_name, CloudEvent};
use crate::error::ErrorKind;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

/// A CloudEvent map as MQTT v5 would carry it: the payload and properties.
#[derive(Debug, Clone, Default)]
pub(crate) struct AsMqtt {
    pub(crate) payload: Bytes,
    pub(crate) properties: PublishProperties,
}

/// Reads a CloudEvent map into payload and user properties: every value
/// but `data` becomes text (integers, floats and booleans in their
/// decimal form, a `mdcserrorcontext` map as `k=v,k=v`); nil values are
/// absent attributes.
///
/// Returns what could be read, and the first problem when there is one:
/// a key that is not a string, `data` that is neither binary nor a string,
/// or a value that has no text form (binary, an array, a map).
pub(crate) fn to_mqtt(map: Value) -> (AsMqtt, Option<(ErrorKind, String)>) {
    let mut out = AsMqtt::default();
    let Value::Map(entries) = map else {
        let m = format!("a CloudEvent must be a map, found {}", map.kind());
        return (out, Some((ErrorKind::PayloadInvalid, m)));
    };
    let mut problem = None;
    for (k, v) in entries {
        let Value::Str(k) = k else {
            problem.get_or_insert((
                ErrorKind::UserPropertyInvalid,
                format!("a CloudEvent map key must be a string, found {}", k.kind()),
            ));
            continue;
        };
        if k == "data" {
            match v {
                Value::Nil => {}
                Value::Bin(b) => out.payload = Bytes::from(b),
                Value::Str(s) => out.payload = Bytes::from(s.into_bytes()),
                other => {
                    problem.get_or_insert((
                        ErrorKind::PayloadInvalid,
                        format!("'data' must be binary, found {}", other.kind()),
                    ));
                }
            }
            continue;
        }
        let text = match v {
            Value::Nil => continue,
            Value::Str(s) => s,
            Value::Int(n) => n.to_string(),
            Value::UInt(n) => n.to_string(),
            Value::Float(f) => f.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Map(entries) if k == "mdcserrorcontext" => {
                let mut pairs = Vec::new();
                for (ck, cv) in entries {
                    match (ck, cv) {
                        (Value::Str(ck), Value::Str(cv)) => pairs.push(format!("{ck}={cv}")),
                        _ => {
                            problem.get_or_insert((
                                ErrorKind::UserPropertyInvalid,
                                "'mdcserrorcontext' entries must be strings".into(),
                            ));
                        }
                    }
                }
                pairs.join(",")
            }
            other => {
                problem.get_or_insert((
                    ErrorKind::UserPropertyInvalid,
                    format!(
                        "'{}' must be text, found {}",
                        k.escape_debug(),
                        other.kind()
                    ),
                ));
                continue;
            }
        };
        if k == "datacontenttype" {
            out.properties.content_type = Some(text.clone());
        }
        out.properties.user_properties.push((k, text));
    }
    (out, problem)
}

/// Decodes what [`to_mqtt`] made with the MQTT binding's rules.
///
/// # Errors
/// As [`mb::decode`]: a missing or invalid attribute, an unsupported
/// content type or specversion, a subject that cannot be a scope.
pub(crate) fn decode(m: &AsMqtt) -> Result<CloudEvent, Box<Rejected>> {
    mb::decode("", m.payload.clone(), Some(&m.properties)).map(|Inbound { event, .. }| event)
}

/// What could be read of a map that [`to_mqtt`] refused, for the error
/// reply and the dead letter.
pub(crate) fn partial(m: &AsMqtt) -> CloudEvent {
    decode(m).unwrap_or_else(|r| r.partial)
}

/// The CloudEvent map of `e`: every non-null attribute as a string
/// (`expiryinterval` as an integer, as MicroDCS writes it), custom
/// metadata under its own keys (never one that names an attribute), and
/// `data` as binary.
pub(crate) fn to_map(e: &CloudEvent) -> Value {
    let mut entries = Vec::with_capacity(16);
    for (k, v) in e.attributes() {
        let v = match (k, e.expiryinterval) {
            ("expiryinterval", Some(n)) => Value::UInt(u64::from(n)),
            _ => Value::Str(v),
        };
        entries.push((Value::str(k), v));
    }
    for (k, v) in &e.custom {
        if !is_attribute_name(k) && k != "data" {
            entries.push((Value::str(k.clone()), Value::str(v.clone())));
        }
    }
    if let Some(d) = &e.data {
        entries.push((Value::str("data"), Value::Bin(d.to_vec())));
    }
    Value::Map(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::CorrelationId;

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(
            entries
                .into_iter()
                .map(|(k, v)| (Value::str(k), v))
                .collect(),
        )
    }

    #[test]
    fn event_round_trips_through_its_map() {
        let mut e = CloudEvent::new("t.cmd.v1", "mes");
        e.subject = Some("press".into());
        e.datacontenttype = Some("application/json".into());
        e.data = Some(Bytes::from_static(br#"{"A":1}"#));
        e.expiryinterval = Some(30);
        e.correlationid = Some(CorrelationId::from_text("c-1"));
        e.custom.insert("line".into(), "3".into());
        let back = decode(&to_mqtt(to_map(&e)).0).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn custom_metadata_never_overwrites_an_attribute() {
        let mut e = CloudEvent::new("t.cmd.v1", "mes");
        e.custom.insert("type".into(), "evil.v1".into());
        let Value::Map(entries) = to_map(&e) else {
            panic!("not a map")
        };
        let types: Vec<_> = entries
            .iter()
            .filter(|(k, _)| k.as_str() == Some("type"))
            .collect();
        assert_eq!(types.len(), 1);
        assert_eq!(types[0].1.as_str(), Some("t.cmd.v1"));
    }

    #[test]
    fn maps_that_break_the_rules_are_refused_with_what_was_read() {
        let base = || {
            vec![
                ("id", Value::str("1")),
                ("source", Value::str("mes")),
                ("specversion", Value::str("1.0")),
                ("type", Value::str("t.v1")),
            ]
        };
        let mut missing = base();
        missing.remove(0);
        let r = decode(&to_mqtt(map(missing)).0).unwrap_err();
        assert_eq!(r.kind, ErrorKind::MissingUserProperty);
        assert_eq!(r.partial.ty, "t.v1");

        let mut control = base();
        control.push(("subject", Value::str("a\u{1}b")));
        assert!(decode(&to_mqtt(map(control)).0).is_err());

        let mut nested = base();
        nested.push(("x", Value::Array(vec![])));
        let (m, problem) = to_mqtt(map(nested));
        assert_eq!(problem.unwrap().0, ErrorKind::UserPropertyInvalid);
        assert_eq!(partial(&m).ty, "t.v1");

        let mut data = base();
        data.push(("data", Value::UInt(1)));
        assert_eq!(to_mqtt(map(data)).1.unwrap().0, ErrorKind::PayloadInvalid);
    }
}
