//! Types generated at build time from the OPC UA NodeSets in
//! `companion-specs/` and the JSON Schemas in `schemas/`.
//!
//! `build.rs` runs the `microdcs-codegen` crate
//! and this module `include!`s its output; nothing here is written by hand
//! except the table types of the state machines and the return status bits.
//!
//! # Layout
//!
//! One module per schema document, each re-exporting its types under their
//! `$defs` names and carrying the document itself ([`SCHEMA`](isa95_jobcontrol::SCHEMA),
//! [`SCHEMA_ID`](isa95_jobcontrol::SCHEMA_ID)) and the CloudEvent types it
//! defines ([`CLOUDEVENT_TYPES`](isa95_jobcontrol::CLOUDEVENT_TYPES)):
//!
//! - [`isa95_jobcontrol`]: ISA95-JOBCONTROL_V2 2.0.0 (OPC 10031-4) — the
//!   ISA-95 data types (`ISA95JobOrderDataType`, …), one `<Method>Call` /
//!   `<Method>Response` pair per method (`StoreCall`/`StoreResponse`, …,
//!   CloudEvent type `org.opcfoundation.ISA95-JOBCONTROL_V2.<Method>.v2`),
//!   the status event `ISA95JobOrderStatusEventType`, NodeIds
//!   ([`node_ids`](isa95_jobcontrol::node_ids)), browse names and the
//!   [`state_machines`](isa95_jobcontrol::state_machines).
//! - [`machinery_jobs`]: Machinery Jobs 1.0.1 (OPC 40001-3) — its data types
//!   and `RequestJobResponseByJobOrderID`/`…ByJobOrderState` calls
//!   (`org.opcfoundation.Machinery.Jobs.<Method>.v1`).
//! - [`jobcontrol_config`]: the station configuration payloads
//!   (`com.github.aschamberger.ISA95-JOBCONTROL_V2.config.*.v1`).
//! - [`mes_publishing`]: the retained MES payloads (state index, order, result).
//! - [`sfc_recipe`]: the SFC recipe format.
//! - [`types`]: all of the above in one flat namespace (where two documents
//!   define a name differently, the flat name has the module as prefix, e.g.
//!   `MachineryJobsRequestJobResponseByJobOrderIDCall`).
//!
//! Every payload type with a CloudEvent type implements
//! [`EventType`](crate::EventType); every `<Method>Call` implements
//! [`MethodCall`](crate::MethodCall) with its `<Method>Response`.
//!
//! # JSON representation
//!
//! Field names are the OPC UA names (`JobOrderID`, `StateText`, …) on
//! output; snake_case (`job_order_id`) is accepted on input too. Absent
//! optional fields are omitted, never `null`; optional arrays are
//! `Option<Vec<_>>`, so `[]` and absent stay distinct. 64-bit integers are
//! JSON numbers (`{"ReturnStatus":4294967296}`), `DateTime` is RFC 3339,
//! `LocalizedText` is `{"Locale"?, "Text"?}`, an OPC UA `BaseDataType` value
//! (e.g. `ISA95ParameterDataType.Value`) is any JSON value. The
//! `microdcs-codegen` crate documents the full mapping.
//!
//! ```
//! use microdcs::models::isa95_jobcontrol::{ISA95StateDataType, StoreCall};
//! use microdcs::EventType;
//!
//! let call: StoreCall = serde_json::from_str(r#"{"JobOrder":{"JobOrderID":"J1"}}"#)?;
//! assert_eq!(call.job_order.job_order_id, "J1");
//! assert_eq!(StoreCall::TYPE, "org.opcfoundation.ISA95-JOBCONTROL_V2.Store.v2");
//!
//! let state: Vec<ISA95StateDataType> = serde_json::from_str(
//!     r#"[{"StateText":{"Locale":"en","Text":"AllowedToStart"},"StateNumber":2}]"#,
//! )?;
//! assert_eq!(state[0].state_number, 2);
//! # Ok::<(), serde_json::Error>(())
//! ```

#[allow(
    missing_docs,
    unreachable_pub,
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    rustdoc::broken_intra_doc_links,
    rustdoc::bare_urls,
    rustdoc::invalid_html_tags,
    rustdoc::invalid_rust_codeblocks
)]
mod generated {
    include!(concat!(env!("OUT_DIR"), "/models.rs"));
}

pub use generated::*;

