//! Generates `src/models.rs`'s content from the OPC UA NodeSets in
//! `companion-specs/` and the JSON Schemas in `schemas/` (see the
//! `microdcs-codegen` crate). Output: `OUT_DIR/models.rs` and
//! `OUT_DIR/schemas/*.schema.json`.

use std::path::PathBuf;

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        panic!("OUT_DIR is not set; build.rs must run under cargo");
    };
    let result = microdcs_codegen::Generator::new()
        .nodeset(root.join("companion-specs/opc.ua.isa95-jobcontrol.nodeset2.xml"))
        .nodeset(root.join("companion-specs/Opc.Ua.Machinery.Jobs.Nodeset2.xml"))
        .schema_dir(root.join("schemas"))
        .crate_path("crate")
        // Values the specifications allow to be null although the NodeSet
        // declares them mandatory (wire contract §3):
        // "BrowsePath … shall be null when the top-level state is represented";
        // the wire contract's state lists carry no BrowsePath at all.
        .nullable_field("ISA95StateDataType", "BrowsePath")
        // "payload {JobOrder, JobState} plus JobResponse when one exists".
        .nullable_field("ISA95JobOrderStatusEventType", "JobResponse")
        // "{JobResponse?, ReturnStatus}": no response for an unknown id.
        .nullable_field("RequestJobResponseByJobOrderIDResponse", "JobResponse")
        .write(PathBuf::from(out_dir));
    if let Err(error) = result {
        panic!("generating the models failed: {error}");
    }
}
