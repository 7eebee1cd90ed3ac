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

/// Payload structs in the wire's convention: each field PascalCase on the
/// wire with its snake_case name accepted too; a field given a
/// `skip_serializing_if` function defaults when missing and is left out
/// when it says so. The struct's attributes (docs, derives) are given; its
/// CloudEvent type and schema are those of the generated `$generated`.
macro_rules! wire_struct {
    ($(
        $(#[$meta:meta])*
        $name:ident as $generated:ty {
            $(
                $(#[$doc:meta])*
                $field:ident: $ty:ty = $wire:literal | $alias:literal $(, skip if $skip:literal)?;
            )*
        }
    )*) => {$(
        $(#[$meta])*
        pub struct $name {
            $(
                $(#[$doc])*
                #[serde(rename = $wire, alias = $alias $(, default, skip_serializing_if = $skip)?)]
                pub $field: $ty,
            )*
        }
        typed_as!($name, $generated);
    )*};
}

/// Requests of the ISA95 methods: one field (the job order, or its id) and
/// an optional comment, all optional (read leniently).
macro_rules! calls {
    (
        #[doc = $doc:literal]
        $field:ident: $ty:ty = $wire:literal | $alias:literal;
        $($method:literal: $name:ident as $generated:ident,)*
    ) => {
        $(
            wire_struct! {
                #[doc = concat!("`", $method, "` request.")]
                #[derive(Debug, Clone, Default, Serialize, Deserialize)]
                $name as j::$generated {
                    #[doc = $doc]
                    $field: Option<$ty> = $wire | $alias, skip if "Option::is_none";
                    /// Optional comment (`LocalizedText`, or a list of them).
                    comment: Option<Value> = "Comment" | "comment", skip if "Option::is_none";
                }
            }
        )*
    };
}

calls! {
    /// The job order (checked against `ISA95JobOrderDataType`).
    job_order: Value = "JobOrder" | "job_order";
    "Store": StoreRequest as StoreCall,
    "StoreAndStart": StoreAndStartRequest as StoreAndStartCall,
    "Update": UpdateRequest as UpdateCall,
}

calls! {
    /// The job order id.
    job_order_id: String = "JobOrderID" | "job_order_id";
    "Start": StartRequest as StartCall,
    "RevokeStart": RevokeStartRequest as RevokeStartCall,
    "Pause": PauseRequest as PauseCall,
    "Resume": ResumeRequest as ResumeCall,
    "Stop": StopRequest as StopCall,
    "Abort": AbortRequest as AbortCall,
    "Cancel": CancelRequest as CancelCall,
    "Clear": ClearRequest as ClearCall,
}

wire_struct! {
    /// `RequestJobResponseByJobOrderID` request.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    ByIdRequest as mj::RequestJobResponseByJobOrderIDCall {
        /// The job order id.
        job_order_id: Option<String> = "JobOrderID" | "job_order_id", skip if "Option::is_none";
    }

    /// `RequestJobResponseByJobOrderID` reply.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    ByIdResponse as mj::RequestJobResponseByJobOrderIDResponse {
        /// The stored job response, if any.
        job_response: Option<Box<RawValue>> = "JobResponse" | "job_response", skip if "Option::is_none";
        /// The `ReturnStatus` bit mask.
        return_status: u64 = "ReturnStatus" | "return_status";
    }

    /// `RequestJobResponseByJobOrderState` request.
    #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    ByStateRequest as mj::RequestJobResponseByJobOrderStateCall {
        /// The state to match exactly (outer state first).
        job_order_state: Option<Vec<StateEntry>> = "JobOrderState" | "job_order_state", skip if "Option::is_none";
    }

    /// `RequestJobResponseByJobOrderState` reply.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    ByStateResponse as mj::RequestJobResponseByJobOrderStateResponse {
        /// The matching job responses (omitted when there are none).
        job_responses: Vec<Box<RawValue>> = "JobResponses" | "job_responses", skip if "Vec::is_empty";
        /// The `ReturnStatus` bit mask.
        return_status: u64 = "ReturnStatus" | "return_status";
    }

    /// The status event sent on every transition:
    /// `{"JobOrder":…,"JobState":[…]}` plus `JobResponse` when one exists.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    StatusEvent as j::ISA95JobOrderStatusEventType {
        /// The job order as stored.
        job_order: Box<RawValue> = "JobOrder" | "job_order";
        /// The new state.
        job_state: Vec<StateEntry> = "JobState" | "job_state";
        /// The job response, when one exists.
        job_response: Option<Box<RawValue>> = "JobResponse" | "job_response", skip if "Option::is_none";
    }
}

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
