//! Blocking reads of many streams at once ([`StreamReader`]): what the SFC
//! engine (`XREADGROUP` over every scope's change and work streams) and the
//! MES publisher (`XREAD` over every scope's change stream) wait on.
//!
//! On one Redis it is one `XREAD`/`XREADGROUP` call over every stream, on
//! a connection of its own (a blocking read would stall the shared one).
//!
//! A Redis Cluster refuses a command whose keys live in different slots
//! (`CROSSSLOT`), and each scope is one slot (its keys share the hash tag
//! `{S}`). There the reader keeps one task per slot, each with a
//! connection to that slot's master (it starts at a configured node and
//! follows `MOVED`/`ASK` to the owner), reading that slot's streams in a
//! loop and handing each reply over a channel; [`StreamReader::read`]
//! waits for the first reply and takes whatever else is ready. A reply a
//! task read is never dropped: with a consumer group an entry read is
//! pending until acknowledged, and one read and thrown away would only be
//! handled after the group's idle time, when it is claimed again. A task
//! reads at most one reply ahead of the caller (the channel holds one).
//!
//! Without a group (`XREAD`) each slot task keeps the cursors of its
//! streams: the caller's id is used when a stream is first read, the
//! task's own cursor (the last entry it handed over) after that.

use super::connection::{Client, RedisClient};
use redis::cluster_routing::Slot;
use redis::streams::{StreamKey, StreamReadOptions, StreamReadReply};
use redis::ServerErrorKind;
use redis::{AsyncCommands, ConnectionAddr, ConnectionInfo, ErrorKind, RedisError, RedisResult};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// How a [`StreamReader`] reads: at most `count` entries per stream,
/// waiting up to `block` for the first, in a consumer group or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamRead {
    group: Option<(String, String)>,
    count: usize,
    block: Duration,
}

impl StreamRead {
    /// `XREAD COUNT count BLOCK block`.
    pub(crate) fn new(count: usize, block: Duration) -> Self {
        StreamRead {
            group: None,
            count,
            block: block.max(Duration::from_millis(1)),
        }
    }

    /// Reads as `consumer` of `group` (`XREADGROUP`).
    pub(crate) fn group(mut self, group: &str, consumer: &str) -> Self {
        self.group = Some((group.to_owned(), consumer.to_owned()));
        self
    }

    fn options(&self, block: Duration) -> StreamReadOptions {
        let opts = StreamReadOptions::default()
            .count(self.count)
            .block(block.as_millis() as usize);
        match &self.group {
            Some((g, c)) => opts.group(g, c),
            None => opts,
        }
    }
}

/// A blocking reader of many streams (see the module documentation); one
/// per session of its user, dropped after an error.
pub(crate) struct StreamReader {
    inner: Reader,
}

enum Reader {
    Single(redis::aio::MultiplexedConnection),
    Cluster(ClusterReader),
}

impl std::fmt::Debug for StreamReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamReader").finish_non_exhaustive()
    }
}

impl StreamReader {
    /// A reader on connections of its own: one (on one Redis) or one per
    /// slot read (on a cluster, opened as the slots are first read).
    ///
    /// # Errors
    /// The single Redis cannot be reached.
    pub(crate) async fn open(client: &RedisClient) -> RedisResult<StreamReader> {
        let inner = match client.kind() {
            Client::Single(c) => Reader::Single(super::Redis::blocking_connection(c).await?),
            Client::Cluster(seeds) => {
                let (tx, rx) = mpsc::channel(1);
                Reader::Cluster(ClusterReader {
                    seeds: seeds.clone(),
                    slots: HashMap::new(),
                    failed: None,
                    tx,
                    rx,
                })
            }
        };
        Ok(StreamReader { inner })
    }

    /// Reads `keys` from `ids` (`>` for a group's new entries), waiting up
    /// to the read's `block` time; `None`: nothing came.
    ///
    /// # Errors
    /// Redis is unavailable or refused the read (the reader is then to be
    /// dropped: a cluster's slot task that failed reads no more).
    pub(crate) async fn read<I: AsRef<str>>(
        &mut self,
        keys: &[String],
        ids: &[I],
        how: &StreamRead,
    ) -> RedisResult<Option<StreamReadReply>> {
        match &mut self.inner {
            Reader::Single(c) => {
                let ids: Vec<&str> = ids.iter().map(AsRef::as_ref).collect();
                c.xread_options(keys, &ids, &how.options(how.block)).await
            }
            Reader::Cluster(r) => r.read(keys, ids, how).await,
        }
    }
}

/// Per-slot readers of a cluster and the channel they deliver to.
struct ClusterReader {
    seeds: Arc<[ConnectionInfo]>,
    slots: HashMap<Slot, SlotReader>,
    /// A slot task's error that came after replies of other slots: those
    /// are handed over first (their entries are pending already), the
    /// error on the next read.
    failed: Option<RedisError>,
    tx: mpsc::Sender<RedisResult<StreamReadReply>>,
    rx: mpsc::Receiver<RedisResult<StreamReadReply>>,
}

