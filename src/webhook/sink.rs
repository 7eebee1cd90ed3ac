//! Following the change streams and queueing deliveries (see the module
//! documentation of [`crate::webhook`]).

use super::client::WebhookTls;
use super::deliver::{Deliverer, Target};
use crate::config::Config;
use crate::dlq::DeadLetters;
use crate::jobs::manager::status_event;
use crate::jobs::store::{parse_state_key, JobStore, StoreError};
use crate::redis::scripts::WEBHOOK_ENQUEUE;
use crate::redis::{RedisClient, RedisConnection, StreamRead, StreamReader};
use crate::runtime::backoff::Backoff;
use crate::runtime::Shutdown;
use crate::CloudEvent;
use chrono::{TimeZone, Utc};
use redis::streams::StreamId;
use redis::AsyncCommands;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

/// What the sink needs from `[webhooks]`.
#[derive(Clone)]
pub(crate) struct WebhookSettings {
    pub(crate) targets: Vec<Target>,
    pub(crate) secret: Arc<[u8]>,
    pub(crate) max_attempts: u32,
    pub(crate) backoff_initial: Duration,
    pub(crate) backoff_max: Duration,
    /// Send job state transitions (and the order being stored).
    pub(crate) status: bool,
    /// Send job response updates without a state change.
    pub(crate) progress: bool,
    /// CloudEvent `source`.
    pub(crate) source: String,
    /// Longest wait for new changes before scopes and queues are looked at
    /// again.
    pub(crate) poll: Duration,
    /// The TLS files (for the client and for explaining TLS failures).
    pub(crate) tls: WebhookTls,
    /// Longest wait for a receiver's answer (`webhooks.timeout_ms`).
    pub(crate) timeout: Duration,
    /// The client of the deliveries, made from `tls` and `timeout`.
    pub(crate) http: reqwest::Client,
}

impl WebhookSettings {
    /// The settings of `config`, `None` when no URL is configured.
    ///
    /// # Errors
    /// URLs without a secret: unsigned webhooks are refused. A TLS file of
    /// `https://` URLs that cannot be used (`WebhookTls::http_client`).
    pub(crate) fn from_config(config: &Config) -> Result<Option<Self>, String> {
        let w = &config.webhooks;
        if w.urls.is_empty() {
            return Ok(None);
        }
        let Some(secret) = &w.secret else {
            return Err(
                "webhooks.urls is set but webhooks.secret (APP_WEBHOOK_SECRET) is not: webhook requests are always signed"
                    .into(),
            );
        };
        let tls = WebhookTls {
            ca: w.tls_ca_path.clone(),
            client: w
                .tls_client_cert_path
                .clone()
                .zip(w.tls_client_key_path.clone()),
        };
        let timeout = Duration::from_millis(w.timeout_ms);
        // The TLS files are read now: a station whose files cannot be used
        // does not start, rather than failing every delivery.
        let https = w.urls.iter().any(|u| u.starts_with("https://"));
        let http = tls.http_client(https, timeout)?;
        Ok(Some(WebhookSettings {
            targets: w.urls.iter().map(|u| Target::new(u)).collect(),
            secret: Arc::from(secret.expose().as_bytes()),
            max_attempts: w.max_attempts.max(1),
            backoff_initial: Duration::from_millis(w.backoff_initial_ms),
            backoff_max: Duration::from_millis(w.backoff_max_ms.max(w.backoff_initial_ms)),
            status: w.event_types.iter().any(|t| t == "status"),
            progress: w.event_types.iter().any(|t| t == "progress"),
            source: config.processing.cloudevent_source.clone(),
            poll: Duration::from_secs(1),
            tls,
            timeout,
            http,
        }))
    }
}

/// Sink failures (the loop logs them and starts a new session).
#[derive(Debug, thiserror::Error)]
pub(crate) enum SinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
}

/// The webhook sink: run it under the webhook singleton lock.
#[derive(Clone)]
pub(crate) struct WebhookSink {
    store: JobStore,
    client: RedisClient,
    conn: RedisConnection,
    settings: WebhookSettings,
    dlq: DeadLetters,
}

