//! The job methods, independent of the face they arrive on (wire contract
//! §3, §8).
//!
//! The MQTT face ([`processor`](super::processor)) and the OPC UA face
//! (`crate::opcua`, feature `opcua`) decode their requests into the inputs
//! here and encode the result their own way; the checks, the
//! compare-and-swap, the `ReturnStatus` and the status event are the same
//! code for both. A face owns only what its wire defines: how a request is
//! decoded, what the command's cause key is, and how a result is answered.

use super::audit::Cause;
use super::machine::Method;
use super::manager::{CommandOutcome, JobManager};
use super::state::{JobState, StateEntry};
use super::status::ReturnStatus;
use super::store::StoreError;
use super::OrderError;
use serde_json::value::RawValue;
use serde_json::Value;

/// The three methods that carry a job order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OrderOp {
    /// `Store`: keep the order, do not start it.
    Store,
    /// `StoreAndStart`: keep the order and start it.
    StoreAndStart,
    /// `Update`: replace a stored order's contents.
    Update,
}

impl OrderOp {
    /// The state-machine method this operation is.
    pub(crate) fn method(self) -> Method {
        match self {
            OrderOp::Store => Method::Store,
            OrderOp::StoreAndStart => Method::StoreAndStart,
            OrderOp::Update => Method::Update,
        }
    }
}

/// What a job method came to, for a face to answer.
#[derive(Debug)]
pub(crate) enum Applied {
    /// The manager decided: applied or refused, with its `ReturnStatus` and,
    /// when applied, the status event.
    Done(CommandOutcome),
    /// The request cannot be applied (`InvalidRequest`); the reason is for
    /// the log.
    Invalid(&'static str),
    /// The job order does not match `ISA95JobOrderDataType`: a payload
    /// error, not a refusal (the MQTT face dead-letters it, the OPC UA face
    /// answers `BadInvalidArgument`).
    BadOrder(OrderError),
}

/// Whether a JobOrderID can be stored and addressed (wire contract §8): not
/// empty and at most [`MAX_JOB_ORDER_ID_BYTES`](super::MAX_JOB_ORDER_ID_BYTES)
/// bytes. Every character is allowed: topic levels encode it.
pub(crate) fn usable_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() {
        Err("empty")
    } else if id.len() > super::MAX_JOB_ORDER_ID_BYTES {
        Err("JobOrderID longer than 256 bytes")
    } else {
        Ok(())
    }
}

/// Store, StoreAndStart and Update: check the id, normalise the order,
/// apply it.
///
/// # Errors
/// Redis is unavailable.
pub(crate) async fn apply_order(
    op: OrderOp,
    order: Option<Value>,
    scope: &str,
    cause: Cause<'_>,
    m: &JobManager,
) -> Result<Applied, StoreError> {
    let Some(order) = order else {
        return Ok(Applied::Invalid("no JobOrder"));
    };
    let id = ["JobOrderID", "job_order_id"]
        .iter()
        .find_map(|k| order.get(k).filter(|v| !v.is_null()));
    match id.map(|v| v.as_str().map(usable_id)) {
        None | Some(Some(Err("empty"))) => return Ok(Applied::Invalid("no JobOrderID")),
        Some(Some(Err(why))) => return Ok(Applied::Invalid(why)),
        // A non-string id is a payload error, reported by `normalise_order`.
        Some(None) | Some(Some(Ok(()))) => {}
    }
    let order = match super::normalise_order(order) {
        Ok(o) => o,
        Err(e) => return Ok(Applied::BadOrder(e)),
    };
    Ok(Applied::Done(match op {
        OrderOp::Store => m.store_order(scope, &order, false, cause).await?,
        OrderOp::StoreAndStart => m.store_order(scope, &order, true, cause).await?,
        OrderOp::Update => m.update_order(scope, &order, cause).await?,
    }))
}

/// The methods on an existing job (Start, RevokeStart, Pause, Resume, Stop,
/// Abort, Cancel, Clear): check the id, apply.
///
/// # Errors
/// Redis is unavailable.
pub(crate) async fn apply_method(
    method: Method,
    id: Option<&str>,
    scope: &str,
    cause: Cause<'_>,
    m: &JobManager,
) -> Result<Applied, StoreError> {
    let Some(id) = id.filter(|i| !i.is_empty()) else {
        return Ok(Applied::Invalid("no JobOrderID"));
    };
    if let Err(why) = usable_id(id) {
        return Ok(Applied::Invalid(why));
    }
    Ok(Applied::Done(m.call(scope, id, method, cause).await?))
}

/// `RequestJobResponseByJobOrderID`: the stored response, `UnknownJobOrderId`
/// without one, `InvalidRequest` for an unusable or missing id.
///
/// # Errors
/// Redis is unavailable.
pub(crate) async fn by_id(
    m: &JobManager,
    scope: &str,
    id: Option<&str>,
) -> Result<(ReturnStatus, Option<Box<RawValue>>), StoreError> {
    let Some(id) = id.filter(|i| usable_id(i).is_ok()) else {
        return Ok((ReturnStatus::InvalidRequest, None));
    };
    Ok(match m.response(scope, id).await? {
        Some(r) => (ReturnStatus::NoError, Some(r)),
        None => (ReturnStatus::UnknownJobOrderId, None),
    })
}

/// `RequestJobResponseByJobOrderState`: the responses of the jobs in exactly
/// that state; `InvalidRequest` (with the reason) for an empty or unknown
/// state.
///
/// # Errors
/// Redis is unavailable.
pub(crate) async fn by_state(
    m: &JobManager,
    scope: &str,
    state: Option<&[StateEntry]>,
) -> Result<Result<Vec<Box<RawValue>>, String>, StoreError> {
    let Some(list) = state.filter(|l| !l.is_empty()) else {
        return Ok(Err("no JobOrderState".to_owned()));
    };
    let state = match JobState::from_wire(list) {
        Ok(s) => s,
        Err(e) => return Ok(Err(e.to_string())),
    };
    Ok(Ok(m.responses_in_state(scope, state).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usable_ids() {
        assert_eq!(usable_id(""), Err("empty"));
        assert_eq!(usable_id("j1"), Ok(()));
        assert_eq!(usable_id(&"x".repeat(256)), Ok(()));
        assert!(usable_id(&"x".repeat(257)).is_err());
        // Bytes, not characters: 129 two-byte characters are 258 bytes.
        assert!(usable_id(&"ä".repeat(129)).is_err());
    }

    #[test]
    fn order_ops_are_their_methods() {
        assert_eq!(OrderOp::Store.method(), Method::Store);
        assert_eq!(OrderOp::StoreAndStart.method(), Method::StoreAndStart);
        assert_eq!(OrderOp::Update.method(), Method::Update);
    }
}
