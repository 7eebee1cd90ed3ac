//! The processor of the README ("Writing a processor"), shown there verbatim
//! and built by CI, so the README cannot drift from the API.
//!
//! Your application's Cargo.toml needs microdcs, serde (feature "derive") and
//! tokio (features "macros", "rt-multi-thread").
use microdcs::config::Config;
use microdcs::{App, Emit, EventType, HandlerError, Outcome, Processor, Scope, TopicBinding};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize)]
struct Greet {
    #[serde(rename = "Name")]
    name: String,
}
impl EventType for Greet {
    const TYPE: &'static str = "com.example.greeting.v1";
    const DATASCHEMA: &'static str = "https://example.com/schemas/greeting/v1/#/$defs/Greet";
}

#[derive(Serialize, Deserialize)]
struct Greeting {
    #[serde(rename = "Text")]
    text: String,
}
impl EventType for Greeting {
    const TYPE: &'static str = "com.example.greeting.v1"; // a reply keeps the request's type
    const DATASCHEMA: &'static str = "https://example.com/schemas/greeting/v1/#/$defs/Greeting";
}

async fn greet(cmd: Greet, scope: Scope) -> Result<Outcome, HandlerError> {
    Ok(Outcome::reply(&Greeting {
        text: format!("Hello, {}", cmd.name),
    })
    .emit(
        Emit::new(&Greeting {
            text: "greeted".into(),
        })
        .subject(scope.0),
    ))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let config = Config::load(None)?; // APP_* variables; Some(path) adds a TOML file
    microdcs::telemetry::init_logging(config.log_format(), &config.log.level);
    let processor = Processor::northbound("greeter").handle(greet).build();
    App::builder()
        .from_config(&config) // MQTT, Redis, APP_* variables
        .processor_configured(processor, TopicBinding::new("app/greetings"))
        .build()
        .await?
        .run() // until SIGTERM/SIGINT
        .await?;
    Ok(())
}