/// What one slot's task reads.
#[derive(Debug, Clone)]
struct Want {
    keys: Vec<String>,
    /// Where to start each of `keys` the task does not read yet.
    ids: Vec<String>,
    how: StreamRead,
}

/// One slot's task; aborted when dropped.
struct SlotReader {
    want: watch::Sender<Want>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SlotReader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long one read of a slot task blocks. The caller waits its own
/// `block` time on the channel, so this only bounds how late a stream
/// added to a slot already being read is first read (from the next round
/// on), and sets what an idle slot costs: one read a second.
const SLOT_BLOCK: Duration = Duration::from_secs(1);

impl ClusterReader {
    async fn read<I: AsRef<str>>(
        &mut self,
        keys: &[String],
        ids: &[I],
        how: &StreamRead,
    ) -> RedisResult<Option<StreamReadReply>> {
        if let Some(e) = self.failed.take() {
            return Err(e);
        }
        let mut by_slot: HashMap<Slot, Want> = HashMap::new();
        for (key, id) in keys.iter().zip(ids) {
            let w = by_slot.entry(Slot::for_key(key)).or_insert_with(|| Want {
                keys: Vec::new(),
                ids: Vec::new(),
                how: how.clone(),
            });
            w.keys.push(key.clone());
            w.ids.push(id.as_ref().to_owned());
        }
        self.slots.retain(|slot, _| by_slot.contains_key(slot));
        for (slot, want) in by_slot {
            if let Some(r) = self.slots.get(&slot) {
                if !r.task.is_finished() {
                    let same = {
                        let now = r.want.borrow();
                        now.keys == want.keys
                            && now.how.group == want.how.group
                            && now.how.count == want.how.count
                    };
                    if !same {
                        r.want.send_replace(want);
                    }
                    continue;
                }
            }
            let (tx_want, rx_want) = watch::channel(want);
            let task = tokio::spawn(read_slot(self.seeds.clone(), rx_want, self.tx.clone()));
            self.slots.insert(
                slot,
                SlotReader {
                    want: tx_want,
                    task,
                },
            );
        }
        let first = match tokio::time::timeout(how.block, self.rx.recv()).await {
            Ok(Some(r)) => r?,
            // Timed out (the channel cannot close: we hold a sender).
            Ok(None) | Err(_) => return Ok(None),
        };
        let mut reply = first;
        while let Ok(more) = self.rx.try_recv() {
            match more {
                Ok(more) => merge(&mut reply, more),
                Err(e) => {
                    self.failed = Some(e);
                    break;
                }
            }
        }
        Ok(Some(reply))
    }
}

/// Adds `more`'s entries to `into`, after those of the same stream.
fn merge(into: &mut StreamReadReply, more: StreamReadReply) {
    for sk in more.keys {
        match into.keys.iter_mut().find(|k| k.key == sk.key) {
            Some(k) => k.ids.extend(sk.ids),
            None => into.keys.push(StreamKey {
                key: sk.key,
                ids: sk.ids,
            }),
        }
    }
}

/// A dedicated connection (no response timeout) to the node at `addr`
/// (`host:port`), with the seeds' credentials.
async fn connect(
    seeds: &[ConnectionInfo],
    addr: Option<&str>,
) -> RedisResult<redis::aio::MultiplexedConnection> {
    let mut last = None;
    let candidates: Vec<ConnectionInfo> = match addr {
        Some(a) => {
            let (host, port) = a
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_owned(), p.parse::<u16>().ok()?)))
                .ok_or_else(|| {
                    RedisError::from((ErrorKind::Parse, "bad node address", a.to_owned()))
                })?;
            // Over TLS, the node is reached with the seed's certificates.
            let addr = match seeds[0].addr() {
                ConnectionAddr::TcpTls {
                    insecure,
                    tls_params,
                    ..
                } => ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: *insecure,
                    tls_params: tls_params.clone(),
                },
                _ => ConnectionAddr::Tcp(host, port),
            };
            vec![seeds[0].clone().set_addr(addr)]
        }
        None => seeds.to_vec(),
    };
    for info in candidates {
        let client = redis::Client::open(info)?;
        match super::Redis::blocking_connection(&client).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| RedisError::from((ErrorKind::Io, "no cluster node to connect to"))))
}

/// One slot's reader task: reads what `want` says from the slot's master,
/// hands every reply to `tx`, until `tx` is gone or a read fails (the
/// error is handed over too).
async fn read_slot(
    seeds: Arc<[ConnectionInfo]>,
    mut want: watch::Receiver<Want>,
    tx: mpsc::Sender<RedisResult<StreamReadReply>>,
) {
    if let Err(e) = slot_loop(&seeds, &mut want, &tx).await {
        let _ = tx.send(Err(e)).await;
    }
}

