//! The station against a real Mosquitto and Redis, started by the test as
//! child processes on free loopback ports (`microdcs::testkit::devenv`):
//! the example processor answers the MES, and a job with the recipe in
//! `recipes/` runs to Ended on simulated equipment (`microdcs::sim`).

use microdcs::config::Config;
use microdcs::sim::{Rule, SimConfig, Simulator};
use microdcs::testkit::devenv::{LocalMosquitto, LocalRedis};
use microdcs::testkit::mes::{state_texts, Mes, NO_ERROR, SFC_RECIPE};
use microdcs::testkit::mqtt::{ce_props, user_prop, TestClient};
use microdcs::{AppError, EventType, ShutdownHandle};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::task::JoinHandle;

// This application's library, by a name that does not depend on the package's.
use {{crate_name}} as app;

use app::models::inspection::{CheckPartCall, CheckPartResponse};

const SCOPE: &str = "line-1";
const REPLIES: &str = "mes/inspection/replies";

/// Mosquitto, Redis and the station built by `app::build`, as `{{name}}`
/// runs it, configured through the environment variable names.
struct Running {
    mosquitto: LocalMosquitto,
    _redis: LocalRedis,
    stop: ShutdownHandle,
    station: JoinHandle<Result<(), AppError>>,
}

impl Running {
    async fn start() -> Running {
        let mosquitto = LocalMosquitto::start().expect("mosquitto starts (is it installed?)");
        let redis = LocalRedis::start().expect("redis-server starts (is it installed?)");
        let config = Config::from_sources(
            None,
            [
                ("APP_MQTT_HOSTNAME", "127.0.0.1".to_owned()),
                ("APP_MQTT_PORT", mosquitto.port().to_string()),
                ("APP_REDIS_HOSTNAME", "127.0.0.1".to_owned()),
                ("APP_REDIS_PORT", redis.port().to_string()),
                ("POD_ID", "station-test-0".to_owned()),
            ],
        )
        .expect("valid configuration");
        let station = app::build(&config).await.expect("the station builds");
        let transport = station.app.transports()[0].clone();
        let stop = station.app.shutdown_handle();
        let task = tokio::spawn(station.app.run());
        transport.ready().await;
        Running {
            mosquitto,
            _redis: redis,
            stop,
            station: task,
        }
    }

    fn port(&self) -> u16 {
        self.mosquitto.port()
    }

    async fn stop(self) {
        self.stop.shutdown();
        let result = self.station.await.expect("the station task");
        assert!(result.is_ok(), "the station stopped with {result:?}");
    }
}

/// Sends one `CheckPart` command with `body` to the inspection processor
/// and returns its reply.
async fn check_part(mes: &mut TestClient, id: &str, body: &Value) -> (Option<String>, Value) {
    let props = ce_props(
        CheckPartCall::TYPE,
        id,
        Some(SCOPE),
        Some(REPLIES),
        Some(id.as_bytes()),
    );
    mes.publish("app/inspection/commands", body.to_string(), props)
        .await;
    let reply = mes
        .recv(Duration::from_secs(10))
        .await
        .expect("a reply to CheckPart");
    let correlation = reply
        .properties
        .as_ref()
        .and_then(|p| p.correlation_data.as_ref())
        .map(|c| c.to_vec());
    assert_eq!(correlation.as_deref(), Some(id.as_bytes()));
    assert_eq!(user_prop(&reply, "type"), Some(CheckPartCall::TYPE));
    let error = user_prop(&reply, "mdcserrorkind").map(str::to_owned);
    let data = serde_json::from_slice(&reply.payload).unwrap_or(Value::Null);
    (error, data)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_part_is_answered_with_the_verdict() {
    let running = Running::start().await;
    let mut mes = TestClient::connect(running.port(), "mes-inspection").await;
    mes.subscribe(REPLIES).await;

    let (error, data) = check_part(
        &mut mes,
        "check-1",
        &json!({"SerialNumber": "SN-1", "DiameterMm": 12.03}),
    )
    .await;
    assert_eq!(error, None);
    let reply: CheckPartResponse = serde_json::from_value(data).expect("a CheckPartResponse");
    assert_eq!(reply.serial_number, "SN-1");
    assert!(reply.passed);
    assert!((reply.deviation_mm - 0.03).abs() < 1e-9, "{reply:?}");

    let (error, data) = check_part(
        &mut mes,
        "check-2",
        &json!({"SerialNumber": "SN-2", "DiameterMm": 12.2}),
    )
    .await;
    assert_eq!(error, None);
    assert_eq!(data["Passed"], json!(false));

    // A payload that is not a CheckPartCall gets an error reply, and the
    // station keeps serving.
    let (error, _) = check_part(&mut mes, "check-3", &json!({"SerialNumber": "SN-3"})).await;
    assert_eq!(error.as_deref(), Some("PAYLOAD_INVALID"));
    let (error, _) = check_part(
        &mut mes,
        "check-4",
        &json!({"SerialNumber": "SN-4", "DiameterMm": 11.99}),
    )
    .await;
    assert_eq!(error, None);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_with_the_recipe_runs_to_ended_on_simulated_equipment() {
    let running = Running::start().await;
    let recipe: Value = serde_json::from_str(include_str!("../recipes/inspect-part.json"))
        .expect("the recipe is JSON");
    let measure = recipe["Actions"]
        .as_array()
        .and_then(|actions| actions.iter().find(|a| a["Name"] == "measure"))
        .and_then(|a| a["TypeId"].as_str())
        .expect("the recipe's measure action");
    // The equipment: answers every command of the recipe; the gauge
    // measures a diameter within tolerance.
    let sim = Simulator::new(
        SimConfig {
            client_id: "test-equipment".into(),
            ..SimConfig::new("127.0.0.1", running.port())
        }
        .rule(Rule::new(measure).result(json!({"DiameterMm": 12.01})))
        .rule(Rule::new("*")),
    )
    .expect("a valid simulator configuration");
    let equipment = sim.handle();
    let sim_task = tokio::spawn(sim.run(std::future::pending()));
    equipment.ready().await;

    let mut mes = Mes::connect(running.port(), "mes").await;
    mes.configure(
        "workmaster",
        SCOPE,
        json!({"ID": "wm-inspect", "data": recipe, "dataschema": SFC_RECIPE}),
        false,
    )
    .await;
    // The work master is a configuration event without a reply: the order
    // is refused until the station has stored it, so ask until accepted
    // (for at most about 30 s).
    let order =
        json!({"JobOrder": {"JobOrderID": "job-1", "WorkMasterID": [{"ID": "wm-inspect"}]}});
    let mut accepted = false;
    for _ in 0..300 {
        if mes.status("StoreAndStart", SCOPE, order.clone()).await == NO_ERROR {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(accepted, "StoreAndStart of job-1 was never accepted");

    let ended = loop {
        let (_, event) = mes
            .next_event()
            .await
            .expect("status events until the job ends");
        let state = state_texts(&event["JobState"]);
        if event["JobOrder"]["JobOrderID"] == "job-1"
            && ["Ended", "Aborted"].contains(&state[0].as_str())
        {
            break state;
        }
    };
    assert_eq!(ended, ["Ended", "Completed"]);
    // clamp, measure, unclamp (more only if a command timed out and was
    // re-sent).
    assert!(equipment.stats().replied >= 3, "{}", equipment.stats());
    equipment.shutdown();
    sim_task.await.expect("the simulator task");
    running.stop().await;
}
