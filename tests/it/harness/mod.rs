//! Test harness: real Mosquitto and Redis as child processes on free loopback
//! ports (`microdcs::testkit::devenv`), killed on drop; tests kill and
//! restart them mid-test. The MES and the MQTT client of the tests are
//! `microdcs::testkit`'s; what is only the tests' lives here: stations on
//! runtimes of their own ([`station`], [`jobs`]), test equipment
//! ([`equipment`]) and recipe builders ([`recipes`]). A test body that takes
//! a [`Backend`] runs against one Redis and against a Redis Cluster
//! ([`on_each_backend`]).
#![allow(dead_code, missing_docs, unreachable_pub)]

pub mod equipment;
pub mod jobs;
pub mod recipes;
pub mod station;

use microdcs::testkit::devenv::{LocalMosquitto, LocalRedis, LocalRedisCluster};
use std::time::{Duration, Instant};

pub struct Mosquitto(pub LocalMosquitto);

impl Mosquitto {
    pub fn start() -> Self {
        Mosquitto(
            LocalMosquitto::start()
                .expect("start mosquitto (run scripts/setup.sh if it is missing)"),
        )
    }
    pub fn port(&self) -> u16 {
        self.0.port()
    }
    pub fn kill(&mut self) {
        self.0.kill()
    }
    pub fn wipe_persistence(&mut self) {
        self.0.wipe_persistence()
    }
    pub fn freeze(&mut self) {
        self.0.freeze()
    }
    pub fn thaw(&mut self) {
        self.0.thaw()
    }
    pub fn restart(&mut self) {
        self.0.restart().expect("restart mosquitto")
    }
}

pub struct Redis(pub LocalRedis);

impl Redis {
    pub fn start() -> Self {
        Redis(
            LocalRedis::start()
                .expect("start redis-server (run scripts/setup.sh if it is missing)"),
        )
    }
    pub fn start_durable() -> Self {
        Redis(LocalRedis::start_durable().expect("start redis-server"))
    }
    pub fn url(&self) -> String {
        self.0.url()
    }
    pub fn kill(&mut self) {
        self.0.kill()
    }
    pub fn restart(&mut self) {
        self.0.restart().expect("restart redis")
    }
    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url()).expect("redis url")
    }
}

/// Which Redis a parameterised test runs against (see [`on_each_backend`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// One `redis-server`.
    Single,
    /// A Redis Cluster of three masters (`LocalRedisCluster`).
    Cluster,
    /// A Redis Cluster of three masters with one replica each (for
    /// failover tests).
    ClusterWithReplicas,
}

/// The Redis of a parameterised test.
pub enum Store {
    Single(Redis),
    Cluster(LocalRedisCluster),
}

impl Store {
    pub fn start(backend: Backend) -> Self {
        match backend {
            Backend::Single => Store::Single(Redis::start()),
            Backend::Cluster => Store::Cluster(
                LocalRedisCluster::start()
                    .expect("start a Redis Cluster (redis-server and redis-cli)"),
            ),
            Backend::ClusterWithReplicas => Store::Cluster(
                LocalRedisCluster::start_with_replicas()
                    .expect("start a Redis Cluster with replicas"),
            ),
        }
    }

    /// Points a station's environment (`jobs::env`) at this Redis.
    pub fn configure(&self, env: &mut Vec<(String, String)>) {
        match self {
            Store::Single(r) => jobs::set(env, "APP_REDIS_PORT", &r.0.port().to_string()),
            Store::Cluster(c) => {
                env.retain(|(k, _)| k != "APP_REDIS_PORT");
                jobs::set(env, "APP_REDIS_CLUSTER_NODES", &c.nodes());
            }
        }
    }

    /// A shared connection of the test's own (direct checks of what is
    /// stored), whichever the backend.
    pub fn connection(&self) -> microdcs::RedisConnection {
        let r = match self {
            Store::Single(r) => microdcs::Redis::open(&r.url()),
            Store::Cluster(c) => microdcs::Redis::open_cluster(&c.urls()),
        };
        r.expect("redis").conn
    }

    /// The single Redis (for tests that only run on one).
    pub fn single(&self) -> &Redis {
        match self {
            Store::Single(r) => r,
            Store::Cluster(_) => panic!("this test runs on a single Redis only"),
        }
    }

    /// The cluster (for cluster-only steps: killing a master).
    pub fn cluster(&mut self) -> &mut LocalRedisCluster {
        match self {
            Store::Cluster(c) => c,
            Store::Single(_) => panic!("this test runs on a Redis Cluster only"),
        }
    }
}

/// Generates, for each `async fn name(backend: Backend)` named, the tests
/// `name::single_redis` and `name::redis_cluster`: one test body, run
/// against one Redis and against a Redis Cluster of three masters.
macro_rules! on_each_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn single_redis() {
                super::$name($crate::harness::Backend::Single).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis_cluster() {
                super::$name($crate::harness::Backend::Cluster).await
            }
        }
    )*};
}
pub(crate) use on_each_backend;

/// Polls `f` until it returns true or `timeout` passes.
pub async fn eventually<F: FnMut() -> bool>(timeout: Duration, mut f: F) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f()
}

pub fn init_tracing() {
    microdcs::telemetry::init_logging(
        microdcs::telemetry::LogFormat::Text,
        &std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into()),
    );
}
