//! JSON Schema validation of incoming payloads at the edge (wire contract
//! §6, issue #12).
//!
//! A [`SchemaSet`] holds JSON Schema documents registered by their `$id` and
//! one compiled validator per payload schema they define: every `$defs`
//! entry as `{$id}#/$defs/{Name}` (the `dataschema` URIs of the generated
//! models, e.g. `…/ISA95-JOBCONTROL_V2/v2.0.0/#/$defs/StoreCall`), and the
//! document itself under its `$id` when its root is a schema (the SFC recipe
//! format). [`SchemaSet::builtin`] has every document the station ships
//! (the codegen's NodeSet schemas and `schemas/`), compiled once per
//! process; a plant app adds its own with [`SchemaSet::with_documents`] and
//! hands the set to its processor
//! ([`ProcessorBuilder::schemas`](crate::ProcessorBuilder::schemas)).
//!
//! [`Processor::dispatch`](crate::Processor::dispatch) validates a payload
//! before its handler runs, whatever transport delivered it: a violation is
//! a terminal `PAYLOAD_INVALID` [`HandlerError`](crate::HandlerError) with
//! every violation in its context (instance path → what was expected), which
//! the transport answers and dead-letters; nothing is changed.
//!
//! ```
//! use microdcs::validation::SchemaSet;
//! use microdcs::models::isa95_jobcontrol::StoreCall;
//! use microdcs::EventType;
//! use serde_json::json;
//!
//! let schemas = SchemaSet::builtin();
//! let bad = json!({"JobOrder": {"JobOrderID": 7, "Priority": "high"}});
//! let violations = schemas.check(StoreCall::DATASCHEMA, &bad).unwrap_err();
//! let paths: Vec<&str> = violations.iter().map(|v| v.path.as_str()).collect();
//! assert_eq!(paths, ["/JobOrder/JobOrderID", "/JobOrder/Priority"]);
//! assert!(schemas.check(StoreCall::DATASCHEMA, &json!({"JobOrder": {"JobOrderID": "J1"}})).is_ok());
//! ```

mod schemas;
mod violation;

pub use schemas::{SchemaError, SchemaSet};
pub use violation::{Violation, Violations, MAX_LISTED};
