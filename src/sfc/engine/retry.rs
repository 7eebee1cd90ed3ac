//! Bounded attempts: every stream entry whose handling fails is counted in
//! Redis (any replica may take it over), and after
//! [`EngineSettings::max_attempts`](super::EngineSettings::max_attempts) it
//! is given up and kept as a dead letter, so nothing is retried forever.
//! A layer around the handlers (see `streams`), not inside them; only a
//! dispatch counts its own failed sends, to fail its action at the limit.

use super::{now_ms, Engine, EngineError, DEAD_LETTERS, GROUP};
use redis::AsyncCommands;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use tracing::{error, warn};

/// Why handling a stream entry failed, and whether that failure is
/// already counted against the entry's attempts (a dispatch counts its
/// failed sends itself, to fail its action at the limit).
#[derive(Debug)]
pub(super) enum Failure {
    /// Not counted yet: the entry's handler counts it.
    Uncounted(EngineError),
    /// Counted already, below the limit: the entry stays pending.
    Counted(EngineError),
}

impl From<EngineError> for Failure {
    fn from(e: EngineError) -> Self {
        Failure::Uncounted(e)
    }
}

/// An error as recorded in an entry's attempt history: at most 200 bytes.
fn clip(text: String) -> String {
    let mut text = text;
    if text.len() > 200 {
        let mut cut = 200;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// The dead-letter record of a stream entry given up after `errors`:
/// work items keep their item (as JSON when it parses), change entries
/// their fields.
fn dead_letter(
    stream: &str,
    entry: &str,
    map: &HashMap<String, redis::Value>,
    is_work: bool,
    errors: &[String],
    at_ms: u64,
) -> Value {
    let fields: Map<String, Value> = map
        .iter()
        .map(|(k, v)| {
            let text = match v {
                redis::Value::BulkString(b) => String::from_utf8_lossy(b).into_owned(),
                other => format!("{other:?}"),
            };
            (k.clone(), Value::String(text))
        })
        .collect();
    let mut r = json!({"stream": stream, "entry": entry, "errors": errors, "at_ms": at_ms});
    if is_work {
        let item = fields.get("item").cloned().unwrap_or(Value::Null);
        r["item"] = item
            .as_str()
            .and_then(|i| serde_json::from_str(i).ok())
            .unwrap_or(item);
    } else {
        r["fields"] = Value::Object(fields);
    }
    r
}

impl Engine {
    /// Failed attempts at one entry before it is given up (at least one).
    pub(super) fn max_attempts(&self) -> usize {
        self.inner.settings.max_attempts.max(1) as usize
    }

    /// The key counting the failed attempts at entry `id` of `stream`:
    /// `sendfail:{id}` for work items (named for dispatch, which counted
    /// first), `changefail:{id}` for change entries. Deleted when the entry
    /// is acknowledged.
    pub(super) fn failures_key(&self, scope: &str, is_work: bool, id: &str) -> String {
        if is_work {
            self.keys().send_failures(scope, id)
        } else {
            self.keys().change_failures(scope, id)
        }
    }

    /// Records a failed attempt under `key` (in Redis: the entry may be
    /// retried by another replica) and returns the history so far. A
    /// failure that cannot be recorded (Redis gone) is not counted: the
    /// error returned leaves the entry pending.
    pub(super) async fn count_failure(
        &self,
        key: &str,
        error: &EngineError,
    ) -> Result<Vec<String>, EngineError> {
        let mut c = self.conn();
        let (history,): (Vec<String>,) = redis::pipe()
            .rpush(key, clip(error.to_string()))
            .ignore()
            .expire(key, 86_400)
            .ignore()
            .lrange(key, 0, -1)
            .query_async(&mut c)
            .await?;
        Ok(history)
    }

    /// An entry whose handling failed: counted, and left pending to be
    /// tried again until `max_attempts`; then dead-lettered.
    pub(super) async fn on_failure(
        &self,
        scope: &str,
        stream: &str,
        id: &str,
        map: &HashMap<String, redis::Value>,
        failure: Failure,
    ) -> Result<(), EngineError> {
        let is_work = stream == self.keys().work(scope);
        let e = match failure {
            Failure::Counted(e) => return Err(e),
            Failure::Uncounted(e @ EngineError::Corrupt { .. }) => {
                warn!(scope, entry = id, error = %e, "entry cannot be processed; acknowledged");
                let mut c = self.conn();
                let _: i64 = c.xack(stream, GROUP, &[id]).await?;
                return Ok(());
            }
            Failure::Uncounted(e) => e,
        };
        let key = self.failures_key(scope, is_work, id);
        let history = self.count_failure(&key, &e).await?;
        if history.len() < self.max_attempts() {
            warn!(scope, stream, entry = id, attempt = history.len(), error = %e, "entry failed; will try again");
            return Err(e);
        }
        // Given up: kept where an operator can read it, and out of the
        // way of the stream (all at once: a half-done give-up would lose
        // the entry or leave it looping).
        let record = dead_letter(stream, id, map, is_work, &history, now_ms()).to_string();
        let letters = self.keys().dead_letters(scope);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .lpush(&letters, &record)
            .ignore()
            .ltrim(&letters, 0, DEAD_LETTERS - 1)
            .ignore()
            .xack(stream, GROUP, &[id])
            .ignore();
        if is_work {
            pipe.cmd("XDEL").arg(stream).arg(id).ignore();
        }
        pipe.del(&key).ignore();
        let mut c = self.conn();
        let _: () = pipe.query_async(&mut c).await?;
        error!(scope, stream, entry = id, attempts = history.len(), history = %history.join("; "), "entry given up after repeated failures; dead-lettered");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempt_histories_keep_errors_short() {
        assert_eq!(clip("short".into()), "short");
        let long = "é".repeat(150); // 300 bytes, 2 per char
        let c = clip(long);
        assert!(c.ends_with('…'));
        assert_eq!(c.len(), 200 + '…'.len_utf8());
    }

    #[test]
    fn a_dead_letter_keeps_the_entry_and_its_errors() {
        let bulk = |s: &str| redis::Value::BulkString(s.as_bytes().to_vec());
        let work = HashMap::from([("item".to_owned(), bulk(r#"{"kind":"finished","job":"j"}"#))]);
        let errors = vec!["redis refused: WRONGTYPE".to_owned(); 2];
        let r = dead_letter("t:{s}:work", "1-0", &work, true, &errors, 42);
        assert_eq!(r["stream"], "t:{s}:work");
        assert_eq!(r["entry"], "1-0");
        assert_eq!(r["item"]["kind"], "finished");
        assert_eq!(r["item"]["job"], "j");
        assert_eq!(r["errors"].as_array().map(Vec::len), Some(2));
        assert_eq!(r["at_ms"], 42);
        assert!(r.get("fields").is_none());
        // An item that is no JSON is kept as its text.
        let junk = HashMap::from([("item".to_owned(), bulk("{oops"))]);
        assert_eq!(
            dead_letter("w", "1-1", &junk, true, &errors, 0)["item"],
            "{oops"
        );
        // A change entry keeps its fields.
        let change = HashMap::from([
            ("job".to_owned(), bulk("j")),
            ("state".to_owned(), bulk("Running")),
        ]);
        let r = dead_letter("t:{s}:changes", "2-0", &change, false, &errors, 0);
        assert_eq!(r["fields"]["job"], "j");
        assert_eq!(r["fields"]["state"], "Running");
        assert!(r.get("item").is_none());
    }
}
