//! The job methods' CloudEvent payloads as the processor reads and writes
//! them.
//!
//! Requests are read leniently: a missing `JobOrder` or `JobOrderID` is not
//! a decoding error but a request answered with `InvalidRequest`
//! (wire contract §3), so these wrappers keep every field optional and the
//! job order itself is checked against the generated
//! `ISA95JobOrderDataType` by the processor. Their `type`/`dataschema` are
//! the generated models' constants. The status event and the query replies
//! carry stored JSON as it is (no re-parse per event); a test holds their
//! shape to the generated types.

use super::state::StateEntry;
use crate::envelope::EventType;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::models::isa95_jobcontrol as j;
/// The replies of the ISA95 methods are the generated types as they are
/// (`{"ReturnStatus": n}`).
pub use crate::models::isa95_jobcontrol::{
    AbortResponse, CancelResponse, ClearResponse, PauseResponse, ResumeResponse,
    RevokeStartResponse, StartResponse, StopResponse, StoreAndStartResponse, StoreResponse,
    UpdateResponse,
};
use crate::models::machinery_jobs as mj;

/// `impl EventType for $name` with the CloudEvent type and schema of the
/// generated `$generated`.
macro_rules! typed_as {
    ($name:ident, $generated:ty) => {
        impl EventType for $name {
            const TYPE: &'static str = <$generated as EventType>::TYPE;
            const DATASCHEMA: &'static str = <$generated as EventType>::DATASCHEMA;
        }
    };
}
pub(crate) use typed_as;

macro_rules! order_call {
    ($(#[$doc:meta])* $name:ident, $generated:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        pub struct $name {
            /// The job order (checked against `ISA95JobOrderDataType`).
            #[serde(rename = "JobOrder", alias = "job_order", default, skip_serializing_if = "Option::is_none")]
            pub job_order: Option<Value>,
            /// Optional comment (`LocalizedText`, or a list of them).
            #[serde(rename = "Comment", alias = "comment", default, skip_serializing_if = "Option::is_none")]
            pub comment: Option<Value>,
        }
        typed_as!($name, j::$generated);
    };
}

macro_rules! id_call {
    ($(#[$doc:meta])* $name:ident, $generated:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, Serialize, Deserialize)]
        pub struct $name {
            /// The job order id.
            #[serde(rename = "JobOrderID", alias = "job_order_id", default, skip_serializing_if = "Option::is_none")]
            pub job_order_id: Option<String>,
            /// Optional comment (`LocalizedText`, or a list of them).
            #[serde(rename = "Comment", alias = "comment", default, skip_serializing_if = "Option::is_none")]
            pub comment: Option<Value>,
        }
        typed_as!($name, j::$generated);
    };
}

order_call!(/// `Store` request.
    StoreRequest, StoreCall);
order_call!(/// `StoreAndStart` request.
    StoreAndStartRequest, StoreAndStartCall);
order_call!(/// `Update` request.
    UpdateRequest, UpdateCall);
id_call!(/// `Start` request.
    StartRequest, StartCall);
id_call!(/// `RevokeStart` request.
    RevokeStartRequest, RevokeStartCall);
id_call!(/// `Pause` request.
    PauseRequest, PauseCall);
id_call!(/// `Resume` request.
    ResumeRequest, ResumeCall);
id_call!(/// `Stop` request.
    StopRequest, StopCall);
id_call!(/// `Abort` request.
    AbortRequest, AbortCall);
id_call!(/// `Cancel` request.
    CancelRequest, CancelCall);
id_call!(/// `Clear` request.
    ClearRequest, ClearCall);

/// `RequestJobResponseByJobOrderID` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ByIdRequest {
    /// The job order id.
    #[serde(
        rename = "JobOrderID",
        alias = "job_order_id",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub job_order_id: Option<String>,
}
typed_as!(ByIdRequest, mj::RequestJobResponseByJobOrderIDCall);

/// `RequestJobResponseByJobOrderID` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ByIdResponse {
    /// The stored job response, if any.
    #[serde(
        rename = "JobResponse",
        alias = "job_response",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub job_response: Option<Box<RawValue>>,
    /// The `ReturnStatus` bit mask.
    #[serde(rename = "ReturnStatus", alias = "return_status")]
    pub return_status: u64,
}
typed_as!(ByIdResponse, mj::RequestJobResponseByJobOrderIDResponse);

/// `RequestJobResponseByJobOrderState` request.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ByStateRequest {
    /// The state to match exactly (outer state first).
    #[serde(
        rename = "JobOrderState",
        alias = "job_order_state",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub job_order_state: Option<Vec<StateEntry>>,
}
typed_as!(ByStateRequest, mj::RequestJobResponseByJobOrderStateCall);

