//! Dead letters kept in Redis, so an operator can inspect them and, after
//! fixing the cause, re-inject them (`microdcs dlq list|show|replay`).
//!
//! Besides the dead-letter topic (wire contract §6), every MQTT message a
//! processor rejects is appended to a bounded Redis stream of that
//! processor, `P:{dlq}:letters:{processor}`, holding the message exactly as
//! it was received: topic, payload bytes, QoS, retain and the MQTT v5
//! properties a publisher sets (content type, correlation data, response
//! topic, user properties in order, message expiry interval, payload format
//! indicator), with why (`kind`, `reason`), which processor (`-` when no
//! processor took the message) and when. A message larger than
//! `mqtt.max_payload_size` (answered `RESOURCE_EXHAUSTED`) is not kept: it
//! would be refused again on replay, and so the payloads kept stay under
//! `mqtt.dead_letter_max_len` × `mqtt.max_payload_size` per processor. The stream keeps the newest
//! `mqtt.dead_letter_max_len` entries (exact `XADD MAXLEN`: the bound an
//! operator configures is the bound that holds). A replay is recorded in
//! `P:{dlq}:replayed:{processor}` (entry id → time), since stream entries
//! cannot change.
//!
//! The SFC engine's `P:{S}:deadletters` list (work items and job changes it
//! gave up on) is a different thing and is not touched here.
//!
//! # Example
//!
//! ```no_run
//! # async fn demo(config: &microdcs::config::Config) -> Result<(), Box<dyn std::error::Error>> {
//! let redis = microdcs::station::open_redis(config)?;
//! let letters = microdcs::dlq::DeadLetters::new(
//!     redis.conn,
//!     config.redis.key_prefix.clone(),
//!     config.mqtt.dead_letter_max_len,
//! );
//! for letter in letters.list(None, 20).await? {
//!     println!("{} {} {}", letter.id, letter.processor, letter.reason);
//! }
//! # Ok(()) }
//! ```

mod replay;

pub use replay::{replay, ReplayError};

use crate::redis::{Keys, RedisConnection};
use bytes::Bytes;
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Dead letters kept per processor unless `mqtt.dead_letter_max_len` says
/// otherwise.
pub const DEFAULT_MAX_LEN: u64 = 10_000;

/// The processor name recorded for a message that no processor took (no
/// route for its topic).
pub const NO_PROCESSOR: &str = "-";

/// The MQTT v5 properties of a received message that its publisher set,
/// in their wire form (what a replay sends again). Topic alias and
/// subscription identifiers belong to one delivery and are not kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Properties {
    /// Content Type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Correlation Data, bytes (standard base64 in JSON).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "b64_opt")]
    pub correlation_data: Option<Vec<u8>>,
    /// Response Topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    /// User Properties, in order, duplicates kept.
    #[serde(default)]
    pub user_properties: Vec<(String, String)>,
    /// Message Expiry Interval, seconds, as the message arrived (what was
    /// left of it when the broker delivered it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_expiry_interval: Option<u32>,
    /// Payload Format Indicator (1: UTF-8 text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_format_indicator: Option<u8>,
}

impl Properties {
    /// The properties of a received publish (none: all absent).
    pub fn from_mqtt(p: Option<&rumqttc::v5::mqttbytes::v5::PublishProperties>) -> Self {
        let Some(p) = p else {
            return Properties::default();
        };
        Properties {
            content_type: p.content_type.clone(),
            correlation_data: p.correlation_data.as_ref().map(|c| c.to_vec()),
            response_topic: p.response_topic.clone(),
            user_properties: p.user_properties.clone(),
            message_expiry_interval: p.message_expiry_interval,
            payload_format_indicator: p.payload_format_indicator,
        }
    }

    /// The rumqttc properties to publish them with.
    pub fn to_mqtt(&self) -> rumqttc::v5::mqttbytes::v5::PublishProperties {
        rumqttc::v5::mqttbytes::v5::PublishProperties {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.message_expiry_interval,
            topic_alias: None,
            response_topic: self.response_topic.clone(),
            correlation_data: self.correlation_data.clone().map(Bytes::from),
            user_properties: self.user_properties.clone(),
            subscription_identifiers: Vec::new(),
            content_type: self.content_type.clone(),
        }
    }
}

