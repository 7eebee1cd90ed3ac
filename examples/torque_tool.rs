//! A hand-written southbound processor that takes over one command type
//! from the generic `equipment` processor: a nutrunner whose controller
//! speaks its own payloads.
//!
//! The recipe's `tighten` action (`TypeId` `com.example.axle.tighten.v1`,
//! `Parameters` `{"TorqueNm": 45, "AngleDeg": 90}`) goes out as the tool's
//! `com.example.nutrunner.Tighten.v1` with `{"Program": 7, "TargetNm": …}` on
//! `app/tools/…/commands`; the tool's native result `{"FinalTorque": 44.1,
//! "Verdict": "OK"}` comes back on the shared response topic and is handed
//! to the engine as `{"torque_nm": 44.1, "torque_ok": true}`, which is what
//! the recipe's conditions read.
//!
//! ```sh
//! cargo run --example torque_tool -- --config microdcs.example.toml
//! ```

use microdcs::config::Config;
use microdcs::sfc::engine::{Command, Engine};
use microdcs::{CloudEvent, Emit, HandlerError, Processor, State, TopicBinding};
use serde_json::{json, Value};

mod support;

/// The command type this processor takes over.
pub const TIGHTEN: &str = "com.example.axle.tighten.v1";

/// Builds the tool's processor and registers it with the engine.
pub fn torque_tool(engine: &Engine) -> (Processor, TopicBinding) {
    let tool = Processor::southbound("torque-tool")
        .handle(on_tool_message)
        .state(engine.clone())
        .build();
    engine.take_over(TIGHTEN, &tool, shape_tighten);
    let mut binding = TopicBinding::new("app/tools");
    binding.wildcard_levels = 2;
    binding.shared_response_topic = Some("app/tools/responses".into());
    (tool, binding)
}

/// Recipe action → the tool's own command.
fn shape_tighten(cmd: &Command) -> Result<Emit, String> {
    let target = cmd
        .parameters
        .get("TorqueNm")
        .and_then(Value::as_f64)
        .ok_or("TorqueNm missing")?;
    let mut ev = CloudEvent::new("com.example.nutrunner.Tighten.v1", "");
    ev.set_data(
        microdcs::ContentType::Json,
        &json!({"Program": 7, "TargetNm": target, "Angle": cmd.parameters.get("AngleDeg")}),
    )?;
    Ok(Emit::raw(ev))
}

/// The tool's results (and any events) → the engine, in the recipe's terms.
async fn on_tool_message(
    mut ev: CloudEvent,
    State(engine): State<Engine>,
) -> Result<(), HandlerError> {
    if let Ok(native) = ev.data_as::<Value>() {
        if let Some(torque) = native.get("FinalTorque").and_then(Value::as_f64) {
            let ok = native.get("Verdict").and_then(Value::as_str) == Some("OK");
            ev.set_data(
                microdcs::ContentType::Json,
                &json!({"torque_nm": torque, "torque_ok": ok}),
            )
            .map_err(|e| HandlerError::terminal(microdcs::ErrorKind::PayloadInvalid, e))?;
        }
    }
    engine.deliver(&ev).await.map_err(HandlerError::from)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config: Config = support::load_config(&args)?;
    let station = microdcs::station::build_extended(
        &config,
        microdcs::station::job_settings(&config),
        |b, engine| match engine {
            Some(engine) => {
                let (tool, binding) = torque_tool(engine);
                b.processor(tool, binding)
            }
            None => b,
        },
    )
    .await?;
    station.app.run().await?;
    Ok(())
}
