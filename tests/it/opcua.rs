//! The OPC UA server face (issue #13): its configuration, and a real
//! server driven by a real OPC UA client (Python `asyncua`, installed by
//! `scripts/setup.sh`).

use microdcs::config::{Config, ConfigError};

fn load(toml: Option<&str>, env: &[(&str, &str)]) -> Config {
    match Config::from_sources(toml, env.iter().copied()) {
        Ok(c) => c,
        Err(e) => panic!("configuration should load: {e}"),
    }
}

fn error(env: &[(&str, &str)]) -> ConfigError {
    match Config::from_sources(None, env.iter().copied()) {
        Ok(c) => panic!("configuration should be rejected:\n{}", c.redacted_toml()),
        Err(e) => e,
    }
}

fn has_problem(err: &ConfigError, origin: &str, needle: &str) -> bool {
    err.problems()
        .iter()
        .any(|p| p.origin.to_string().contains(origin) && p.message.contains(needle))
}

#[test]
fn opcua_is_off_by_default_and_secure_when_on() {
    let c = load(None, &[]);
    let o = &c.opcua;
    assert_eq!(o.port, 0, "no OPC UA server unless a port is set");
    assert!(!o.anonymous);
    assert_eq!(
        o.security_policies,
        [
            "Basic256Sha256",
            "Aes128-Sha256-RsaOaep",
            "Aes256-Sha256-RsaPss"
        ]
    );
    assert_eq!(o.security_modes, ["SignAndEncrypt"]);
    assert_eq!(o.bind, "0.0.0.0");
    assert_eq!(o.pki_dir, std::path::Path::new("./pki"));
    assert!(o.username.is_none() && o.password.is_none());
    assert!(o.hostname.is_none() && o.application_uri.is_none());
    assert!(!o.trust_all_clients);
}

#[test]
fn opcua_settings_come_from_the_file_and_the_environment() {
    let file = r#"
        [opcua]
        port = 4840
        scopes = ["line-1", "line-2"]
        security_policies = ["None", "Basic256Sha256"]
    "#;
    let env = [
        ("APP_OPCUA_HOSTNAME", "station.example"),
        ("APP_OPCUA_BIND", "127.0.0.1"),
        ("APP_OPCUA_ANONYMOUS", "yes"),
        ("APP_OPCUA_SECURITY_MODES", "Sign,SignAndEncrypt"),
        ("APP_OPCUA_USERNAME", "operator"),
        ("APP_OPCUA_PASSWORD", "s3cret-pw"),
        ("APP_OPCUA_PKI_DIR", "/var/lib/microdcs/pki"),
        ("APP_OPCUA_APPLICATION_URI", "urn:plant:station-1"),
        ("APP_OPCUA_TRUST_ALL_CLIENTS", "true"),
    ];
    let c = load(Some(file), &env);
    let o = &c.opcua;
    assert_eq!(o.port, 4840);
    assert_eq!(o.scopes, ["line-1", "line-2"]);
    assert_eq!(o.security_policies, ["None", "Basic256Sha256"]);
    assert_eq!(o.security_modes, ["Sign", "SignAndEncrypt"]);
    assert_eq!(o.hostname.as_deref(), Some("station.example"));
    assert_eq!(o.bind, "127.0.0.1");
    assert!(o.anonymous && o.trust_all_clients);
    assert_eq!(o.username.as_deref(), Some("operator"));
    assert_eq!(o.password.as_ref().map(|p| p.expose()), Some("s3cret-pw"));
    assert_eq!(o.pki_dir, std::path::Path::new("/var/lib/microdcs/pki"));
    assert_eq!(o.application_uri.as_deref(), Some("urn:plant:station-1"));

    // `config check` shows the section, the password hidden.
    let shown = c.redacted_toml();
    assert!(shown.contains("[opcua]"), "{shown}");
    assert!(shown.contains("port = 4840"), "{shown}");
    assert!(!shown.contains("s3cret-pw"), "{shown}");
    assert!(shown.contains("password = \"***\""), "{shown}");
}

