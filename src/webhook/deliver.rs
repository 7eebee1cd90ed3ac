//! Delivering one queue (one URL, one job): the head until it is accepted
//! or dead-lettered, then the next.

use super::request::{binary_request, sign_request};
use super::sink::WebhookSettings;
use super::DEAD_LETTER_PROCESSOR;
use crate::dlq::{DeadLetter, DeadLetters, Message, Properties};
use crate::error::ErrorKind;
use crate::redis::scripts::WEBHOOK_ACK;
use crate::redis::{Keys, RedisConnection};
use redis::AsyncCommands;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{debug, info, warn};

/// One receiver: its URL and the short id its queues are named by (the
/// first 8 bytes of the URL's SHA-256, hex), so a queue keeps its URL
/// when the list of URLs is reordered.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) url: String,
    pub(crate) id: String,
    /// The URL as logs and dead letters show it: a password in it
    /// replaced by `***`.
    pub(crate) shown: String,
}

impl Target {
    pub(crate) fn new(url: &str) -> Self {
        let digest = Sha256::digest(url.as_bytes());
        Target {
            url: url.to_owned(),
            id: digest[..8].iter().map(|b| format!("{b:02x}")).collect(),
            shown: redacted(url),
        }
    }
}

/// `url` with its password, if any, replaced by `***`.
fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_owned(),
    }
}

