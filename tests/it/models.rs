//! The generated models against the wire contract: JSON round trips of every
//! method call/response, the status event, the configuration payloads, the
//! MES retained payloads and SFC recipes; PascalCase out, snake_case
//! accepted in, absent optionals omitted; CloudEvent `type`/`dataschema`
//! exactly as the contract says; the state machine tables exactly as the
//! NodeSet defines them.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;

use microdcs::models::{
    isa95_jobcontrol as isa, jobcontrol_config as config, machinery_jobs as jobs,
    mes_publishing as mes, return_status, sfc_recipe as sfc, JOB_ORDER_STATE_MACHINE,
};
use microdcs::{EventType, MethodCall};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};

const S: &str = "https://aschamberger.github.com/schemas/UA/ISA95-JOBCONTROL_V2/v2.0.0/#/$defs/";
const M: &str = "https://aschamberger.github.com/schemas/UA/Machinery/Jobs/v1.0.1/#/$defs/";

/// Deserializes `input`, serializes again and asserts the output equals
/// `input` exactly (no field renamed, added, dropped or set to null).
fn round_trip<T: Serialize + DeserializeOwned + Debug + PartialEq>(input: &Value) -> T {
    let value: T = match serde_json::from_value(input.clone()) {
        Ok(value) => value,
        Err(error) => panic!(
            "{} does not accept {input}: {error}",
            std::any::type_name::<T>()
        ),
    };
    let output = serde_json::to_value(&value).unwrap_or(Value::Null);
    assert_eq!(&output, input, "{} round trip", std::any::type_name::<T>());
    value
}

/// Renames every object key to snake_case, recursively (`JobOrderID` →
/// `job_order_id`), as a client using Python-style names would send it.
fn snake(value: &Value) -> Value {
    fn key(k: &str) -> String {
        let mut out = String::new();
        let chars: Vec<char> = k.chars().collect();
        for (i, c) in chars.iter().enumerate() {
            if c.is_uppercase() {
                let prev_lower =
                    i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
                let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
                let prev_upper = i > 0 && chars[i - 1].is_uppercase();
                if i > 0 && (prev_lower || (prev_upper && next_lower)) {
                    out.push('_');
                }
                out.extend(c.to_lowercase());
            } else {
                out.push(*c);
            }
        }
        out
    }
    match value {
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (key(k), snake(v))).collect()),
        Value::Array(items) => Value::Array(items.iter().map(snake).collect()),
        other => other.clone(),
    }
}

/// Asserts that the snake_case form of `input` decodes to the same value.
fn accepts_snake_case<T: DeserializeOwned + Debug + PartialEq>(input: &Value) {
    let pascal: T = serde_json::from_value(input.clone()).unwrap_or_else(|e| panic!("{e}"));
    let snake_input = snake(input);
    let from_snake: T = serde_json::from_value(snake_input.clone()).unwrap_or_else(|e| {
        panic!(
            "{} does not accept {snake_input}: {e}",
            std::any::type_name::<T>()
        )
    });
    assert_eq!(from_snake, pascal);
}

fn state_list() -> Value {
    json!([
        {"StateText": {"Locale": "en", "Text": "AllowedToStart"}, "StateNumber": 2},
        {"StateText": {"Locale": "en", "Text": "Ready"}, "StateNumber": 2}
    ])
}

fn units() -> Value {
    json!({
        "NamespaceUri": "http://www.opcfoundation.org/UA/units/un/cefact",
        "UnitId": 4408652,
        "DisplayName": {"Locale": "en", "Text": "°C"},
        "Description": {"Locale": "en", "Text": "degree Celsius"}
    })
}

/// A job order using every field of ISA95JobOrderDataType and its parts.
fn full_job_order() -> Value {
    let property = json!({
        "ID": "color",
        "Value": "red",
        "Description": [{"Locale": "en", "Text": "Paint color"}],
        "EngineeringUnits": units(),
        "Subproperties": [{"ID": "shade", "Value": 3}]
    });
    json!({
        "JobOrderID": "JO-4711",
        "Description": [{"Locale": "en", "Text": "Housing, lot 12"}, {"Locale": "de", "Text": "Gehäuse, Los 12"}],
        "WorkMasterID": [{
            "ID": "WM-1",
            "Description": {"Text": "Assemble housing"},
            "Parameters": [{
                "ID": "torque",
                "Value": 12.5,
                "Description": [{"Text": "Screw torque"}],
                "EngineeringUnits": units(),
                "Subparameters": [{"ID": "tolerance", "Value": {"min": 12.0, "max": 13.0}}]
            }]
        }],
        "StartTime": "2025-03-01T08:00:00Z",
        "EndTime": "2025-03-01T16:30:00Z",
        "Priority": -3,
        "JobOrderParameters": [{"ID": "batch", "Value": [1, 2, 3]}],
        "PersonnelRequirements": [{
            "ID": "operator",
            "Description": [{"Text": "Line operator"}],
            "PersonnelUse": "Operates",
            "Quantity": "1",
            "EngineeringUnits": units(),
            "Properties": [property]
        }],
        "EquipmentRequirements": [{
            "ID": "press-1",
            "Description": [{"Text": "Press"}],
            "EquipmentUse": "Pressing",
            "Quantity": "2.50",
            "Properties": [property]
        }],
        "PhysicalAssetRequirements": [{
            "ID": "fixture-7",
            "PhysicalAssetUse": "Holding",
            "Quantity": "1",
            "Properties": [property]
        }],
        "MaterialRequirements": [{
            "MaterialClassID": "steel",
            "MaterialDefinitionID": "S235",
            "MaterialLotID": "L-12",
            "MaterialSublotID": "L-12-a",
            "Description": [{"Text": "Sheet"}],
            "MaterialUse": "Consumed",
            "Quantity": "12.000",
            "EngineeringUnits": units(),
            "Properties": [property]
        }]
    })
}

