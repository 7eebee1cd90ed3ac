//! Method calls of the job management face, answered through the
//! face-independent job commands (`jobs::command`): the same checks,
//! compare-and-swap, `ReturnStatus` and status event as the MQTT face
//! (wire contract §3, §8).
//!
//! Status codes: a well-formed call is `Good` with its `ReturnStatus`
//! output (refusals included); a missing argument is
//! `BadArgumentsMissing`; an argument of the wrong type, or a job order
//! that does not match `ISA95JobOrderDataType` (MQTT dead-letters such a
//! payload), is `BadInvalidArgument` with `BadTypeMismatch` for that
//! argument; Redis unavailable is `BadResourceUnavailable`; a stored
//! response that does not convert is `BadInternalError` (logged).

use super::types::{Types, JOB_ORDER, JOB_RESPONSE, STATE};
use crate::jobs::audit::{Cause, CommandInfo};
use crate::jobs::command::{self, Applied, OrderOp};
use crate::jobs::state::StateEntry;
use crate::jobs::store::StoreError;
use crate::jobs::{JobManager, Method, ReturnStatus};
use opcua::server::node_manager::MethodCall;
use opcua::types::{ExtensionObject, Identifier, NodeId, StatusCode, Variant, VariantScalarTypeId};
use serde_json::value::RawValue;
use tracing::{info, warn};

/// The methods on an existing job, by browse name.
fn id_method(name: &str) -> Option<Method> {
    Some(match name {
        "Start" => Method::Start,
        "RevokeStart" => Method::RevokeStart,
        "Pause" => Method::Pause,
        "Resume" => Method::Resume,
        "Stop" => Method::Stop,
        "Abort" => Method::Abort,
        "Cancel" => Method::Cancel,
        "Clear" => Method::Clear,
        _ => return None,
    })
}

/// `(scope, method browse name)` of one of our method nodes
/// (`<scope>/JobManagement/<object>/<method>` in the station namespace).
fn parse_method_id(id: &NodeId, station: u16) -> Option<(&str, &str)> {
    if id.namespace != station {
        return None;
    }
    let Identifier::String(s) = &id.identifier else {
        return None;
    };
    let s = s.as_ref();
    let (scope, rest) = s.split_once('/')?;
    let (_, name) = rest.rsplit_once('/')?;
    Some((scope, name))
}

/// The OPC UA status of a store error: try again later, or a defect.
fn store_status(e: &StoreError) -> StatusCode {
    match e {
        StoreError::Unavailable(_) => StatusCode::BadResourceUnavailable,
        StoreError::Corrupt { .. } => StatusCode::BadInternalError,
    }
}

/// Marks argument `index` of `call` as of the wrong type
/// (`BadInvalidArgument`, with `BadTypeMismatch` for that argument).
fn type_mismatch(call: &mut MethodCall, index: usize) {
    let mut errors = vec![StatusCode::Good; call.arguments().len().max(index + 1)];
    errors[index] = StatusCode::BadTypeMismatch;
    call.set_argument_error(errors);
    call.set_status(StatusCode::BadInvalidArgument);
}

/// Whether the optional `Comment` argument (index 1) is absent or
/// LocalizedText (a list, as the NodeSet declares, or one, as the MQTT
/// face accepts too).
fn comment_ok(call: &MethodCall) -> bool {
    match call.arguments().get(1) {
        None | Some(Variant::Empty | Variant::LocalizedText(_)) => true,
        Some(Variant::Array(a)) => a.value_type == VariantScalarTypeId::LocalizedText,
        Some(_) => false,
    }
}