/// The delivery tasks running, by (scope, queue member); aborted when the
/// sink stops (the lock was lost, or shutdown), so that only the lock
/// holder delivers.
#[derive(Default)]
struct Workers(HashMap<(String, String), JoinHandle<()>>);

impl Drop for Workers {
    fn drop(&mut self) {
        for h in self.0.values() {
            h.abort();
        }
    }
}

impl WebhookSink {
    /// A sink over `store`'s change streams; `client` opens the dedicated
    /// connection of the blocking stream reads.
    pub(crate) fn new(
        store: JobStore,
        client: RedisClient,
        dlq: DeadLetters,
        settings: WebhookSettings,
    ) -> Self {
        WebhookSink {
            conn: store.connection(),
            store,
            client,
            settings,
            dlq,
        }
    }

    /// Runs until shutdown (or until the task is dropped when the lock is
    /// lost): Redis failures are logged and the session started again with
    /// backoff; nothing is skipped, as the cursor moves only with the
    /// queued deliveries.
    pub(crate) async fn run(self, mut shutdown: Shutdown) {
        let deliverer = Arc::new(Deliverer {
            conn: self.conn.clone(),
            keys: self.store.keys().clone(),
            http: self.settings.http.clone(),
            dlq: self.dlq.clone(),
            settings: self.settings.clone(),
        });
        info!(
            targets = self.settings.targets.len(),
            "webhook sink started"
        );
        let mut workers = Workers::default();
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        loop {
            let started = Instant::now();
            let r = tokio::select! {
                r = self.session(&deliverer, &mut workers) => r,
                _ = shutdown.wait() => return,
            };
            if let Err(e) = r {
                warn!(error = %e, "webhook sink interrupted; reconnecting");
                if !backoff.wait(started.elapsed(), &mut shutdown).await {
                    return;
                }
            }
        }
    }

    /// One connected session: follow every scope's change stream, queue
    /// deliveries, keep one delivery task per pending queue.
    async fn session(
        &self,
        deliverer: &Arc<Deliverer>,
        workers: &mut Workers,
    ) -> Result<(), SinkError> {
        let mut reader = StreamReader::open(&self.client).await?;
        let keys = self.store.keys().clone();
        let mut cursors: BTreeMap<String, String> = BTreeMap::new();
        let read = StreamRead::new(200, self.settings.poll);
        loop {
            for scope in self.store.scopes().await? {
                if let std::collections::btree_map::Entry::Vacant(slot) = cursors.entry(scope) {
                    let mut c = self.conn.clone();
                    let stored: Option<String> = c.get(keys.webhook_cursor(slot.key())).await?;
                    // A scope the sink never followed is read from its
                    // first change still in the (capped) stream.
                    slot.insert(stored.unwrap_or_else(|| "0-0".into()));
                }
            }
            self.start_workers(deliverer, workers, cursors.keys())
                .await?;
            if cursors.is_empty() {
                tokio::time::sleep(self.settings.poll).await;
                continue;
            }
            let streams: Vec<String> = cursors.keys().map(|s| keys.changes(s)).collect();
            let by_stream: HashMap<&str, &str> = streams
                .iter()
                .map(String::as_str)
                .zip(cursors.keys().map(String::as_str))
                .collect();
            let ids: Vec<String> = cursors.values().cloned().collect();
            let Some(reply) = reader.read(&streams, &ids, &read).await? else {
                continue;
            };
            let mut moved = Vec::new();
            for key in reply.keys {
                let Some(scope) = by_stream.get(key.key.as_str()).map(|s| (*s).to_owned()) else {
                    continue;
                };
                if let Some(last) = self.enqueue(&scope, &key.ids).await? {
                    moved.push((scope, last));
                }
            }
            for (scope, last) in moved {
                cursors.insert(scope, last);
            }
        }
    }

    /// Starts a delivery task for every pending queue that has none.
    async fn start_workers(
        &self,
        deliverer: &Arc<Deliverer>,
        workers: &mut Workers,
        scopes: impl Iterator<Item = &String>,
    ) -> Result<(), SinkError> {
        workers.0.retain(|_, h| !h.is_finished());
        for scope in scopes {
            let mut c = self.conn.clone();
            let members: Vec<String> = c.smembers(self.store.keys().webhook_pending(scope)).await?;
            for member in members {
                let key = (scope.clone(), member);
                if workers.0.contains_key(&key) {
                    continue;
                }
                let d = deliverer.clone();
                let (s, m) = key.clone();
                workers
                    .0
                    .insert(key, tokio::spawn(async move { d.drain(&s, &m).await }));
            }
        }
        Ok(())
    }

