//! A minimal rumqttc v5 client: TCP_NODELAY, a clean session, every
//! received PUBLISH stamped with the instant its event loop saw it.

use super::BenchResult;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// A received message and when it arrived.
pub(crate) type Received = (Instant, Publish);

/// A connected client whose event loop runs in a task of its own (so
/// publishing never waits on the reader).
pub(crate) struct Client {
    pub(crate) client: AsyncClient,
    pub(crate) rx: mpsc::UnboundedReceiver<Received>,
    subacks: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
    name: String,
}

impl Client {
    /// Connects to the broker on `127.0.0.1:port` as `id`.
    pub(crate) async fn connect(port: u16, id: &str) -> BenchResult<Self> {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(Some(16 * 1024 * 1024));
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
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let connected = tokio::time::timeout(Duration::from_secs(10), crx.recv()).await;
        if !matches!(connected, Ok(Some(()))) {
            task.abort();
            return Err(format!(
                "MQTT client '{id}' did not connect to 127.0.0.1:{port} within 10 s"
            ));
        }
        Ok(Client {
            client,
            rx,
            subacks,
            task,
            name: id.to_owned(),
        })
    }

    /// Subscribes `filters` at `qos` and waits for the SUBACK.
    pub(crate) async fn subscribe(&mut self, filters: &[&str], qos: QoS) -> BenchResult<()> {
        let list: Vec<Filter> = filters.iter().map(|f| Filter::new(*f, qos)).collect();
        self.client
            .subscribe_many(list)
            .await
            .map_err(|e| format!("'{}' cannot subscribe {filters:?}: {e}", self.name))?;
        match tokio::time::timeout(Duration::from_secs(10), self.subacks.recv()).await {
            Ok(Some(())) => Ok(()),
            _ => Err(format!(
                "'{}' got no SUBACK for {filters:?} within 10 s",
                self.name
            )),
        }
    }

    /// Publishes at QoS 1.
    pub(crate) async fn publish(
        &self,
        topic: &str,
        payload: Vec<u8>,
        props: PublishProperties,
    ) -> BenchResult<()> {
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, props)
            .await
            .map_err(|e| format!("'{}' cannot publish to {topic}: {e}", self.name))
    }

    /// The next message, or `None` after `timeout`.
    pub(crate) async fn recv(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A user property of a message.
pub(crate) fn user_prop<'a>(p: &'a Publish, name: &str) -> Option<&'a str> {
    p.properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Binary-mode CloudEvent properties of a request.
pub(crate) fn ce_props(
    ty: &str,
    id: &str,
    subject: Option<&str>,
    response_topic: Option<&str>,
    correlation: Option<Vec<u8>>,
) -> PublishProperties {
    let mut user = vec![
        ("specversion".to_owned(), "1.0".to_owned()),
        ("id".to_owned(), id.to_owned()),
        ("source".to_owned(), "bench-mes".to_owned()),
        ("type".to_owned(), ty.to_owned()),
    ];
    if let Some(s) = subject {
        user.push(("subject".to_owned(), s.to_owned()));
    }
    PublishProperties {
        content_type: Some("application/json".into()),
        response_topic: response_topic.map(str::to_owned),
        correlation_data: correlation.map(Into::into),
        user_properties: user,
        ..Default::default()
    }
}
