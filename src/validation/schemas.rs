//! The schema documents and their compiled validators.

use super::violation::{Violation, Violations};
use crate::models;
use heck::ToSnakeCase;
use jsonschema::{Registry, ValidationError, Validator};
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

/// Why a schema document could not be registered; the message names the
/// document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SchemaError {
    /// The text is not a JSON object.
    #[error("schema document is not a JSON object: {reason}")]
    NotJson {
        /// What the parser said.
        reason: String,
    },
    /// The document has no string `$id`, so nothing could name it.
    #[error("schema document has no \"$id\" (its title: {title:?})")]
    NoId {
        /// Its `title`, if any, to say which one.
        title: Option<String>,
    },
    /// Two documents with the same `$id`.
    #[error("schema document {id} is registered twice")]
    Duplicate {
        /// The `$id`.
        id: String,
    },
    /// The documents could not be put together (an invalid `$id`, …).
    #[error("schema documents cannot be registered: {reason}")]
    Registry {
        /// What the resolver said.
        reason: String,
    },
    /// A schema does not compile (not a valid JSON Schema, a `$ref` to a
    /// document that is not registered, …).
    #[error("schema {uri} does not compile: {reason}")]
    Compile {
        /// The `dataschema` URI of the schema.
        uri: String,
        /// What the compiler said.
        reason: String,
    },
}

/// Schema documents and one compiled validator per payload schema, keyed by
/// `dataschema` URI. Cheap to clone (shared).
///
/// A payload is judged as the generated models read it: property names in
/// snake_case are accepted where the schema names them in PascalCase
/// (`job_order_id` for `JobOrderID`, wire contract §3), and a member that is
/// `null` counts as absent. A payload that fails as sent is checked again
/// that way, and passes if that passes (a valid payload costs one pass).
#[derive(Clone)]
pub struct SchemaSet {
    inner: Arc<Inner>,
}

struct Inner {
    /// `($id, document)` of every document, to extend the set.
    documents: Vec<(String, Value)>,
    validators: HashMap<String, Arc<Validator>>,
    /// snake_case spelling → the schema's spelling, for every property name
    /// that differs in snake_case.
    snake: HashMap<String, String>,
}

impl std::fmt::Debug for SchemaSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchemaSet")
            .field(
                "documents",
                &self
                    .inner
                    .documents
                    .iter()
                    .map(|(id, _)| id)
                    .collect::<Vec<_>>(),
            )
            .field("schemas", &self.inner.validators.len())
            .finish()
    }
}

/// The documents the station ships: the NodeSet schemas the codegen emits
/// and the ones in `schemas/`.
const BUILTIN: [&str; 5] = [
    models::isa95_jobcontrol::SCHEMA,
    models::machinery_jobs::SCHEMA,
    models::jobcontrol_config::SCHEMA,
    models::mes_publishing::SCHEMA,
    models::sfc_recipe::SCHEMA,
];

impl SchemaSet {
    /// No documents: validates nothing.
    #[must_use]
    pub fn empty() -> SchemaSet {
        SchemaSet {
            inner: Arc::new(Inner {
                documents: Vec::new(),
                validators: HashMap::new(),
                snake: HashMap::new(),
            }),
        }
    }

    /// The station's own documents ([`models`]' `SCHEMA`s), compiled on
    /// first use and shared by every processor of the process.
    ///
    /// They compile (a unit test holds them to it); if they ever did not, the
    /// error is logged and the set is empty, so payloads pass unvalidated
    /// rather than the station refusing to start.
    #[must_use]
    pub fn builtin() -> SchemaSet {
        static BUILTIN_SET: OnceLock<SchemaSet> = OnceLock::new();
        BUILTIN_SET
            .get_or_init(|| {
                SchemaSet::empty()
                    .with_documents(BUILTIN)
                    .unwrap_or_else(|e| {
                        tracing::error!(error = %e, "built-in payload schemas do not compile; payloads are not validated");
                        SchemaSet::empty()
                    })
            })
            .clone()
    }

