//! Golden-file tests: a small NodeSet and a small hand-written schema in
//! `tests/fixtures/`, the expected JSON Schema and Rust source in
//! `tests/golden/`. Run with `UPDATE_GOLDEN=1` to rewrite the expected files
//! after an intended change, then review the diff.

use std::path::{Path, PathBuf};

use microdcs_codegen::{Generator, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn generate() -> Output {
    let result = Generator::new()
        .nodeset(fixtures().join("mini.nodeset2.xml"))
        .schema_dir(fixtures().join("schemas"))
        .schema_base_uri("https://example.com/schemas/")
        .crate_path("::microdcs")
        .nullable_field("MiniItemDataType", "Path")
        .generate();
    match result {
        Ok(output) => output,
        Err(error) => panic!("generation failed: {error}"),
    }
}

fn check(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        if let Err(error) = std::fs::write(&path, actual) {
            panic!("cannot write {}: {error}", path.display());
        }
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        let first = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or(expected.lines().count().min(actual.lines().count()));
        panic!(
            "{} differs from the generated output (first difference at line {}):\n  expected: {:?}\n  actual:   {:?}\nrun with UPDATE_GOLDEN=1 to accept the new output",
            path.display(),
            first + 1,
            expected.lines().nth(first),
            actual.lines().nth(first),
        );
    }
}

#[test]
fn json_schema_matches_golden_file() {
    let output = generate();
    let doc = output.schemas.iter().find(|s| s.module == "mini");
    let Some(doc) = doc else {
        panic!(
            "no document for module `mini`: {:?}",
            output.schemas.iter().map(|s| &s.module).collect::<Vec<_>>()
        );
    };
    assert_eq!(doc.id, "https://example.com/schemas/UA/Mini_V1/v1.2.0/");
    assert_eq!(doc.file_name, "mini.schema.json");
    check("mini.schema.json", &doc.json);
}

#[test]
fn rust_source_matches_golden_file() {
    check("models.rs", &generate().rust);
}

#[test]
fn hand_written_schemas_are_copied_unchanged() {
    let output = generate();
    let Some(doc) = output.schemas.iter().find(|s| s.module == "mini_config") else {
        panic!("no document for module `mini_config`");
    };
    let original = std::fs::read_to_string(fixtures().join("schemas/mini-config.schema.json"))
        .unwrap_or_default();
    assert_eq!(doc.json, original);
    assert_eq!(doc.file_name, "mini_config.schema.json");
}

#[test]
fn generation_is_deterministic() {
    assert_eq!(generate().rust, generate().rust);
}

#[test]
fn write_puts_models_and_schemas_into_the_output_directory() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("golden-write");
    let _ = std::fs::remove_dir_all(&dir);
    let result = Generator::new()
        .nodeset(fixtures().join("mini.nodeset2.xml"))
        .schema_base_uri("https://example.com/schemas/")
        .nullable_field("MiniItemDataType", "Path")
        .write(&dir);
    if let Err(error) = result {
        panic!("{error}");
    }
    assert!(dir.join("models.rs").is_file());
    assert!(dir.join("schemas/mini.schema.json").is_file());
}