#[test]
fn opcua_settings_that_cannot_work_are_refused_with_their_reason() {
    let e = error(&[(
        "APP_OPCUA_SECURITY_POLICIES",
        "Basic256Sha256,Basic128Rsa15",
    )]);
    assert!(
        has_problem(&e, "APP_OPCUA_SECURITY_POLICIES", "Basic128Rsa15"),
        "{e}"
    );
    let e = error(&[("APP_OPCUA_SECURITY_MODES", "None")]);
    assert!(
        has_problem(&e, "APP_OPCUA_SECURITY_MODES", "unknown security mode"),
        "{e}"
    );
    let e = error(&[("APP_OPCUA_PORT", "65536")]);
    assert!(has_problem(&e, "APP_OPCUA_PORT", ""), "{e}");
    let e = error(&[
        ("APP_OPCUA_PASSWORD", "pw"),
        ("APP_OPCUA_ANONYMOUS", "true"),
    ]);
    assert!(has_problem(&e, "APP_OPCUA_PASSWORD", "user name"), "{e}");
    // A server nobody can log in to.
    let e = error(&[("APP_OPCUA_PORT", "4840")]);
    assert!(
        has_problem(&e, "APP_OPCUA_PORT", "nobody could log in"),
        "{e}"
    );
    // The face needs the job manager.
    let e = error(&[
        ("APP_OPCUA_PORT", "4840"),
        ("APP_OPCUA_ANONYMOUS", "true"),
        ("APP_IS_PROCESSOR_INSTANCE", "false"),
    ]);
    assert!(
        has_problem(&e, "APP_OPCUA_PORT", "processor instance"),
        "{e}"
    );
}

// --- a real server, a real client -----------------------------------------

use crate::harness::jobs::{self, JobStation};
use crate::harness::{init_tracing, Mosquitto, Redis};
use serde_json::Value;
use std::time::Duration;

pub(crate) const SCOPE: &str = "line-1";

/// Whether python3 with asyncua is there; under CI it must be
/// (`scripts/setup.sh` installs it).
pub(crate) fn asyncua_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import asyncua"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "python3 with asyncua is missing under CI (scripts/setup.sh installs it)"
        );
        eprintln!("SKIPPED: python3 with asyncua is missing (pip install asyncua==2.1.0; scripts/setup.sh does)");
    }
    ok
}

pub(crate) struct Face {
    pub(crate) _m: Mosquitto,
    pub(crate) _r: Redis,
    pub(crate) station: JobStation,
    pub(crate) url: String,
    pub(crate) pki: tempfile::TempDir,
    pub(crate) work: tempfile::TempDir,
}

