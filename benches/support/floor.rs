//! The floor: the same MQTT request→reply round trip through the same
//! broker without the station. A requester publishes a QoS 1 request with a
//! Response Topic and Correlation Data; a responder runs one Redis Lua
//! compare-and-swap (EVALSHA, like every step of the engine) and publishes
//! the reply with the same Correlation Data. Both are plain rumqttc v5
//! clients with TCP_NODELAY.

use super::stats::{rate, Latencies};
use super::{BenchResult, Sizes};
use microdcs::testkit::devenv::{Autosave, LocalMosquitto, LocalRedis};
use microdcs::testkit::mqtt::{ce_props_from, TestClient as Client};
use redis::Script;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use rumqttc::v5::mqttbytes::QoS;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const REQUESTS: &str = "bench/floor/requests";
const REPLIES: &str = "bench/floor/replies";
const TYPE: &str = "com.example.bench.step.v1";
/// The shape of the engine's `exec_apply.lua`: write only if the version
/// is the one expected.
const CAS: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], 'v') or '0')
if current ~= tonumber(ARGV[1]) then
  return {'VERSION', current}
end
redis.call('HSET', KEYS[1], 'v', current + 1, 'doc', ARGV[2])
return {'OK', current + 1}
";
/// How long a phase may go without a reply before it is abandoned.
const STALL: Duration = Duration::from_secs(10);

/// What the floor measured.
#[derive(Debug)]
pub(crate) struct Floor {
    /// Round trips one at a time.
    pub(crate) sequential: Latencies,
    /// Round trips with `in_flight` outstanding.
    pub(crate) loaded: Latencies,
    /// Duration of the loaded phase.
    pub(crate) loaded_elapsed: Duration,
    /// Lua calls that failed (the reply was sent anyway).
    pub(crate) redis_errors: u64,
}

impl Floor {
    /// Round trips per second with `in_flight` outstanding.
    pub(crate) fn round_trips_per_s(&self) -> f64 {
        rate(self.loaded.len(), self.loaded_elapsed)
    }
}

/// Runs the floor on a broker and Redis of its own.
pub(crate) async fn run(sizes: Sizes) -> BenchResult<Floor> {
    let m = LocalMosquitto::start_with(Autosave::AsShipped)
        .map_err(|e| format!("cannot start mosquitto: {e}"))?;
    let r = LocalRedis::start().map_err(|e| format!("cannot start redis-server: {e}"))?;
    let client = redis::Client::open(r.url()).map_err(|e| format!("redis url: {e}"))?;
    let conn = tokio::time::timeout(
        Duration::from_secs(10),
        client.get_multiplexed_async_connection(),
    )
    .await
    .map_err(|_| "no Redis connection within 10 s".to_owned())?
    .map_err(|e| format!("cannot connect to Redis: {e}"))?;
    let errors = Arc::new(AtomicU64::new(0));
    let responder = Responder::start(m.port(), conn, errors.clone()).await?;
    let mut requester = Client::try_connect(m.port(), "floor-requester")
        .await
        .map_err(|e| e.to_string())?;
    requester
        .try_subscribe(&[REPLIES], QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;

    let mut next = 0;
    round_trips(&mut requester, &mut next, 200, 10).await?; // warm-up
    let (sequential, _) = round_trips(&mut requester, &mut next, sizes.floor_sequential, 1).await?;
    let (loaded, loaded_elapsed) = round_trips(
        &mut requester,
        &mut next,
        sizes.floor_loaded,
        sizes.in_flight,
    )
    .await?;
    drop(responder);
    Ok(Floor {
        sequential,
        loaded,
        loaded_elapsed,
        redis_errors: errors.load(Ordering::Relaxed),
    })
}

/// `count` round trips keeping `in_flight` outstanding; latencies and the
/// phase's duration.
async fn round_trips(
    requester: &mut Client,
    next: &mut u64,
    count: usize,
    in_flight: usize,
) -> BenchResult<(Latencies, Duration)> {
    let mut outstanding: HashMap<u64, Instant> = HashMap::with_capacity(in_flight);
    let mut latencies = Latencies::default();
    let end = *next + count as u64;
    let started = Instant::now();
    while latencies.len() < count {
        while *next < end && outstanding.len() < in_flight {
            let id = *next;
            *next += 1;
            let props = ce_props_from(
                "bench-mes",
                TYPE,
                &format!("rt-{id}"),
                Some("floor"),
                Some(REPLIES),
                Some(&id.to_be_bytes()),
            );
            let body = format!(r#"{{"station":"floor","seq":{id}}}"#).into_bytes();
            outstanding.insert(id, Instant::now());
            requester
                .try_publish(REQUESTS, body, props)
                .await
                .map_err(|e| e.to_string())?;
        }
        let Some((at, reply)) = requester.recv_at(STALL).await else {
            return Err(format!(
                "floor: no reply for {} s ({} of {count} round trips done)",
                STALL.as_secs(),
                latencies.len()
            ));
        };
        let id = reply
            .properties
            .as_ref()
            .and_then(|p| p.correlation_data.as_ref())
            .and_then(|c| <[u8; 8]>::try_from(c.as_ref()).ok())
            .map(u64::from_be_bytes);
        if let Some(sent) = id.and_then(|id| outstanding.remove(&id)) {
            latencies.push(at.duration_since(sent));
        }
    }
    Ok((latencies, started.elapsed()))
}

/// The responder: one task per request (as a station handles requests
/// concurrently), each one Lua call and one reply.
struct Responder(tokio::task::JoinHandle<()>);

impl Responder {
    async fn start(
        port: u16,
        conn: redis::aio::MultiplexedConnection,
        errors: Arc<AtomicU64>,
    ) -> BenchResult<Self> {
        let mut c = Client::try_connect(port, "floor-responder")
            .await
            .map_err(|e| e.to_string())?;
        c.try_subscribe(&[REQUESTS], QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())?;
        let script = Script::new(CAS);
        Ok(Responder(tokio::spawn(async move {
            while let Some((_, request)) = c.next_at().await {
                let client = c.client.clone();
                let mut conn = conn.clone();
                let script = script.clone();
                let errors = errors.clone();
                tokio::spawn(async move {
                    let Some(props) = request.properties else {
                        return;
                    };
                    let Some(to) = props.response_topic else {
                        return;
                    };
                    let id = props
                        .user_properties
                        .iter()
                        .find(|(k, _)| k == "id")
                        .map(|(_, v)| v.clone())
                        .unwrap_or_default();
                    let written: redis::RedisResult<(String, i64)> = script
                        .key(format!("floor:{id}"))
                        .arg(0)
                        .arg(request.payload.as_ref())
                        .invoke_async(&mut conn)
                        .await;
                    if written.is_err() {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    let reply = PublishProperties {
                        content_type: Some("application/json".into()),
                        correlation_data: props.correlation_data,
                        user_properties: vec![
                            ("specversion".into(), "1.0".into()),
                            ("id".into(), format!("{id}-reply")),
                            ("source".into(), "floor-responder".into()),
                            ("type".into(), TYPE.into()),
                        ],
                        ..Default::default()
                    };
                    let _ = client
                        .publish_with_properties(
                            to,
                            QoS::AtLeastOnce,
                            false,
                            br#"{"ok":true}"#.to_vec(),
                            reply,
                        )
                        .await;
                });
            }
        })))
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        self.0.abort();
    }
}
