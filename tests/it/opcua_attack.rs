//! The OPC UA face under attack (issue #13): what a hostile or buggy
//! client in a plant could send (`tests/opcua/attack.py`, raw asyncua
//! Variants and hand-made ExtensionObjects) never crashes or stalls the
//! station, never corrupts a stored job, and gets the answer the MQTT face
//! gives for the same request.

use super::opcua::{asyncua_available, path_str, run_script, start_face, Face, SCOPE};
use crate::harness::init_tracing;
use serde_json::Value;

/// Runs `tests/opcua/attack.py` `probe` and returns its JSON line (the
/// deadline also says that the server did not stall).
async fn attack(face: &Face, probe: &str, args: &[&str]) -> Value {
    let mut all = vec![face.url.as_str(), path_str(face.work.path()), probe];
    all.extend(["--scope", SCOPE]);
    all.extend_from_slice(args);
    run_script("attack.py", &all).await
}

/// A DateTime is an Int64 of 100 ns ticks since 1601 on the wire; a client
/// can send any Int64. OPC 10000-6 §5.2.2.5: values before 1601-01-01 are
/// MinDate, values from 9999-12-31 23:59:59 on are MaxDate. Before the
/// fix, the face stored such a StartTime as it decoded it (year -27627 or
/// 30828, no RFC 3339 date): a job the MES cannot read and the OPC UA face
/// cannot show again. Now it is stored clamped, as the MQTT face stores
/// the same dates sent as RFC 3339.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_date_times_are_stored_as_min_and_max_date() {
    use crate::harness::jobs::Mes;
    use serde_json::json;
    use std::collections::BTreeMap;
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let face = start_face(&[
        ("APP_OPCUA_ANONYMOUS", "true"),
        ("APP_JOBS_MAX_DOWNLOADABLE_JOB_ORDERS", "100"),
    ])
    .await;
    let mut mes = Mes::connect(face._m.port(), "mes").await;
    let out = attack(&face, "times", &[]).await;
    assert_eq!(out["ok"], true, "{out}");
    for probe in [
        "zero",
        "negative",
        "min",
        "max",
        "max_minus_one",
        "year_10000",
    ] {
        assert_eq!(out["out"][probe], 1, "{probe} stored: {out}");
    }
    let mut seen = BTreeMap::new();
    while seen.len() < 6 {
        let (_, ev) = mes.next_event().await.expect("a status event per job");
        seen.insert(
            ev["JobOrder"]["JobOrderID"]
                .as_str()
                .unwrap_or("?")
                .to_owned(),
            ev["JobOrder"]["StartTime"].clone(),
        );
    }
    let min = json!("1601-01-01T00:00:00Z");
    let max = json!("9999-12-31T23:59:59Z");
    for (job, expected) in [
        ("t-zero", &min),
        ("t-negative", &min),
        ("t-min", &min),
        ("t-max", &max),
        ("t-max_minus_one", &max),
        ("t-year_10000", &max),
    ] {
        assert_eq!(seen.get(job), Some(expected), "{job}: {seen:?}");
    }
    // The same dates over MQTT.
    for (job, t) in [("m-min", &min), ("m-max", &max)] {
        let order = json!({"JobOrderID": job, "StartTime": t});
        assert_eq!(
            mes.status("Store", SCOPE, json!({ "JobOrder": order }))
                .await,
            1
        );
        let (_, ev) = mes.next_event().await.expect("status event");
        assert_eq!(&ev["JobOrder"]["StartTime"], t, "{ev}");
    }
    face.station.stop().await;
}

