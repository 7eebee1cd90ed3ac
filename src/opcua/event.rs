//! The job order status event of the OPC UA face: ISA95-JOBCONTROL's
//! `ISA95JobOrderStatusEventType` (`i=1006` in
//! `http://opcfoundation.org/UA/ISA95-JOBCONTROL_V2/`, OPC 10031-4 §7.2.6),
//! raised on a scope's `JobOrderControl` object for every job change in the
//! scope's change stream (`follow`).
//!
//! Its three properties carry what the MQTT MES gets on
//! `{prefix}/{scope}/events` (`crate::jobs::manager::status_event`):
//! `JobOrder` (`ISA95JobOrderDataType`), `JobResponse`
//! (`ISA95JobResponseDataType`, empty while the job has none) and
//! `JobState` (`ISA95StateDataType[]`, outer state first).
//!
//! The type is abstract in the NodeSet and neither companion specification
//! defines a concrete subtype; the event is raised with this type anyway,
//! as issue #13 asks (a client's filter "of type
//! ISA95JobOrderStatusEventType" matches it).

use opcua::nodes::BaseEventType;
use opcua::types::{ByteString, DateTime, LocalizedText, NodeId, UAString, Variant};

/// `ISA95JobOrderStatusEventType` (abstract, see the module documentation).
/// Field names map to the browse names `JobOrder`, `JobResponse`,
/// `JobState`.
#[derive(opcua::Event)]
#[opcua(
    identifier = "i=1006",
    namespace = "http://opcfoundation.org/UA/ISA95-JOBCONTROL_V2/"
)]
pub(crate) struct JobOrderStatusEvent {
    base: BaseEventType,
    own_namespace_index: u16,
    job_order: Variant,
    job_response: Variant,
    job_state: Variant,
}

/// The event's own fields, already encoded (`Variant::Empty` when a value
/// is absent or could not be encoded).
#[derive(Debug, Clone, Default)]
pub(crate) struct StatusFields {
    /// `ISA95JobOrderDataType` as an extension object.
    pub(crate) job_order: Variant,
    /// `ISA95JobResponseDataType` as an extension object, or empty.
    pub(crate) job_response: Variant,
    /// `ISA95StateDataType[]`.
    pub(crate) job_state: Variant,
}

/// Event severity: a job status change is information (OPC UA Part 5:
/// 1-200 is "low").
const SEVERITY: u16 = 100;

impl JobOrderStatusEvent {
    /// An event of one change. `jc` is the ISA95-JOBCONTROL namespace
    /// index; `source` the receiver object (`JobOrderControl`) and
    /// `source_name` its name for humans; `event_id` identifies the change
    /// (the same on every replica, so a client of two replicas can tell
    /// duplicates); `time` is when the change was written.
    pub(crate) fn new(
        jc: u16,
        source: NodeId,
        source_name: &str,
        event_id: &str,
        message: &str,
        time: DateTime,
        fields: StatusFields,
    ) -> Self {
        // Built by hand, not by the derive's `new_event`, which panics on
        // an unknown namespace; the index is known here.
        let base = BaseEventType::new(
            Self::event_type_id_from_index(jc),
            ByteString::from(event_id.as_bytes().to_vec()),
            LocalizedText::new("en", message),
            time,
        )
        .set_source_node(source)
        .set_source_name(UAString::from(source_name))
        .set_receive_time(DateTime::now())
        .set_severity(SEVERITY);
        JobOrderStatusEvent {
            base,
            own_namespace_index: jc,
            job_order: fields.job_order,
            job_response: fields.job_response,
            job_state: fields.job_state,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::nodes::Event;
    use opcua::types::{AttributeId, NumericRange, ObjectTypeId, QualifiedName};

    /// A client's select clause (`BaseEventType` + browse path, as asyncua
    /// sends it) finds the JC fields and the base fields.
    #[test]
    fn select_clauses_find_the_status_fields() {
        let ev = JobOrderStatusEvent::new(
            4,
            NodeId::new(5, "line-1/JobManagement/JobOrderControl"),
            "line-1",
            "line-1:1-0",
            "job j1 is Running",
            DateTime::now(),
            StatusFields {
                job_order: Variant::from("order"),
                job_response: Variant::Empty,
                job_state: Variant::from(vec!["Running".to_owned()]),
            },
        );
        let get = |type_id: NodeId, path: &[QualifiedName]| {
            ev.get_field(&type_id, AttributeId::Value, &NumericRange::None, path)
        };
        let base: NodeId = ObjectTypeId::BaseEventType.into();
        assert_eq!(
            get(base.clone(), &[QualifiedName::new(4, "JobOrder")]),
            Variant::from("order")
        );
        assert_eq!(
            get(
                NodeId::new(4, 1006u32),
                &[QualifiedName::new(4, "JobOrder")]
            ),
            Variant::from("order")
        );
        assert_eq!(
            get(base.clone(), &[QualifiedName::new(4, "JobResponse")]),
            Variant::Empty
        );
        assert_eq!(
            get(base.clone(), &[QualifiedName::new(0, "EventType")]),
            Variant::from(NodeId::new(4, 1006u32))
        );
        assert_eq!(
            get(base, &[QualifiedName::new(0, "SourceNode")]),
            Variant::from(NodeId::new(5, "line-1/JobManagement/JobOrderControl"))
        );
        assert_eq!(ev.event_type_id(), &NodeId::new(4, 1006u32));
    }
}