/// A received MQTT message, unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was received on.
    pub topic: String,
    /// The payload, bytes.
    pub payload: Bytes,
    /// The QoS it was received with (0, 1 or 2).
    pub qos: u8,
    /// Its retain flag as received.
    pub retain: bool,
    /// Its MQTT v5 properties.
    pub properties: Properties,
}

/// One dead letter as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The stream entry id (`<ms>-<seq>`), unique within its processor's
    /// stream; empty for a letter not stored yet.
    pub id: String,
    /// The processor that rejected it ([`NO_PROCESSOR`] when none took it).
    pub processor: String,
    /// When it was dead-lettered, ms since the Unix epoch.
    pub at_ms: u64,
    /// The wire error kind (`PAYLOAD_INVALID`, …).
    pub kind: String,
    /// Why, as in the error reply and the `x-dead-letter-reason` property.
    pub reason: String,
    /// The message as received.
    pub message: Message,
    /// When it was replayed last (ms since the Unix epoch), if it was.
    pub replayed_ms: Option<u64>,
}

/// Failures of the dead-letter store.
#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    /// Redis is unreachable or failed.
    #[error("redis unavailable: {0}")]
    Unavailable(#[from] redis::RedisError),
    /// A stored entry cannot be read back (written by something else).
    #[error("dead letter '{id}' of processor '{processor}' is unreadable: {reason}")]
    Corrupt {
        /// Its processor.
        processor: String,
        /// Its entry id.
        id: String,
        /// What is wrong.
        reason: String,
    },
}

/// The dead-letter streams under one key prefix. Cheap to clone.
#[derive(Clone)]
pub struct DeadLetters {
    conn: RedisConnection,
    keys: Keys,
    max_len: u64,
}

impl std::fmt::Debug for DeadLetters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetters")
            .field("prefix", &self.keys.prefix())
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

/// The fields of one stream entry.
type Fields = HashMap<String, redis::Value>;

impl DeadLetters {
    /// The streams under `prefix` (`redis.key_prefix`), each keeping at
    /// most `max_len` entries (`mqtt.dead_letter_max_len`; at least 1).
    pub fn new(conn: RedisConnection, prefix: impl Into<String>, max_len: u64) -> Self {
        DeadLetters {
            conn,
            keys: Keys::new(prefix),
            max_len: max_len.max(1),
        }
    }