fn job_response() -> Value {
    json!({
        "JobResponseID": "JR-4711",
        "Description": {"Text": "done"},
        "JobOrderID": "JO-4711",
        "StartTime": "2025-03-01T08:01:00Z",
        "EndTime": "2025-03-01T09:00:00.250Z",
        "JobState": [
            {"StateText": {"Locale": "en", "Text": "Ended"}, "StateNumber": 5},
            {"StateText": {"Locale": "en", "Text": "Completed"}, "StateNumber": 1}
        ],
        "JobResponseData": [{"ID": "screw_1", "Value": {"torque": 12.4, "ok": true}}],
        "PersonnelActuals": [{"ID": "operator"}],
        "EquipmentActuals": [{"ID": "press-1"}],
        "PhysicalAssetActuals": [{"ID": "fixture-7"}],
        "MaterialActuals": [{"MaterialDefinitionID": "S235", "Quantity": "11.500"}]
    })
}

// ---------------------------------------------------------------------------
// Method calls and responses

#[test]
fn store_call_with_a_full_job_order_round_trips() {
    let input =
        json!({"JobOrder": full_job_order(), "Comment": [{"Locale": "en", "Text": "from MES"}]});
    let call: isa::StoreCall = round_trip(&input);
    assert_eq!(call.job_order.job_order_id, "JO-4711");
    assert_eq!(call.job_order.priority, Some(-3));
    accepts_snake_case::<isa::StoreCall>(&input);
    for (name, input) in [
        ("StoreAndStart", json!({"JobOrder": full_job_order()})),
        (
            "Update",
            json!({"JobOrder": full_job_order(), "Comment": []}),
        ),
    ] {
        match name {
            "StoreAndStart" => {
                round_trip::<isa::StoreAndStartCall>(&input);
                accepts_snake_case::<isa::StoreAndStartCall>(&input);
            }
            _ => {
                round_trip::<isa::UpdateCall>(&input);
                accepts_snake_case::<isa::UpdateCall>(&input);
            }
        }
    }
}