/// Whether `order`, as the MQTT request `{"JobOrder": order}`, is JSON the
/// MQTT face parses: serde_json refuses nesting deeper than 128 levels,
/// which the recursive `Subparameters`/`Subproperties` reach at some 62
/// levels (the face decodes 64). Such an order is refused on MQTT (a dead
/// letter), and its status events would be JSON that an MES on serde_json
/// cannot read; over OPC UA it is an invalid argument.
///
/// # Errors
/// The order's JSON does not parse back (its nesting, as serde_json says).
fn json_like_mqtt(order: &serde_json::Value) -> Result<(), serde_json::Error> {
    let text = serde_json::to_string(&serde_json::json!({ "JobOrder": order }))?;
    serde_json::from_str::<serde_json::Value>(&text).map(|_| ())
}

/// The cause of a command arriving over OPC UA, for the manager and the
/// audit trail.
struct Caller<'a> {
    instance: &'a str,
    user: &'a str,
}

impl Caller<'_> {
    /// A unique cause key and the audit's command info for `method`.
    fn info(&self, method: Method) -> (String, CommandInfo) {
        let command_id = uuid::Uuid::new_v4().to_string();
        // Unique per call: the manager's "same command redelivered" rule is
        // for MQTT redeliveries and never applies here.
        let key = format!("opcua\u{1f}{command_id}");
        let info = CommandInfo {
            method: method.name(),
            source: format!("opcua://{}/{}", self.instance, self.user),
            id: command_id,
            correlationid: None,
        };
        (key, info)
    }
}

/// Answers one method call; `types` converts the structured arguments and
/// outputs (`None` if they could not be built at start), `user` is the
/// session's user (for the audit trail), `instance` this replica.
pub(crate) async fn call(
    manager: &JobManager,
    types: Option<&Types>,
    station: u16,
    instance: &str,
    user: &str,
    call: &mut MethodCall,
) {
    let Some((scope, name)) = parse_method_id(call.method_id(), station) else {
        call.set_status(StatusCode::BadMethodInvalid);
        return;
    };
    let (scope, name) = (scope.to_owned(), name.to_owned());
    let caller = Caller { instance, user };
    if let Some(method) = id_method(&name) {
        return id_call(manager, &scope, method, &caller, call).await;
    }
    let op = match name.as_str() {
        "Store" => Some(OrderOp::Store),
        "StoreAndStart" => Some(OrderOp::StoreAndStart),
        "Update" => Some(OrderOp::Update),
        "RequestJobResponseByJobOrderID" | "RequestJobResponseByJobOrderState" => None,
        _ => {
            call.set_status(StatusCode::BadMethodInvalid);
            return;
        }
    };
    let Some(types) = types else {
        warn!(
            scope,
            method = name,
            "OPC UA structured call without the DataTypes (see the start log)"
        );
        call.set_status(StatusCode::BadInternalError);
        return;
    };
    match op {
        Some(op) => order_call(manager, types, &scope, op, &caller, call).await,
        None if name == "RequestJobResponseByJobOrderID" => {
            by_id_call(manager, types, &scope, call).await;
        }
        None => by_state_call(manager, types, &scope, call).await,
    }
}

/// Start … Clear: `(JobOrderID: String, Comment: LocalizedText[]) -> ReturnStatus`.
async fn id_call(
    manager: &JobManager,
    scope: &str,
    method: Method,
    caller: &Caller<'_>,
    call: &mut MethodCall,
) {
    let id = match call.arguments().first() {
        None => {
            call.set_status(StatusCode::BadArgumentsMissing);
            return;
        }
        Some(Variant::String(s)) => s.value().clone().unwrap_or_default(),
        Some(_) => return type_mismatch(call, 0),
    };
    if !comment_ok(call) {
        return type_mismatch(call, 1);
    }
    let (key, info) = caller.info(method);
    let applied = command::apply_method(
        method,
        Some(&id),
        scope,
        Cause::command(&key, &info),
        manager,
    )
    .await;
    answer(manager, scope, method, Some(&id), applied, call).await;
}

