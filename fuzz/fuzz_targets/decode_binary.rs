//! MQTT v5 properties and payload → CloudEvent (binary content mode).
#![no_main]

mod shared;

use arbitrary::Arbitrary;
use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use microdcs::transport::binding::decode;
use microdcs::envelope::ATTRIBUTE_NAMES;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

const CONTENT_TYPES: [&str; 6] = [
    "application/json",
    "application/json; charset=utf-8",
    "application/msgpack",
    "application/octet-stream",
    "application/cloudevents+json",
    "text/plain",
];

#[derive(Arbitrary, Debug)]
enum Name {
    /// One of the CloudEvent attribute names.
    Attribute(u8),
    /// Anything.
    Other(String),
}

#[derive(Arbitrary, Debug)]
enum Ct {
    Known(u8),
    Other(String),
}

#[derive(Arbitrary, Debug)]
struct Input {
    topic: String,
    payload: Vec<u8>,
    no_properties: bool,
    /// Start from the four required attributes.
    base: bool,
    content_type: Option<Ct>,
    response_topic: Option<String>,
    correlation_data: Option<Vec<u8>>,
    message_expiry_interval: Option<u32>,
    payload_format_indicator: Option<u8>,
    user: Vec<(Name, String)>,
}

fuzz_target!(|input: Input| {
    let props = if input.no_properties {
        None
    } else {
        let mut p = if input.base {
            shared::base_properties()
        } else {
            PublishProperties::default()
        };
        p.content_type = input.content_type.map(|c| match c {
            Ct::Known(i) => CONTENT_TYPES[usize::from(i) % CONTENT_TYPES.len()].to_owned(),
            Ct::Other(s) => s,
        });
        p.response_topic = input.response_topic;
        p.correlation_data = input.correlation_data.map(Bytes::from);
        p.message_expiry_interval = input.message_expiry_interval;
        p.payload_format_indicator = input.payload_format_indicator;
        for (k, v) in input.user {
            let k = match k {
                Name::Attribute(i) => {
                    ATTRIBUTE_NAMES[usize::from(i) % ATTRIBUTE_NAMES.len()].to_owned()
                }
                Name::Other(s) => s,
            };
            p.user_properties.push((k, v));
        }
        Some(p)
    };
    let correlation = props.as_ref().and_then(|p| p.correlation_data.clone());
    match decode(&input.topic, Bytes::from(input.payload), props.as_ref()) {
        Ok(inbound) => shared::check_accepted(&inbound, correlation.as_ref()),
        Err(rejected) => shared::check_rejected(&rejected),
    }
});
