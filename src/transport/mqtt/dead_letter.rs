//! The §6 path for a message that cannot be processed: an error reply when
//! it asked for one, a log line, the original on the dead-letter topic with
//! why, the original kept in Redis as it was received ([`crate::dlq`]), and
//! a metric. Never panics, never stops the transport.

use super::MqttTransport;
use crate::binding::mqtt::Rejected;
use crate::envelope::escape_for_mqtt;
use crate::error::{ErrorKind, HandlerError};
use rumqttc::v5::mqttbytes::v5::{Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use tracing::{error, warn};

/// The properties of a dead letter: the original's, without what belongs
/// to its delivery (topic alias, subscription identifiers), its Response
/// Topic moved into a user property (nobody must answer a dead letter), and
/// `x-dead-letter-*` user properties saying why, where and which processor.
/// Every string is escaped: the original's were what a broker let through,
/// and one MQTT forbids must not take the connection down with it.
fn properties(
    original: Option<PublishProperties>,
    topic: &str,
    kind: ErrorKind,
    reason: &str,
    processor: Option<&str>,
) -> PublishProperties {
    let mut props = original.unwrap_or_default();
    if let Some(rt) = props.response_topic.take() {
        props
            .user_properties
            .push(("x-dead-letter-response-topic".into(), rt));
    }
    props.topic_alias = None;
    props.subscription_identifiers.clear();
    props.user_properties.push((
        "x-dead-letter-reason".into(),
        escape_for_mqtt(reason).into_owned(),
    ));
    props
        .user_properties
        .push(("x-dead-letter-kind".into(), kind.as_str().into()));
    props.user_properties.push((
        "x-dead-letter-topic".into(),
        escape_for_mqtt(topic).into_owned(),
    ));
    if let Some(pname) = processor {
        props
            .user_properties
            .push(("x-dead-letter-processor".into(), pname.to_owned()));
    }
    for (k, v) in &mut props.user_properties {
        *k = escape_for_mqtt(k).into_owned();
        *v = escape_for_mqtt(v).into_owned();
    }
    props.content_type = props
        .content_type
        .map(|ct| escape_for_mqtt(&ct).into_owned());
    props
}

impl MqttTransport {
    /// Rejects `original` (received on `topic`) for the reason `r` gives:
    /// error reply (with `context`), log line, dead letter, metric.
    pub(super) async fn dead_letter(
        &self,
        original: &Publish,
        topic: &str,
        r: &Rejected,
        processor: Option<&str>,
        context: &[(String, String)],
    ) {
        self.metrics.error(r.kind);
        let instruments = crate::metrics::instruments();
        if let Some(i) = instruments {
            i.error(processor, self.type_label(&r.partial.ty), r.kind);
        }
        warn!(
            transport = %self.name,
            processor = processor.unwrap_or("-"),
            topic,
            kind = r.kind.as_str(),
            id = %r.partial.id,
            ty = %r.partial.ty,
            correlation_id = ?r.partial.correlationid.as_ref().map(|c| c.as_str().to_owned()),
            reason = %r.message,
            "message rejected"
        );
        self.keep_dead_letter(original, topic, r, processor);
        let e = HandlerError::terminal(r.kind, r.message.clone())
            .with_context_entries(context.iter().cloned());
        self.send_error_reply(&r.partial, r.reply_to.as_ref(), &e)
            .await;
        let props = properties(
            original.properties.clone(),
            topic,
            r.kind,
            &r.message,
            processor,
        );
        match self
            .send(
                self.settings.dead_letter_topic.clone(),
                QoS::AtLeastOnce,
                false,
                original.payload.clone(),
                props,
            )
            .await
        {
            Ok(()) => {
                self.metrics.dead_lettered();
                if let Some(i) = instruments {
                    i.dead_lettered(processor, self.type_label(&r.partial.ty), r.kind);
                }
            }
            Err(e) => error!(error = %e, "cannot publish to the dead-letter topic"),
        }
    }
}

impl MqttTransport {
    /// Appends the original to its processor's dead-letter stream in Redis
    /// ([`crate::dlq`]), in a task of its own with a time limit: a Redis
    /// that is slow or down neither holds up the transport nor costs the
    /// dead letter on the topic; it is logged and counted
    /// (`microdcs.dead_letters.unstored`).
    fn keep_dead_letter(
        &self,
        original: &Publish,
        topic: &str,
        r: &Rejected,
        processor: Option<&str>,
    ) {
        let Some(store) = super::read(&self.dead_letters).clone() else {
            return;
        };
        // Larger than the transport processes: a replay would be refused
        // the same way, and keeping it would let such messages fill Redis
        // (kept payloads stay under max_len × max_payload_size).
        if original.payload.len() > self.settings.max_payload_size {
            warn!(
                processor = processor.unwrap_or(crate::dlq::NO_PROCESSOR),
                size = original.payload.len(),
                max = self.settings.max_payload_size,
                "dead letter too large to keep in Redis (the dead-letter topic has it)"
            );
            return;
        }
        let letter = crate::dlq::DeadLetter {
            id: String::new(),
            processor: processor.unwrap_or(crate::dlq::NO_PROCESSOR).to_owned(),
            at_ms: crate::runtime::clock::now_ms(),
            kind: r.kind.as_str().to_owned(),
            reason: r.message.clone(),
            message: crate::dlq::Message {
                topic: topic.to_owned(),
                payload: original.payload.clone(),
                qos: original.qos as u8,
                retain: original.retain,
                properties: crate::dlq::Properties::from_mqtt(original.properties.as_ref()),
            },
            replayed_ms: None,
        };
        let metrics = self.metrics.clone();
        tokio::spawn(async move {
            let failed = match tokio::time::timeout(STORE_TIMEOUT, store.append(&letter)).await {
                Ok(Ok(_)) => return,
                Ok(Err(e)) => e.to_string(),
                Err(_) => format!("no answer within {STORE_TIMEOUT:?}"),
            };
            metrics.dead_letters_unstored();
            if let Some(i) = crate::metrics::instruments() {
                i.dead_letter_unstored(Some(&letter.processor));
            }
            error!(
                processor = %letter.processor,
                topic = %crate::envelope::escape_for_mqtt(&letter.message.topic),
                error = %failed,
                "cannot keep the dead letter in Redis (the dead-letter topic has it)"
            );
        });
    }
}

/// How long keeping a dead letter in Redis may take before it is given up.
const STORE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    fn user(props: &PublishProperties, key: &str) -> Option<String> {
        props
            .user_properties
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.clone())
    }

    #[test]
    fn dead_letter_says_why_where_and_who() {
        let p = properties(
            None,
            "app/x/commands",
            ErrorKind::PayloadInvalid,
            "bad json",
            Some("jobs"),
        );
        assert_eq!(
            user(&p, "x-dead-letter-reason").as_deref(),
            Some("bad json")
        );
        assert_eq!(
            user(&p, "x-dead-letter-kind").as_deref(),
            Some("PAYLOAD_INVALID")
        );
        assert_eq!(
            user(&p, "x-dead-letter-topic").as_deref(),
            Some("app/x/commands")
        );
        assert_eq!(user(&p, "x-dead-letter-processor").as_deref(), Some("jobs"));
        let anonymous = properties(None, "t", ErrorKind::Timeout, "late", None);
        assert_eq!(user(&anonymous, "x-dead-letter-processor"), None);
    }

    #[test]
    fn dead_letter_keeps_the_original_but_asks_no_reply() {
        let original = PublishProperties {
            response_topic: Some("mes/replies".into()),
            correlation_data: Some(bytes::Bytes::from_static(b"c-1")),
            topic_alias: Some(3),
            subscription_identifiers: vec![7],
            user_properties: vec![("type".into(), "t.v1".into())],
            content_type: Some("application/json".into()),
            ..Default::default()
        };
        let p = properties(Some(original), "t", ErrorKind::Timeout, "late", None);
        assert_eq!(p.response_topic, None);
        assert_eq!(
            user(&p, "x-dead-letter-response-topic").as_deref(),
            Some("mes/replies")
        );
        assert_eq!(p.correlation_data.as_deref(), Some(&b"c-1"[..]));
        assert_eq!(p.topic_alias, None);
        assert!(p.subscription_identifiers.is_empty());
        assert_eq!(user(&p, "type").as_deref(), Some("t.v1"));
        assert_eq!(p.content_type.as_deref(), Some("application/json"));
    }

    #[test]
    fn dead_letter_escapes_strings_mqtt_forbids() {
        let original = PublishProperties {
            user_properties: vec![("k\u{0}".into(), "v\u{0}".into())],
            content_type: Some("a\u{0}".into()),
            ..Default::default()
        };
        let p = properties(
            Some(original),
            "t\u{0}",
            ErrorKind::PayloadInvalid,
            "r\u{0}",
            None,
        );
        assert!(p
            .user_properties
            .iter()
            .all(|(k, v)| !k.contains('\u{0}') && !v.contains('\u{0}')));
        assert!(!p.content_type.unwrap().contains('\u{0}'));
    }
}