    /// Appends `letter` to its processor's stream (its `id` and
    /// `replayed_ms` are ignored) and returns the new entry id; the oldest
    /// entries beyond the bound are trimmed in the same step.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn append(&self, letter: &DeadLetter) -> Result<String, DlqError> {
        let m = &letter.message;
        let props = serde_json::to_string(&m.properties)
            .map_err(|e| redis::RedisError::from((redis::ErrorKind::Io, "JSON", e.to_string())))?;
        let stream = self.keys.dlq_letters(&letter.processor);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("XADD")
            .arg(&stream)
            .arg("MAXLEN")
            .arg(self.max_len)
            .arg("*")
            .arg("at")
            .arg(letter.at_ms)
            .arg("processor")
            .arg(&letter.processor)
            .arg("kind")
            .arg(&letter.kind)
            .arg("reason")
            .arg(&letter.reason)
            .arg("topic")
            .arg(&m.topic)
            .arg("payload")
            .arg(m.payload.as_ref())
            .arg("qos")
            .arg(m.qos)
            .arg("retain")
            .arg(u8::from(m.retain))
            .arg("props")
            .arg(props)
            .sadd(self.keys.dlq_processors(), &letter.processor)
            .ignore();
        let mut c = self.conn.clone();
        let (id,): (String,) = pipe.query_async(&mut c).await?;
        Ok(id)
    }

    /// The processors that have dead letters (or had some), sorted.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn processors(&self) -> Result<Vec<String>, DlqError> {
        let mut c = self.conn.clone();
        let mut p: Vec<String> = c.smembers(self.keys.dlq_processors()).await?;
        p.sort();
        Ok(p)
    }

    /// The newest `limit` dead letters of `processor` (all processors when
    /// `None`), newest first.
    ///
    /// # Errors
    /// Redis is unavailable, or an entry is unreadable.
    pub async fn list(
        &self,
        processor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<DeadLetter>, DlqError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let processors = match processor {
            Some(p) => vec![p.to_owned()],
            None => self.processors().await?,
        };
        let mut out = Vec::new();
        let mut c = self.conn.clone();
        for p in processors {
            let entries: Vec<(String, Fields)> = redis::cmd("XREVRANGE")
                .arg(self.keys.dlq_letters(&p))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(limit)
                .query_async(&mut c)
                .await?;
            let replayed = self.replayed(&p).await?;
            for (id, fields) in entries {
                let mut letter = parse(&p, &id, fields)?;
                letter.replayed_ms = replayed.get(&id).copied();
                out.push(letter);
            }
        }
        out.sort_by(|a, b| b.at_ms.cmp(&a.at_ms).then_with(|| b.id.cmp(&a.id)));
        out.truncate(limit);
        Ok(out)
    }

    /// The dead letter(s) with entry id `id`: in `processor`'s stream, or
    /// in every processor's when `None` (ids are unique per stream only,
    /// so several may answer). Empty when there is none.
    ///
    /// # Errors
    /// Redis is unavailable, or the entry is unreadable.
    pub async fn find(
        &self,
        id: &str,
        processor: Option<&str>,
    ) -> Result<Vec<DeadLetter>, DlqError> {
        if !is_entry_id(id) {
            return Ok(Vec::new());
        }
        let processors = match processor {
            Some(p) => vec![p.to_owned()],
            None => self.processors().await?,
        };
        let mut out = Vec::new();
        let mut c = self.conn.clone();
        for p in processors {
            let entries: Vec<(String, Fields)> =
                c.xrange(self.keys.dlq_letters(&p), id, id).await?;
            for (eid, fields) in entries {
                let mut letter = parse(&p, &eid, fields)?;
                let at: Option<u64> = c.hget(self.keys.dlq_replayed(&p), &eid).await?;
                letter.replayed_ms = at;
                out.push(letter);
            }
        }
        Ok(out)
    }

    /// Records that `letter` was replayed at `at_ms`, and forgets the
    /// replays of letters the stream has trimmed since (so the record stays
    /// as bounded as the stream).
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn mark_replayed(&self, letter: &DeadLetter, at_ms: u64) -> Result<(), DlqError> {
        let replayed = self.keys.dlq_replayed(&letter.processor);
        let mut c = self.conn.clone();
        let _: i64 = c.hset(&replayed, &letter.id, at_ms).await?;
        let oldest: Vec<(String, Fields)> = redis::cmd("XRANGE")
            .arg(self.keys.dlq_letters(&letter.processor))
            .arg("-")
            .arg("+")
            .arg("COUNT")
            .arg(1)
            .query_async(&mut c)
            .await?;
        let ids: Vec<String> = c.hkeys(&replayed).await?;
        let stale: Vec<&String> = match oldest.first().and_then(|(id, _)| entry_id(id)) {
            Some(first) => ids
                .iter()
                .filter(|id| entry_id(id).is_none_or(|x| x < first))
                .collect(),
            None => ids.iter().collect(),
        };
        if !stale.is_empty() {
            let _: i64 = c.hdel(&replayed, stale).await?;
        }
        Ok(())
    }

    /// Deletes one dead letter; whether it existed.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn delete(&self, processor: &str, id: &str) -> Result<bool, DlqError> {
        if !is_entry_id(id) {
            return Ok(false);
        }
        let mut c = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .xdel(self.keys.dlq_letters(processor), &[id])
            .hdel(self.keys.dlq_replayed(processor), id)
            .ignore();
        let (n,): (u64,) = pipe.query_async(&mut c).await?;
        Ok(n > 0)
    }

    /// Deletes every dead letter of `processor` (of every processor when
    /// `None`); how many were deleted.
    ///
    /// # Errors
    /// Redis is unavailable.
    pub async fn purge(&self, processor: Option<&str>) -> Result<u64, DlqError> {
        let processors = match processor {
            Some(p) => vec![p.to_owned()],
            None => self.processors().await?,
        };
        let mut c = self.conn.clone();
        let mut total = 0;
        for p in processors {
            let mut pipe = redis::pipe();
            pipe.atomic()
                .xlen(self.keys.dlq_letters(&p))
                .del(self.keys.dlq_letters(&p))
                .ignore()
                .del(self.keys.dlq_replayed(&p))
                .ignore()
                .srem(self.keys.dlq_processors(), &p)
                .ignore();
            let (n,): (u64,) = pipe.query_async(&mut c).await?;
            total += n;
        }
        Ok(total)
    }

    /// Entry id → replay time of `processor`'s replayed letters.
    async fn replayed(&self, processor: &str) -> Result<HashMap<String, u64>, DlqError> {
        let mut c = self.conn.clone();
        Ok(c.hgetall(self.keys.dlq_replayed(processor)).await?)
    }
}