/// A job response the MQTT face answers (a .NET MES or engine writing
/// `0001-01-01`, its DateTime.MinValue) was `BadInternalError` over OPC UA
/// before the fix ("outside the OPC UA DateTime range"); now both faces
/// answer NoError, OPC UA with MinDate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_dated_before_1601_is_read_over_both_faces() {
    use super::opcua::client;
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
        mes.status("StoreAndStart", SCOPE, json!({"JobOrder": order("d1")}))
            .await,
        1
    );
    let m = face.station.jobs.clone().expect("processor instance");
    let response = serde_json::value::to_raw_value(&json!({
        "JobResponseID": "r-d1", "JobOrderID": "d1",
        "StartTime": "0001-01-01T00:00:00Z",
        "JobState": [{"StateText": {"Locale": "en", "Text": "Ended"}, "StateNumber": 5}],
    }))
    .expect("JSON");
    face.station
        .on_runtime(async move {
            m.internal(SCOPE, "d1", Internal::Begin, None, "engine")
                .await?;
            m.internal(
                SCOPE,
                "d1",
                Internal::Complete,
                Some(&response),
                "engine-done",
            )
            .await
        })
        .await
        .expect("redis");
    let over_mqtt = mes
        .call(
            "RequestJobResponseByJobOrderID",
            SCOPE,
            json!({"JobOrderID": "d1"}),
        )
        .await;
    assert_eq!(over_mqtt["ReturnStatus"], 1, "{over_mqtt}");
    let out = client(&face, "query", &["--job", "d1"]).await;
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["by_id"][0]["status"], 1, "{out}");
    assert!(
        out["by_id"][0]["response"]["StartTime"]
            .as_str()
            .is_some_and(|t| t.starts_with("1601-01-01T00:00:00")),
        "{out}"
    );
    face.station.stop().await;
}

/// An ExtensionObject says how long its body is. async-opcua's dynamic
/// loader ignored that length: bytes after the structure (a client
/// encoding a newer version of it) were read as the next argument, so a
/// correct Comment became an Int32 and the call `BadInvalidArgument`. Now
/// the body is decoded within its length, and the call answers as MQTT
/// does for the same order and comment.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_order_body_is_decoded_within_its_declared_length() {
    use crate::harness::jobs::Mes;
    use serde_json::json;
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let face = start_face(&[
        ("APP_OPCUA_ANONYMOUS", "true"),
        ("APP_JOBS_MAX_DOWNLOADABLE_JOB_ORDERS", "100"),
    ])
    .await;
    let mut mes = Mes::connect(face._m.port(), "mes").await;
    let out = attack(&face, "framing", &[]).await;
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["out"]["plain_then_comment"], 1, "{out}");
    assert_eq!(out["out"]["appended_then_comment"], 1, "{out}");
    assert_eq!(out["out"]["appended_alone"], 1, "{out}");
    let over_mqtt = mes
        .status(
            "StoreAndStart",
            SCOPE,
            json!({"JobOrder": {"JobOrderID": "f4"},
                   "Comment": [{"Locale": "en", "Text": "from a newer client"}]}),
        )
        .await;
    assert_eq!(over_mqtt, 1);
    face.station.stop().await;
}

/// Eight sessions call `Start` on the same job at once: the job manager's
/// compare-and-swap lets exactly one through (NoError), the others get
/// InvalidJobOrderStatus, as eight MQTT MES calls would; and clients that
/// drop the connection in the middle of a call leave the job in one
/// consistent state and the server serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_and_dropped_calls_keep_one_job_state() {
    use crate::harness::jobs::{order, Mes};
    use serde_json::json;
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let face = start_face(&[("APP_OPCUA_ANONYMOUS", "true")]).await;
    let mut mes = Mes::connect(face._m.port(), "mes").await;
    for job in ["race", "drop"] {
        assert_eq!(
            mes.status("Store", SCOPE, json!({"JobOrder": order(job)}))
                .await,
            1
        );
    }
    let out = attack(&face, "race", &["--job", "race", "--count", "8"]).await;
    assert_eq!(out["ok"], true, "{out}");
    assert_eq!(out["statuses"], json!([1, 8, 8, 8, 8, 8, 8, 8]), "{out}");
    assert_eq!(
        mes.status("Start", SCOPE, json!({"JobOrderID": "race"}))
            .await,
        8,
        "started once"
    );

    let out = attack(&face, "drop", &["--job", "drop", "--count", "5"]).await;
    assert_eq!(out["ok"], true, "{out}");
    // Whether a dropped Start was applied, the job is in one state: a
    // RevokeStart over MQTT succeeds exactly if one was.
    let revoke = mes
        .status("RevokeStart", SCOPE, json!({"JobOrderID": "drop"}))
        .await;
    let start = mes
        .status("Start", SCOPE, json!({"JobOrderID": "drop"}))
        .await;
    assert!(
        (revoke == 1 || revoke == 8) && start == 1,
        "revoke {revoke}, start {start}"
    );
    // Still serving.
    let out = attack(&face, "race", &["--job", "drop", "--count", "2"]).await;
    assert_eq!(out["statuses"], json!([8, 8]), "{out}");
    face.station.stop().await;
}

