//! Generates the Rust types of this application's CloudEvent payloads from
//! the JSON Schemas in `schemas/` (see the `microdcs-codegen` crate). Every
//! `$defs` entry becomes a type; one with `x-cloudevent-type` implements
//! `microdcs::EventType`, one with `x-response-dataschema` also
//! `microdcs::MethodCall`. Output: `OUT_DIR/models.rs`, included by
//! `src/lib.rs`.

fn main() {
    let Some(out_dir) = std::env::var_os("OUT_DIR") else {
        panic!("OUT_DIR is not set; build.rs must run under cargo");
    };
    let result = microdcs_codegen::Generator::new()
        .schema_dir("schemas")
        .crate_path("::microdcs")
        .write(out_dir);
    if let Err(error) = result {
        panic!("generating the models from schemas/ failed: {error}");
    }
}
