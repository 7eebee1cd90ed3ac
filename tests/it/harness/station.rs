//! Starting an app against the harness broker and Redis, each station on a
//! runtime of its own so a test can crash it (drop every task and socket at
//! once, no DISCONNECT, no acknowledgements) like a killed process.

use microdcs::transport::mqtt::{MqttSettings, MqttTransport};
use microdcs::ShutdownHandle;
use microdcs::{App, AppError, Processor, TopicBinding};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// An app running on a runtime of its own: stopped gracefully, or crashed
/// (also when dropped).
pub struct Hosted {
    rt: Option<tokio::runtime::Runtime>,
    pub handle: ShutdownHandle,
    pub done: tokio::sync::oneshot::Receiver<Result<(), AppError>>,
}

impl Hosted {
    /// Builds the app with `build` on a new runtime, runs it, and returns
    /// once its first transport is ready, with that transport and what
    /// `build` handed out besides the app.
    pub async fn launch<T, F, Fut>(build: F) -> (Hosted, Arc<MqttTransport>, T)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = (App, T)> + Send,
        T: Send + 'static,
    {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        rt.spawn(async move {
            let (app, extra) = build().await;
            let _ = tx.send((app.transports()[0].clone(), app.shutdown_handle(), extra));
            let _ = done_tx.send(app.run().await);
        });
        let (transport, handle, extra) = rx.await.expect("app built");
        tokio::time::timeout(Duration::from_secs(10), transport.ready())
            .await
            .expect("station ready");
        let hosted = Hosted {
            rt: Some(rt),
            handle,
            done,
        };
        (hosted, transport, extra)
    }

    /// Graceful stop (as on SIGTERM): the app's result, or `Err` when it did
    /// not end within `grace`. The runtime is dropped either way.
    pub async fn stop(
        mut self,
        grace: Duration,
    ) -> Result<
        Result<Result<(), AppError>, tokio::sync::oneshot::error::RecvError>,
        tokio::time::error::Elapsed,
    > {
        self.handle.shutdown();
        tokio::time::timeout(grace, &mut self.done).await
    }

    /// Like a SIGKILL: every task and socket is dropped at once.
    pub fn crash(self) {
        drop(self);
    }

    /// Runs `f` on the app's own runtime (its connections live there).
    pub async fn on_runtime<F, T>(&self, f: F) -> T
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let rt = self.rt.as_ref().expect("running");
        rt.spawn(f).await.expect("task")
    }
}

impl Drop for Hosted {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

pub struct Station {
    pub app: Hosted,
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
    let (app, transport, ()) = Hosted::launch(move || async move {
        let mut b = App::builder().mqtt("mqtt", settings);
        if let Some(url) = redis_url {
            b = b
                .redis_url(url, "test")
                .dedupe_claim_lease(Duration::from_secs(1));
        }
        for (p, binding) in processors {
            b = b.processor(p, binding);
        }
        (b.build().await.expect("build app"), ())
    })
    .await;
    Station { app, transport }
}

impl Station {
    /// Graceful stop (as on SIGTERM); returns the app's result.
    pub async fn stop(self) -> Result<(), AppError> {
        self.app
            .stop(Duration::from_secs(20))
            .await
            .expect("station stops within its grace period")
            .expect("app task ended")
    }

    /// Like a SIGKILL: every task and socket is dropped at once.
    pub fn crash(self) {
        self.app.crash();
    }
}
