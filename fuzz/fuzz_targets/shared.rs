//! Invariants every decoded message must keep, shared by the decode targets.

use bytes::Bytes;
use microdcs::transport::binding::{check_outbound, decode, encode, Inbound, Rejected};
use microdcs::envelope::{escape_for_mqtt, is_mqtt_string};
use microdcs::CloudEvent;
use rumqttc::v5::mqttbytes::v5::PublishProperties;

/// Checks a message `decode` accepted:
/// - the reply the station would send (encoded event, echoed Correlation
///   Data, to the Response Topic) passes `check_outbound`, i.e. nothing that
///   decoded can make the station publish a packet MQTT refuses;
/// - every attribute renders as a valid MQTT string;
/// - encoding and decoding again gives the same attributes, custom metadata
///   and Correlation Data.
pub fn check_accepted(inbound: &Inbound, original_correlation: Option<&Bytes>) {
    let event = &inbound.event;
    for (k, v) in event.attributes() {
        assert!(is_mqtt_string(&v), "attribute {k} renders as {v:?}");
    }
    let reply_cd = inbound
        .reply_to
        .as_ref()
        .and_then(|r| r.correlation_data.clone());
    if let Some(r) = &inbound.reply_to {
        assert_eq!(r.correlation_data.as_ref(), original_correlation);
    }
    let out = encode(event, reply_cd);
    let topic = inbound
        .reply_to
        .as_ref()
        .map_or("fuzz/replies", |r| r.topic.as_str());
    if let Err(e) = check_outbound(topic, &out.properties) {
        panic!("a decoded event encodes to a packet MQTT refuses: {e}");
    }

    // Round trip: what the station sends, it reads back the same.
    let own = encode(event, None);
    let back = match decode("fuzz/roundtrip", own.payload.clone(), Some(&own.properties)) {
        Ok(i) => i.event,
        Err(r) => panic!(
            "an encoded event does not decode again: {:?}: {}",
            r.kind, r.message
        ),
    };
    assert_eq!(back.attributes(), event.attributes(), "attributes");
    assert_eq!(back.custom, event.custom, "custom metadata");
    assert_eq!(
        back.correlationid.as_ref().map(|c| c.as_bytes()),
        event.correlationid.as_ref().map(|c| c.as_bytes()),
        "correlation data"
    );
}

/// Checks a message `decode` refused: the error reply the transport builds
/// from what could be read (its `reply_skeleton`: type, id, correlation,
/// subject, trace context, plus the escaped message) is a packet MQTT
/// allows.
pub fn check_rejected(r: &Rejected) {
    let req = &r.partial;
    let ty = if req.ty.is_empty() {
        "fuzz.error.v1".to_owned()
    } else {
        req.ty.clone()
    };
    let mut reply = CloudEvent::new(ty, "station");
    reply.causationid = Some(req.id.clone()).filter(|id| !id.is_empty());
    reply.correlationid = req.correlationid.clone();
    reply.subject = req.subject.clone();
    reply.traceparent = req.traceparent.clone();
    reply.tracestate = req.tracestate.clone();
    reply.mdcserrorkind = Some(r.kind.as_str().to_owned());
    reply.mdcserrormessage = Some(escape_for_mqtt(&r.message).into_owned());
    let Some(to) = &r.reply_to else { return };
    let out = encode(&reply, to.correlation_data.clone());
    if let Err(e) = check_outbound(&to.topic, &out.properties) {
        panic!("the error reply to a rejected message is a packet MQTT refuses: {e}");
    }
}

/// Properties with the four required attributes, for inputs that should
/// get past the first check.
pub fn base_properties() -> PublishProperties {
    PublishProperties {
        user_properties: vec![
            ("specversion".into(), "1.0".into()),
            ("id".into(), "1".into()),
            ("source".into(), "fuzz".into()),
            ("type".into(), "com.example.fuzz.v1".into()),
        ],
        ..Default::default()
    }
}