/// `RequestJobResponseByJobOrderState` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ByStateResponse {
    /// The matching job responses (omitted when there are none).
    #[serde(
        rename = "JobResponses",
        alias = "job_responses",
        default,
        skip_serializing_if = "Vec::is_empty"
    )]
    pub job_responses: Vec<Box<RawValue>>,
    /// The `ReturnStatus` bit mask.
    #[serde(rename = "ReturnStatus", alias = "return_status")]
    pub return_status: u64,
}
typed_as!(
    ByStateResponse,
    mj::RequestJobResponseByJobOrderStateResponse
);

/// The status event sent on every transition:
/// `{"JobOrder":…,"JobState":[…]}` plus `JobResponse` when one exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StatusEvent {
    /// The job order as stored.
    #[serde(rename = "JobOrder", alias = "job_order")]
    pub job_order: Box<RawValue>,
    /// The new state.
    #[serde(rename = "JobState", alias = "job_state")]
    pub job_state: Vec<StateEntry>,
    /// The job response, when one exists.
    #[serde(
        rename = "JobResponse",
        alias = "job_response",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub job_response: Option<Box<RawValue>>,
}
typed_as!(StatusEvent, j::ISA95JobOrderStatusEventType);

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn raw(v: &Value) -> Box<RawValue> {
        serde_json::value::to_raw_value(v).unwrap()
    }

    fn response() -> Value {
        json!({
            "JobResponseID": "r1",
            "JobOrderID": "j1",
            "JobState": [{"StateText": {"Locale": "en", "Text": "Ended"}, "StateNumber": 5}]
        })
    }

    #[test]
    fn the_status_event_has_the_generated_events_shape() {
        let ev = StatusEvent {
            job_order: raw(&json!({"JobOrderID": "j1"})),
            job_state: crate::jobs::JobState::new(crate::jobs::MainState::Running, None).to_wire(),
            job_response: Some(raw(&response())),
        };
        let text = serde_json::to_string(&ev).unwrap();
        let typed: j::ISA95JobOrderStatusEventType = serde_json::from_str(&text).unwrap();
        assert_eq!(typed.job_order.job_order_id, "j1");
        assert_eq!(
            serde_json::to_value(&typed).unwrap(),
            serde_json::from_str::<Value>(&text).unwrap()
        );
        // Without a response the field is omitted, not null.
        let ev = StatusEvent {
            job_response: None,
            ..ev
        };
        assert!(!serde_json::to_string(&ev).unwrap().contains("JobResponse"));
    }

    #[test]
    fn query_replies_have_the_generated_shapes() {
        let r = ByIdResponse {
            job_response: Some(raw(&response())),
            return_status: 1,
        };
        let _: mj::RequestJobResponseByJobOrderIDResponse =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        let r = ByStateResponse {
            job_responses: vec![raw(&response())],
            return_status: 1,
        };
        let _: mj::RequestJobResponseByJobOrderStateResponse =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        let empty = ByStateResponse {
            job_responses: Vec::new(),
            return_status: 1,
        };
        assert_eq!(
            serde_json::to_string(&empty).unwrap(),
            r#"{"ReturnStatus":1}"#
        );
    }

    #[test]
    fn requests_route_by_the_contracts_types() {
        assert_eq!(
            StoreRequest::TYPE,
            "org.opcfoundation.ISA95-JOBCONTROL_V2.Store.v2"
        );
        assert_eq!(
            StoreRequest::DATASCHEMA,
            "https://aschamberger.github.com/schemas/UA/ISA95-JOBCONTROL_V2/v2.0.0/#/$defs/StoreCall"
        );
        assert_eq!(
            <StoreResponse as EventType>::DATASCHEMA,
            "https://aschamberger.github.com/schemas/UA/ISA95-JOBCONTROL_V2/v2.0.0/#/$defs/StoreResponse"
        );
        assert_eq!(
            ClearRequest::TYPE,
            "org.opcfoundation.ISA95-JOBCONTROL_V2.Clear.v2"
        );
        assert_eq!(
            ByIdRequest::TYPE,
            "org.opcfoundation.Machinery.Jobs.RequestJobResponseByJobOrderID.v1"
        );
        assert_eq!(
            ByStateResponse::DATASCHEMA,
            "https://aschamberger.github.com/schemas/UA/Machinery/Jobs/v1.0.1/#/$defs/RequestJobResponseByJobOrderStateResponse"
        );
        assert_eq!(
            StatusEvent::TYPE,
            "org.opcfoundation.ISA95-JOBCONTROL_V2.ISA95JobOrderStatusEventType.v2"
        );
        // Lenient reading: missing fields are not decoding errors.
        let r: StoreRequest = serde_json::from_str("{}").unwrap();
        assert!(r.job_order.is_none());
        let r: StartRequest = serde_json::from_str(r#"{"job_order_id":"x"}"#).unwrap();
        assert_eq!(r.job_order_id.as_deref(), Some("x"));
    }
}
