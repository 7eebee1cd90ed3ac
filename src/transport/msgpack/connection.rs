//! One client connection: frames in, answers and events out.
//!
//! Reading: the connection takes a permit of its own semaphore (size
//! `max_concurrent_requests`) *before* it takes the next frame from its
//! buffer or reads the socket; the permit goes with the call and comes back
//! when the call has answered. So with the limit reached the connection
//! simply stops reading: the kernel's buffers fill and TCP flow control
//! slows the client down (back-pressure, wire contract §5); nothing is
//! rejected.
//!
//! Writing: one task owns the socket's write half and drains a bounded
//! queue. Answers wait for room in it (their permit holds the reading back
//! meanwhile); event broadcasts never wait: a full queue closes the
//! connection (see [`MsgpackTransport::broadcast`]).
//!
//! Ending: at EOF, an error, a frame it cannot get past, a kick or
//! shutdown, the connection stops reading, waits until every call it
//! started has answered (their effects are never cut off half-way), then
//! flushes and closes.

use super::frame::{self, Frame, Scan};
use super::value::Value;
use super::MsgpackTransport;
use bytes::BytesMut;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

/// How long the last answers may take to reach a client that closes.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a connection stops reading.
enum Stop {
    Eof,
    Shutdown,
    Kicked,
    Broken(String),
}

/// A call in flight: its permit and its place in the counters, given back
/// together when it is dropped (also if its task panicked).
struct InFlight {
    _permit: OwnedSemaphorePermit,
    conn: Arc<AtomicUsize>,
    transport: Arc<MsgpackTransport>,
}