/// A station with the OPC UA face on a free port, serving [`SCOPE`],
/// trusting every client certificate, with `extra` settings.
pub(crate) async fn start_face(extra: &[(&str, &str)]) -> Face {
    let m = Mosquitto::start();
    let r = Redis::start();
    let port = microdcs::testkit::devenv::free_port().expect("a free port");
    let pki = tempfile::tempdir().expect("temporary directory");
    let mut env = jobs::env(m.port(), r.0.port(), "opcua-1");
    for (k, v) in [
        ("APP_OPCUA_PORT", port.to_string()),
        ("APP_OPCUA_BIND", "127.0.0.1".into()),
        ("APP_OPCUA_HOSTNAME", "127.0.0.1".into()),
        ("APP_OPCUA_SCOPES", SCOPE.into()),
        ("APP_OPCUA_PKI_DIR", pki.path().display().to_string()),
        ("APP_OPCUA_TRUST_ALL_CLIENTS", "true".into()),
    ] {
        jobs::set(&mut env, k, &v);
    }
    for (k, v) in extra {
        jobs::set(&mut env, k, v);
    }
    let station = jobs::start(env).await;
    // Listening once the node managers are initialised.
    let listening = crate::harness::eventually(Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(listening, "the OPC UA server listens on {port}");
    Face {
        _m: m,
        _r: r,
        station,
        url: format!("opc.tcp://127.0.0.1:{port}/"),
        pki,
        work: tempfile::tempdir().expect("temporary directory"),
    }
}

/// Runs `tests/opcua/client.py` and returns its JSON line.
pub(crate) async fn client(face: &Face, scenario: &str, args: &[&str]) -> Value {
    let mut all = vec![face.url.as_str(), path_str(face.work.path()), scenario];
    all.extend(["--scope", SCOPE]);
    all.extend_from_slice(args);
    run_script("client.py", &all).await
}

/// A temporary path as an argument (they are UTF-8 on this project's machines).
pub(crate) fn path_str(p: &std::path::Path) -> &str {
    p.to_str().expect("a UTF-8 temporary path")
}

/// Runs the Python client `tests/opcua/{script}` with `args` (at most
/// 300 s) and returns the last JSON line it printed: the scripts print one
/// line, failures included, and never raise.
pub(crate) async fn run_script(script: &str, args: &[&str]) -> Value {
    let path = format!("{}/tests/opcua/{script}", env!("CARGO_MANIFEST_DIR"));
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(path).args(args).kill_on_drop(true);
    let out = tokio::time::timeout(Duration::from_secs(300), cmd.output())
        .await
        .expect("the client finishes")
        .expect("python3 runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().rev().find(|l| l.starts_with('{'));
    match line.map(serde_json::from_str::<Value>) {
        Some(Ok(v)) => v,
        _ => panic!(
            "no JSON line from {script}:\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Anonymous sessions are accepted when `APP_OPCUA_ANONYMOUS` allows them
/// and refused when not; a user logs in with the configured password
/// only. The server creates its certificate on the first start and keeps
/// it over a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_follow_the_configured_users_and_the_certificate_is_kept() {
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let users = [
        ("APP_OPCUA_USERNAME", "operator"),
        ("APP_OPCUA_PASSWORD", "right-pw"),
    ];
    let face = start_face(&users).await;
    let cert = std::fs::read(face.pki.path().join("own/cert.der")).expect("own certificate");
    assert!(face.pki.path().join("private/private.pem").is_file());

    let anon = client(&face, "connect", &[]).await;
    assert_eq!(
        anon["ok"], false,
        "anonymous refused when not allowed: {anon}"
    );
    assert!(
        anon["error"]
            .to_string()
            .contains("BadIdentityTokenInvalid"),
        "{anon}"
    );
    let wrong = client(
        &face,
        "connect",
        &["--user", "operator", "--password", "wrong"],
    )
    .await;
    assert_eq!(wrong["ok"], false, "a wrong password is refused: {wrong}");
    assert!(
        wrong["error"]
            .to_string()
            .contains("BadIdentityTokenRejected"),
        "{wrong}"
    );
    let right = client(
        &face,
        "connect",
        &["--user", "operator", "--password", "right-pw"],
    )
    .await;
    assert_eq!(right["ok"], true, "the configured user logs in: {right}");
    assert_eq!(right["server_state"], 0, "Running: {right}");

    // The same PKI directory, now with anonymous sessions allowed.
    let Face {
        station,
        pki,
        _m,
        _r,
        ..
    } = face;
    station.stop().await;
    drop((_m, _r));
    let mut extra = users.to_vec();
    let dir = pki.path().display().to_string();
    extra.push(("APP_OPCUA_PKI_DIR", &dir));
    extra.push(("APP_OPCUA_ANONYMOUS", "true"));
    let face = start_face(&extra).await;
    let anon = client(&face, "connect", &[]).await;
    assert_eq!(anon["ok"], true, "anonymous allowed: {anon}");
    assert_eq!(
        std::fs::read(pki.path().join("own/cert.der")).expect("own certificate"),
        cert,
        "the certificate is kept over a restart"
    );
    face.station.stop().await;
}

/// A generic client finds `Objects/<scope>/JobManagement/JobOrderControl`
/// with the eleven job methods, reads `StoreAndStart`'s arguments as the
/// NodeSet declares them, and builds the ISA95 structures from the
/// server's DataTypeDefinitions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_browses_job_order_control_and_loads_the_data_types() {
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let face = start_face(&[("APP_OPCUA_ANONYMOUS", "true")]).await;
    let out = client(&face, "browse", &[]).await;
    assert_eq!(out["ok"], true, "{out}");
    let children: Vec<&str> = out["children"]
        .as_array()
        .expect("children")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for m in jobs::METHODS {
        assert!(
            children.contains(&m),
            "JobOrderControl has {m}: {children:?}"
        );
    }
    for v in [
        "CurrentState",
        "JobOrderList",
        "EquipmentID",
        "WorkMaster",
        "MaxDownloadableJobOrders",
    ] {
        assert!(
            children.contains(&v),
            "JobOrderControl has {v}: {children:?}"
        );
    }
    let results = out["results_children"].to_string();
    assert!(
        results.contains("RequestJobResponseByJobOrderID"),
        "{results}"
    );
    assert!(
        results.contains("RequestJobResponseByJobOrderState"),
        "{results}"
    );

    let inputs = out["inputs"].as_array().expect("inputs");
    assert_eq!(inputs.len(), 2, "{out}");
    assert_eq!(inputs[0]["name"], "JobOrder");
    assert_eq!(
        inputs[0]["type"], out["jc_type_id"],
        "ISA95JobOrderDataType: {out}"
    );
    assert_eq!(inputs[1]["name"], "Comment");
    assert_eq!(inputs[1]["type"], "i=21", "LocalizedText: {out}");
    assert_eq!(out["outputs"][0]["name"], "ReturnStatus");
    assert_eq!(out["outputs"][0]["type"], "i=9", "UInt64: {out}");

    assert_eq!(out["has_job_order_type"], true, "{out}");
    let types = out["types"].to_string();
    for t in [
        "ISA95JobOrderDataType",
        "ISA95JobResponseDataType",
        "ISA95StateDataType",
        "ISA95WorkMasterDataType",
    ] {
        assert!(types.contains(t), "{t} loaded: {types}");
    }
    face.station.stop().await;
}

/// `Start` called over OPC UA goes through the same job commands as the
/// MQTT face: a job stored by the MES starts (NoError), the MES gets the
/// status event of that OPC UA command, and the same call again or for an
/// unknown job is answered with the same ReturnStatus MQTT would give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_over_opcua_runs_the_shared_job_command_and_the_mes_sees_it() {
    use crate::harness::jobs::{order, Mes};
    use serde_json::json;
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let face = start_face(&[("APP_OPCUA_ANONYMOUS", "true")]).await;
    let mut mes = Mes::connect(face._m.port(), "mes").await;
    assert_eq!(
        mes.status("Store", SCOPE, json!({"JobOrder": order("j1")}))
            .await,
        1,
        "NoError"
    );
    let (_, stored) = mes.next_event().await.expect("status event of Store");
    assert_eq!(stored["JobOrder"]["JobOrderID"], "j1");

    let out = client(
        &face,
        "call",
        &[
            "--method", "Start", "--job", "j1", "--job", "j1", "--job", "nope", "--job", "",
        ],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    let statuses: Vec<u64> = out["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| {
            c["status"]
                .as_u64()
                .unwrap_or_else(|| panic!("a ReturnStatus: {c}"))
        })
        .collect();
    // NoError; InvalidJobOrderStatus (already started); UnknownJobOrderId;
    // InvalidRequest (no id) — the numbers of the MQTT face.
    assert_eq!(statuses, [1, 8, 2, 4294967296], "{out}");

    let (topic, ev) = mes
        .next_event()
        .await
        .expect("status event of the OPC UA Start");
    assert!(topic.ends_with(&format!("/{SCOPE}/events")), "{topic}");
    assert_eq!(ev["JobOrder"]["JobOrderID"], "j1");
    assert_eq!(
        ev["JobState"][0]["StateText"]["Text"], "AllowedToStart",
        "{ev}"
    );
    // The same answer over MQTT for the job the OPC UA client started.
    assert_eq!(
        mes.status("Start", SCOPE, json!({"JobOrderID": "j1"}))
            .await,
        8
    );
    face.station.stop().await;
}

/// The `calls[].status` numbers of a client run.
fn statuses(out: &Value) -> Vec<u64> {
    out["calls"]
        .as_array()
        .unwrap_or_else(|| panic!("calls: {out}"))
        .iter()
        .map(|c| {
            c["status"]
                .as_u64()
                .unwrap_or_else(|| panic!("a ReturnStatus: {c}"))
        })
        .collect()
}

/// `StoreAndStart` with a structured `ISA95JobOrderDataType` (built by a
/// generic client from the server's DataTypeDefinitions) stores the job
/// the MES then sees in its status event; a string in place of the
/// structure is `BadInvalidArgument`; `Update` (without the optional
/// Comment) replaces it; `Store` over the job limit is refused with the
/// same number on both faces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_structured_job_order_is_stored_over_opcua_with_the_limits_of_mqtt() {
    use crate::harness::jobs::{order, Mes};
    use serde_json::json;
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let face = start_face(&[
        ("APP_OPCUA_ANONYMOUS", "true"),
        ("APP_JOBS_MAX_DOWNLOADABLE_JOB_ORDERS", "1"),
    ])
    .await;
    let mut mes = Mes::connect(face._m.port(), "mes").await;

    let out = client(
        &face,
        "order",
        &[
            "--method",
            "StoreAndStart",
            "--job",
            "o1",
            "--comment",
            "from the operator panel",
        ],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(statuses(&out), [1], "NoError: {out}");
    assert_eq!(out["wrong_type"], "BadInvalidArgument", "{out}");

    let (_, ev) = mes
        .next_event()
        .await
        .expect("status event of the OPC UA StoreAndStart");
    assert_eq!(
        ev["JobOrder"],
        json!({
            "JobOrderID": "o1",
            "Description": [{"Locale": "en", "Text": "rear axle"}],
            "WorkMasterID": [{"ID": "wm-axle"}],
            "Priority": 3
        }),
        "the order as the client built it: {ev}"
    );
    assert_eq!(
        ev["JobState"][0]["StateText"]["Text"], "AllowedToStart",
        "{ev}"
    );

    // Update of the stored job (one argument: no Comment), and of one
    // that does not exist.
    let out = client(
        &face,
        "order",
        &["--method", "Update", "--job", "o1", "--job", "zz"],
    )
    .await;
    assert_eq!(statuses(&out), [1, 2], "NoError, UnknownJobOrderId: {out}");

    // Over the limit of one job: UnableToAcceptJobOrder on both faces.
    let out = client(&face, "order", &["--method", "Store", "--job", "o2"]).await;
    assert_eq!(statuses(&out), [16], "{out}");
    assert_eq!(
        mes.status("Store", SCOPE, json!({"JobOrder": order("o3")}))
            .await,
        16
    );
    face.station.stop().await;
}

/// `RequestJobResponseByJobOrderID` and `…ByJobOrderState` over OPC UA
/// answer from the same jobs as MQTT: a job stored and finished through
/// the MQTT face is read with its structured response; unknown, empty and
/// impossible requests get the MQTT numbers; arguments of the wrong type
/// are `BadInvalidArgument`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_responses_of_mqtt_jobs_are_read_over_opcua() {
    use crate::harness::jobs::{order, Mes};
    use microdcs::jobs::Internal;
    use serde_json::json;
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let face = start_face(&[("APP_OPCUA_ANONYMOUS", "true")]).await;
    let mut mes = Mes::connect(face._m.port(), "mes").await;
    assert_eq!(
        mes.status("StoreAndStart", SCOPE, json!({"JobOrder": order("j1")}))
            .await,
        1
    );
    let m = face.station.jobs.clone().expect("processor instance");
    let response = serde_json::value::to_raw_value(&json!({
        "JobResponseID": "r-j1", "JobOrderID": "j1",
        "StartTime": "2026-11-30T10:00:00Z",
        "JobState": [{"StateText": {"Locale": "en", "Text": "Ended"}, "StateNumber": 5}],
        "JobResponseData": [{"ID": "torque", "Value": 42}]
    }))
    .expect("JSON");
    let (begun, completed) = face
        .station
        .on_runtime(async move {
            let b = m
                .internal(SCOPE, "j1", Internal::Begin, None, "engine")
                .await?;
            let c = m
                .internal(
                    SCOPE,
                    "j1",
                    Internal::Complete,
                    Some(&response),
                    "engine-done",
                )
                .await?;
            Ok::<_, microdcs::jobs::store::StoreError>((b, c))
        })
        .await
        .expect("redis");
    assert_eq!(begun.status.value(), 1, "Running: {:?}", begun.reason);
    assert_eq!(completed.status.value(), 1, "Ended: {:?}", completed.reason);
    let over_mqtt = mes
        .call(
            "RequestJobResponseByJobOrderID",
            SCOPE,
            json!({"JobOrderID": "j1"}),
        )
        .await;
    assert_eq!(over_mqtt["ReturnStatus"], 1, "{over_mqtt}");

    let out = client(
        &face,
        "query",
        &[
            "--job", "j1", "--job", "nope", "--job", "", "--state", "5.1", "--state", "3",
            "--state", "9",
        ],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    let by_id = &out["by_id"];
    assert_eq!(by_id[0]["status"], 1, "NoError: {out}");
    let r = &by_id[0]["response"];
    assert_eq!(r["JobResponseID"], "r-j1", "{out}");
    assert_eq!(r["JobOrderID"], "j1", "{out}");
    assert_eq!(r["JobState"][0]["StateNumber"], 5, "{out}");
    assert_eq!(r["JobResponseData"][0]["ID"], "torque", "{out}");
    assert_eq!(r["JobResponseData"][0]["Value"], 42, "{out}");
    assert!(
        r["StartTime"]
            .as_str()
            .is_some_and(|t| t.starts_with("2026-11-30T10:00:00")),
        "{out}"
    );
    assert_eq!(by_id[1]["status"], 2, "UnknownJobOrderId: {out}");
    assert!(
        by_id[1]["response"].get("JobResponseID").is_none(),
        "a null structure: {out}"
    );
    assert_eq!(by_id[2]["status"], 4294967296u64, "InvalidRequest: {out}");

    let by_state = &out["by_state"];
    assert_eq!(by_state[0]["status"], 1, "{out}");
    let found: Vec<&Value> = by_state[0]["responses"]
        .as_array()
        .expect("responses")
        .iter()
        .map(|r| &r["JobResponseID"])
        .collect();
    assert_eq!(found, [&json!("r-j1")], "Ended/Completed: {out}");
    assert_eq!(by_state[1]["status"], 1, "{out}");
    assert_eq!(by_state[1]["responses"], json!([]), "none Running: {out}");
    assert_eq!(by_state[2]["status"], 4294967296u64, "no state 9: {out}");

    assert_eq!(
        out["wrong_type"],
        json!(["BadInvalidArgument", "BadInvalidArgument"]),
        "{out}"
    );

    // The same over MQTT.
    let r = mes
        .call(
            "RequestJobResponseByJobOrderID",
            SCOPE,
            json!({"JobOrderID": "nope"}),
        )
        .await;
    assert_eq!(r["ReturnStatus"], 2);
    face.station.stop().await;
}

/// With Redis gone, a job method answers `BadResourceUnavailable` (try
/// again later) instead of a ReturnStatus, and the server stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_redis_job_methods_are_resource_unavailable() {
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let mut face = start_face(&[("APP_OPCUA_ANONYMOUS", "true")]).await;
    face._r.kill();
    let out = client(
        &face,
        "order",
        &["--method", "StoreAndStart", "--job", "r1"],
    )
    .await;
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["calls"][0]["error"], "BadResourceUnavailable", "{out}");
    let out = client(&face, "query", &["--job", "r1"]).await;
    assert_eq!(out["ok"], false, "{out}");
    assert!(
        out["error"].to_string().contains("BadResourceUnavailable"),
        "{out}"
    );
    // Still serving.
    let out = client(&face, "connect", &[]).await;
    assert_eq!(out["ok"], true, "{out}");
    face.station.stop().await;
}