/// Store, StoreAndStart, Update:
/// `(JobOrder: ISA95JobOrderDataType, Comment: LocalizedText[]) -> ReturnStatus`.
async fn order_call(
    manager: &JobManager,
    types: &Types,
    scope: &str,
    op: OrderOp,
    caller: &Caller<'_>,
    call: &mut MethodCall,
) {
    let method = op.method();
    let order = match call.arguments().first() {
        None => {
            call.set_status(StatusCode::BadArgumentsMissing);
            return;
        }
        // A null structure: no JobOrder (InvalidRequest, as on MQTT).
        Some(Variant::Empty) => None,
        Some(Variant::ExtensionObject(eo)) if eo.is_null() => None,
        Some(v @ Variant::ExtensionObject(eo))
            if eo
                .data_type()
                .is_some_and(|t| t.node_id == types.jc_type(JOB_ORDER)) =>
        {
            match types.decode(v) {
                Ok(json) => {
                    if let Err(e) = json_like_mqtt(&json) {
                        info!(scope, method = method.name(), error = %e, "OPC UA job order is no JSON the MQTT face reads");
                        return type_mismatch(call, 0);
                    }
                    Some(json)
                }
                Err(e) => {
                    info!(scope, method = method.name(), error = %e, "OPC UA job order does not convert");
                    return type_mismatch(call, 0);
                }
            }
        }
        Some(_) => return type_mismatch(call, 0),
    };
    if !comment_ok(call) {
        return type_mismatch(call, 1);
    }
    let id = order
        .as_ref()
        .and_then(|o| o.get("JobOrderID"))
        .and_then(serde_json::Value::as_str)
        .map(str::to_owned);
    let (key, info) = caller.info(method);
    let applied =
        command::apply_order(op, order, scope, Cause::command(&key, &info), manager).await;
    answer(manager, scope, method, id.as_deref(), applied, call).await;
}

/// The answer to a job command: `Good` with the `ReturnStatus` (refusals
/// included), and the MQTT status event when a transition happened.
async fn answer(
    manager: &JobManager,
    scope: &str,
    method: Method,
    id: Option<&str>,
    applied: Result<Applied, StoreError>,
    call: &mut MethodCall,
) {
    let name = method.name();
    let status = match applied {
        Ok(Applied::Done(outcome)) => {
            if let Some(reason) = &outcome.reason {
                info!(
                    scope,
                    method = name,
                    job = id,
                    status = outcome.status.value(),
                    reason,
                    "OPC UA job command refused"
                );
            }
            manager.send_status(scope, &outcome).await;
            outcome.status
        }
        Ok(Applied::Invalid(why)) => {
            info!(
                scope,
                method = name,
                reason = why,
                "invalid OPC UA job request"
            );
            ReturnStatus::InvalidRequest
        }
        Ok(Applied::BadOrder(e)) => {
            // MQTT dead-letters such a payload; here the argument is wrong.
            info!(scope, method = name, error = %e, "invalid OPC UA job order");
            return type_mismatch(call, 0);
        }
        Err(e) => {
            warn!(scope, method = name, error = %e, "OPC UA job command not applied");
            call.set_status(store_status(&e));
            return;
        }
    };
    call.set_outputs(vec![Variant::UInt64(status.value())]);
    call.set_status(StatusCode::Good);
}

/// A stored job response as JSON (it is stored as JSON text).
fn response_json(scope: &str, raw: &RawValue) -> Result<serde_json::Value, StatusCode> {
    serde_json::from_str(raw.get()).map_err(|e| {
        warn!(scope, error = %e, "stored job response is not JSON");
        StatusCode::BadInternalError
    })
}

