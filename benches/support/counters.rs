//! Machine-independent counters read before and after a batch: Redis's
//! `INFO` (commands by name, script-internal calls included; memory) and
//! the broker's `$SYS/broker/messages/received` and `…/sent` (MQTT packets
//! of any type). Both are read only when the station is idle, so the
//! difference is the batch's work, including what the publisher did after
//! the last job ended.

use super::BenchResult;
use microdcs::testkit::mqtt::TestClient as Client;
use rumqttc::v5::mqttbytes::QoS;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The broker's counters; the benchmark's broker publishes them every
/// second (`sys_interval 1`).
const SYS_RECEIVED: &str = "$SYS/broker/messages/received";
const SYS_SENT: &str = "$SYS/broker/messages/sent";
/// How long the broker's counters are read for: longer than its
/// `sys_interval` (1 s) plus the publisher's longest wait before it
/// publishes a coalesced state index (about 1 s with 20,000 jobs listed),
/// so the values seen last include the batch's last packet.
const SYS_SETTLE: Duration = Duration::from_millis(2_500);
/// How often Redis is polled while waiting for the station to go idle.
const IDLE_POLL: Duration = Duration::from_millis(250);
/// Commands per [`IDLE_POLL`] below which Redis counts as idle: an idle
/// station's blocking reads and lock renewals stay far below it, a
/// publisher catching up far above.
const IDLE_COMMANDS: u64 = 25;
/// Longest wait for the station to go idle.
const IDLE_MAX: Duration = Duration::from_secs(120);

/// Redis's counters at one moment.
#[derive(Debug, Clone, Default)]
pub(crate) struct RedisSnapshot {
    /// `INFO commandstats`: calls per command (lowercase, subcommands as
    /// `client|setname`).
    calls: BTreeMap<String, u64>,
    /// `INFO memory` `used_memory`, bytes.
    used_memory: u64,
}

/// What Redis did between two snapshots.
#[derive(Debug, Clone, Default)]
pub(crate) struct RedisDelta {
    /// Calls per command, most frequent first, the benchmark's own `INFO`
    /// left out.
    pub(crate) calls: Vec<(String, u64)>,
    /// Change of `used_memory`, bytes.
    pub(crate) used_memory: i64,
}

impl RedisDelta {
    /// Every command counted.
    pub(crate) fn total(&self) -> u64 {
        self.calls.iter().map(|(_, n)| n).sum()
    }

    /// `evalsha 3.0, hget 2.0, …`: the `top` commands per `steps`.
    pub(crate) fn top_per(&self, steps: usize, top: usize) -> String {
        let steps = steps.max(1) as f64;
        let mut parts: Vec<String> = self
            .calls
            .iter()
            .take(top)
            .map(|(name, n)| format!("{name} {:.1}", *n as f64 / steps))
            .collect();
        if self.calls.len() > top {
            parts.push("…".to_owned());
        }
        parts.join(", ")
    }
}