/// A state machine type read from a NodeSet: its states and transitions,
/// those of its substate machines included (see
/// [`isa95_jobcontrol::state_machines`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateMachineDef {
    /// Browse name of the state machine type.
    pub name: &'static str,
    /// NodeId of the type as written in its NodeSet (`ns=1;i=1008`).
    pub node_id: &'static str,
    /// Top-level states first, then the substates, grouped by parent.
    pub states: &'static [StateDef],
    /// Top-level transitions first, then those of the substate machines.
    pub transitions: &'static [TransitionDef],
}

/// One state of a [`StateMachineDef`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateDef {
    /// Browse name, e.g. `AllowedToStart`; also the `StateText` of
    /// `ISA95StateDataType`.
    pub name: &'static str,
    /// `StateNumber`, the `StateNumber` of `ISA95StateDataType`.
    pub number: u32,
    /// For a substate, the path of its enclosing state (`AllowedToStart`;
    /// deeper ones `A/B`); `None` for a top-level state.
    pub parent: Option<&'static str>,
    /// Whether it is an `InitialStateType`.
    pub initial: bool,
    /// NodeId of the state as written in its NodeSet.
    pub node_id: &'static str,
}

/// One transition of a [`StateMachineDef`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransitionDef {
    /// Browse name, e.g. `FromAllowedToStartToRunning`.
    pub name: &'static str,
    /// `TransitionNumber`.
    pub number: u32,
    /// The enclosing state for a transition of a substate machine (as in
    /// [`StateDef::parent`]); `None` at the top level.
    pub parent: Option<&'static str>,
    /// Name of the `FromState`.
    pub from: &'static str,
    /// Name of the `ToState`.
    pub to: &'static str,
    /// The methods that cause it (`HasCause`), e.g. `["Start"]`; empty for
    /// transitions the server makes on its own (`FromAllowedToStartToRunning`).
    pub causes: &'static [&'static str],
    /// The event types it generates (`HasEffect`).
    pub effects: &'static [&'static str],
    /// NodeId of the transition as written in its NodeSet.
    pub node_id: &'static str,
}

impl StateMachineDef {
    /// The state `name` directly below `parent` (`None`: top level).
    #[must_use]
    pub fn state(&self, parent: Option<&str>, name: &str) -> Option<&'static StateDef> {
        self.states
            .iter()
            .find(|s| s.parent == parent && s.name == name)
    }

    /// The transitions of the machine level `parent` leaving `from`.
    pub fn transitions_from<'a>(
        &'a self,
        parent: Option<&'a str>,
        from: &'a str,
    ) -> impl Iterator<Item = &'static TransitionDef> + 'a {
        self.transitions
            .iter()
            .filter(move |t| t.parent == parent && t.from == from)
    }
}

/// The job order state machine of ISA95-JOBCONTROL: the six main states of
/// `ISA95JobOrderReceiverObjectType` with the substate machines of its
/// subtype `ISA95JobOrderReceiverSubStatesType` (NotAllowedToStart and
/// AllowedToStart {Waiting, Ready, Loaded}, Interrupted {Held, Suspended},
/// Ended {Completed, Closed}). InitialState/EndState and the
/// Store/StoreAndStart/Cancel/Clear transitions are not in the NodeSet; they
/// come from the specification text and belong to the job management.
pub const JOB_ORDER_STATE_MACHINE: &StateMachineDef =
    &isa95_jobcontrol::state_machines::ISA95_JOB_ORDER_RECEIVER_SUB_STATES_TYPE;

/// Bits of the `ReturnStatus` (UInt64 bit mask) of the ISA95-JOBCONTROL
/// methods (OPC 10031-4 Annex B.2, wire contract §3).
pub mod return_status {
    /// Bit 0: success.
    pub const NO_ERROR: u64 = 1;
    /// Bit 1: the job order id is unknown.
    pub const UNKNOWN_JOB_ORDER_ID: u64 = 1 << 1;
    /// Bit 3: the method is not allowed in the job's current state.
    pub const INVALID_JOB_ORDER_STATUS: u64 = 1 << 3;
    /// Bit 4: an acceptance check failed, or Store of an id that exists.
    pub const UNABLE_TO_ACCEPT_JOB_ORDER: u64 = 1 << 4;
    /// Bit 32: malformed request (missing `JobOrder`, `JobOrderID`, subject,
    /// or an empty state list).
    pub const INVALID_REQUEST: u64 = 1 << 32;
}
