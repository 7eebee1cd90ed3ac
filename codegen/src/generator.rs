//! The public entry point: collect inputs, generate, write.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::address_space::AddressSpace;
use crate::bundle::{self, Doc};
use crate::error::{Error, Result};
use crate::naming;
use crate::nodeset::NodeSet;
use crate::opcua_schema::{self, Nullable};
use crate::rust::{self, DocModule};
use crate::state_machine::{self, StateMachine};

/// Default base of the generated documents' `$id`s (MicroDCS-compatible).
pub const DEFAULT_SCHEMA_BASE_URI: &str = "https://aschamberger.github.com/schemas/";

/// Builder for one generator run. See the [crate docs](crate) for an example.
#[derive(Debug, Clone)]
#[must_use = "a Generator does nothing until `generate` or `write` is called"]
pub struct Generator {
    nodesets: Vec<PathBuf>,
    schema_dirs: Vec<PathBuf>,
    crate_path: String,
    schema_base_uri: String,
    nullable: Vec<Nullable>,
}

impl Default for Generator {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything a run produces.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Output {
    /// The Rust source, to be `include!`d inside a module.
    pub rust: String,
    /// Every JSON Schema document: generated ones and copies of the
    /// hand-written ones, in module order.
    pub schemas: Vec<SchemaFile>,
    /// The state machine tables, as emitted into the Rust source.
    pub state_machines: Vec<StateMachine>,
    /// Every input file and directory (for `cargo:rerun-if-changed`).
    pub inputs: Vec<PathBuf>,
}

/// One JSON Schema document of the output.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SchemaFile {
    /// The Rust module generated for it.
    pub module: String,
    /// Its `$id`.
    pub id: String,
    /// File name under `schemas/` in the output directory: `<module>.schema.json`.
    pub file_name: String,
    /// The document text.
    pub json: String,
}

impl Generator {
    /// A generator with no inputs, emitting paths into `::microdcs`.
    pub fn new() -> Self {
        Self {
            nodesets: Vec::new(),
            schema_dirs: Vec::new(),
            crate_path: "::microdcs".to_owned(),
            schema_base_uri: DEFAULT_SCHEMA_BASE_URI.to_owned(),
            nullable: Vec::new(),
        }
    }

    /// Adds a NodeSet2 XML file. Every NodeSet a loaded one requires (other
    /// than the OPC UA base model, which is built in) must be added too.
    pub fn nodeset(mut self, path: impl Into<PathBuf>) -> Self {
        self.nodesets.push(path.into());
        self
    }

    /// Adds a directory of hand-written JSON Schema documents (`*.json`,
    /// each with a `$id` and its types under `$defs`). They may `$ref` the
    /// generated OPC UA documents by their `$id`.
    pub fn schema_dir(mut self, path: impl Into<PathBuf>) -> Self {
        self.schema_dirs.push(path.into());
        self
    }

    /// The path of the `microdcs` crate in the generated code: `"crate"`
    /// inside microdcs itself, `"::microdcs"` (the default) elsewhere.
    pub fn crate_path(mut self, path: impl Into<String>) -> Self {
        self.crate_path = path.into();
        self
    }

    /// Base URI of the generated documents' `$id`s (default
    /// [`DEFAULT_SCHEMA_BASE_URI`]); the model URI's path and `v<Version>/`
    /// are appended.
    pub fn schema_base_uri(mut self, uri: impl Into<String>) -> Self {
        self.schema_base_uri = uri.into();
        self
    }

    /// Makes a field that the NodeSet declares mandatory optional, for
    /// values the specification allows to be null. `definition` is the
    /// `$defs` name (a data type, `<Method>Call`, `<Method>Response` or an
    /// event type), `field` the OPC UA field/argument/property name. An
    /// override that matches nothing is an error.
    pub fn nullable_field(
        mut self,
        definition: impl Into<String>,
        field: impl Into<String>,
    ) -> Self {
        self.nullable.push(Nullable {
            def: definition.into(),
            field: field.into(),
        });
        self
    }

    /// Runs the generator without writing anything.
    ///
    /// # Errors
    ///
    /// Any unreadable input, malformed NodeSet or schema, unsupported OPC UA
    /// construct or data type, unresolved `$ref`, name clash, or unused
    /// [`nullable_field`](Self::nullable_field) override; the error names
    /// the file and the element.
    pub fn generate(&self) -> Result<Output> {
        let mut inputs = Vec::new();
        let mut nodesets = Vec::new();
        let mut uris = HashSet::new();
        for path in &self.nodesets {
            let nodeset = NodeSet::load(path)?;
            if !uris.insert(nodeset.model.uri.clone()) {
                return Err(Error::Config(format!(
                    "model {} is loaded twice",
                    nodeset.model.uri
                )));
            }
            inputs.push(path.clone());
            nodesets.push(nodeset);
        }
        let space = AddressSpace::new(nodesets);

        let mut used = BTreeSet::new();
        let generated =
            opcua_schema::build_docs(&space, &self.schema_base_uri, &self.nullable, &mut used)?;
        if let Some(unused) = self.nullable.iter().find(|n| !used.contains(*n)) {
            return Err(Error::Config(format!(
                "nullable_field({:?}, {:?}) matches no mandatory field of any NodeSet definition",
                unused.def, unused.field
            )));
        }

        let mut docs = Vec::new();
        let mut texts = Vec::new();
        for doc in &generated {
            let nodeset = &space.nodesets[doc.nodeset];
            docs.push(Doc {
                module: doc.module.clone(),
                id: doc.id.clone(),
                source: nodeset.path.display().to_string(),
                json: doc.json.clone(),
            });
            texts.push(pretty(&doc.json));
        }
        for dir in &self.schema_dirs {
            inputs.push(dir.clone());
            for path in schema_files(dir)? {
                let text = std::fs::read_to_string(&path).map_err(|source| Error::Io {
                    path: path.clone(),
                    source,
                })?;
                let json: Value = serde_json::from_str(&text).map_err(|source| Error::Json {
                    path: path.clone(),
                    source,
                })?;
                let id = json
                    .get("$id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| Error::Schema {
                        document: path.display().to_string(),
                        message: "has no \"$id\"".into(),
                    })?
                    .to_owned();
                let file_name = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                docs.push(Doc {
                    module: naming::schema_module(&file_name),
                    id,
                    source: path.display().to_string(),
                    json,
                });
                texts.push(text);
                inputs.push(path);
            }
        }
        check_unique(&docs)?;