    /// Queues the deliveries of `entries` (change entries of `scope`) and
    /// moves the cursor past them, in one script; the new cursor.
    async fn enqueue(
        &self,
        scope: &str,
        entries: &[StreamId],
    ) -> Result<Option<String>, SinkError> {
        let Some(last) = entries.last().map(|e| e.id.clone()) else {
            return Ok(None);
        };
        let keys = self.store.keys();
        let mut script = WEBHOOK_ENQUEUE.prepare_invoke();
        script
            .key(keys.webhook_cursor(scope))
            .key(keys.webhook_pending(scope))
            .arg(&last);
        let mut queued = 0usize;
        for entry in entries {
            let Some((job, payload)) = self.delivery(scope, entry).await? else {
                continue;
            };
            for t in &self.settings.targets {
                let member = format!("{}:{job}", t.id);
                script
                    .key(keys.webhook_queue(scope, &member))
                    .arg(member)
                    .arg(&payload);
                queued += 1;
            }
        }
        let mut c = self.conn.clone();
        let _: i64 = script.invoke_async(&mut c).await?;
        if queued > 0 {
            debug!(scope, queued, cursor = %last, "webhook deliveries queued");
        }
        Ok(Some(last))
    }

    /// The job id and the delivery (the SDK event as CloudEvents JSON) of
    /// one change entry, `None` when it is not sent (a kind not selected,
    /// a purge, a job gone by now, an entry that does not parse: logged).
    async fn delivery(
        &self,
        scope: &str,
        entry: &StreamId,
    ) -> Result<Option<(String, String)>, SinkError> {
        let field = |name: &str| entry.get::<String>(name);
        let (Some(job_id), Some(state), Some(kind)) = (field("job"), field("state"), field("kind"))
        else {
            warn!(scope, entry = %entry.id, "webhook: change entry without job, state or kind; skipped");
            return Ok(None);
        };
        let wanted = match kind.as_str() {
            "purged" => false,
            "response" => self.settings.progress,
            _ => self.settings.status,
        };
        if !wanted {
            return Ok(None);
        }
        let state = match parse_state_key(&state) {
            Ok(s) => s,
            Err(e) => {
                warn!(scope, job = %job_id, entry = %entry.id, error = %e, "webhook: change entry with an unreadable state; skipped");
                return Ok(None);
            }
        };
        let Some(mut job) = self.store.get(scope, &job_id).await? else {
            // Purged since (its retention passed while the sink was away):
            // its order is gone, there is nothing to describe.
            warn!(scope, job = %job_id, entry = %entry.id, "webhook: job purged before its change was queued; skipped");
            return Ok(None);
        };
        job.state = state;
        let mut e = match CloudEvent::with_payload(
            self.settings.source.as_str(),
            &status_event(&job),
        ) {
            Ok(e) => e,
            Err(m) => {
                warn!(scope, job = %job_id, error = %m, "webhook: status event not encodable; skipped");
                return Ok(None);
            }
        };
        // The same change always has the same id: a receiver deduplicates
        // redeliveries by `ce-id`.
        e.id = format!("{scope}:{}", entry.id);
        e.subject = Some(scope.to_owned());
        e.time = entry_time(&entry.id).or(e.time);
        e.traceparent = field("trace");
        let event: cloudevents::Event = e.into();
        match serde_json::to_string(&event) {
            Ok(json) => Ok(Some((job_id, json))),
            Err(err) => {
                warn!(scope, job = %job_id, error = %err, "webhook: event not serialisable; skipped");
                Ok(None)
            }
        }
    }
}

/// When a stream entry was added: the milliseconds of its id.
fn entry_time(id: &str) -> Option<chrono::DateTime<Utc>> {
    let ms: i64 = id.split('-').next()?.parse().ok()?;
    Utc.timestamp_millis_opt(ms).single()
}