/// What held: wrong, missing and extra arguments, wrong Variant types,
/// null and undecodable structures, structures of other types, oversized
/// strings and arrays, odd ids, 200 calls in one request, methods on the
/// wrong object or of another scope, the types' own methods, browsing and
/// reading every node, writing to every variable, bad monitored-item
/// filters: each gets a clear status (the MQTT number where MQTT has one),
/// and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_calls_browses_and_writes_get_clear_statuses() {
    use serde_json::json;
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let face = start_face(&[
        ("APP_OPCUA_ANONYMOUS", "true"),
        ("APP_OPCUA_SCOPES", "line-1,line-2"),
    ])
    .await;
    const INVALID_REQUEST: u64 = 4_294_967_296;
    let out = attack(&face, "args", &[]).await;
    assert_eq!(out["ok"], true, "{out}");
    let o = &out["out"];
    for (probe, expected) in [
        ("start_no_args", json!("BadArgumentsMissing")),
        ("start_int", json!("BadInvalidArgument")),
        ("start_null_string", json!(INVALID_REQUEST)),
        ("start_string_array", json!("BadInvalidArgument")),
        ("start_bytestring", json!("BadInvalidArgument")),
        ("start_comment_int", json!("BadInvalidArgument")),
        ("start_three_args", json!("BadTooManyArguments")),
        ("start_empty_variant", json!("BadInvalidArgument")),
        ("start_300_bytes", json!(INVALID_REQUEST)),
        ("start_60k", json!(INVALID_REQUEST)),
        ("start_1mb", json!("BadDecodingError")),
        ("store_empty_variant", json!(INVALID_REQUEST)),
        ("store_null_eo", json!(INVALID_REQUEST)),
        ("store_eo_array", json!("BadInvalidArgument")),
        ("store_wm_type", json!("BadInvalidArgument")),
        ("store_unknown_type", json!("BadInvalidArgument")),
        ("store_ns0_type", json!("BadDecodingError")),
        ("store_truncated", json!("BadDecodingError")),
        ("store_body_garbage", json!("BadDecodingError")),
        ("store_bad_utf8", json!("BadDecodingError")),
        ("store_null_id", json!(INVALID_REQUEST)),
        ("store_empty_id", json!(INVALID_REQUEST)),
        ("store_300_id", json!(INVALID_REQUEST)),
        ("store_all_mask_bits", json!("BadDecodingError")),
        ("store_huge_array_len", json!("BadDecodingError")),
        ("store_negative_array_len", json!("BadDecodingError")),
        ("store_comment_int", json!("BadInvalidArgument")),
        ("store_three_args", json!("BadTooManyArguments")),
        ("store_string", json!("BadInvalidArgument")),
        ("update_null_eo", json!(INVALID_REQUEST)),
        ("by_id_none", json!("BadArgumentsMissing")),
        ("by_id_null_string", json!(INVALID_REQUEST)),
        ("by_id_300", json!(INVALID_REQUEST)),
        ("by_state_empty_variant", json!(INVALID_REQUEST)),
        ("by_state_empty_array", json!(INVALID_REQUEST)),
        ("by_state_scalar", json!("BadInvalidArgument")),
        ("by_state_order_type", json!("BadInvalidArgument")),
        ("by_state_null_elements", json!("BadInvalidArgument")),
        ("many_in_one", json!("BadTooManyOperations")),
        ("alive", json!(0)),
    ] {
        assert_eq!(o[probe], expected, "{probe}: {out}");
    }

    let out = attack(&face, "objects", &["--other", "line-2"]).await;
    assert_eq!(out["ok"], true, "{out}");
    let o = out["out"].as_object().expect("outcomes");
    assert!(o.len() >= 12, "{out}");
    for (probe, v) in o {
        let expected = if probe == "alive" {
            json!(0)
        } else {
            json!("BadMethodInvalid")
        };
        assert_eq!(v, &expected, "{probe}: {out}");
    }

    let out = attack(&face, "walk", &[]).await;
    assert_eq!(out["ok"], true, "{out}");
    assert!(out["nodes"].as_u64().is_some_and(|n| n > 40), "{out}");
    assert_eq!(out["bad_reads"], json!([]), "{out}");
    let writes = out["writes"].as_object().expect("writes");
    assert!(
        writes.keys().all(|k| k.starts_with("Bad")),
        "no write is accepted: {out}"
    );
    assert_eq!(
        out["subs"]["bad_event_filter"], "BadEventFilterInvalid",
        "{out}"
    );
    assert_eq!(out["alive"], 0, "{out}");
    face.station.stop().await;
}