impl InFlight {
    fn new(
        permit: OwnedSemaphorePermit,
        conn: &Arc<AtomicUsize>,
        transport: &Arc<MsgpackTransport>,
    ) -> Self {
        let now = conn.fetch_add(1, Ordering::SeqCst) + 1;
        transport.peak.fetch_max(now, Ordering::SeqCst);
        transport.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            _permit: permit,
            conn: conn.clone(),
            transport: transport.clone(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn.fetch_sub(1, Ordering::SeqCst);
        self.transport.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl MsgpackTransport {
    pub(super) async fn serve_stream<S>(self: Arc<Self>, stream: S, peer: String)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (tx, mut rx) = mpsc::channel::<Vec<u8>>(self.settings.client_queue.max(1));
        let kick = Arc::new(Notify::new());
        let id = self.register(&peer, tx.clone(), kick.clone());
        info!(transport = %self.name, %peer, "client connected");
        let mut writer = tokio::spawn(async move {
            while let Some(f) = rx.recv().await {
                if wr.write_all(&f).await.is_err() {
                    return;
                }
            }
            let _ = wr.shutdown().await;
        });
        let limit = self.settings.max_concurrent_requests.max(1);
        let permits = Arc::new(Semaphore::new(limit));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let mut buf = BytesMut::with_capacity(8 * 1024);
        let mut scanner = frame::Scanner::default();
        let mut shutdown = self.shutdown.subscribe();
        let stop = loop {
            let permit = tokio::select! {
                biased;
                _ = super::stopped(&mut shutdown) => break Stop::Shutdown,
                _ = kick.notified() => break Stop::Kicked,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break Stop::Shutdown,
                },
            };
            let bytes = loop {
                match scanner.scan(&buf, self.settings.max_buffer_size) {
                    Scan::Frame(n) => break Ok(buf.split_to(n)),
                    Scan::TooLarge(n) => break Err(self.too_large(&buf, n, &tx).await),
                    Scan::Invalid(m) => {
                        break Err(Stop::Broken(format!(
                            "bytes that are not MessagePack ({m}); the stream cannot be followed past them"
                        )))
                    }
                    Scan::Incomplete => {}
                }
                let read = tokio::select! {
                    biased;
                    _ = super::stopped(&mut shutdown) => break Err(Stop::Shutdown),
                    _ = kick.notified() => break Err(Stop::Kicked),
                    r = rd.read_buf(&mut buf) => r,
                };
                match read {
                    Ok(0) => break Err(Stop::Eof),
                    Ok(_) => {}
                    Err(e) => break Err(Stop::Broken(e.to_string())),
                }
            };
            let bytes = match bytes {
                Ok(b) => b,
                Err(stop) => break stop,
            };
            let frame = match Value::decode(&bytes) {
                Ok(v) => Frame::parse(v),
                Err(m) => {
                    // Its bytes were scanned, so the stream goes on past it;
                    // a request among them is answered, never left waiting.
                    // (Logged and counted as a malformed frame by `start`.)
                    Err(frame::Malformed {
                        msgid: frame::msgid_of_prefix(&bytes).map(Value::UInt),
                        message: format!("the frame is not a readable MessagePack-RPC frame: {m}"),
                    })
                }
            };
            let call = InFlight::new(permit, &in_flight, &self);
            self.start(frame, call, &tx, &peer);
        };
        match &stop {
            Stop::Eof if !buf.is_empty() => {
                // A truncated frame: never dropped silently, and a client
                // that only half-closed gets the error under its msgid.
                self.metrics.error(crate::error::ErrorKind::PayloadInvalid);
                let msgid = frame::msgid_of_prefix(&buf);
                warn!(transport = %self.name, %peer, bytes = buf.len(), ?msgid, "client closed its side in the middle of a frame; the incomplete frame is dropped");
                if let Some(msgid) = msgid {
                    let message = format!(
                        "the client closed its side {} bytes into this request's frame: it is incomplete and was not processed",
                        buf.len()
                    );
                    let _ = tx.try_send(frame::response(msgid, Err(message)));
                }
            }
            Stop::Eof => debug!(transport = %self.name, %peer, "client closed its side"),
            Stop::Shutdown => {}
            Stop::Kicked => {}
            Stop::Broken(why) => {
                warn!(transport = %self.name, %peer, reason = %why, "closing the connection")
            }
        }
        // Every call of this connection answers before it closes: all the
        // permits back means none is in flight.
        self.unregister(id);
        if matches!(stop, Stop::Kicked) {
            writer.abort();
        }
        let _ = permits.acquire_many(limit as u32).await;
        drop(tx);
        if tokio::time::timeout(FLUSH_TIMEOUT, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        info!(transport = %self.name, %peer, "client disconnected");
    }

    /// Starts what a frame asks for; the call's task owns its permit.
    fn start(
        self: &Arc<Self>,
        frame: Result<Frame, frame::Malformed>,
        call: InFlight,
        tx: &mpsc::Sender<Vec<u8>>,
        peer: &str,
    ) {
        match frame {
            Ok(Frame::Request {
                msgid,
                method,
                params,
            }) => {
                let this = self.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let result = this.call(&method, params).await;
                    let _ = tx.send(frame::response(msgid, result)).await;
                    drop(call);
                });
            }
            Ok(Frame::Notification { method, params }) => match method.as_str() {
                "heartbeat" => {
                    debug!(transport = %self.name, %peer, timestamp = ?params.first(), "heartbeat");
                }
                "publish" => {
                    let this = self.clone();
                    tokio::spawn(async move {
                        // A notification gets no answer, whatever happens.
                        let _ = this.call(&method, params).await;
                        drop(call);
                    });
                }
                other => {
                    warn!(transport = %self.name, %peer, method = %other.escape_debug(), "notification of an unknown method; ignored");
                }
            },
            Ok(Frame::Response { msgid }) => {
                debug!(transport = %self.name, %peer, msgid, "response to no request of ours; ignored");
            }
            Err(m) => {
                self.metrics.error(crate::error::ErrorKind::PayloadInvalid);
                warn!(transport = %self.name, %peer, msgid = ?m.msgid, reason = %m.message, "malformed frame");
                if let Some(msgid) = m.msgid {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(frame::response_to(msgid, Err(m.message))).await;
                        drop(call);
                    });
                }
            }
        }
    }

    /// A frame larger than `max_buffer_size`: its sender gets an error
    /// (when the msgid is among the bytes already read) and the
    /// connection is closed, since the rest of the frame cannot be skipped
    /// without reading it.
    async fn too_large(&self, buf: &[u8], size: usize, tx: &mpsc::Sender<Vec<u8>>) -> Stop {
        let max = self.settings.max_buffer_size;
        let message = format!(
            "frame of at least {size} bytes exceeds the maximum frame size of {max} bytes (max_buffer_size); closing the connection"
        );
        self.metrics
            .error(crate::error::ErrorKind::ResourceExhausted);
        if let Some(msgid) = frame::msgid_of_prefix(buf) {
            let _ = tx.send(frame::response(msgid, Err(message.clone()))).await;
        }
        Stop::Broken(message)
    }
}
