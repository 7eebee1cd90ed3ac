//! Re-publishing a dead letter's original message to the broker.

use super::Message;
use crate::transport::mqtt::MqttSettings;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PubCompReason, PubRecReason};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event};
use std::time::Duration;

/// Why a replay failed.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// The broker could not be reached or refused the connection.
    #[error("cannot connect to the MQTT broker at {addr}: {reason}")]
    Connect {
        /// `host:port`.
        addr: String,
        /// What went wrong.
        reason: String,
    },
    /// The broker did not accept the publish (a PUBACK/PUBREC/PUBCOMP
    /// with an error reason, or the connection was lost before it).
    #[error("the broker did not accept the message on '{topic}': {reason}")]
    Refused {
        /// The topic.
        topic: String,
        /// The reason the broker gave, or what happened.
        reason: String,
    },
    /// No acknowledgement within the time allowed.
    #[error("no acknowledgement from the broker within {0:?}")]
    Timeout(Duration),
}

/// Publishes `message` unchanged (its topic, payload, QoS, retain flag and
/// properties, correlation data and response topic included) to the broker
/// of `settings` (the station's, so its credentials apply), on a
/// connection of its own: client id `<client_id>-replay-<random>`, a clean
/// session that ends with it, so the station's session is not disturbed.
/// Returns once the broker acknowledged the message (PUBACK for QoS 1,
/// PUBCOMP for QoS 2, written for QoS 0).
///
/// # Errors
/// [`ReplayError::Connect`] when the broker cannot be reached or refuses
/// the connection, [`ReplayError::Refused`] when it refuses the message,
/// [`ReplayError::Timeout`] when nothing is acknowledged within `timeout`.
pub async fn replay(
    settings: &MqttSettings,
    message: &Message,
    timeout: Duration,
) -> Result<(), ReplayError> {
    let mut s = settings.clone();
    s.client_id = format!(
        "{}-replay-{}",
        settings.client_id,
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    s.session_expiry = Duration::ZERO;
    let addr = format!("{}:{}", s.host, s.port);
    let options = s
        .try_connect_options()
        .map_err(|reason| ReplayError::Connect {
            addr: addr.clone(),
            reason,
        })?;
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    let qos = match message.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    };
    let topic = message.topic.clone();
    let publish = async {
        // Connected first: an error here is the connection's.
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => {
                    return Err(ReplayError::Connect {
                        addr: addr.clone(),
                        reason: crate::transport::mqtt::describe(&e, &s),
                    })
                }
            }
        }
        client
            .publish_with_properties(
                topic.clone(),
                qos,
                message.retain,
                message.payload.clone(),
                message.properties.to_mqtt(),
            )
            .await
            .map_err(|e| refused(&topic, e.to_string()))?;
        loop {
            let event = eventloop
                .poll()
                .await
                .map_err(|e| refused(&topic, format!("connection lost: {e}")))?;
            match event {
                Event::Outgoing(rumqttc::Outgoing::Publish(_)) if qos == QoS::AtMostOnce => {
                    return Ok(())
                }
                Event::Incoming(Packet::PubAck(ack)) => {
                    return match ack.reason {
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers => Ok(()),
                        other => Err(refused(&topic, format!("{other:?}"))),
                    }
                }
                Event::Incoming(Packet::PubRec(rec))
                    if !matches!(
                        rec.reason,
                        PubRecReason::Success | PubRecReason::NoMatchingSubscribers
                    ) =>
                {
                    return Err(refused(&topic, format!("{:?}", rec.reason)))
                }
                Event::Incoming(Packet::PubComp(comp)) => {
                    return match comp.reason {
                        PubCompReason::Success => Ok(()),
                        PubCompReason::PacketIdentifierNotFound => {
                            Err(refused(&topic, "packet identifier not found".into()))
                        }
                    }
                }
                _ => {}
            }
        }
    };
    let result = match tokio::time::timeout(timeout, publish).await {
        Ok(r) => r,
        Err(_) => Err(ReplayError::Timeout(timeout)),
    };
    // A clean goodbye; the broker drops the session either way.
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while eventloop.poll().await.is_ok() {}
    })
    .await;
    result
}

fn refused(topic: &str, reason: String) -> ReplayError {
    ReplayError::Refused {
        topic: topic.to_owned(),
        reason,
    }
}