/// A client that crashes and reconnects leaves its session behind until
/// the session times out (60 s). With async-opcua's default of 20
/// sessions, 20 such restarts within a minute locked every client out
/// (`BadTooManySessions`); the face now keeps up to 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_in_a_restart_loop_does_not_lock_others_out() {
    use super::opcua::client;
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let face = start_face(&[("APP_OPCUA_ANONYMOUS", "true")]).await;
    let out = attack(&face, "drop", &["--job", "x", "--count", "25"]).await;
    assert_eq!(out["ok"], true, "25 abandoned sessions: {out}");
    let out = client(&face, "connect", &[]).await;
    assert_eq!(out["ok"], true, "another client still connects: {out}");
    face.station.stop().await;
}

/// Wire contract §8: a JobOrderID may hold any character (topic levels
/// percent-encode `/`, `#`, `+`, `%` and control characters) and is
/// refused when longer than 256 bytes. A job stored over OPC UA with such
/// an id is the same job over MQTT: the MES sees its id unchanged in the
/// status event and starts it by that id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_order_ids_follow_the_wire_contract_on_both_faces() {
    use crate::harness::jobs::Mes;
    use serde_json::json;
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let face = start_face(&[
        ("APP_OPCUA_ANONYMOUS", "true"),
        ("APP_JOBS_MAX_DOWNLOADABLE_JOB_ORDERS", "100"),
    ])
    .await;
    let mut mes = Mes::connect(face._m.port(), "mes").await;
    let out = attack(&face, "ids", &[]).await;
    assert_eq!(out["ok"], true, "{out}");
    let results = out["out"].as_array().expect("results");
    assert_eq!(results.len(), 11, "{out}");
    let mut stored = Vec::new();
    for r in results {
        let id = r[0].as_str().expect("id");
        if id.len() > 256 {
            assert_eq!(r[1], 4_294_967_296u64, "InvalidRequest as on MQTT: {out}");
            assert_eq!(
                mes.status("Store", SCOPE, json!({"JobOrder": {"JobOrderID": id}}))
                    .await,
                4_294_967_296u64
            );
        } else {
            assert_eq!(r[1], 1, "{id:?} stored: {out}");
            stored.push(id);
        }
    }
    for id in &stored {
        let (_, ev) = mes.next_event().await.expect("status event");
        assert_eq!(ev["JobOrder"]["JobOrderID"], *id, "{ev}");
    }
    for id in stored {
        assert_eq!(
            mes.status("Start", SCOPE, json!({"JobOrderID": id})).await,
            1,
            "{id:?} started over MQTT"
        );
        let (_, ev) = mes.next_event().await.expect("status event of Start");
        assert_eq!(ev["JobOrder"]["JobOrderID"], id, "{ev}");
    }
    face.station.stop().await;
}