/// Whether `id` has the shape of a stream entry id (`<ms>-<seq>`): anything
/// else would be a range bound or a syntax error to `XRANGE`.
fn is_entry_id(id: &str) -> bool {
    entry_id(id).is_some()
}

/// A stream entry id (`<ms>-<seq>`) as its two numbers, in stream order.
fn entry_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(ms) || !digits(seq) {
        return None;
    }
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// A stream entry back into a [`DeadLetter`].
fn parse(processor: &str, id: &str, mut f: Fields) -> Result<DeadLetter, DlqError> {
    let corrupt = |reason: String| DlqError::Corrupt {
        processor: processor.to_owned(),
        id: id.to_owned(),
        reason,
    };
    let mut bytes = |name: &str| -> Result<Vec<u8>, DlqError> {
        match f.remove(name) {
            Some(redis::Value::BulkString(b)) => Ok(b),
            Some(redis::Value::SimpleString(s)) => Ok(s.into_bytes()),
            Some(other) => Err(corrupt(format!("field '{name}' is {other:?}"))),
            None => Err(corrupt(format!("field '{name}' is missing"))),
        }
    };
    let text = |b: Vec<u8>, name: &str| {
        String::from_utf8(b).map_err(|_| corrupt(format!("field '{name}' is not UTF-8")))
    };
    let number = |s: String, name: &str| {
        s.parse::<u64>()
            .map_err(|_| corrupt(format!("field '{name}' is not a number: {s:?}")))
    };
    let at_ms = number(text(bytes("at")?, "at")?, "at")?;
    let kind = text(bytes("kind")?, "kind")?;
    let reason = text(bytes("reason")?, "reason")?;
    let topic = text(bytes("topic")?, "topic")?;
    let payload = Bytes::from(bytes("payload")?);
    let qos = number(text(bytes("qos")?, "qos")?, "qos")?;
    let retain = text(bytes("retain")?, "retain")? == "1";
    let props = bytes("props")?;
    let properties: Properties =
        serde_json::from_slice(&props).map_err(|e| corrupt(format!("field 'props': {e}")))?;
    Ok(DeadLetter {
        id: id.to_owned(),
        processor: processor.to_owned(),
        at_ms,
        kind,
        reason,
        message: Message {
            topic,
            payload,
            qos: u8::try_from(qos.min(2)).unwrap_or(2),
            retain,
            properties,
        },
        replayed_ms: None,
    })
}

/// Optional bytes as standard base64 text.
mod b64_opt {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            base64::engine::general_purpose::STANDARD
                .decode(t)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_ids_are_recognised_and_range_bounds_are_not() {
        assert!(is_entry_id("1700000000000-0"));
        assert!(entry_id("9-10") > entry_id("9-9"));
        assert!(entry_id("10-0") > entry_id("9-99"));
        for bad in ["-", "+", "1700000000000", "a-1", "1-", "-1", "1-2-3", ""] {
            assert!(!is_entry_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn properties_round_trip_through_json_with_bytes_as_base64() {
        let p = Properties {
            content_type: Some("application/json".into()),
            correlation_data: Some(vec![0, 159, 146, 150]),
            response_topic: Some("mes/replies".into()),
            user_properties: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            message_expiry_interval: Some(30),
            payload_format_indicator: Some(1),
        };
        let json = serde_json::to_value(&p).unwrap();
        assert_eq!(json["correlation_data"], "AJ+Slg==");
        let back: Properties = serde_json::from_value(json).unwrap();
        assert_eq!(back, p);
        assert_eq!(Properties::from_mqtt(Some(&p.to_mqtt())), p);
        assert_eq!(Properties::from_mqtt(None), Properties::default());
    }

    #[test]
    fn unreadable_entries_say_which_field() {
        let mut f: Fields = HashMap::new();
        f.insert("at".into(), redis::Value::BulkString(b"x".to_vec()));
        let e = parse("jobs", "1-0", f).unwrap_err().to_string();
        assert!(
            e.contains("'at'") && e.contains("jobs") && e.contains("1-0"),
            "{e}"
        );
    }
}