impl RedisSnapshot {
    /// The change from `before` to this snapshot.
    pub(crate) fn since(&self, before: &RedisSnapshot) -> RedisDelta {
        let mut calls: Vec<(String, u64)> = self
            .calls
            .iter()
            .filter(|(name, _)| name.as_str() != "info")
            .map(|(name, n)| {
                let was = before.calls.get(name).copied().unwrap_or(0);
                (name.clone(), n.saturating_sub(was))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        calls.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        RedisDelta {
            calls,
            used_memory: self.used_memory_since(before),
        }
    }

    /// Change of `used_memory` since `before`, bytes.
    pub(crate) fn used_memory_since(&self, before: &RedisSnapshot) -> i64 {
        self.used_memory as i64 - before.used_memory as i64
    }

    /// Parses the text of `INFO commandstats memory`.
    fn parse(info: &str) -> RedisSnapshot {
        let mut s = RedisSnapshot::default();
        for line in info.lines() {
            if let Some(rest) = line.strip_prefix("cmdstat_") {
                // cmdstat_evalsha:calls=12,usec=34,usec_per_call=2.83,…
                let Some((name, fields)) = rest.split_once(':') else {
                    continue;
                };
                let calls = fields
                    .split(',')
                    .find_map(|f| f.strip_prefix("calls="))
                    .and_then(|n| n.trim().parse().ok());
                if let Some(calls) = calls {
                    s.calls.insert(name.to_owned(), calls);
                }
            } else if let Some(n) = line.strip_prefix("used_memory:") {
                s.used_memory = n.trim().parse().unwrap_or(0);
            }
        }
        s
    }
}

/// A connection of the benchmark's own to the station's Redis.
pub(crate) struct RedisProbe(redis::aio::MultiplexedConnection);

impl RedisProbe {
    /// Connects to `url`.
    pub(crate) async fn connect(url: &str) -> BenchResult<Self> {
        let client = redis::Client::open(url).map_err(|e| format!("redis url: {e}"))?;
        let conn = tokio::time::timeout(
            Duration::from_secs(10),
            client.get_multiplexed_async_connection(),
        )
        .await
        .map_err(|_| "no Redis connection within 10 s".to_owned())?
        .map_err(|e| format!("cannot connect to Redis: {e}"))?;
        Ok(RedisProbe(conn))
    }

    async fn info(&mut self, sections: &[&str]) -> BenchResult<String> {
        redis::cmd("INFO")
            .arg(sections)
            .query_async(&mut self.0)
            .await
            .map_err(|e| format!("redis INFO: {e}"))
    }

    /// Commands by name and memory, now.
    pub(crate) async fn snapshot(&mut self) -> BenchResult<RedisSnapshot> {
        Ok(RedisSnapshot::parse(
            &self.info(&["commandstats", "memory"]).await?,
        ))
    }

    async fn commands_processed(&mut self) -> BenchResult<u64> {
        let info = self.info(&["stats"]).await?;
        info.lines()
            .find_map(|l| l.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .ok_or_else(|| "INFO stats has no total_commands_processed".to_owned())
    }

    /// Waits until the station leaves Redis idle (fewer than
    /// [`IDLE_COMMANDS`] commands in each of two polls in a row): the
    /// publisher has caught up with the changes. False if it never did
    /// within [`IDLE_MAX`] (the figures then miss some of its work).
    pub(crate) async fn wait_idle(&mut self) -> BenchResult<bool> {
        let deadline = Instant::now() + IDLE_MAX;
        let mut last = self.commands_processed().await?;
        let mut quiet = 0;
        while Instant::now() < deadline {
            tokio::time::sleep(IDLE_POLL).await;
            let now = self.commands_processed().await?;
            // The INFO itself is one command.
            quiet = if now.saturating_sub(last) <= IDLE_COMMANDS + 1 {
                quiet + 1
            } else {
                0
            };
            if quiet >= 2 {
                return Ok(true);
            }
            last = now;
        }
        Ok(false)
    }
}

/// The broker's packet counters at one moment.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BrokerSnapshot {
    /// `$SYS/broker/messages/received`.
    pub(crate) received: u64,
    /// `$SYS/broker/messages/sent`.
    pub(crate) sent: u64,
    /// `$SYS` messages this probe received so far (each one is a packet
    /// the broker sent).
    own: u64,
    /// When it was read.
    pub(crate) at: Instant,
}

/// MQTT packets between two broker snapshots.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Packets {
    /// Packets the broker received.
    pub(crate) received: u64,
    /// Packets the broker sent, less the probe's own `$SYS` messages and
    /// the spy's copies (neither belongs to the station's work).
    pub(crate) sent: u64,
}

impl BrokerSnapshot {
    /// The packets since `before`, with `watchers` (the spy's QoS 0 copies)
    /// taken off the sent ones.
    pub(crate) fn since(&self, before: &BrokerSnapshot, watchers: u64) -> Packets {
        let own = self.own.saturating_sub(before.own);
        Packets {
            received: self.received.saturating_sub(before.received),
            sent: self
                .sent
                .saturating_sub(before.sent)
                .saturating_sub(own + watchers),
        }
    }
}

/// A client subscribed to the broker's `$SYS` packet counters.
pub(crate) struct BrokerProbe {
    client: Client,
    received: Option<u64>,
    sent: Option<u64>,
    own: u64,
}

impl BrokerProbe {
    /// Connects to the broker on `port` (QoS 0: the probe adds no
    /// acknowledgements).
    pub(crate) async fn connect(port: u16) -> BenchResult<Self> {
        let mut client = Client::try_connect(port, "bench-sys")
            .await
            .map_err(|e| e.to_string())?;
        client
            .try_subscribe(&[SYS_RECEIVED, SYS_SENT], QoS::AtMostOnce)
            .await
            .map_err(|e| e.to_string())?;
        Ok(BrokerProbe {
            client,
            received: None,
            sent: None,
            own: 0,
        })
    }

    /// The latest counters after [`SYS_SETTLE`] (call it when the station
    /// is idle: the values the broker publishes then are final).
    pub(crate) async fn snapshot(&mut self) -> BenchResult<BrokerSnapshot> {
        let until = Instant::now() + SYS_SETTLE;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            let known = self.received.is_some() && self.sent.is_some();
            if left.is_zero() && known {
                break;
            }
            let wait = if left.is_zero() {
                Duration::from_secs(5)
            } else {
                left
            };
            match self.client.recv_at(wait).await {
                Some((_, p)) => {
                    self.own += 1;
                    let value = std::str::from_utf8(&p.payload)
                        .ok()
                        .and_then(|v| v.trim().parse::<u64>().ok());
                    match p.topic.as_ref() {
                        t if t == SYS_RECEIVED.as_bytes() => self.received = value,
                        t if t == SYS_SENT.as_bytes() => self.sent = value,
                        _ => {}
                    }
                }
                None if left.is_zero() => {
                    return Err(
                        "the broker published no $SYS/broker/messages counters (sys_interval?)"
                            .to_owned(),
                    )
                }
                None => {}
            }
        }
        Ok(BrokerSnapshot {
            received: self.received.unwrap_or(0),
            sent: self.sent.unwrap_or(0),
            own: self.own,
            at: Instant::now(),
        })
    }
}