    /// This set plus the documents `texts` (JSON Schema documents, each with
    /// a `$id`; they may `$ref` each other and the documents already in the
    /// set). Every `$defs` entry becomes a schema named
    /// `{$id}#/$defs/{Name}`, and a document whose root is a schema (it has
    /// `type`, `$ref`, `properties`, …) is also one under its `$id`.
    ///
    /// A plant app passes its generated modules' `SCHEMA`s:
    /// `SchemaSet::builtin().with_documents([my_models::orders::SCHEMA])`.
    ///
    /// # Errors
    /// [`SchemaError`] naming the document or schema: not JSON, no `$id`, an
    /// `$id` already registered, or a schema that does not compile.
    pub fn with_documents<'a>(
        &self,
        texts: impl IntoIterator<Item = &'a str>,
    ) -> Result<SchemaSet, SchemaError> {
        let mut documents = self.inner.documents.clone();
        let mut added = Vec::new();
        for text in texts {
            let doc: Value = serde_json::from_str(text).map_err(|e| SchemaError::NotJson {
                reason: e.to_string(),
            })?;
            let Some(id) = doc.get("$id").and_then(Value::as_str).map(str::to_owned) else {
                return Err(SchemaError::NoId {
                    title: doc.get("title").and_then(Value::as_str).map(str::to_owned),
                });
            };
            if documents.iter().any(|(known, _)| *known == id) {
                return Err(SchemaError::Duplicate { id });
            }
            added.push(documents.len());
            documents.push((id, doc));
        }
        // The registry borrows the documents; it is only needed to compile.
        let (validators, snake) = {
            let registry = Registry::new()
                .extend(documents.iter().map(|(id, doc)| (id.as_str(), doc)))
                .and_then(|b| b.prepare())
                .map_err(|e| SchemaError::Registry {
                    reason: e.to_string(),
                })?;
            let options = jsonschema::options().with_registry(&registry);
            let mut validators = self.inner.validators.clone();
            let mut snake = self.inner.snake.clone();
            for &i in &added {
                let (id, doc) = &documents[i];
                for uri in schema_uris(id, doc) {
                    let validator =
                        options
                            .build(&serde_json::json!({ "$ref": uri }))
                            .map_err(|e| SchemaError::Compile {
                                uri: uri.clone(),
                                reason: e.to_string(),
                            })?;
                    validators.insert(uri, Arc::new(validator));
                }
                collect_snake(doc, &mut snake);
            }
            (validators, snake)
        };
        Ok(SchemaSet {
            inner: Arc::new(Inner {
                documents,
                validators,
                snake,
            }),
        })
    }

    /// Whether `dataschema` names a schema of this set.
    #[must_use]
    pub fn knows(&self, dataschema: &str) -> bool {
        self.inner.validators.contains_key(dataschema)
    }

    /// The `dataschema` URIs of the set's schemas, sorted.
    #[must_use]
    pub fn dataschemas(&self) -> Vec<&str> {
        let mut uris: Vec<&str> = self.inner.validators.keys().map(String::as_str).collect();
        uris.sort_unstable();
        uris
    }

    /// Checks `value` against the schema `dataschema`; a URI the set does not
    /// know passes.
    ///
    /// # Errors
    /// [`Violations`]: every violation (up to [`MAX_LISTED`](super::MAX_LISTED)),
    /// each with its instance path.
    pub fn check(&self, dataschema: &str, value: &Value) -> Result<(), Violations> {
        self.check_except(dataschema, value, |_| false)
    }

    /// [`check`](Self::check), leaving out the violations `exempt` says the
    /// handler answers itself; passes when only such violations are found.
    pub(crate) fn check_except(
        &self,
        dataschema: &str,
        value: &Value,
        exempt: impl Fn(&ValidationError<'_>) -> bool,
    ) -> Result<(), Violations> {
        let Some(validator) = self.inner.validators.get(dataschema) else {
            return Ok(());
        };
        // The common case, a valid payload, costs one pass that allocates
        // no error.
        if validator.is_valid(value) {
            return Ok(());
        }
        let renamed = self.as_models_read(value);
        let value = match &renamed {
            Some(renamed) if validator.is_valid(renamed) => return Ok(()),
            Some(renamed) => renamed,
            None => value,
        };
        // The validator's own order follows its keyword maps, which are
        // hashed: sorted by instance path, the list is the same on every
        // run and replica (a stable sort keeps one path's violations in
        // the order they were found).
        let mut found: Vec<Violation> = validator
            .iter_errors(value)
            .filter(|e| !exempt(e))
            .map(|e| Violation {
                path: match e.instance_path().as_str() {
                    "" => "/".to_owned(),
                    p => p.to_owned(),
                },
                message: e.to_string(),
            })
            .collect();
        found.sort_by(|a, b| a.path.cmp(&b.path));
        if found.is_empty() {
            Ok(())
        } else {
            Err(Violations::new(dataschema, found))
        }
    }

    /// `value` as the generated models read it: snake_case keys renamed to
    /// the schemas' spelling where the object does not also have that key,
    /// and members that are `null` left out (an `Option` reads them as
    /// absent); `None` when that changes nothing.
    fn as_models_read(&self, value: &Value) -> Option<Value> {
        fn walk(v: &Value, snake: &HashMap<String, String>, changed: &mut bool) -> Value {
            match v {
                Value::Object(map) => {
                    let mut out = Map::with_capacity(map.len());
                    for (k, item) in map {
                        if item.is_null() {
                            *changed = true;
                            continue;
                        }
                        let key = match snake.get(k) {
                            Some(name) if !map.contains_key(name) => {
                                *changed = true;
                                name.clone()
                            }
                            _ => k.clone(),
                        };
                        out.insert(key, walk(item, snake, changed));
                    }
                    Value::Object(out)
                }
                Value::Array(items) => {
                    Value::Array(items.iter().map(|i| walk(i, snake, changed)).collect())
                }
                other => other.clone(),
            }
        }
        let mut changed = false;
        let out = walk(value, &self.inner.snake, &mut changed);
        changed.then_some(out)
    }
}

