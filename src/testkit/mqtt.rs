//! A plain rumqttc v5 client playing the MES or equipment in tests, the
//! benchmark and the demo: TCP_NODELAY, a clean session, its event loop in a
//! task of its own (publishing never waits on the reader), every received
//! PUBLISH stamped with the instant the event loop saw it.

use super::TestkitError;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long connecting and subscribing may take.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// A connected client on `127.0.0.1`.
pub struct TestClient {
    /// The rumqttc client, for publishing with options of the caller's own.
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<(Instant, Publish)>,
    subacks: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
    name: String,
}

impl TestClient {
    /// Connects to the broker on `127.0.0.1:port` as client `id`.
    ///
    /// # Panics
    ///
    /// When there is no CONNACK within 10 s.
    pub async fn connect(port: u16, id: &str) -> Self {
        Self::try_connect(port, id)
            .await
            .expect("test client connect")
    }

    /// [`TestClient::connect`] that reports failure instead of panicking.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Connect`] when there is no CONNACK within 10 s.
    pub async fn try_connect(port: u16, id: &str) -> Result<Self, TestkitError> {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(Some(64 * 1024 * 1024));
        o.set_clean_start(true);
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        o.set_network_options(net);
        let (client, mut el) = AsyncClient::new(o, 10_000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (stx, subacks) = mpsc::unbounded_channel();
        let (ctx, mut crx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send((Instant::now(), p));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = stx.send(());
                    }
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = ctx.send(());
                    }
                    Ok(_) => {}
                    // The broker may be restarted by the test: retry.
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let connected = tokio::time::timeout(HANDSHAKE, crx.recv()).await;
        if !matches!(connected, Ok(Some(()))) {
            task.abort();
            return Err(TestkitError::Connect {
                client: id.to_owned(),
                port,
            });
        }
        Ok(TestClient {
            client,
            rx,
            subacks,
            task,
            name: id.to_owned(),
        })
    }

    /// Subscribes `filter` at QoS 1 and waits for the SUBACK.
    ///
    /// # Panics
    ///
    /// When the subscription fails or there is no SUBACK within 10 s.
    pub async fn subscribe(&mut self, filter: &str) {
        self.try_subscribe(&[filter], QoS::AtLeastOnce)
            .await
            .expect("subscribe");
    }

    /// Subscribes `filters` at `qos` and waits for the SUBACK.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Subscribe`] when the request cannot be queued or no
    /// SUBACK arrives within 10 s.
    pub async fn try_subscribe(&mut self, filters: &[&str], qos: QoS) -> Result<(), TestkitError> {
        let err = |why: String| TestkitError::Subscribe {
            client: self.name.clone(),
            filters: filters.iter().map(|f| (*f).to_owned()).collect(),
            why,
        };
        let list: Vec<Filter> = filters.iter().map(|f| Filter::new(*f, qos)).collect();
        self.client
            .subscribe_many(list)
            .await
            .map_err(|e| err(e.to_string()))?;
        match tokio::time::timeout(HANDSHAKE, self.subacks.recv()).await {
            Ok(Some(())) => Ok(()),
            _ => Err(err("no SUBACK within 10 s".to_owned())),
        }
    }

    /// Publishes at QoS 1 (not retained).
    ///
    /// # Panics
    ///
    /// When the request cannot be queued (the event loop is gone).
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>, props: PublishProperties) {
        self.try_publish(topic, payload, props)
            .await
            .expect("publish");
    }

    /// [`TestClient::publish`] that reports failure instead of panicking.
    ///
    /// # Errors
    ///
    /// [`TestkitError::Publish`] when the request cannot be queued.
    pub async fn try_publish(
        &self,
        topic: &str,
        payload: impl Into<Bytes>,
        props: PublishProperties,
    ) -> Result<(), TestkitError> {
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload.into(), props)
            .await
            .map_err(|e| TestkitError::Publish {
                client: self.name.clone(),
                topic: topic.to_owned(),
                why: e.to_string(),
            })
    }

    /// The next message, or `None` after `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Publish> {
        self.recv_at(timeout).await.map(|(_, p)| p)
    }

    /// The next message and when it arrived, or `None` after `timeout`.
    pub async fn recv_at(&mut self, timeout: Duration) -> Option<(Instant, Publish)> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// The next message and when it arrived, waiting as long as it takes
    /// (`None`: the event loop is gone).
    pub async fn next_at(&mut self) -> Option<(Instant, Publish)> {
        self.rx.recv().await
    }

    /// Everything that arrives within `window`.
    pub async fn drain(&mut self, window: Duration) -> Vec<Publish> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some((_, p))) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
            out.push(p);
        }
        out
    }
}

impl Drop for TestClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A user property of a message.
pub fn user_prop<'a>(p: &'a Publish, name: &str) -> Option<&'a str> {
    p.properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Properties of a binary-mode CloudEvent request from source `test-mes`
/// (JSON data).
pub fn ce_props(
    ty: &str,
    id: &str,
    subject: Option<&str>,
    response_topic: Option<&str>,
    correlation: Option<&[u8]>,
) -> PublishProperties {
    ce_props_from("test-mes", ty, id, subject, response_topic, correlation)
}

/// [`ce_props`] with another `source`.
pub fn ce_props_from(
    source: &str,
    ty: &str,
    id: &str,
    subject: Option<&str>,
    response_topic: Option<&str>,
    correlation: Option<&[u8]>,
) -> PublishProperties {
    let mut user = vec![
        ("specversion".to_owned(), "1.0".to_owned()),
        ("id".to_owned(), id.to_owned()),
        ("source".to_owned(), source.to_owned()),
        ("type".to_owned(), ty.to_owned()),
    ];
    if let Some(s) = subject {
        user.push(("subject".to_owned(), s.to_owned()));
    }
    PublishProperties {
        content_type: Some("application/json".into()),
        response_topic: response_topic.map(str::to_owned),
        correlation_data: correlation.map(Bytes::copy_from_slice),
        user_properties: user,
        ..Default::default()
    }
}
