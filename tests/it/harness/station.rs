//! Starting an app against the harness broker and Redis, each station on a
//! runtime of its own so a test can crash it (drop every task and socket at
//! once, no DISCONNECT, no acknowledgements) like a killed process.

use microdcs::transport::mqtt::{MqttSettings, MqttTransport};
use microdcs::ShutdownHandle;
use microdcs::{App, AppError, Processor, TopicBinding};
use std::sync::Arc;
use std::time::Duration;

pub struct Station {
    rt: Option<tokio::runtime::Runtime>,
    pub done: tokio::sync::oneshot::Receiver<Result<(), AppError>>,
    pub handle: ShutdownHandle,
    pub transport: Arc<MqttTransport>,
}

pub fn settings(port: u16, instance: &str) -> MqttSettings {
    let mut s = MqttSettings::new("127.0.0.1", port, instance);
    s.reconnect_min = Duration::from_millis(50);
    s.reconnect_max = Duration::from_millis(500);
    s.shutdown_grace = Duration::from_secs(5);
    s.source = format!("station/{instance}");
    s
}

pub async fn start(
    settings: MqttSettings,
    redis_url: Option<String>,
    processors: Vec<(Processor, TopicBinding)>,
) -> Station {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (done_tx, done) = tokio::sync::oneshot::channel();
    rt.spawn(async move {
        let mut b = App::builder().mqtt("mqtt", settings);
        if let Some(url) = redis_url {
            b = b
                .redis_url(url, "test")
                .dedupe_claim_lease(Duration::from_secs(1));
        }
        for (p, binding) in processors {
            b = b.processor(p, binding);
        }
        let app = b.build().await.expect("build app");
        let _ = tx.send((app.transports()[0].clone(), app.shutdown_handle()));
        let _ = done_tx.send(app.run().await);
    });
    let (transport, handle) = rx.await.expect("app built");
    tokio::time::timeout(Duration::from_secs(10), transport.ready())
        .await
        .expect("station ready");
    Station {
        rt: Some(rt),
        done,
        handle,
        transport,
    }
}

impl Station {
    /// Graceful stop (as on SIGTERM); returns the app's result.
    pub async fn stop(mut self) -> Result<(), AppError> {
        self.handle.shutdown();
        let r = tokio::time::timeout(Duration::from_secs(20), &mut self.done)
            .await
            .expect("station stops within its grace period")
            .expect("app task ended");
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        r
    }

    /// Like a SIGKILL: every task and socket is dropped at once.
    pub fn crash(mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for Station {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