/// A client certificate the server does not trust is refused, and the
/// server keeps a copy in `pki/rejected/`; once an operator puts it into
/// `pki/trusted/` (async-opcua wants the file name it gave the rejected
/// copy), the rejected copy is swept away and the same certificate is
/// accepted, without a restart. Trust is by certificate, not by application: a
/// second client with a new certificate is refused again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_client_certificate_is_refused_until_an_operator_trusts_it() {
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let face = start_face(&[
        ("APP_OPCUA_ANONYMOUS", "true"),
        ("APP_OPCUA_TRUST_ALL_CLIENTS", "false"),
    ])
    .await;
    let rejected_dir = face.pki.path().join("rejected");
    let trusted_dir = face.pki.path().join("trusted");
    let der_files = |dir: &std::path::Path| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "der"))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert!(der_files(&trusted_dir).is_empty(), "nothing trusted yet");

    let refused = client(&face, "connect", &[]).await;
    assert_eq!(refused["ok"], false, "an unknown certificate: {refused}");
    let rejected = der_files(&rejected_dir);
    assert_eq!(
        rejected.len(),
        1,
        "the refused certificate is kept: {rejected:?}"
    );
    let client_cert =
        std::fs::read(face.work.path().join("client-cert.der")).expect("the client's certificate");
    assert_eq!(
        std::fs::read(&rejected[0]).expect("rejected file"),
        client_cert,
        "rejected/ holds exactly the client's certificate"
    );

    // The operator trusts it: a copy under any name in trusted/ (as a
    // mounted Secret would hold it). The server forgets the rejected copy
    // within seconds, then the client is let in.
    std::fs::copy(&rejected[0], trusted_dir.join("line-1-operator.der")).expect("copy");
    let forgotten =
        crate::harness::eventually(Duration::from_secs(30), || !rejected[0].exists()).await;
    assert!(
        forgotten,
        "the rejected copy of a trusted certificate is removed"
    );
    std::fs::rename(
        trusted_dir.join("line-1-operator.der"),
        trusted_dir.join(rejected[0].file_name().expect("a file name")),
    )
    .expect("rename in trusted/");
    let accepted = client(&face, "connect", &[]).await;
    assert_eq!(accepted["ok"], true, "a trusted certificate: {accepted}");
    assert_eq!(accepted["server_state"], 0, "Running: {accepted}");

    // Another client (a new certificate) is not trusted by that.
    let other = tempfile::tempdir().expect("temporary directory");
    let face = Face {
        work: other,
        ..face
    };
    let refused = client(&face, "connect", &[]).await;
    assert_eq!(
        refused["ok"], false,
        "a second, unknown certificate: {refused}"
    );
    face.station.stop().await;
}