async fn slot_loop(
    seeds: &[ConnectionInfo],
    want: &mut watch::Receiver<Want>,
    tx: &mpsc::Sender<RedisResult<StreamReadReply>>,
) -> RedisResult<()> {
    let mut conn = connect(seeds, None).await?;
    // (stream, cursor) of the streams read (the cursors matter without a
    // group only).
    let mut cursors: Vec<(String, String)> = Vec::new();
    let mut redirects = 0u32;
    loop {
        let w = want.borrow_and_update().clone();
        cursors = w
            .keys
            .iter()
            .zip(&w.ids)
            .map(|(k, id)| {
                let at = cursors
                    .iter()
                    .find(|(c, _)| c == k)
                    .map_or_else(|| id.clone(), |(_, at)| at.clone());
                (k.clone(), at)
            })
            .collect();
        let keys: Vec<&str> = cursors.iter().map(|(k, _)| k.as_str()).collect();
        let ids: Vec<&str> = cursors.iter().map(|(_, at)| at.as_str()).collect();
        let opts = w.how.options(SLOT_BLOCK);
        let mut r: RedisResult<Option<StreamReadReply>> =
            conn.xread_options(&keys, &ids, &opts).await;
        if let Err(e) = &r {
            if e.kind() == ErrorKind::Server(ServerErrorKind::Ask) {
                // The slot is migrating and our streams are on the target
                // already: ask there, this once.
                let target = e.redirect_node().map(|(a, _)| a.to_owned());
                let mut other = connect(seeds, target.as_deref()).await?;
                let mut cmd = redis::cmd(if w.how.group.is_some() {
                    "XREADGROUP"
                } else {
                    "XREAD"
                });
                cmd.arg(&opts).arg("STREAMS").arg(&keys).arg(&ids);
                r = redis::pipe()
                    .cmd("ASKING")
                    .ignore()
                    .add_command(cmd)
                    .query_async::<(Option<StreamReadReply>,)>(&mut other)
                    .await
                    .map(|(reply,)| reply);
            }
        }
        match r {
            Ok(reply) => {
                redirects = 0;
                let Some(reply) = reply else { continue };
                if w.how.group.is_none() {
                    for sk in &reply.keys {
                        if let (Some(last), Some(c)) = (
                            sk.ids.last(),
                            cursors.iter_mut().find(|(k, _)| *k == sk.key),
                        ) {
                            c.1.clone_from(&last.id);
                        }
                    }
                }
                if tx.send(Ok(reply)).await.is_err() {
                    return Ok(());
                }
            }
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::Moved) && redirects < 5 => {
                // Not (or no longer) the owner of the slot: go to the one
                // that is.
                redirects += 1;
                let target = e.redirect_node().map(|(a, _)| a.to_owned());
                conn = connect(seeds, target.as_deref()).await?;
            }
            Err(e) if e.code() == Some("UNBLOCKED") && redirects < 5 => {
                // The slot moved away under a blocked read (`MIGRATE`
                // deleted the streams here); nothing was read. The next
                // read is redirected to the new owner.
                redirects += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::Server(
                        ServerErrorKind::TryAgain
                            | ServerErrorKind::ClusterDown
                            | ServerErrorKind::MasterDown
                    )
                ) && redirects < 50 =>
            {
                // A failover or a migration under way.
                redirects += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::streams::StreamId;

    fn reply(parts: &[(&str, &[&str])]) -> StreamReadReply {
        StreamReadReply {
            keys: parts
                .iter()
                .map(|(k, ids)| StreamKey {
                    key: (*k).to_owned(),
                    ids: ids
                        .iter()
                        .map(|id| StreamId {
                            id: (*id).to_owned(),
                            ..StreamId::default()
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    fn flat(r: &StreamReadReply) -> Vec<(String, String)> {
        r.keys
            .iter()
            .flat_map(|k| k.ids.iter().map(move |e| (k.key.clone(), e.id.clone())))
            .collect()
    }

    #[test]
    fn merged_replies_keep_each_streams_entries_in_order() {
        let mut into = reply(&[("a", &["1-0", "2-0"]), ("b", &["1-0"])]);
        merge(&mut into, reply(&[("c", &["5-0"]), ("a", &["3-0"])]));
        assert_eq!(into.keys.len(), 3, "one entry list per stream");
        assert_eq!(
            flat(&into),
            [
                ("a", "1-0"),
                ("a", "2-0"),
                ("a", "3-0"),
                ("b", "1-0"),
                ("c", "5-0")
            ]
            .map(|(k, i)| (k.to_owned(), i.to_owned()))
        );
    }

    #[test]
    fn a_scopes_streams_share_one_slot() {
        let keys = crate::redis::Keys::new("p");
        for scope in ["line-1", "a}b", "cell/7"] {
            let slot = Slot::for_key(keys.changes(scope));
            assert_eq!(Slot::for_key(keys.work(scope)), slot, "{scope}");
        }
    }
}