        let bundle = bundle::bundle(&docs)?;

        let mut machines: Vec<Vec<StateMachine>> = Vec::new();
        for doc in &docs {
            let nodeset = generated
                .iter()
                .find(|g| g.module == doc.module)
                .map(|g| &space.nodesets[g.nodeset]);
            machines.push(match nodeset {
                Some(nodeset) => state_machine::extract(&space, nodeset, &doc.module)?,
                None => Vec::new(),
            });
        }

        let file_names: Vec<String> = docs
            .iter()
            .map(|d| format!("{}.schema.json", d.module))
            .collect();
        let modules: Vec<DocModule<'_>> = docs
            .iter()
            .enumerate()
            .map(|(i, doc)| {
                let nodeset = generated
                    .iter()
                    .find(|g| g.module == doc.module)
                    .map(|g| &space.nodesets[g.nodeset]);
                DocModule {
                    module: &doc.module,
                    id: &doc.id,
                    file_name: &file_names[i],
                    doc: module_doc(doc, nodeset),
                    nodeset,
                    machines: &machines[i],
                }
            })
            .collect();
        let rust = rust::emit(&bundle, &modules, &space, &self.crate_path)?;

        let schemas = docs
            .iter()
            .zip(texts)
            .zip(&file_names)
            .map(|((doc, json), file_name)| SchemaFile {
                module: doc.module.clone(),
                id: doc.id.clone(),
                file_name: file_name.clone(),
                json,
            })
            .collect();
        Ok(Output {
            rust,
            schemas,
            state_machines: machines.into_iter().flatten().collect(),
            inputs,
        })
    }

    /// Runs the generator and writes `models.rs` and `schemas/<module>.schema.json`
    /// into `out_dir` (normally `OUT_DIR`), and prints
    /// `cargo:rerun-if-changed` for every input.
    ///
    /// # Errors
    ///
    /// Those of [`generate`](Self::generate), and failing to write the output.
    pub fn write(&self, out_dir: impl AsRef<Path>) -> Result<Output> {
        let out_dir = out_dir.as_ref();
        let output = self.generate()?;
        let schema_dir = out_dir.join("schemas");
        std::fs::create_dir_all(&schema_dir).map_err(|source| Error::Io {
            path: schema_dir.clone(),
            source,
        })?;
        for schema in &output.schemas {
            write_file(&schema_dir.join(&schema.file_name), &schema.json)?;
        }
        write_file(&out_dir.join("models.rs"), &output.rust)?;
        for input in &output.inputs {
            println!("cargo:rerun-if-changed={}", input.display());
        }
        Ok(output)
    }
}

fn pretty(json: &Value) -> String {
    let mut text = serde_json::to_string_pretty(json).unwrap_or_default();
    text.push('\n');
    text
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    // Leave unchanged files alone so their mtime does not trigger rebuilds.
    if std::fs::read_to_string(path).is_ok_and(|old| old == text) {
        return Ok(());
    }
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.to_owned(),
        source,
    })
}

fn schema_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Io {
        path: dir.to_owned(),
        source,
    };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        if path.is_file() && path.extension().is_some_and(|e| e == "json") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn check_unique(docs: &[Doc]) -> Result<()> {
    let mut modules = HashSet::new();
    let mut ids = HashSet::new();
    for doc in docs {
        if doc.module == "types" {
            return Err(Error::Config(format!(
                "{} maps to the module `types`, which is reserved for the flat namespace of all types",
                doc.source
            )));
        }
        if !modules.insert(doc.module.as_str()) {
            return Err(Error::Config(format!(
                "{} maps to the module `{}`, which another document already uses",
                doc.source, doc.module
            )));
        }
        if !ids.insert(doc.id.trim_end_matches('/')) {
            return Err(Error::Config(format!(
                "{}: $id {} is used by two documents",
                doc.source, doc.id
            )));
        }
    }
    Ok(())
}

fn module_doc(doc: &Doc, nodeset: Option<&NodeSet>) -> String {
    match nodeset {
        Some(nodeset) => {
            let model = &nodeset.model;
            let file = nodeset
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!(
                " OPC UA information model `{}` version {} ({}), generated from `{file}`.\n\n JSON Schema: `{}`.",
                model.uri, model.version, model.publication_date, doc.id
            )
        }
        None => {
            let title = doc
                .json
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or(&doc.module);
            let description = doc
                .json
                .get("description")
                .and_then(Value::as_str)
                .map(|d| format!("\n\n {d}"))
                .unwrap_or_default();
            let file = Path::new(&doc.source)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!(
                " {title}, generated from `{file}`.{description}\n\n JSON Schema: `{}`.",
                doc.id
            )
        }
    }
}
