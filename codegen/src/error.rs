//! The one error type of the generator. Every variant names the file, node,
//! schema or type it is about, so a failing `build.rs` says what to fix.

use std::path::PathBuf;

/// Why generation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An input file or directory could not be read, or an output not written.
    #[error("cannot access {}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A NodeSet file is not well-formed XML.
    #[error("{}: not a well-formed NodeSet2 XML file: {source}", path.display())]
    Xml {
        /// The NodeSet file.
        path: PathBuf,
        /// The parser's error (with line and column).
        source: roxmltree::Error,
    },
    /// A NodeSet is well-formed XML but its content is not what the
    /// generator needs (missing model, bad NodeId, unsupported construct).
    #[error("{}:{line}: {message}", path.display())]
    NodeSet {
        /// The NodeSet file.
        path: PathBuf,
        /// 1-based line of the offending element (0 if unknown).
        line: u32,
        /// What is wrong, naming the node.
        message: String,
    },
    /// A field, argument or property uses an OPC UA data type the generator
    /// has no deliberate JSON mapping for. Never silently mapped to "any".
    #[error("{context}: unsupported OPC UA data type {data_type}; add a mapping in microdcs-codegen's builtins or load the NodeSet that defines it")]
    UnsupportedDataType {
        /// Where the type is used (`<NodeSet>: <Type>.<Field>`).
        context: String,
        /// The data type's NodeId and, if known, its name.
        data_type: String,
    },
    /// A JSON file is not valid JSON.
    #[error("{}: invalid JSON: {source}", path.display())]
    Json {
        /// The schema file.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A JSON Schema document is valid JSON but breaks a rule of the
    /// generator (missing `$id`, unresolved `$ref`, bad extension keyword).
    #[error("schema {document}: {message}")]
    Schema {
        /// The document's file name or `$id`.
        document: String,
        /// What is wrong, naming the definition or reference.
        message: String,
    },
    /// The generator was configured inconsistently (e.g. an override that
    /// matches nothing, two documents that map to the same module).
    #[error("generator configuration: {0}")]
    Config(String),
    /// typify rejected the bundled schemas.
    #[error("typify could not convert the bundled schemas: {0}")]
    Typify(String),
    /// The Rust code produced does not parse (a generator bug).
    #[error("generated Rust code does not parse ({context}): {source}")]
    Syntax {
        /// Which part of the output.
        context: &'static str,
        /// The parser's error.
        source: syn::Error,
    },
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