/// `RequestJobResponseByJobOrderID`:
/// `(JobOrderID: String) -> (JobResponse: ISA95JobResponseDataType, ReturnStatus: UInt64)`.
async fn by_id_call(manager: &JobManager, types: &Types, scope: &str, call: &mut MethodCall) {
    let id = match call.arguments().first() {
        None => {
            call.set_status(StatusCode::BadArgumentsMissing);
            return;
        }
        Some(Variant::String(s)) => s.value().clone().unwrap_or_default(),
        Some(_) => return type_mismatch(call, 0),
    };
    let (status, response) = match command::by_id(manager, scope, Some(&id)).await {
        Ok(r) => r,
        Err(e) => {
            warn!(scope, job = id, error = %e, "RequestJobResponseByJobOrderID not answered");
            call.set_status(store_status(&e));
            return;
        }
    };
    let response = match response {
        None => Variant::ExtensionObject(ExtensionObject::null()),
        Some(raw) => {
            let encoded = response_json(scope, &raw).and_then(|v| {
                types.encode(JOB_RESPONSE, &v).map_err(|e| {
                    // A defect of whoever stored it.
                    warn!(scope, job = id, error = %e, "stored job response does not convert to ISA95JobResponseDataType");
                    StatusCode::BadInternalError
                })
            });
            match encoded {
                Ok(v) => v,
                Err(code) => {
                    call.set_status(code);
                    return;
                }
            }
        }
    };
    call.set_outputs(vec![response, Variant::UInt64(status.value())]);
    call.set_status(StatusCode::Good);
}

/// `RequestJobResponseByJobOrderState`:
/// `(JobOrderState: ISA95StateDataType[]) -> (JobResponses: ISA95JobResponseDataType[], ReturnStatus: UInt64)`.
async fn by_state_call(manager: &JobManager, types: &Types, scope: &str, call: &mut MethodCall) {
    let state: Option<Vec<StateEntry>> = match call.arguments().first() {
        None => {
            call.set_status(StatusCode::BadArgumentsMissing);
            return;
        }
        Some(Variant::Empty) => None,
        Some(v @ Variant::Array(a))
            if a.value_type == VariantScalarTypeId::ExtensionObject
                && a.values.iter().all(|x| match x {
                    Variant::ExtensionObject(eo) => eo
                        .data_type()
                        .is_some_and(|t| t.node_id == types.jc_type(STATE)),
                    _ => false,
                }) =>
        {
            match types
                .decode(v)
                .map_err(|e| e.to_string())
                .and_then(|j| serde_json::from_value(j).map_err(|e| e.to_string()))
            {
                Ok(list) => Some(list),
                Err(e) => {
                    info!(scope, error = %e, "OPC UA JobOrderState does not convert");
                    return type_mismatch(call, 0);
                }
            }
        }
        Some(_) => return type_mismatch(call, 0),
    };
    let found = match command::by_state(manager, scope, state.as_deref()).await {
        Ok(r) => r,
        Err(e) => {
            warn!(scope, error = %e, "RequestJobResponseByJobOrderState not answered");
            call.set_status(store_status(&e));
            return;
        }
    };
    let (status, responses) = match found {
        Ok(list) => {
            let mut values = Vec::with_capacity(list.len());
            for raw in &list {
                match response_json(scope, raw) {
                    Ok(v) => values.push(v),
                    Err(code) => {
                        call.set_status(code);
                        return;
                    }
                }
            }
            (ReturnStatus::NoError, values)
        }
        Err(reason) => {
            info!(scope, reason, "RequestJobResponseByJobOrderState refused");
            (ReturnStatus::InvalidRequest, Vec::new())
        }
    };
    match types.encode_array(JOB_RESPONSE, &responses) {
        Ok(array) => {
            call.set_outputs(vec![array, Variant::UInt64(status.value())]);
            call.set_status(StatusCode::Good);
        }
        Err(e) => {
            warn!(scope, error = %e, "job responses do not convert");
            call.set_status(StatusCode::BadInternalError);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_ids_name_their_scope_and_method() {
        let id = NodeId::new(3, "line-1/JobManagement/JobOrderControl/Start");
        assert_eq!(parse_method_id(&id, 3), Some(("line-1", "Start")));
        assert_eq!(parse_method_id(&id, 2), None);
        assert_eq!(parse_method_id(&NodeId::new(3, 7u32), 3), None);
        assert_eq!(id_method("Clear"), Some(Method::Clear));
        assert_eq!(id_method("StoreAndStart"), None);
    }
}