/// `microdcs run` as a child process (killed on drop), its log collected.
struct RunningStation {
    child: std::process::Child,
    log: std::path::PathBuf,
}

impl Drop for RunningStation {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The issue's "done": an OPC UA client drives a job end to end against
/// `microdcs run` with the face on, user/password over
/// Basic256Sha256/SignAndEncrypt. The MES has put a recipe in a work
/// master over MQTT; the client calls `StoreAndStart` with a structured
/// `ISA95JobOrderDataType` (NoError), receives the job's
/// `ISA95JobOrderStatusEventType` events while the SFC engine runs the
/// recipe on (simulated) equipment, until Ended/Completed, then reads the
/// job response with `RequestJobResponseByJobOrderID`. The MQTT MES saw
/// the same status events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opcua_client_drives_a_recipe_job_end_to_end_against_microdcs_run() {
    use crate::harness::equipment::{Answer, Equipment};
    use crate::harness::jobs::{state_texts, Mes};
    use crate::harness::recipes::{push_command, store_recipe};
    use serde_json::json;
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let m = Mosquitto::start();
    let r = Redis::start();
    let port = microdcs::testkit::devenv::free_port().expect("a free port");
    let pki = tempfile::tempdir().expect("temporary directory");
    let work = tempfile::tempdir().expect("temporary directory");
    let mut env = jobs::env(m.port(), r.0.port(), "opcua-run-1");
    for (k, v) in [
        ("APP_OPCUA_PORT", port.to_string()),
        ("APP_OPCUA_BIND", "127.0.0.1".into()),
        ("APP_OPCUA_HOSTNAME", "127.0.0.1".into()),
        ("APP_OPCUA_SCOPES", SCOPE.into()),
        ("APP_OPCUA_PKI_DIR", pki.path().display().to_string()),
        ("APP_OPCUA_TRUST_ALL_CLIENTS", "true".into()),
        ("APP_OPCUA_USERNAME", "operator".into()),
        ("APP_OPCUA_PASSWORD", "e2e-pw".into()),
        ("APP_JOBS_CHECK_WORK_MASTER", "true".into()),
        ("APP_HTTP_PORT", "0".into()),
    ] {
        jobs::set(&mut env, k, &v);
    }
    let log = work.path().join("station.log");
    let out = std::fs::File::create(&log).expect("log file");
    let err = out.try_clone().expect("log file");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_microdcs"))
        .arg("run")
        .envs(env)
        .stdout(out)
        .stderr(err)
        .spawn()
        .expect("start microdcs run");
    let station = RunningStation { child, log };
    let listening = crate::harness::eventually(Duration::from_secs(60), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    })
    .await;
    assert!(
        listening,
        "microdcs run serves OPC UA on {port}:\n{}",
        std::fs::read_to_string(&station.log).unwrap_or_default()
    );

    let answer: Answer =
        std::sync::Arc::new(|_: &str, p: &Value| Some(Ok(json!({"torque_nm": 42.5, "echo": p}))));
    let _equipment = Equipment::start(m.port(), answer).await;
    let mut mes = Mes::connect(m.port(), "mes").await;
    let recipe = json!({
        "Version": "1.0.0",
        "Steps": [{"Name": "clamp", "Initial": true}, {"Name": "tighten"}],
        "Transitions": [
            {"Source": "clamp", "Target": "tighten", "Condition": "results.clamp.torque_nm >= 40.0"}
        ],
        "Actions": [
            push_command("clamp", "clamp", "N", "com.example.axle.clamp.v1", 0),
            push_command("tighten", "tighten", "N", "com.example.axle.tighten.v1", 0)
        ]
    });
    store_recipe(&mut mes, SCOPE, recipe).await;

    let url = format!("opc.tcp://127.0.0.1:{port}/");
    let out = run_script(
        "e2e.py",
        &[
            &url,
            path_str(work.path()),
            "--scope",
            SCOPE,
            "--job",
            "axle-7",
            "--work-master",
            "wm-axle",
            "--user",
            "operator",
            "--password",
            "e2e-pw",
        ],
    )
    .await;
    let station_log = std::fs::read_to_string(&station.log).unwrap_or_default();
    assert_eq!(out["ok"], true, "{out}\n{station_log}");
    assert_eq!(out["store_and_start"], 1, "NoError: {out}");
    assert_eq!(
        out["final"],
        json!(["Ended", "Completed"]),
        "the recipe ran to its end: {out}\n{station_log}"
    );
    let states: Vec<String> = out["event_states"]
        .as_array()
        .expect("event states")
        .iter()
        .map(|s| s[0].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(
        states.iter().any(|s| s == "Running"),
        "a Running event before the end: {states:?}"
    );
    assert_eq!(out["response_status"], 1, "NoError: {out}");
    assert_eq!(out["response"]["JobOrderID"], "axle-7", "{out}");
    assert_eq!(
        out["response"]["JobState"],
        json!(["Ended", "Completed"]),
        "{out}"
    );
    assert_eq!(
        out["response"]["has_data"], true,
        "the action results: {out}"
    );

    // The MQTT MES received the same transitions.
    let mut mqtt_states = Vec::new();
    while let Some((_, ev)) = mes.next_event().await {
        if ev["JobOrder"]["JobOrderID"] == "axle-7" {
            let s = state_texts(&ev["JobState"]);
            mqtt_states.push(s.clone());
            if s[0] == "Ended" {
                break;
            }
        }
    }
    let opcua_states: Vec<Vec<String>> = out["event_states"]
        .as_array()
        .expect("event states")
        .iter()
        .map(|s| {
            s.as_array()
                .expect("a state list")
                .iter()
                .map(|t| t.as_str().unwrap_or_default().to_owned())
                .collect()
        })
        .collect();
    assert_eq!(
        opcua_states, mqtt_states,
        "the OPC UA client and the MQTT MES saw the same transitions"
    );
    drop(station);
}