/// Moves the credentials of a URL `http://user:password@host/...` into
/// an `Authorization: Basic` header (RFC 7617), as a browser or curl does;
/// the request itself carries none (an HTTP request line has no place for
/// them, so without this they would silently not be sent). An
/// `Authorization` header already set wins.
fn credentials_to_header(req: &mut reqwest::Request) {
    use base64::Engine;
    let url = req.url_mut();
    if url.username().is_empty() && url.password().is_none() {
        return;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let user = decode(url.username());
    let password = url.password().map(decode).unwrap_or_default();
    let _ = url.set_username("");
    let _ = url.set_password(None);
    let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    if let Ok(mut value) = http::HeaderValue::from_str(&format!("Basic {token}")) {
        value.set_sensitive(true);
        req.headers_mut()
            .entry(http::header::AUTHORIZATION)
            .or_insert(value);
    }
}

/// What every delivery task shares.
pub(crate) struct Deliverer {
    pub(crate) conn: RedisConnection,
    pub(crate) keys: Keys,
    pub(crate) http: reqwest::Client,
    pub(crate) dlq: DeadLetters,
    pub(crate) settings: WebhookSettings,
}

/// The wait after the `attempts`-th failed attempt: `initial` doubled per
/// further attempt, at most `max`.
fn backoff(initial: Duration, max: Duration, attempts: u32) -> Duration {
    let shift = attempts.saturating_sub(1).min(31);
    initial.saturating_mul(1u32 << shift).min(max)
}

/// How long a task waits after Redis failed it before trying again.
const REDIS_RETRY: Duration = Duration::from_secs(1);

impl Deliverer {
    /// Delivers the queue `member` (`{target}:{job}`) of `scope` until it
    /// is empty. Redis failures are logged and retried; the task ends when
    /// the queue is empty (the sink starts a new one when it fills again).
    pub(crate) async fn drain(&self, scope: &str, member: &str) {
        let Some(target) = member
            .split_once(':')
            .and_then(|(id, _)| self.settings.targets.iter().find(|t| t.id == id))
        else {
            // A URL removed from the configuration: its queue stays in
            // Redis untouched (putting the URL back delivers it).
            debug!(
                scope,
                queue = member,
                "webhook queue of a URL no longer configured; left alone"
            );
            return;
        };
        loop {
            match self.step(scope, member, target).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(e) => {
                    warn!(scope, queue = member, error = %e, "webhook delivery: redis unavailable; retrying");
                    tokio::time::sleep(REDIS_RETRY).await;
                }
            }
        }
    }

    /// One attempt at the head of the queue (and the wait after a failed
    /// one); `false` when the queue is empty.
    async fn step(&self, scope: &str, member: &str, target: &Target) -> redis::RedisResult<bool> {
        let queue = self.keys.webhook_queue(scope, member);
        let mut c = self.conn.clone();
        let head: Option<String> = c.lindex(&queue, 0).await?;
        let Some(payload) = head else {
            // Empty: drop it from the pending set, through the ack script,
            // which checks the length in the same step (a plain SREM here
            // could remove a queue the sink has just filled again).
            self.ack(scope, member, "").await?;
            return Ok(false);
        };
        let event: cloudevents::Event = match serde_json::from_str(&payload) {
            Ok(e) => e,
            Err(e) => {
                let why = format!("queued delivery is not a CloudEvent: {e}");
                let body = payload.clone().into_bytes();
                self.dead_letter(scope, member, &payload, target, &why, body, Vec::new(), 0)
                    .await?;
                return Ok(true);
            }
        };
        match self.send(&target.url, event.clone()).await {
            Ok(()) => {
                self.ack(scope, member, &payload).await?;
                if let Some(i) = crate::metrics::instruments() {
                    i.webhook_delivery("delivered");
                }
                debug!(scope, queue = member, url = %target.shown, id = %cloudevents::AttributesReader::id(&event), "webhook delivered");
            }
            Err(why) => {
                if let Some(i) = crate::metrics::instruments() {
                    i.webhook_delivery("failed_attempt");
                }
                let attempts: u32 = c
                    .hincr(self.keys.webhook_attempts(scope), member, 1)
                    .await?;
                if attempts >= self.settings.max_attempts {
                    let (body, props) = match binary_request(&target.url, event) {
                        Ok(r) => {
                            let props = r
                                .headers()
                                .iter()
                                .map(|(k, v)| {
                                    (
                                        k.as_str().to_owned(),
                                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                                    )
                                })
                                .collect();
                            (r.into_body(), props)
                        }
                        Err(_) => (payload.clone().into_bytes(), Vec::new()),
                    };
                    self.dead_letter(scope, member, &payload, target, &why, body, props, attempts)
                        .await?;
                } else {
                    let wait = self.backoff(attempts);
                    info!(scope, queue = member, url = %target.shown, attempt = attempts, error = %why, retry_in_ms = wait.as_millis() as u64, "webhook delivery failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
        Ok(true)
    }

    fn backoff(&self, attempts: u32) -> Duration {
        backoff(
            self.settings.backoff_initial,
            self.settings.backoff_max,
            attempts,
        )
    }

    /// Sends `event` to `url`, signed now; `Err` says why it failed.
    async fn send(&self, url: &str, event: cloudevents::Event) -> Result<(), String> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        // Built before any await: the SDK's serializer is not `Send`.
        let req = {
            let mut r = binary_request(url, event)?;
            sign_request(&mut r, &self.settings.secret, now);
            let mut req =
                reqwest::Request::try_from(r).map_err(|e| format!("invalid request: {e}"))?;
            credentials_to_header(&mut req);
            req
        };
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| self.failure(url, &e))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(format!("HTTP status {}", resp.status()))
        }
    }

    /// Takes `head` (the delivery sent; `""` to only tidy up an empty
    /// queue) off the queue if it is still its head.
    /// Why a request got no answer, for the log line and the dead letter:
    /// reqwest's own message ("error sending request for url") leaves out
    /// the cause, which tells a hanging receiver from a refused or reset
    /// connection.
    fn failure(&self, url: &str, e: &reqwest::Error) -> String {
        if e.is_timeout() {
            return format!(
                "HTTP request timed out: no answer within {} ms (webhooks.timeout_ms)",
                self.settings.timeout.as_millis()
            );
        }
        // A TLS failure in an operator's words, else the error with its
        // causes; the URL with its password hidden.
        self.settings.tls.failure(&redacted(url), e)
    }

    async fn ack(&self, scope: &str, member: &str, head: &str) -> redis::RedisResult<()> {
        let mut c = self.conn.clone();
        let _: i64 = WEBHOOK_ACK
            .key(self.keys.webhook_queue(scope, member))
            .key(self.keys.webhook_pending(scope))
            .key(self.keys.webhook_attempts(scope))
            .arg(member)
            .arg(head)
            .invoke_async(&mut c)
            .await?;
        Ok(())
    }

    /// Keeps the head delivery as a dead letter (the request's body, its
    /// headers as user properties, the URL as topic), counts and logs it,
    /// and takes it off the queue so the job's next event goes.
    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        scope: &str,
        member: &str,
        head: &str,
        target: &Target,
        why: &str,
        body: Vec<u8>,
        headers: Vec<(String, String)>,
        attempts: u32,
    ) -> redis::RedisResult<()> {
        let reason = format!(
            "webhook {} gave up after {attempts} attempts: {why}",
            target.shown
        );
        let letter = DeadLetter {
            id: String::new(),
            processor: DEAD_LETTER_PROCESSOR.to_owned(),
            at_ms: crate::runtime::clock::now_ms(),
            kind: ErrorKind::CommunicationError.as_str().to_owned(),
            reason: reason.clone(),
            message: Message {
                topic: target.shown.clone(),
                payload: body.into(),
                qos: 0,
                retain: false,
                properties: Properties {
                    content_type: headers
                        .iter()
                        .find(|(k, _)| k == "content-type")
                        .map(|(_, v)| v.clone()),
                    user_properties: headers,
                    ..Properties::default()
                },
            },
            replayed_ms: None,
        };
        match self.dlq.append(&letter).await {
            Ok(id) => {
                warn!(scope, queue = member, url = %target.shown, dead_letter = %id, reason = %reason, "webhook delivery dead-lettered; the job's next event goes")
            }
            Err(e) => {
                warn!(scope, queue = member, url = %target.shown, reason = %reason, error = %e, "webhook delivery given up; the dead letter could not be stored")
            }
        }
        if let Some(i) = crate::metrics::instruments() {
            i.webhook_delivery("dead_lettered");
        }
        self.ack(scope, member, head).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_backoff_doubles_up_to_its_bound() {
        let ms = Duration::from_millis;
        let waits: Vec<Duration> = (1..=6).map(|n| backoff(ms(500), ms(5000), n)).collect();
        assert_eq!(
            waits,
            [ms(500), ms(1000), ms(2000), ms(4000), ms(5000), ms(5000)]
        );
        assert_eq!(backoff(ms(500), ms(60_000), 1000), ms(60_000));
    }

    #[test]
    fn a_target_is_named_by_its_url() {
        let a = Target::new("http://mes.local/hook");
        assert_eq!(a.id.len(), 16);
        assert_eq!(a.id, Target::new("http://mes.local/hook").id);
        assert_ne!(a.id, Target::new("http://mes.local/hook2").id);
    }
}
