//! The MessagePack-RPC sidecar transport (wire contract §5): a TCP server
//! (optionally TLS) for equipment adapters and MES connectors that do not
//! speak MQTT.
//!
//! A client calls `publish(cloudevent_map, transport_metadata|nil)` and
//! gets the list of reply CloudEvent maps; `heartbeat(timestamp)` is a
//! notification and gets nothing. The events of the processors bound here
//! are broadcast to every connected client as
//! `[2, "cloudevent", [cloudevent_map, intent]]`.
//!
//! What happens to a call is what happens to an MQTT message: routed by
//! `type` to the one processor bound here that handles it (MicroDCS fans
//! out to every processor: the defect the contract fixes), deduplicated by
//! (`source`, `id`) through the same dedupe layer, retried and given up on
//! by the same retry decision (`transport::disposition`), answered with
//! the same replies and error replies, dead-lettered into the same Redis
//! streams (`crate::dlq`).
//!
//! # Layout
//!
//! - `settings`: [`MsgpackSettings`].
//! - `value`, `frame`: MessagePack values and MessagePack-RPC frames, pure.
//! - `event`: CloudEvent map ↔ [`CloudEvent`], by the MQTT binding's rules.
//! - `connection`: one client: reading with back-pressure, the bounded
//!   write queue, graceful end.
//! - `calls`: a call from its frame to its result (routing, dedupe,
//!   retries, replies, dead letters).
//! - `tls`: the rustls acceptor (feature `tls`).

mod calls;
mod connection;
mod event;
mod frame;
mod settings;
#[cfg(feature = "tls")]
mod tls;
mod value;

pub use settings::{MsgpackSettings, MsgpackTls};

use crate::binding::port::{BoxFuture, Outgoing, Publisher, TransportError};
use crate::binding::topics::TopicBinding;
use crate::dedupe::Dedupe;
use crate::envelope::CloudEvent;
use crate::metrics::Metrics;
use crate::processor::{Bound, Processor};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Notify};
use tracing::{info, warn};
use value::Value;

/// The MessagePack-RPC server: accepts clients, serves their calls with
/// the processors bound to it, broadcasts those processors' events.
pub struct MsgpackTransport {
    name: String,
    settings: MsgpackSettings,
    listener: tokio::sync::Mutex<Option<TcpListener>>,
    local_addr: watch::Sender<Option<SocketAddr>>,
    routes: RwLock<Vec<Processor>>,
    dedupe: RwLock<Option<Dedupe>>,
    dead_letters: RwLock<Option<crate::dlq::DeadLetters>>,
    metrics: Arc<Metrics>,
    clients: Mutex<HashMap<u64, Client>>,
    next_client: AtomicU64,
    /// Calls being processed now, over all connections.
    in_flight: AtomicUsize,
    /// The most calls one connection ever had in flight at once.
    peak: AtomicUsize,
    shutdown: watch::Sender<bool>,
    #[cfg(feature = "tls")]
    tls: Option<tokio_rustls::TlsAcceptor>,
}

/// Why a [`MsgpackTransport`] cannot be created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgpackError {
    /// A TLS file cannot be read or used; fix the file or the setting it
    /// names and start again.
    #[error("{0}")]
    Tls(String),
    /// TLS is configured but this build has no `tls` feature: build with
    /// it, or unset `msgpack.tls_cert_path`.
    #[error("MessagePack-RPC over TLS needs the `tls` feature, which this build lacks")]
    TlsUnsupported,
}

/// A connected client as the broadcast sees it.
struct Client {
    peer: String,
    tx: mpsc::Sender<Vec<u8>>,
    /// Tells the connection to close (its queue overflowed).
    kick: Arc<Notify>,
}