/// The schema URIs a document defines: `{id}#/$defs/{Name}` for each
/// `$defs` entry, and `id` itself when the root is a schema.
fn schema_uris(id: &str, doc: &Value) -> Vec<String> {
    let mut uris: Vec<String> = doc
        .get("$defs")
        .and_then(Value::as_object)
        .map(|defs| {
            defs.keys()
                .map(|name| format!("{id}#/$defs/{name}"))
                .collect()
        })
        .unwrap_or_default();
    const ROOT_KEYWORDS: [&str; 8] = [
        "type",
        "$ref",
        "properties",
        "items",
        "allOf",
        "anyOf",
        "oneOf",
        "enum",
    ];
    if ROOT_KEYWORDS.iter().any(|k| doc.get(k).is_some()) {
        uris.push(id.to_owned());
    }
    uris
}

/// Every name under a `properties` keyword in `schema`, by its snake_case
/// spelling (the codegen's serde alias) where that differs.
fn collect_snake(schema: &Value, out: &mut HashMap<String, String>) {
    match schema {
        Value::Object(map) => {
            if let Some(Value::Object(props)) = map.get("properties") {
                for name in props.keys() {
                    let snake = name.to_snake_case();
                    if snake != *name {
                        out.entry(snake).or_insert_with(|| name.clone());
                    }
                }
            }
            for v in map.values() {
                collect_snake(v, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_snake(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::isa95_jobcontrol::{StoreCall, SCHEMA_ID};
    use crate::EventType;
    use serde_json::json;

    #[test]
    fn every_builtin_document_compiles() {
        let set = SchemaSet::empty().with_documents(BUILTIN).unwrap();
        assert!(set.knows(StoreCall::DATASCHEMA));
        assert!(set.knows(crate::sfc::engine::SFC_RECIPE_SCHEMA));
        assert!(set.dataschemas().len() > 50, "{:?}", set.dataschemas());
    }

    #[test]
    fn every_violation_is_listed_with_its_path() {
        let bad = json!({"JobOrder": {"JobOrderID": 5, "Priority": "high", "WorkMasterID": "wm"}});
        let v = SchemaSet::builtin()
            .check(StoreCall::DATASCHEMA, &bad)
            .unwrap_err();
        let mut paths: Vec<&str> = v.iter().map(|v| v.path.as_str()).collect();
        paths.sort_unstable();
        assert_eq!(
            paths,
            [
                "/JobOrder/JobOrderID",
                "/JobOrder/Priority",
                "/JobOrder/WorkMasterID"
            ]
        );
        assert_eq!(v.total, 3, "{v}");
        assert!(v.to_string().contains(StoreCall::DATASCHEMA), "{v}");
    }

    #[test]
    fn snake_case_keys_pass_as_the_models_accept_them() {
        let set = SchemaSet::builtin();
        let snake = json!({"job_order": {"job_order_id": "J1", "priority": 3}});
        assert!(set.check(StoreCall::DATASCHEMA, &snake).is_ok());
        let nulls = json!({"JobOrder": {"JobOrderID": "J1", "Priority": null}, "Comment": null});
        assert!(set.check(StoreCall::DATASCHEMA, &nulls).is_ok());
        let wrong = json!({"job_order": {"job_order_id": 1}});
        let v = set.check(StoreCall::DATASCHEMA, &wrong).unwrap_err();
        assert_eq!(v.list[0].path, "/JobOrder/JobOrderID", "{v}");
    }

    #[test]
    fn plant_documents_extend_the_set_and_may_refer_to_builtin_ones() {
        let doc = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://plant.example/schemas/orders/v1/",
            "$defs": {
                "Rework": {
                    "type": "object",
                    "properties": {
                        "Order": {"$ref": format!("{SCHEMA_ID}#/$defs/ISA95JobOrderDataType")},
                        "Station": {"type": "string"}
                    },
                    "required": ["Station"]
                }
            }
        })
        .to_string();
        let set = SchemaSet::builtin().with_documents([doc.as_str()]).unwrap();
        let uri = "https://plant.example/schemas/orders/v1/#/$defs/Rework";
        assert!(set.knows(uri) && set.knows(StoreCall::DATASCHEMA));
        let v = set
            .check(uri, &json!({"Order": {"JobOrderID": 1}}))
            .unwrap_err();
        assert_eq!(v.total, 2, "{v}");
        assert!(matches!(
            set.with_documents([doc.as_str()]),
            Err(SchemaError::Duplicate { .. })
        ));
        assert!(matches!(
            SchemaSet::empty().with_documents(["{}"]),
            Err(SchemaError::NoId { .. })
        ));
        let dangling = r#"{"$id": "urn:x", "$defs": {"A": {"$ref": "urn:nowhere#/$defs/B"}}}"#;
        let err = SchemaSet::empty()
            .with_documents([dangling])
            .unwrap_err()
            .to_string();
        assert!(err.contains("urn:nowhere"), "{err}");
    }
}
