//! The one set of MQTT connection settings, and the rumqttc options they
//! make.

use super::MqttTls;
use crate::config::Secret;
use rumqttc::v5::MqttOptions;
use std::path::PathBuf;
use std::time::Duration;

/// Connection and behaviour settings of one MQTT transport.
#[derive(Debug, Clone)]
pub struct MqttSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id; must be unique per instance.
    pub client_id: String,
    /// Instance id (response topics).
    pub instance_id: String,
    /// Optional username.
    pub username: Option<String>,
    /// Optional password (needs `username`).
    pub password: Option<Secret>,
    /// TLS to the broker; `None`: plain TCP.
    pub tls: Option<MqttTls>,
    /// Kubernetes service-account token file: while it exists, CONNECT
    /// carries `K8S-SAT` enhanced authentication with its content, read
    /// again at every connection attempt.
    pub sat_token_path: Option<PathBuf>,
    /// Keep-alive interval.
    pub keep_alive: Duration,
    /// Session expiry: how long the broker keeps our session (and queued
    /// QoS 1 messages) while we are away. Zero means a clean session.
    pub session_expiry: Duration,
    /// Largest payload processed; larger ones (up to 4×) are answered with
    /// `RESOURCE_EXHAUSTED` and dead-lettered, beyond that the broker drops
    /// them (announced as MQTT v5 Maximum Packet Size).
    pub max_payload_size: usize,
    /// Messages processed concurrently and announced as Receive Maximum.
    pub max_inflight: u16,
    /// Capacity of the outgoing request queue (publishers wait when full).
    pub queue_capacity: usize,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Largest reconnect delay.
    pub reconnect_max: Duration,
    /// Disable Nagle's algorithm (a QoS 1 round trip takes ~88 ms with it).
    pub tcp_nodelay: bool,
    /// Topic receiving messages that could not be processed.
    pub dead_letter_topic: String,
    /// CloudEvent `source` of replies.
    pub source: String,
    /// Default QoS of events.
    pub events_qos: u8,
    /// How long shutdown waits for in-flight work and outgoing acks.
    pub shutdown_grace: Duration,
    /// Attempts at a message whose failures are retryable before it is
    /// dead-lettered with the history of its errors.
    pub max_attempts: u32,
    /// Message Expiry Interval given to outgoing commands and events that
    /// carry no `expiryinterval` of their own (replies and retained messages
    /// excepted).
    pub message_expiry: Option<Duration>,
}

impl MqttSettings {
    /// Settings for a local broker with sensible defaults.
    pub fn new(host: impl Into<String>, port: u16, instance_id: impl Into<String>) -> Self {
        let instance_id = instance_id.into();
        MqttSettings {
            host: host.into(),
            port,
            client_id: format!("microdcs-{instance_id}"),
            instance_id,
            username: None,
            password: None,
            tls: None,
            sat_token_path: None,
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(3600),
            max_payload_size: 1024 * 1024,
            max_inflight: 100,
            queue_capacity: 1024,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(30),
            tcp_nodelay: true,
            dead_letter_topic: "microdcs/dead-letter".into(),
            source: "microdcs".into(),
            events_qos: 1,
            shutdown_grace: Duration::from_secs(10),
            max_attempts: 30,
            message_expiry: None,
        }
    }

    /// The rumqttc options of a connection made now with these settings
    /// (the simulator's, a one-off client's): those of the transport's
    /// connection without its flow control, with TLS and `K8S-SAT` applied
    /// from the files as they are now. A file that cannot be used is
    /// logged, and the connection is then made to fail its TLS handshake
    /// rather than fall back to plain TCP.
    /// [`connect_options`](Self::connect_options) for a caller that
    /// reports the problem itself: a TLS or token file that cannot be used
    /// is the error (in the operator's words, naming the file), not a log
    /// line and a connection that fails later.
    pub(crate) fn try_connect_options(&self) -> Result<MqttOptions, String> {
        let mut o = self.base_options();
        super::prepare(self, &mut o)?;
        Ok(o)
    }

    // Used by the simulator and by one-off clients of other features.
    #[cfg_attr(not(feature = "sim"), allow(dead_code))]
    pub(crate) fn connect_options(&self) -> MqttOptions {
        let mut o = self.base_options();
        if let Err(reason) = super::prepare(self, &mut o) {
            tracing::error!(client_id = %self.client_id, error = %reason, "MQTT connection without usable TLS files or token; it will fail");
        }
        o
    }

    /// What every connection with these settings shares: broker, client
    /// id, credentials, keep-alive, session expiry (a clean start when it
    /// is zero), TCP_NODELAY and a 10 s connection timeout. TLS and
    /// `K8S-SAT` are not in them: the transport's session adds them before
    /// each connection attempt, as their files may change between attempts.
    /// Until then, with TLS configured, the transport is one that fails
    /// its handshake, never plain TCP.
    fn base_options(&self) -> MqttOptions {
        let mut o = MqttOptions::new(self.client_id.clone(), self.host.clone(), self.port);
        o.set_keep_alive(self.keep_alive.max(Duration::from_secs(1)));
        o.set_clean_start(self.session_expiry.is_zero());
        o.set_session_expiry_interval(Some(
            self.session_expiry.as_secs().min(u32::MAX as u64) as u32
        ));
        if let Some(u) = &self.username {
            let password = self
                .password
                .as_ref()
                .map(Secret::expose)
                .unwrap_or_default();
            o.set_credentials(u.clone(), password);
        }
        let mut net = rumqttc::NetworkOptions::new();
        net.set_tcp_nodelay(self.tcp_nodelay);
        net.set_connection_timeout(10);
        o.set_network_options(net);
        if self.tls.is_some() {
            super::security::fail_closed(self, &mut o);
        }
        o
    }

    /// The rumqttc options of the transport's connection: the shared ones
    /// (TLS and `K8S-SAT` come before each attempt), plus manual
    /// acknowledgements (a message is acknowledged only after it was
    /// processed), `max_inflight` announced as Receive Maximum, and a
    /// Maximum Packet Size of four times `max_payload_size` (larger payloads
    /// up to that size are answered `RESOURCE_EXHAUSTED`, beyond it the
    /// broker drops them).
    pub(crate) fn options(&self) -> MqttOptions {
        let mut o = self.base_options();
        o.set_manual_acks(true);
        o.set_receive_maximum(Some(self.max_inflight.max(1)));
        o.set_outgoing_inflight_upper_limit(self.max_inflight.max(1));
        let network_limit =
            (self.max_payload_size.saturating_mul(4) + 64 * 1024).min(256 * 1024 * 1024);
        o.set_max_packet_size(Some(network_limit as u32));
        o
    }
}
