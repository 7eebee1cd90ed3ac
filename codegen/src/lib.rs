//! # microdcs-codegen
//!
//! Build-time generator for [microdcs](https://example.invalid/microdcs):
//! OPC UA NodeSet2 XML files and hand-written JSON Schemas in, one Rust
//! source file and a set of JSON Schema documents out.
//!
//! From every NodeSet it produces
//!
//! - a **JSON Schema document** with `$defs` for every data type
//!   (structures, enumerations, option sets), a `<Method>Call` and
//!   `<Method>Response` per method (from the `InputArguments` and
//!   `OutputArguments`), and one def per event type (its own properties).
//!   Each Call/Response/event def carries `x-cloudevent-type`,
//!   `x-cloudevent-dataschema` and, for calls, `x-response-dataschema`;
//! - **NodeId and browse-name constants** of its data types, object types,
//!   event types and methods;
//! - **state machine tables** of its `FiniteStateMachineType`s, read from the
//!   `FromState`/`ToState`/`HasCause`/`HasEffect`/`HasSubStateMachine`
//!   references, substate machines flattened in.
//!
//! All documents — generated and hand-written — are bundled into one root
//! schema (cross-document `$ref`s rewritten) and turned into Rust types by a
//! single [typify](https://docs.rs/typify) run. The types serialize with the
//! exact JSON names, also accept snake_case input (`job_order_id` for
//! `JobOrderID`), and omit absent optional fields. Every def with
//! `x-cloudevent-type` implements `microdcs::envelope::EventType`; a def
//! with `x-response-dataschema` implements `microdcs::envelope::MethodCall`.
//!
//! # Example: a plant application's `build.rs`
//!
//! ```no_run
//! // build.rs
//! # fn build_script() {
//! let out_dir = std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR");
//! let result = microdcs_codegen::Generator::new()
//!     // The OPC UA models the plant's own schemas refer to.
//!     .nodeset("companion-specs/opc.ua.isa95-jobcontrol.nodeset2.xml")
//!     // The plant's own CloudEvent payloads (`*.json`, each with `$id`
//!     // and `$defs`; `x-cloudevent-type` on payload types).
//!     .schema_dir("schemas")
//!     .crate_path("::microdcs")
//!     .write(out_dir);
//! if let Err(error) = result {
//!     panic!("model generation failed: {error}");
//! }
//! # }
//! ```
//!
//! and in the crate:
//!
//! ```ignore
//! #[allow(missing_docs, clippy::all, clippy::pedantic, rustdoc::all)]
//! mod models {
//!     include!(concat!(env!("OUT_DIR"), "/models.rs"));
//! }
//! ```
//!
//! [`Generator::write`] writes `models.rs` and `schemas/<module>.schema.json`
//! and prints `cargo:rerun-if-changed` for every input. The generated code
//! refers to `serde`, `serde_json`, `chrono` (with `serde`) and `uuid` (with
//! `serde`), which the including crate must depend on.
//!
//! # Output layout
//!
//! ```text
//! pub mod types { … every type, flat … ; EventType/MethodCall impls }
//! pub mod <module> {            // one per document
//!     pub const SCHEMA_ID, SCHEMA, CLOUDEVENT_TYPES;
//!     pub const NAMESPACE_URI, MODEL_VERSION, PUBLICATION_DATE;   // NodeSets
//!     pub use super::types::<Type> [as <$defs name>];  …
//!     pub mod node_ids { pub const <BROWSE_NAME>: &str = "ns=1;i=…"; … }
//!     pub mod browse_names { … }
//!     pub mod state_machines { pub const <TYPE_NAME>: StateMachineDef = …; }
//! }
//! ```
//!
//! # Naming
//!
//! - Module of a NodeSet: the model URI's path without a leading `UA` and a
//!   trailing `_V<n>`, snake_case (`…/UA/ISA95-JOBCONTROL_V2/` →
//!   `isa95_jobcontrol`, `…/UA/Machinery/Jobs/` → `machinery_jobs`); of a
//!   schema file: its name without `.schema.json` (`sfc-recipe.schema.json`
//!   → `sfc_recipe`).
//! - `$id` of a NodeSet's document: [`DEFAULT_SCHEMA_BASE_URI`] (or
//!   [`Generator::schema_base_uri`]) + the model URI's path + `v<Version>/`.
//! - CloudEvent type: the model URI's reversed host and path (without
//!   `UA`) + `.<Method or event type>.v<major version>`, e.g.
//!   `org.opcfoundation.ISA95-JOBCONTROL_V2.Store.v2`; request and reply of a
//!   method share it, only the dataschema (`…#/$defs/StoreCall` /
//!   `…#/$defs/StoreResponse`) differs.
//! - Rust types keep the `$defs` name when it is a valid identifier
//!   (`ISA95JobOrderDataType`, `RequestJobResponseByJobOrderIDCall`); fields
//!   are snake_case. A name two documents define differently is prefixed with
//!   the PascalCase module name in [`types`](#output-layout) only.
//!
//! # Mapping rules
//!
//! Namespace-0 types map as listed in the `builtins` module source (String →
//! string, 64-bit integers → JSON numbers with their exact range, DateTime →
//! date-time string, LocalizedText → `{Locale?, Text?}`, RelativePath →
//! string in OPC UA text form, BaseDataType → any JSON value, …). A type
//! without a deliberate mapping is an [`Error::UnsupportedDataType`] naming
//! it and where it is used. `IsOptional="true"` → optional; `ValueRank` 1
//! (or n) → array (n-dimensional); method arguments that are arrays are
//! optional; event properties are required when `Mandatory`; see
//! [`Generator::nullable_field`] for the rest.

mod address_space;
mod builtins;
mod bundle;
mod error;
mod generator;
mod naming;
mod nodeset;
mod opcua_schema;
mod postprocess;
mod rust;
mod state_machine;

pub use error::{Error, Result};
pub use generator::{Generator, Output, SchemaFile, DEFAULT_SCHEMA_BASE_URI};
pub use state_machine::{State, StateMachine, Transition};