/// `Subparameters` nest without end in the NodeSet; the face decodes 64
/// levels. An order nested 63 levels deep was stored over OPC UA although
/// its JSON (more than 128 levels) is refused by the MQTT face's parser,
/// and every status event of that job was JSON an MES on serde_json cannot
/// read (the testkit MES panicked on it). Now such an order is
/// `BadInvalidArgument`, as MQTT refuses the same payload; 60 levels pass
/// on both faces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_nested_deeper_than_mqtt_json_are_refused_as_on_mqtt() {
    use crate::harness::jobs::Mes;
    use serde_json::json;
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let face = start_face(&[
        ("APP_OPCUA_ANONYMOUS", "true"),
        ("APP_JOBS_MAX_DOWNLOADABLE_JOB_ORDERS", "100"),
    ])
    .await;
    let mut mes = Mes::connect(face._m.port(), "mes").await;
    let out = attack(&face, "nesting", &["--job", "60,63"]).await;
    assert_eq!(
        out,
        json!({"ok": true, "out": [[60, 1], [63, "BadInvalidArgument"]]})
    );
    let (_, ev) = mes.next_event().await.expect("the event of n60");
    assert_eq!(ev["JobOrder"]["JobOrderID"], "n60");
    for (l, accepted) in [(60, true), (63, false)] {
        let mut p = serde_json::Value::Null;
        for i in 0..l {
            let mut o = json!({"ID": format!("p{i}"), "Value": i});
            if !p.is_null() {
                o["Subparameters"] = json!([p]);
            }
            p = o;
        }
        let order = json!({"JobOrderID": format!("m{l}"), "JobOrderParameters": [p]});
        let reply = mes
            .call_with(
                "org.opcfoundation.ISA95-JOBCONTROL_V2.StoreAndStart.v2",
                &format!("nest-{l}"),
                Some(SCOPE),
                &json!({ "JobOrder": order }),
            )
            .await
            .expect("a reply");
        let error = reply.properties.as_ref().and_then(|pr| {
            pr.user_properties
                .iter()
                .find(|(k, _)| k == "mdcserrorkind")
                .map(|(_, v)| v.clone())
        });
        if accepted {
            assert_eq!(error, None, "MQTT m{l}");
            let r: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON");
            assert_eq!(r["ReturnStatus"], 1, "MQTT m{l}: {r}");
        } else {
            assert_eq!(error.as_deref(), Some("PAYLOAD_INVALID"), "MQTT m{l}");
        }
    }
    face.station.stop().await;
}

/// Job orders as XML-encoded ExtensionObject bodies (encoding byte 2):
/// a well-formed one is stored; malformed, 5000 levels deep, entity
/// definitions, empty or not XML at all give a decoding error or a null
/// structure (InvalidRequest), and the server keeps serving. Held.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xml_encoded_job_orders_are_decoded_or_refused() {
    use serde_json::json;
    init_tracing();
    if !asyncua_available() {
        return;
    }
    let face = start_face(&[
        ("APP_OPCUA_ANONYMOUS", "true"),
        ("APP_JOBS_MAX_DOWNLOADABLE_JOB_ORDERS", "100"),
    ])
    .await;
    let out = attack(&face, "xml", &[]).await;
    assert_eq!(out["ok"], true, "{out}");
    let o = &out["out"];
    const INVALID_REQUEST: u64 = 4_294_967_296;
    for (probe, expected) in [
        ("well_formed_xml_id", json!(1)),
        ("malformed_xml_id", json!("BadDecodingError")),
        ("malformed_binary_id", json!("BadDecodingError")),
        ("deep_xml_id", json!("BadDecodingError")),
        ("deep_binary_id", json!("BadDecodingError")),
        ("not_xml_xml_id", json!(INVALID_REQUEST)),
        ("empty_xml_id", json!(INVALID_REQUEST)),
        ("entities_xml_id", json!(INVALID_REQUEST)),
        ("big_xml_id", json!(INVALID_REQUEST)),
        ("alive", json!(0)),
    ] {
        assert_eq!(o[probe], expected, "{probe}: {out}");
    }
    face.station.stop().await;
}
