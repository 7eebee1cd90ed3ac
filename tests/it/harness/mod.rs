//! Test harness: real Mosquitto and Redis as child processes on free loopback
//! ports (`microdcs::testkit::devenv`), killed on drop; tests kill and
//! restart them mid-test. The MES and the MQTT client of the tests are
//! `microdcs::testkit`'s; what is only the tests' lives here: stations on
//! runtimes of their own ([`station`], [`jobs`]), test equipment
//! ([`equipment`]) and recipe builders ([`recipes`]).
#![allow(dead_code, missing_docs, unreachable_pub)]

pub mod equipment;
pub mod jobs;
pub mod recipes;
pub mod station;

use microdcs::testkit::devenv::{LocalMosquitto, LocalRedis};
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
