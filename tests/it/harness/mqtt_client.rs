//! A plain rumqttc v5 client playing the MES or equipment in tests.

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet, Publish, PublishProperties};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use std::time::Duration;
use tokio::sync::mpsc;

pub struct TestClient {
    pub client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Publish>,
    subacks: mpsc::UnboundedReceiver<()>,
    task: tokio::task::JoinHandle<()>,
}

impl TestClient {
    pub async fn connect(port: u16, id: &str) -> Self {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_max_packet_size(Some(64 * 1024 * 1024));
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(true);
        o.set_network_options(net);
        let (client, mut el) = AsyncClient::new(o, 1000);
        let (tx, rx) = mpsc::unbounded_channel();
        let (stx, subacks) = mpsc::unbounded_channel();
        let (ctx, mut crx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let _ = tx.send(p);
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
        tokio::time::timeout(Duration::from_secs(10), crx.recv())
            .await
            .expect("test client connect");
        TestClient {
            client,
            rx,
            subacks,
            task,
        }
    }

    pub async fn subscribe(&mut self, filter: &str) {
        self.client
            .subscribe_many([Filter::new(filter, QoS::AtLeastOnce)])
            .await
            .expect("subscribe");
        tokio::time::timeout(Duration::from_secs(10), self.subacks.recv())
            .await
            .expect("suback");
    }

    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>, props: PublishProperties) {
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload.into(), props)
            .await
            .expect("publish");
    }

    pub async fn recv(&mut self, timeout: Duration) -> Option<Publish> {
        tokio::time::timeout(timeout, self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Everything that arrives within `window`.
    pub async fn drain(&mut self, window: Duration) -> Vec<Publish> {
        let mut out = Vec::new();
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(p)) = tokio::time::timeout_at(deadline, self.rx.recv()).await {
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

/// User property lookup.
pub fn user_prop<'a>(p: &'a Publish, name: &str) -> Option<&'a str> {
    p.properties
        .as_ref()?
        .user_properties
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Properties of a binary-mode CloudEvent request.
pub fn ce_props(
    ty: &str,
    id: &str,
    subject: Option<&str>,
    response_topic: Option<&str>,
    correlation: Option<&[u8]>,
) -> PublishProperties {
    let mut user = vec![
        ("specversion".to_string(), "1.0".to_string()),
        ("id".to_string(), id.to_string()),
        ("source".to_string(), "test-mes".to_string()),
        ("type".to_string(), ty.to_string()),
    ];
    if let Some(s) = subject {
        user.push(("subject".into(), s.into()));
    }
    PublishProperties {
        content_type: Some("application/json".into()),
        response_topic: response_topic.map(str::to_owned),
        correlation_data: correlation.map(Bytes::copy_from_slice),
        user_properties: user,
        ..Default::default()
    }
}
