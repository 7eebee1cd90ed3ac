//! Method calls of the job management face, answered through the
//! face-independent job commands (`jobs::command`): the same checks,
//! compare-and-swap, `ReturnStatus` and status event as the MQTT face.

use crate::jobs::audit::{Cause, CommandInfo};
use crate::jobs::command::{self, Applied};
use crate::jobs::store::StoreError;
use crate::jobs::{JobManager, Method, ReturnStatus};
use opcua::server::node_manager::MethodCall;
use opcua::types::{Identifier, NodeId, StatusCode, Variant};
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

/// Answers one method call; `user` is the session's user (for the audit
/// trail), `instance` this replica.
pub(crate) async fn call(
    manager: &JobManager,
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
    let Some(method) = id_method(&name) else {
        // Store, StoreAndStart, Update and the two queries need the ISA95
        // structures decoded: not served yet.
        call.set_status(StatusCode::BadNotImplemented);
        return;
    };
    let id = match call.arguments().first() {
        None => {
            call.set_status(StatusCode::BadArgumentsMissing);
            return;
        }
        Some(Variant::String(s)) => s.value().clone().unwrap_or_default(),
        Some(_) => {
            let mut errors = vec![StatusCode::Good; call.arguments().len()];
            errors[0] = StatusCode::BadTypeMismatch;
            call.set_argument_error(errors);
            call.set_status(StatusCode::BadInvalidArgument);
            return;
        }
    };
    let command_id = uuid::Uuid::new_v4().to_string();
    // Unique per call: the manager's "same command redelivered" rule is
    // for MQTT redeliveries and never applies here.
    let key = format!("opcua\u{1f}{command_id}");
    let info = CommandInfo {
        method: method.name(),
        source: format!("opcua://{instance}/{user}"),
        id: command_id,
        correlationid: None,
    };
    let applied = command::apply_method(
        method,
        Some(&id),
        &scope,
        Cause::command(&key, &info),
        manager,
    )
    .await;
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
            manager.send_status(&scope, &outcome).await;
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
            info!(scope, method = name, error = %e, "invalid OPC UA job order");
            ReturnStatus::InvalidRequest
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
