//! A minimal northbound processor: copy this file to start your own.
//!
//! It answers `com.example.greeting.v1` commands with a greeting reply and
//! emits a `com.example.greeted.v1` event on `{prefix}/{scope}/events`.
//!
//! Run it against the brokers of your configuration (`APP_MQTT_HOSTNAME`,
//! `APP_REDIS_HOSTNAME`, … or `--config station.toml`):
//!
//! ```sh
//! cargo run --example greeter
//! ```
//!
//! or as a self-contained demo that starts local mosquitto and redis-server
//! child processes and plays the MES:
//!
//! ```sh
//! cargo run --example greeter -- --demo
//! ```

use microdcs::config::Config;
use microdcs::{App, Emit, EventType, HandlerError, Meta, Processor, Scope, State, TopicBinding};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};

mod support;

/// The command. PascalCase on the wire, like the OPC UA payloads.
#[derive(Debug, Serialize, Deserialize)]
struct Greet {
    #[serde(rename = "Name")]
    name: String,
}

impl EventType for Greet {
    const TYPE: &'static str = "com.example.greeting.v1";
    const DATASCHEMA: &'static str = "https://example.com/schemas/greeting/v1/#/$defs/Greet";
}

/// The reply: same `type` as the request, its own `dataschema`.
#[derive(Debug, Serialize, Deserialize)]
struct Greeting {
    #[serde(rename = "Text")]
    text: String,
    #[serde(rename = "Count")]
    count: u64,
}

impl EventType for Greeting {
    const TYPE: &'static str = "com.example.greeting.v1";
    const DATASCHEMA: &'static str = "https://example.com/schemas/greeting/v1/#/$defs/Greeting";
}

/// An event other systems can follow.
#[derive(Debug, Serialize, Deserialize)]
struct Greeted {
    #[serde(rename = "Name")]
    name: String,
}

impl EventType for Greeted {
    const TYPE: &'static str = "com.example.greeted.v1";
    const DATASCHEMA: &'static str = "https://example.com/schemas/greeting/v1/#/$defs/Greeted";
}

/// Shared state: handlers get it as `State<Counter>`.
#[derive(Default)]
struct Counter {
    greetings: AtomicU64,
}

/// The handler: a plain async function. The first argument decides which
/// CloudEvent type it receives; `Scope` makes a `subject` mandatory.
async fn greet(
    cmd: Greet,
    scope: Scope,
    meta: Meta,
    counter: State<Counter>,
) -> Result<microdcs::Outcome, HandlerError> {
    if cmd.name.trim().is_empty() {
        return Err(HandlerError::terminal(
            microdcs::ErrorKind::PayloadInvalid,
            "Name must not be empty",
        ));
    }
    let count = counter.greetings.fetch_add(1, Ordering::Relaxed) + 1;
    tracing::info!(scope = &*scope, id = %meta.event.id, name = %cmd.name, "greeting");
    Ok(microdcs::Outcome::reply(&Greeting {
        text: format!("Hello, {}, from {}", cmd.name, &*scope),
        count,
    })
    .emit(Emit::new(&Greeted { name: cmd.name }).subject(scope.0)))
}

fn processor() -> Processor {
    Processor::northbound("greeter")
        .handle(greet)
        .state(Counter::default())
        .build()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--demo") {
        return demo::run().await;
    }
    let config: Config = support::load_config(&args)?;
    App::builder()
        .from_config(&config)
        .processor_configured(processor(), TopicBinding::new("app/greetings"))
        .build()
        .await?
        .run()
        .await?;
    Ok(())
}

/// The self-contained demo: local brokers, the processor, and a scripted MES.
mod demo {
    use super::*;
    use microdcs::testkit::devenv::{LocalMosquitto, LocalRedis};
    use microdcs::testkit::TestClient;
    use microdcs::transport::binding;
    use microdcs::transport::mqtt::MqttSettings;
    use microdcs::CloudEvent;
    use rumqttc::v5::mqttbytes::QoS;
    use std::time::Duration;

    pub(super) async fn run() -> Result<(), Box<dyn std::error::Error>> {
        microdcs::telemetry::init_logging(microdcs::telemetry::LogFormat::Text, "warn");
        let mosquitto = LocalMosquitto::start()?;
        let redis = LocalRedis::start()?;
        println!(
            "started mosquitto on 127.0.0.1:{} and redis-server on 127.0.0.1:{}",
            mosquitto.port(),
            redis.port()
        );

        let mut settings = MqttSettings::new("127.0.0.1", mosquitto.port(), "demo-station");
        settings.source = "demo-station".into();
        let mut binding = TopicBinding::new("app/greetings");
        binding.wildcard_levels = 1;
        let app = App::builder()
            .mqtt("mqtt", settings)
            .redis_url(redis.url(), "demo")
            .processor(processor(), binding)
            .build()
            .await?;
        let transport = app.transports()[0].clone();
        let stop = app.shutdown_handle();
        let station = tokio::spawn(app.run());
        transport.ready().await;

        // The MES side: a plain MQTT v5 client (the testkit's).
        let mut client = TestClient::try_connect(mosquitto.port(), "demo-mes").await?;
        client
            .try_subscribe(&["mes/replies", "app/greetings/+/events"], QoS::AtLeastOnce)
            .await?;
        let mes = client.client.clone();
        let printer = tokio::spawn(async move {
            while let Some((_, p)) = client.next_at().await {
                let topic = String::from_utf8_lossy(&p.topic).into_owned();
                match binding::decode(&topic, p.payload.clone(), p.properties.as_ref()) {
                    Ok(i) => {
                        let e = &i.event;
                        let body = String::from_utf8_lossy(e.data.as_deref().unwrap_or_default())
                            .into_owned();
                        match &e.mdcserrorkind {
                            Some(kind) => println!(
                                "  <- {topic}: error {kind}: {}",
                                e.mdcserrormessage.as_deref().unwrap_or("")
                            ),
                            None => println!("  <- {topic}: {} {body}", e.ty),
                        }
                    }
                    Err(r) => println!("  <- {topic}: undecodable ({})", r.message),
                }
            }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;

        let requests = [
            ("line-1", r#"{"Name":"Ada"}"#),
            ("line-2", r#"{"name":"Grace"}"#),
            ("line-1", r#"{"Name":""}"#),
            ("line-1", "not json"),
        ];
        for (i, (scope, body)) in requests.iter().enumerate() {
            let mut e = CloudEvent::new(Greet::TYPE, "demo-mes");
            e.id = format!("demo-{i}");
            e.subject = Some((*scope).into());
            e.datacontenttype = Some("application/json".into());
            e.data = Some(bytes::Bytes::from(body.to_string()));
            e.correlationid = Some(microdcs::CorrelationId::new_uuid());
            let out = binding::encode(&e, None);
            let mut props = out.properties;
            props.response_topic = Some("mes/replies".into());
            println!("-> app/greetings/commands [{scope}] {body}");
            mes.publish_with_properties(
                "app/greetings/commands",
                QoS::AtLeastOnce,
                false,
                out.payload,
                props,
            )
            .await?;
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        stop.shutdown();
        station.await??;
        printer.abort();
        let m = transport.metrics().snapshot();
        println!(
            "station processed {} messages, dead-lettered {}",
            m.processed, m.dead_lettered
        );
        Ok(())
    }
}