#[test]
fn absent_optional_fields_are_omitted_not_null() {
    let minimal = json!({"JobOrder": {"JobOrderID": "J1"}});
    let call: isa::StoreCall = round_trip(&minimal);
    assert_eq!(call.comment, None);
    assert_eq!(call.job_order.work_master_id, None);
    let text = serde_json::to_string(&call).unwrap_or_default();
    assert_eq!(text, r#"{"JobOrder":{"JobOrderID":"J1"}}"#);
    assert!(!text.contains("null"));
    // An empty array is kept, distinct from an absent one.
    round_trip::<isa::StoreCall>(&json!({"JobOrder": {"JobOrderID": "J1", "Description": []}}));
    // null for an optional field is read as absent.
    let call: isa::StoreCall = serde_json::from_value(
        json!({"JobOrder": {"JobOrderID": "J1", "StartTime": null}, "Comment": null}),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(serde_json::to_value(&call).unwrap_or_default(), minimal);
}

#[test]
fn snake_case_input_is_accepted_and_pascal_case_written() {
    let call: isa::StartCall = serde_json::from_value(json!({
        "job_order_id": "J1",
        "comment": [{"locale": "en", "text": "go"}]
    }))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        serde_json::to_value(&call).unwrap_or_default(),
        json!({"JobOrderID": "J1", "Comment": [{"Locale": "en", "Text": "go"}]})
    );
}

#[test]
fn required_fields_are_required() {
    assert!(serde_json::from_value::<isa::StoreCall>(json!({})).is_err());
    assert!(serde_json::from_value::<isa::StartCall>(json!({"Comment": []})).is_err());
    assert!(serde_json::from_value::<isa::ISA95StateDataType>(json!({"StateNumber": 2})).is_err());
}

#[test]
fn job_order_id_methods_round_trip() {
    let with_comment =
        json!({"JobOrderID": "JO-4711", "Comment": [{"Locale": "en", "Text": "why"}]});
    let without = json!({"JobOrderID": "JO-4711"});
    macro_rules! check {
        ($($t:ty),*) => {$(
            round_trip::<$t>(&with_comment);
            round_trip::<$t>(&without);
            accepts_snake_case::<$t>(&with_comment);
        )*};
    }
    check!(
        isa::StartCall,
        isa::RevokeStartCall,
        isa::PauseCall,
        isa::ResumeCall,
        isa::StopCall,
        isa::AbortCall,
        isa::CancelCall,
        isa::ClearCall
    );
}

#[test]
fn return_status_is_a_json_number_up_to_sixty_four_bits() {
    for status in [
        return_status::NO_ERROR,
        return_status::UNKNOWN_JOB_ORDER_ID,
        return_status::INVALID_JOB_ORDER_STATUS,
        return_status::UNABLE_TO_ACCEPT_JOB_ORDER,
        return_status::INVALID_REQUEST,
        u64::MAX,
    ] {
        let input = json!({"ReturnStatus": status});
        macro_rules! check {
            ($($t:ty),*) => {$( round_trip::<$t>(&input); )*};
        }
        check!(
            isa::StoreResponse,
            isa::StoreAndStartResponse,
            isa::UpdateResponse,
            isa::StartResponse,
            isa::RevokeStartResponse,
            isa::PauseResponse,
            isa::ResumeResponse,
            isa::StopResponse,
            isa::AbortResponse,
            isa::CancelResponse,
            isa::ClearResponse,
            jobs::RequestJobResponseByJobOrderIDResponse,
            jobs::RequestJobResponseByJobOrderStateResponse
        );
    }
    let response: isa::StoreResponse =
        serde_json::from_str(r#"{"ReturnStatus":4294967296}"#).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(response.return_status, return_status::INVALID_REQUEST);
    assert_eq!(
        serde_json::to_string(&response).unwrap_or_default(),
        r#"{"ReturnStatus":4294967296}"#
    );
    assert!(serde_json::from_value::<isa::StoreResponse>(json!({"ReturnStatus": -1})).is_err());
}

#[test]
fn job_response_queries_round_trip() {
    round_trip::<jobs::RequestJobResponseByJobOrderIDCall>(&json!({"JobOrderID": "JO-4711"}));
    accepts_snake_case::<jobs::RequestJobResponseByJobOrderIDCall>(
        &json!({"JobOrderID": "JO-4711"}),
    );
    let found = json!({"JobResponse": job_response(), "ReturnStatus": 1});
    let reply: jobs::RequestJobResponseByJobOrderIDResponse = round_trip(&found);
    assert_eq!(
        reply.job_response.map(|r| r.job_order_id),
        Some("JO-4711".to_owned())
    );
    accepts_snake_case::<jobs::RequestJobResponseByJobOrderIDResponse>(&found);
    round_trip::<jobs::RequestJobResponseByJobOrderIDResponse>(&json!({"ReturnStatus": 2}));

    let query = json!({"JobOrderState": state_list()});
    round_trip::<jobs::RequestJobResponseByJobOrderStateCall>(&query);
    accepts_snake_case::<jobs::RequestJobResponseByJobOrderStateCall>(&query);
    round_trip::<jobs::RequestJobResponseByJobOrderStateResponse>(
        &json!({"JobResponses": [job_response()], "ReturnStatus": 1}),
    );
    round_trip::<jobs::RequestJobResponseByJobOrderStateResponse>(&json!({"ReturnStatus": 1}));

    // The ISA95-JOBCONTROL declarations of the same methods are distinct types.
    round_trip::<isa::RequestJobResponseByJobOrderIDCall>(&json!({"JobOrderID": "JO-4711"}));
    round_trip::<isa::RequestJobResponseByJobOrderStateResponse>(&json!({"ReturnStatus": 1}));
}

#[test]
fn state_list_round_trips_without_browse_path() {
    let states: Vec<isa::ISA95StateDataType> = round_trip(&state_list());
    assert_eq!(states[0].state_text.text.as_deref(), Some("AllowedToStart"));
    assert_eq!(states[1].state_number, 2);
    assert_eq!(states[0].browse_path, None);
    round_trip::<Vec<isa::ISA95StateDataType>>(
        &json!([{"BrowsePath": "/1:AllowedToStartSubstates", "StateText": {"Text": "Ready"}, "StateNumber": 2}]),
    );
    accepts_snake_case::<Vec<isa::ISA95StateDataType>>(&state_list());
}

#[test]
fn receive_job_response_round_trips() {
    round_trip::<isa::ReceiveJobResponseCall>(&json!({"JobResponse": job_response()}));
    round_trip::<isa::ReceiveJobResponseResponse>(&json!({"ReturnStatus": 1}));
}

// ---------------------------------------------------------------------------
// CloudEvent types and dataschemas

fn assert_event<T: EventType>(cloudevent_type: &str, dataschema: &str) {
    assert_eq!(T::TYPE, cloudevent_type, "{}", std::any::type_name::<T>());
    assert_eq!(T::DATASCHEMA, dataschema, "{}", std::any::type_name::<T>());
}

fn assert_method<C: MethodCall>(cloudevent_type: &str, base: &str, method: &str) {
    assert_event::<C>(cloudevent_type, &format!("{base}{method}Call"));
    assert_event::<C::Response>(cloudevent_type, &format!("{base}{method}Response"));
}

#[test]
fn method_types_and_dataschemas_are_those_of_the_wire_contract() {
    let isa_type = |m: &str| format!("org.opcfoundation.ISA95-JOBCONTROL_V2.{m}.v2");
    assert_method::<isa::StoreCall>(&isa_type("Store"), S, "Store");
    assert_method::<isa::StoreAndStartCall>(&isa_type("StoreAndStart"), S, "StoreAndStart");
    assert_method::<isa::UpdateCall>(&isa_type("Update"), S, "Update");
    assert_method::<isa::StartCall>(&isa_type("Start"), S, "Start");
    assert_method::<isa::RevokeStartCall>(&isa_type("RevokeStart"), S, "RevokeStart");
    assert_method::<isa::PauseCall>(&isa_type("Pause"), S, "Pause");
    assert_method::<isa::ResumeCall>(&isa_type("Resume"), S, "Resume");
    assert_method::<isa::StopCall>(&isa_type("Stop"), S, "Stop");
    assert_method::<isa::AbortCall>(&isa_type("Abort"), S, "Abort");
    assert_method::<isa::CancelCall>(&isa_type("Cancel"), S, "Cancel");
    assert_method::<isa::ClearCall>(&isa_type("Clear"), S, "Clear");
    assert_method::<jobs::RequestJobResponseByJobOrderIDCall>(
        "org.opcfoundation.Machinery.Jobs.RequestJobResponseByJobOrderID.v1",
        M,
        "RequestJobResponseByJobOrderID",
    );
    assert_method::<jobs::RequestJobResponseByJobOrderStateCall>(
        "org.opcfoundation.Machinery.Jobs.RequestJobResponseByJobOrderState.v1",
        M,
        "RequestJobResponseByJobOrderState",
    );
    assert_eq!(
        isa::StoreCall::DATASCHEMA,
        "https://aschamberger.github.com/schemas/UA/ISA95-JOBCONTROL_V2/v2.0.0/#/$defs/StoreCall"
    );
}

#[test]
fn status_event_round_trips_with_and_without_job_response() {
    assert_event::<isa::ISA95JobOrderStatusEventType>(
        "org.opcfoundation.ISA95-JOBCONTROL_V2.ISA95JobOrderStatusEventType.v2",
        &format!("{S}ISA95JobOrderStatusEventType"),
    );
    let without = json!({"JobOrder": full_job_order(), "JobState": state_list()});
    let event: isa::ISA95JobOrderStatusEventType = round_trip(&without);
    assert_eq!(event.job_response, None);
    accepts_snake_case::<isa::ISA95JobOrderStatusEventType>(&without);
    round_trip::<isa::ISA95JobOrderStatusEventType>(
        &json!({"JobOrder": full_job_order(), "JobState": state_list(), "JobResponse": job_response()}),
    );
}

#[test]
fn config_types_are_those_of_the_wire_contract() {
    let t = |kind: &str| format!("com.github.aschamberger.ISA95-JOBCONTROL_V2.config.{kind}.v1");
    let d = |name: &str| {
        format!("https://aschamberger.github.io/schemas/microdcs/jobcontrol-config/v1.0.0/#/$defs/{name}")
    };
    assert_event::<config::ConfigEquipment>(&t("equipment"), &d("ConfigEquipment"));
    assert_event::<config::ConfigMaterialClass>(&t("materialclass"), &d("ConfigMaterialClass"));
    assert_event::<config::ConfigMaterialDefinition>(
        &t("materialdefinition"),
        &d("ConfigMaterialDefinition"),
    );
    assert_event::<config::ConfigPersonnel>(&t("personnel"), &d("ConfigPersonnel"));
    assert_event::<config::ConfigPhysicalAsset>(&t("physicalasset"), &d("ConfigPhysicalAsset"));
    assert_event::<config::ConfigWorkMaster>(&t("workmaster"), &d("ConfigWorkMaster"));
    assert_event::<config::ConfigJobAcceptance>(&t("jobacceptance"), &d("ConfigJobAcceptance"));
    let listed: BTreeSet<&str> = config::CLOUDEVENT_TYPES.iter().copied().collect();
    assert_eq!(listed.len(), 7);
    assert!(listed.contains(t("workmaster").as_str()));
}

// ---------------------------------------------------------------------------
// Configuration payloads

#[test]
fn resource_config_payloads_are_the_isa95_types() {
    let equipment = json!({"ID": "press-1", "Description": [{"Text": "Press"}], "EquipmentUse": "Pressing", "Quantity": "1", "EngineeringUnits": units(), "Properties": [{"ID": "p", "Value": 1}]});
    let config: config::ConfigEquipment = round_trip(&equipment);
    assert_eq!(config.id, "press-1");
    accepts_snake_case::<config::ConfigEquipment>(&equipment);
    let material = json!({"MaterialClassID": "steel", "MaterialDefinitionID": "S235"});
    let class: config::ConfigMaterialClass = round_trip(&material);
    assert_eq!(class.material_class_id.as_deref(), Some("steel"));
    round_trip::<config::ConfigMaterialDefinition>(&material);
    round_trip::<config::ConfigPersonnel>(&json!({"ID": "operator"}));
    round_trip::<config::ConfigPhysicalAsset>(
        &json!({"ID": "fixture-7", "PhysicalAssetUse": "Holding"}),
    );
}

fn recipe() -> Value {
    json!({
        "Version": "1.2.0",
        "Steps": [
            {"Name": "Start", "Initial": true},
            {"Name": "Screw"},
            {"Name": "Camera"},
            {"Name": "Glue"},
            {"Name": "Done"}
        ],
        "Transitions": [
            {"Source": "Start", "Target": "Parallel", "Condition": "always"},
            {"Source": "Parallel", "Target": "Done", "Condition": "screw.ok && camera.ok", "Priority": 1},
            {"Source": "Parallel", "Target": "Start", "Condition": "", "Priority": 2}
        ],
        "Actions": [
            {"Name": "screw", "Step": "Screw", "Qualifier": "N", "Interaction": "push_command",
             "TypeId": "com.example.screwdriver.tighten.v1", "TimeoutSeconds": 30,
             "Parameters": {"program": 4, "torque": 12.5},
             "Retry": {"MaxAttempts": 3, "BackoffSeconds": 0.5}, "Equipment": "screwdriver-2"},
            {"Name": "camera", "Step": "Camera", "Qualifier": "P1", "Interaction": "pull_event",
             "TypeId": "com.example.camera.inspected.v1", "TimeoutSeconds": 10},
            {"Name": "lamp", "Step": "Camera", "Qualifier": "L", "Interaction": "push_command",
             "TypeId": "com.example.lamp.on.v1", "TimeoutSeconds": 5, "DurationSeconds": 2.5},
            {"Name": "glue", "Step": "Glue", "Qualifier": "D", "Interaction": "push_command",
             "TypeId": "com.example.glue.apply.v1", "TimeoutSeconds": 5, "DelaySeconds": 1.0}
        ],
        "Branches": [
            {"Name": "Parallel", "Type": "simultaneous", "Branches": [["Screw"], ["Camera", "Inner"]]},
            {"Name": "Inner", "Type": "selection", "Branches": [["Glue"], []]}
        ]
    })
}

#[test]
fn work_master_config_carries_a_recipe_in_lowercase_data() {
    let input = json!({
        "ID": "WM-1",
        "Description": {"Locale": "en", "Text": "Assemble housing"},
        "Parameters": [{"ID": "torque", "Value": 12.5}],
        "data": recipe(),
        "dataschema": "https://aschamberger.github.io/schemas/microdcs/sfc-recipe/v1.0.0/"
    });
    let work_master: config::ConfigWorkMaster = round_trip(&input);
    assert_eq!(work_master.dataschema.as_deref(), Some(sfc::SCHEMA_ID));
    let recipe: sfc::SfcRecipe = serde_json::from_value(work_master.data.unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(recipe.steps.len(), 5);
    // A plain work master without recipe is valid too.
    round_trip::<config::ConfigWorkMaster>(&json!({"ID": "WM-2"}));
    accepts_snake_case::<config::ConfigWorkMaster>(
        &json!({"ID": "WM-2", "Parameters": [{"ID": "a", "Value": 1}]}),
    );
}

#[test]
fn job_acceptance_config_is_snake_case() {
    let config: config::ConfigJobAcceptance =
        round_trip(&json!({"max_downloadable_job_orders": 3}));
    assert_eq!(config.max_downloadable_job_orders, 3);
    round_trip::<config::ConfigJobAcceptance>(&json!({"max_downloadable_job_orders": 0}));
    assert!(serde_json::from_value::<config::ConfigJobAcceptance>(json!({})).is_err());
}

// ---------------------------------------------------------------------------
// MES retained payloads

#[test]
fn state_index_round_trips_with_snake_case_keys_and_pascal_case_states() {
    let input = json!({
        "seq": 42,
        "scope": "line-1",
        "published_at": "2025-03-01T08:00:00.123Z",
        "jobs": [
            {"job_order_id": "JO-1", "state": state_list(), "has_result": false},
            {"job_order_id": "JO-2", "state": [{"StateText": {"Locale": "en", "Text": "Running"}, "StateNumber": 3}], "has_result": true}
        ]
    });
    let index: mes::StateIndex = round_trip(&input);
    assert_eq!(index.seq, 42);
    assert_eq!(
        index.jobs[0].state[1].state_text.text.as_deref(),
        Some("Ready")
    );
    round_trip::<mes::StateIndex>(
        &json!({"seq": 1, "scope": "s", "published_at": "2025-03-01T08:00:00Z", "jobs": []}),
    );
}

#[test]
fn retained_order_and_result_round_trip() {
    let order: mes::RetainedOrder =
        round_trip(&json!({"JobOrder": full_job_order(), "State": state_list()}));
    assert_eq!(order.job_order.job_order_id, "JO-4711");
    round_trip::<isa::ISA95JobOrderAndStateDataType>(
        &json!({"JobOrder": {"JobOrderID": "J"}, "State": state_list()}),
    );
    round_trip::<mes::RetainedResult>(&job_response());
}

// ---------------------------------------------------------------------------
// SFC recipes

#[test]
fn sfc_recipe_with_every_extension_round_trips() {
    let parsed: sfc::SfcRecipe = round_trip(&recipe());
    let screw = &parsed.actions[0];
    assert_eq!(screw.qualifier, sfc::SfcActionQualifier::N);
    assert_eq!(screw.interaction, sfc::SfcInteraction::PushCommand);
    assert_eq!(screw.retry.as_ref().map(|r| r.max_attempts.get()), Some(3));
    assert_eq!(screw.equipment.as_deref(), Some("screwdriver-2"));
    assert_eq!(
        parsed.branches.as_ref().map(|b| b[0].type_),
        Some(sfc::SfcBranchType::Simultaneous)
    );
    // Keys in snake_case; values such as `push_command` stay as they are.
    accepts_snake_case::<sfc::SfcRecipe>(&recipe());
}

#[test]
fn microdcs_style_recipe_without_extensions_is_accepted() {
    let input = json!({
        "Steps": [{"Name": "A", "Initial": true}, {"Name": "B"}],
        "Transitions": [{"Source": "A", "Target": "B", "Condition": "torque_ok"}],
        "Actions": [{"Name": "a", "Step": "A", "Qualifier": "P", "Interaction": "pull_event", "TypeId": "x.y.v1", "TimeoutSeconds": 60}]
    });
    let recipe: sfc::SfcRecipe = round_trip(&input);
    assert_eq!(recipe.branches, None);
    assert_eq!(recipe.version, None);
}

#[test]
fn every_qualifier_interaction_and_branch_type_parses() {
    for qualifier in ["N", "P", "P0", "P1", "S", "R", "L", "D"] {
        let parsed: sfc::SfcActionQualifier =
            serde_json::from_value(json!(qualifier)).unwrap_or_else(|e| panic!("{qualifier}: {e}"));
        assert_eq!(
            serde_json::to_value(parsed).unwrap_or_default(),
            json!(qualifier)
        );
    }
    assert!(serde_json::from_value::<sfc::SfcActionQualifier>(json!("X")).is_err());
    for interaction in ["push_command", "pull_event"] {
        round_trip::<sfc::SfcInteraction>(&json!(interaction));
    }
    for branch in ["selection", "simultaneous"] {
        round_trip::<sfc::SfcBranchType>(&json!(branch));
    }
    assert!(serde_json::from_value::<sfc::SfcRetryPolicy>(json!({"MaxAttempts": 0})).is_err());
}

// ---------------------------------------------------------------------------
// The schema documents

fn documents() -> Vec<(&'static str, Value)> {
    [
        (isa::SCHEMA_ID, isa::SCHEMA),
        (jobs::SCHEMA_ID, jobs::SCHEMA),
        (config::SCHEMA_ID, config::SCHEMA),
        (mes::SCHEMA_ID, mes::SCHEMA),
        (sfc::SCHEMA_ID, sfc::SCHEMA),
    ]
    .into_iter()
    .map(|(id, text)| {
        let json: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(json["$id"], id);
        (id, json)
    })
    .collect()
}

/// Resolves `<$id>#/$defs/<Name>` (or a document `$id` whose root is a
/// `$ref`) to the definition's schema.
fn resolve(documents: &[(&str, Value)], uri: &str) -> Option<Value> {
    let (id, fragment) = uri.split_once('#').unwrap_or((uri, ""));
    let (_, doc) = documents.iter().find(|(d, _)| *d == id)?;
    if fragment.is_empty() {
        let inner = doc["$ref"].as_str()?;
        return resolve(documents, &format!("{id}{inner}"));
    }
    doc.pointer(fragment).cloned()
}

#[test]
fn every_dataschema_resolves_to_a_definition_carrying_its_type() {
    let documents = documents();
    let check = |cloudevent_type: &str, dataschema: &str| {
        let def = resolve(&documents, dataschema)
            .unwrap_or_else(|| panic!("{dataschema} does not resolve"));
        assert_eq!(def["x-cloudevent-type"], cloudevent_type, "{dataschema}");
    };
    check(isa::StoreCall::TYPE, isa::StoreCall::DATASCHEMA);
    check(isa::StoreResponse::TYPE, isa::StoreResponse::DATASCHEMA);
    check(
        isa::ISA95JobOrderStatusEventType::TYPE,
        isa::ISA95JobOrderStatusEventType::DATASCHEMA,
    );
    check(
        jobs::RequestJobResponseByJobOrderStateCall::TYPE,
        jobs::RequestJobResponseByJobOrderStateCall::DATASCHEMA,
    );
    check(
        config::ConfigWorkMaster::TYPE,
        config::ConfigWorkMaster::DATASCHEMA,
    );
    check(sfc::SfcRecipe::TYPE, sfc::SfcRecipe::DATASCHEMA);
    assert_eq!(
        sfc::SfcRecipe::DATASCHEMA,
        "https://aschamberger.github.io/schemas/microdcs/sfc-recipe/v1.0.0/"
    );
    // Every type listed by a document appears on one of its definitions.
    for (id, doc) in &documents {
        let types: BTreeSet<&str> = doc["$defs"]
            .as_object()
            .map(|defs| {
                defs.values()
                    .filter_map(|d| d["x-cloudevent-type"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        let listed: BTreeSet<&str> = match *id {
            i if i == isa::SCHEMA_ID => isa::CLOUDEVENT_TYPES.iter().copied().collect(),
            i if i == jobs::SCHEMA_ID => jobs::CLOUDEVENT_TYPES.iter().copied().collect(),
            i if i == config::SCHEMA_ID => config::CLOUDEVENT_TYPES.iter().copied().collect(),
            i if i == mes::SCHEMA_ID => mes::CLOUDEVENT_TYPES.iter().copied().collect(),
            _ => sfc::CLOUDEVENT_TYPES.iter().copied().collect(),
        };
        assert_eq!(types, listed, "{id}");
    }
}

#[test]
fn generated_documents_use_the_contract_ids_and_opc_ua_names() {
    let documents = documents();
    let isa_doc = &documents[0].1;
    assert_eq!(
        isa::SCHEMA_ID,
        "https://aschamberger.github.com/schemas/UA/ISA95-JOBCONTROL_V2/v2.0.0/"
    );
    assert_eq!(
        jobs::SCHEMA_ID,
        "https://aschamberger.github.com/schemas/UA/Machinery/Jobs/v1.0.1/"
    );
    let job_order = &isa_doc["$defs"]["ISA95JobOrderDataType"];
    assert_eq!(job_order["required"], json!(["JobOrderID"]));
    assert_eq!(job_order["properties"]["WorkMasterID"]["type"], "array");
    for method in crate::harness::jobs::METHODS {
        for suffix in ["Call", "Response"] {
            assert!(
                isa_doc["$defs"].get(format!("{method}{suffix}")).is_some(),
                "{method}{suffix}"
            );
        }
    }
    let jobs_doc = &documents[1].1;
    assert_eq!(
        jobs_doc["$defs"]["RequestJobResponseByJobOrderStateCall"]["properties"]["JobOrderState"]
            ["items"]["$ref"],
        format!("{S}ISA95StateDataType")
    );
}

// ---------------------------------------------------------------------------
// NodeIds and the state machine

#[test]
fn node_ids_and_browse_names_come_from_the_nodeset() {
    assert_eq!(
        isa::NAMESPACE_URI,
        "http://opcfoundation.org/UA/ISA95-JOBCONTROL_V2/"
    );
    assert_eq!(isa::MODEL_VERSION, "2.0.0");
    assert_eq!(isa::PUBLICATION_DATE, "2024-01-31");
    assert_eq!(isa::node_ids::ISA95_JOB_ORDER_DATA_TYPE, "ns=1;i=3008");
    assert_eq!(
        isa::node_ids::ISA95_JOB_ORDER_RECEIVER_OBJECT_TYPE,
        "ns=1;i=1002"
    );
    assert_eq!(
        isa::node_ids::ISA95_JOB_ORDER_STATUS_EVENT_TYPE,
        "ns=1;i=1006"
    );
    assert_eq!(isa::node_ids::STORE, "ns=1;i=7001");
    assert_eq!(isa::browse_names::STORE_AND_START, "StoreAndStart");
    assert_eq!(
        jobs::NAMESPACE_URI,
        "http://opcfoundation.org/UA/Machinery/Jobs/"
    );
    assert_eq!(jobs::node_ids::JOB_MANAGEMENT_TYPE, "ns=1;i=1003");
    assert_eq!(
        jobs::node_ids::REQUEST_JOB_RESPONSE_BY_JOB_ORDER_ID,
        "ns=1;i=7001"
    );
}

/// A top-level node of the NodeSet file, read with plain string search.
struct XmlNode {
    attrs: HashMap<String, String>,
    /// (reference type, forward, target)
    refs: Vec<(String, bool, String)>,
    uint32: Option<u32>,
}

fn attribute(tag: &str, name: &str) -> Option<String> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    let end = tag[start..].find('"')? + start;
    Some(tag[start..end].to_owned())
}

/// Reads the NodeSet with string search only (no XML library, nothing shared
/// with the generator): every `<UAObject>`/`<UAVariable>`/… element, its
/// attributes, references and an UInt32 value.
fn scan_nodeset() -> Vec<XmlNode> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/companion-specs/opc.ua.isa95-jobcontrol.nodeset2.xml"
    );
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut nodes = Vec::new();
    let mut rest = text.as_str();
    while let Some(start) = rest.find("<UA") {
        rest = &rest[start..];
        let tag_name: String = rest[1..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric())
            .collect();
        if tag_name == "UANodeSet" {
            rest = &rest[1..];
            continue;
        }
        let close = format!("</{tag_name}>");
        let Some(end) = rest.find(&close) else {
            rest = &rest[1..];
            continue;
        };
        let block = &rest[..end];
        rest = &rest[end + close.len()..];
        let head = &block[..block.find('>').unwrap_or(block.len())];
        let attrs = ["NodeId", "BrowseName", "ParentNodeId"]
            .iter()
            .filter_map(|n| Some(((*n).to_owned(), attribute(head, n)?)))
            .collect();
        let mut refs = Vec::new();
        for part in block.split("<Reference ").skip(1) {
            let (open, after) = part.split_once('>').unwrap_or((part, ""));
            let target = after.split('<').next().unwrap_or("").trim().to_owned();
            let kind = attribute(&format!(" {open}"), "ReferenceType").unwrap_or_default();
            refs.push((kind, !open.contains("IsForward=\"false\""), target));
        }
        let uint32 = block
            .split_once("<uax:UInt32")
            .and_then(|(_, v)| v.split_once('>'))
            .and_then(|(_, v)| v.split('<').next())
            .and_then(|v| v.trim().parse().ok());
        nodes.push(XmlNode {
            attrs,
            refs,
            uint32,
        });
    }
    nodes
}

#[test]
fn job_order_state_machine_has_exactly_the_transitions_of_the_nodeset() {
    let nodes = scan_nodeset();
    let by_id: HashMap<&str, &XmlNode> = nodes
        .iter()
        .filter_map(|n| Some((n.attrs.get("NodeId")?.as_str(), n)))
        .collect();
    let name = |id: &str| -> String {
        let browse = by_id
            .get(id)
            .and_then(|n| n.attrs.get("BrowseName"))
            .map_or(id, String::as_str);
        browse.split_once(':').map_or(browse, |(_, n)| n).to_owned()
    };
    let forward = |node: &XmlNode, kind: &str| -> Vec<String> {
        node.refs
            .iter()
            .filter(|(k, f, _)| k == kind && *f)
            .map(|(_, _, t)| t.clone())
            .collect()
    };
    let number = |owner: &str, property: &str| -> Option<u32> {
        nodes
            .iter()
            .find(|n| {
                n.attrs.get("ParentNodeId").map(String::as_str) == Some(owner)
                    && n.attrs.get("BrowseName").map(String::as_str) == Some(property)
            })
            .and_then(|n| n.uint32)
    };

    /// One transition, from the XML or from the generated table.
    #[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
    struct Row {
        parent: Option<String>,
        name: String,
        number: u32,
        from: String,
        to: String,
        causes: BTreeSet<String>,
    }
    let mut expected: Vec<Row> = Vec::new();
    let mut expected_states = BTreeSet::new();
    // (machine type, parent state) to scan; substate machines are appended.
    let mut queue = vec![("ns=1;i=1008".to_owned(), None::<String>)];
    while let Some((machine, parent)) = queue.pop() {
        for node in nodes
            .iter()
            .filter(|n| n.attrs.get("ParentNodeId") == Some(&machine))
        {
            let Some(id) = node.attrs.get("NodeId") else {
                continue;
            };
            let definition = forward(node, "HasTypeDefinition");
            if definition.iter().any(|d| d == "i=2310") {
                let from = forward(node, "FromState");
                let to = forward(node, "ToState");
                assert_eq!((from.len(), to.len()), (1, 1), "{id}");
                let causes = forward(node, "HasCause").iter().map(|c| name(c)).collect();
                let number = number(id, "TransitionNumber")
                    .unwrap_or_else(|| panic!("{id} has no TransitionNumber"));
                expected.push(Row {
                    parent: parent.clone(),
                    name: name(id),
                    number,
                    from: name(&from[0]),
                    to: name(&to[0]),
                    causes,
                });
            } else if definition.iter().any(|d| d == "i=2307") {
                let number =
                    number(id, "StateNumber").unwrap_or_else(|| panic!("{id} has no StateNumber"));
                expected_states.insert((parent.clone(), name(id), number));
                for sub in forward(node, "HasSubStateMachine") {
                    let sub_type = by_id
                        .get(sub.as_str())
                        .map(|s| forward(s, "HasTypeDefinition"))
                        .unwrap_or_default();
                    queue.push((sub_type[0].clone(), Some(name(id))));
                }
            }
        }
    }

    let machine = JOB_ORDER_STATE_MACHINE;
    let mut actual: Vec<Row> = machine
        .transitions
        .iter()
        .map(|t| Row {
            parent: t.parent.map(str::to_owned),
            name: t.name.to_owned(),
            number: t.number,
            from: t.from.to_owned(),
            to: t.to.to_owned(),
            causes: t.causes.iter().map(|c| (*c).to_owned()).collect(),
        })
        .collect();
    expected.sort();
    actual.sort();
    assert_eq!(actual.len(), expected.len());
    assert_eq!(actual, expected);
    assert_eq!(actual.iter().filter(|r| r.parent.is_none()).count(), 13);

    let actual_states: BTreeSet<_> = machine
        .states
        .iter()
        .map(|s| (s.parent.map(str::to_owned), s.name.to_owned(), s.number))
        .collect();
    assert_eq!(actual_states, expected_states);
    assert_eq!(machine.states.len(), 16);
}

#[test]
fn state_machine_lookups_follow_the_contract_table() {
    let machine = JOB_ORDER_STATE_MACHINE;
    assert_eq!(
        machine.state(None, "AllowedToStart").map(|s| s.number),
        Some(2)
    );
    assert_eq!(
        machine
            .state(Some("AllowedToStart"), "Ready")
            .map(|s| s.number),
        Some(2)
    );
    assert_eq!(
        machine
            .state(Some("Interrupted"), "Suspended")
            .map(|s| s.number),
        Some(2)
    );
    assert_eq!(
        machine.state(Some("Ended"), "Completed").map(|s| s.number),
        Some(1)
    );
    let by_cause = |from: &str, cause: &str| {
        machine
            .transitions_from(None, from)
            .find(|t| t.causes.contains(&cause))
            .map(|t| t.to)
    };
    assert_eq!(
        by_cause("NotAllowedToStart", "Start"),
        Some("AllowedToStart")
    );
    assert_eq!(
        by_cause("AllowedToStart", "RevokeStart"),
        Some("NotAllowedToStart")
    );
    assert_eq!(by_cause("Running", "Pause"), Some("Interrupted"));
    assert_eq!(by_cause("Interrupted", "Resume"), Some("Running"));
    assert_eq!(by_cause("Interrupted", "Stop"), Some("Ended"));
    assert_eq!(by_cause("Running", "Abort"), Some("Aborted"));
    assert_eq!(by_cause("AllowedToStart", "Update"), Some("AllowedToStart"));
    let internal: Vec<_> = machine
        .transitions_from(None, "AllowedToStart")
        .filter(|t| t.causes.is_empty())
        .map(|t| t.to)
        .collect();
    assert_eq!(internal, ["Running"]);
    assert!(machine
        .transitions
        .iter()
        .filter(|t| t.parent.is_none())
        .all(|t| t.effects == ["ISA95JobOrderStatusEventType"]));
}

#[test]
fn enumerations_accept_only_their_values() {
    let mode: jobs::JobExecutionMode =
        serde_json::from_value(json!(2)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(*mode, 2);
    assert!(serde_json::from_value::<jobs::JobExecutionMode>(json!(7)).is_err());
    let info: jobs::OutputInfoType =
        serde_json::from_value(json!(5)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.0, 5);
}
