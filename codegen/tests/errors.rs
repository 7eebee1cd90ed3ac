//! Bad input fails with an error that names the culprit, never with a
//! panic or a silent fallback.

use std::path::{Path, PathBuf};

use microdcs_codegen::{Error, Generator};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Writes a variant of the mini NodeSet with `from` replaced by `to`.
fn variant(test: &str, from: &str, to: &str) -> PathBuf {
    let text = std::fs::read_to_string(fixture("mini.nodeset2.xml")).unwrap_or_default();
    assert!(text.contains(from), "fixture does not contain {from:?}");
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("errors")
        .join(test);
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join("mini.nodeset2.xml");
    if let Err(error) = std::fs::write(&path, text.replacen(from, to, 1)) {
        panic!("{error}");
    }
    path
}

fn schema_dir(test: &str, file: &str, text: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("errors")
        .join(test)
        .join("schemas");
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::create_dir_all(&dir);
    if let Err(error) = std::fs::write(dir.join(file), text) {
        panic!("{error}");
    }
    dir
}

fn message(result: Result<impl Sized, Error>) -> String {
    match result {
        Ok(_) => panic!("expected an error"),
        Err(error) => error.to_string(),
    }
}

fn mini() -> Generator {
    Generator::new().nullable_field("MiniItemDataType", "Path")
}

#[test]
fn unmapped_builtin_type_is_an_error_naming_type_and_field() {
    let path = variant(
        "unmapped",
        r#"<Field Name="Count" DataType="UInt64" />"#,
        r#"<Field Name="Count" DataType="i=256" />"#,
    );
    let text = message(mini().nodeset(path).generate());
    assert!(text.contains("i=256"), "{text}");
    assert!(text.contains("MiniItemDataType.Count"), "{text}");
    assert!(text.contains("unsupported OPC UA data type"), "{text}");
}

#[test]
fn data_type_of_a_missing_nodeset_is_an_error() {
    let path = variant(
        "missing-nodeset",
        r#"<Field Name="Kind" DataType="MiniKind" />"#,
        r#"<Field Name="Kind" DataType="nsu=http://example.com/Other/;i=1" />"#,
    );
    let text = message(mini().nodeset(path).generate());
    assert!(text.contains("http://example.com/Other/"), "{text}");
    assert!(text.contains("MiniItemDataType.Kind"), "{text}");
}

#[test]
fn machinery_jobs_without_isa95_is_an_error() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../companion-specs");
    let text = message(
        Generator::new()
            .nodeset(dir.join("Opc.Ua.Machinery.Jobs.Nodeset2.xml"))
            .generate(),
    );
    assert!(text.contains("ISA95-JOBCONTROL_V2"), "{text}");
}

#[test]
fn malformed_xml_is_an_error_with_the_file_name() {
    let path = variant("malformed", "</UANodeSet>", "</UANodeSet");
    let text = message(mini().nodeset(&path).generate());
    assert!(text.contains("mini.nodeset2.xml"), "{text}");
}

#[test]
fn missing_state_number_is_an_error_naming_the_state() {
    let path = variant(
        "state-number",
        r#"<UAVariable NodeId="ns=1;i=6011" BrowseName="StateNumber""#,
        r#"<UAVariable NodeId="ns=1;i=6011" BrowseName="Number""#,
    );
    let text = message(mini().nodeset(path).generate());
    assert!(
        text.contains("Idle") && text.contains("StateNumber"),
        "{text}"
    );
}

#[test]
fn unused_nullable_override_is_an_error() {
    let text = message(
        mini()
            .nodeset(fixture("mini.nodeset2.xml"))
            .nullable_field("MiniItemDataType", "NoSuchField")
            .generate(),
    );
    assert!(text.contains("NoSuchField"), "{text}");
}

#[test]
fn unresolved_schema_reference_is_an_error_naming_it() {
    let dir = schema_dir(
        "unresolved",
        "bad.schema.json",
        r##"{"$id": "https://example.com/bad/", "$defs": {"A": {"$ref": "https://example.com/nowhere/#/$defs/B"}}}"##,
    );
    let text = message(
        mini()
            .nodeset(fixture("mini.nodeset2.xml"))
            .schema_dir(dir)
            .generate(),
    );
    assert!(
        text.contains("https://example.com/nowhere/#/$defs/B"),
        "{text}"
    );
    assert!(text.contains("bad.schema.json"), "{text}");
}

#[test]
fn schema_without_id_is_an_error() {
    let dir = schema_dir("no-id", "x.schema.json", r#"{"$defs": {}}"#);
    let text = message(Generator::new().schema_dir(dir).generate());
    assert!(text.contains("$id"), "{text}");
}

#[test]
fn schema_with_a_type_at_the_root_is_an_error() {
    let dir = schema_dir(
        "root-type",
        "x.schema.json",
        r#"{"$id": "urn:x/", "type": "object"}"#,
    );
    let text = message(Generator::new().schema_dir(dir).generate());
    assert!(text.contains("$defs"), "{text}");
}

#[test]
fn response_without_cloudevent_type_is_an_error() {
    let dir = schema_dir(
        "response",
        "x.schema.json",
        r##"{"$id": "urn:x/", "$defs": {
            "Call": {"type": "object", "x-cloudevent-type": "x.Call.v1", "x-response-dataschema": "urn:x/#/$defs/Reply"},
            "Reply": {"type": "object"}
        }}"##,
    );
    let text = message(Generator::new().schema_dir(dir).generate());
    assert!(
        text.contains("Reply") && text.contains("x-cloudevent-type"),
        "{text}"
    );
}