impl std::fmt::Debug for MsgpackTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MsgpackTransport")
            .field("name", &self.name)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl MsgpackTransport {
    /// Creates the transport (not yet listening: see
    /// [`MsgpackTransport::listen`] and [`MsgpackTransport::run`]).
    ///
    /// # Errors
    /// [`MsgpackError::Tls`] when the certificate, key or CA of
    /// `settings.tls` cannot be read or used (the message names the file
    /// and the setting), [`MsgpackError::TlsUnsupported`] when TLS is asked
    /// for in a build without the `tls` feature.
    pub fn new(
        name: impl Into<String>,
        settings: MsgpackSettings,
    ) -> Result<Arc<Self>, MsgpackError> {
        #[cfg(feature = "tls")]
        let tls = match &settings.tls {
            Some(t) => Some(tls::acceptor(t).map_err(MsgpackError::Tls)?),
            None => None,
        };
        #[cfg(not(feature = "tls"))]
        if settings.tls.is_some() {
            return Err(MsgpackError::TlsUnsupported);
        }
        Ok(Arc::new(MsgpackTransport {
            name: name.into(),
            settings,
            listener: tokio::sync::Mutex::new(None),
            local_addr: watch::channel(None).0,
            routes: RwLock::new(Vec::new()),
            dedupe: RwLock::new(None),
            dead_letters: RwLock::new(None),
            metrics: Arc::new(Metrics::default()),
            clients: Mutex::new(HashMap::new()),
            next_client: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            shutdown: watch::channel(false).0,
            #[cfg(feature = "tls")]
            tls,
        }))
    }

    /// Binds a processor to this transport: calls whose `type` it handles
    /// go to it, and its events are broadcast to the clients. `binding`
    /// only names the intent of each event (the last level of the topic it
    /// would have over MQTT); pass the processor's MQTT binding.
    pub fn bind(self: &Arc<Self>, processor: &Processor, binding: TopicBinding) {
        // The `source` of its events, unless a transport bound before (MQTT,
        // which also sets the events' QoS) did.
        if processor.shared.emitter.bindings().is_empty() {
            processor.shared.emitter.configure(&self.settings.source, 1);
        }
        processor.shared.emitter.bind(Bound {
            publisher: self.clone() as Arc<dyn Publisher>,
            binding,
        });
        write(&self.routes).push(processor.clone());
    }

    /// Enables deduplication by (`source`, `id`).
    pub(crate) fn set_dedupe(&self, d: Dedupe) {
        *write(&self.dedupe) = Some(d);
    }

    /// Keeps every dead letter in Redis (see [`crate::dlq`]).
    pub(crate) fn set_dead_letters(&self, d: crate::dlq::DeadLetters) {
        *write(&self.dead_letters) = Some(d);
    }

    /// The settings it was created with.
    pub fn settings(&self) -> &MsgpackSettings {
        &self.settings
    }

    /// The transport's counters.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Calls being processed right now, over all connections.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// The most calls one connection has had in flight at once since the
    /// start: never more than `max_concurrent_requests`.
    pub fn peak_in_flight(&self) -> usize {
        self.peak.load(Ordering::SeqCst)
    }

    /// Clients connected right now.
    pub fn clients(&self) -> usize {
        lock(&self.clients).len()
    }

    /// Binds the listening socket (at most once; [`MsgpackTransport::run`]
    /// does it when nobody did) and returns its address: with port 0, the
    /// port the system chose.
    ///
    /// # Errors
    /// The host does not resolve or the address cannot be bound.
    pub async fn listen(&self) -> std::io::Result<SocketAddr> {
        let mut slot = self.listener.lock().await;
        if let Some(l) = slot.as_ref() {
            return l.local_addr();
        }
        let host = self
            .settings
            .host
            .trim_start_matches('[')
            .trim_end_matches(']');
        let mut last = None;
        for addr in tokio::net::lookup_host((host, self.settings.port)).await? {
            let socket = if addr.is_ipv4() {
                tokio::net::TcpSocket::new_v4()?
            } else {
                tokio::net::TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            if let Err(e) = socket.bind(addr) {
                last = Some(e);
                continue;
            }
            match socket.listen(self.settings.max_queued_connections.max(1)) {
                Ok(l) => {
                    let bound = l.local_addr()?;
                    *slot = Some(l);
                    self.local_addr.send_replace(Some(bound));
                    return Ok(bound);
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                format!("'{}' resolves to no address", self.settings.host),
            )
        }))
    }

    /// The address it listens on, once it does.
    pub async fn local_addr(&self) -> SocketAddr {
        let mut rx = self.local_addr.subscribe();
        loop {
            if let Some(a) = *rx.borrow_and_update() {
                return a;
            }
            if rx.changed().await.is_err() {
                // The sender lives as long as `self`: unreachable.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Asks [`MsgpackTransport::run`] to shut down gracefully.
    pub fn shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    /// Accepts clients until [`MsgpackTransport::shutdown`], then stops
    /// accepting, stops reading from the clients, lets every call in
    /// flight finish and send its answer, and closes the connections. (The
    /// app bounds all this by its grace period.)
    ///
    /// # Errors
    /// The listening socket cannot be bound.
    pub async fn run(self: Arc<Self>) -> std::io::Result<()> {
        let addr = self.listen().await?;
        let Some(listener) = self.listener.lock().await.take() else {
            return Ok(());
        };
        info!(transport = %self.name, %addr, tls = self.settings.tls.is_some(), "MessagePack-RPC server listening");
        let mut conns = tokio::task::JoinSet::new();
        let mut shutdown = self.shutdown.subscribe();
        loop {
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let this = self.clone();
                        conns.spawn(async move { this.serve(stream, peer).await });
                    }
                    Err(e) => {
                        // Out of file descriptors and the like: wait, not spin.
                        warn!(transport = %self.name, error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = conns.join_next(), if !conns.is_empty() => {}
            }
        }
        drop(listener);
        info!(transport = %self.name, connections = conns.len(), in_flight = self.in_flight(), "MessagePack-RPC server stops accepting; finishing calls in flight");
        while conns.join_next().await.is_some() {}
        info!(transport = %self.name, "MessagePack-RPC server stopped");
        Ok(())
    }

    /// One accepted connection, after the TLS handshake when configured.
    async fn serve(self: Arc<Self>, stream: tokio::net::TcpStream, peer: SocketAddr) {
        #[cfg(feature = "tls")]
        if let Some(acceptor) = self.tls.clone() {
            let handshake = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream));
            match handshake.await {
                Ok(Ok(s)) => return self.serve_stream(s, peer.to_string()).await,
                Ok(Err(e)) => {
                    warn!(transport = %self.name, %peer, error = %e, "TLS handshake refused");
                }
                Err(_) => warn!(transport = %self.name, %peer, "TLS handshake timed out"),
            }
            return;
        }
        self.serve_stream(stream, peer.to_string()).await;
    }

    fn register(&self, peer: &str, tx: mpsc::Sender<Vec<u8>>, kick: Arc<Notify>) -> u64 {
        let id = self.next_client.fetch_add(1, Ordering::Relaxed);
        lock(&self.clients).insert(
            id,
            Client {
                peer: peer.to_owned(),
                tx,
                kick,
            },
        );
        id
    }

    fn unregister(&self, id: u64) {
        lock(&self.clients).remove(&id);
    }

    /// Queues `frame` for every client. A client whose queue is full is
    /// too slow: it is dropped from the broadcast and its connection
    /// closed, with a log line, so the others and the processor never wait
    /// for it.
    fn broadcast(&self, frame: &[u8]) -> usize {
        let mut clients = lock(&self.clients);
        let mut sent = 0;
        clients.retain(|_, c| match c.tx.try_send(frame.to_vec()) {
            Ok(()) => {
                sent += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                warn!(transport = %self.name, peer = %c.peer, queue = self.settings.client_queue, "client does not keep up with the events; closing its connection");
                c.kick.notify_one();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        sent
    }
}

impl Publisher for MsgpackTransport {
    fn name(&self) -> &str {
        &self.name
    }

    /// Broadcasts the event to every connected client as
    /// `[2, "cloudevent", [cloudevent_map, intent]]`, the intent being the
    /// last level of the topic. Never waits for a client.
    fn publish(&self, msg: Outgoing) -> BoxFuture<'_, Result<(), TransportError>> {
        let intent = msg.topic.rsplit('/').next().unwrap_or("events").to_owned();
        let frame = frame::notification(
            "cloudevent",
            vec![event::to_map(&msg.event), Value::Str(intent)],
        );
        self.broadcast(&frame);
        Box::pin(std::future::ready(Ok(())))
    }

    fn request(
        &self,
        msg: Outgoing,
        _timeout: Duration,
    ) -> BoxFuture<'_, Result<CloudEvent, TransportError>> {
        Box::pin(std::future::ready(Err(TransportError::Invalid {
            topic: msg.topic,
            reason: "the MessagePack-RPC transport sends no requests; bind the processor to MQTT first to send them".into(),
        })))
    }

    fn instance_id(&self) -> &str {
        &self.name
    }
}

/// Resolves once shutdown was asked for. (The guard `wait_for` returns
/// is not `Send`: it must not live in the caller's future.)
async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
