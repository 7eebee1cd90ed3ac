//! Bundling all documents into one root schema for a single typify run.
//!
//! typify does not resolve references to other documents, so every `$ref`
//! (local `#/$defs/X` or absolute `<$id>#/$defs/X`) is rewritten to a key
//! of the bundle's own `$defs`. Definitions that two documents define
//! identically (e.g. `LocalizedText`) become one Rust type; definitions
//! that share a name but differ (e.g. `RequestJobResponseByJobOrderIDCall`
//! of ISA95-JOBCONTROL and of Machinery Jobs, whose CloudEvent types
//! differ) get the PascalCase module name as prefix in the bundle and are
//! re-exported under their own name by their document's module.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::naming;

/// A JSON Schema document taking part in generation.
#[derive(Debug, Clone)]
pub(crate) struct Doc {
    pub(crate) module: String,
    pub(crate) id: String,
    /// File name or path, for error messages.
    pub(crate) source: String,
    pub(crate) json: Value,
}

/// A definition of a document and the Rust type that represents it.
#[derive(Debug, Clone)]
pub(crate) struct DefEntry {
    pub(crate) name: String,
    pub(crate) rust: String,
}

/// A CloudEvent payload type.
#[derive(Debug, Clone)]
pub(crate) struct EventImpl {
    pub(crate) rust: String,
    pub(crate) cloudevent_type: String,
    pub(crate) dataschema: String,
    /// The reply type if this is the request of a method call.
    pub(crate) response: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Bundle {
    /// `{"$defs": {...}}` with only bundle-local references.
    pub(crate) root: Value,
    /// Per document (same order as the input), its definitions.
    pub(crate) defs: Vec<Vec<DefEntry>>,
    /// Per document, the CloudEvent payload types it defines.
    pub(crate) events: Vec<Vec<EventImpl>>,
    /// typify's name of a bundle key → the Rust name it must get instead.
    pub(crate) renames: BTreeMap<String, String>,
}

struct Def<'a> {
    doc: usize,
    name: &'a str,
    schema: &'a Value,
}

pub(crate) fn bundle(docs: &[Doc]) -> Result<Bundle> {
    let mut defs = Vec::new();
    let mut index = HashMap::new();
    for (doc_index, doc) in docs.iter().enumerate() {
        let Some(map) = doc.json.get("$defs").and_then(Value::as_object) else {
            continue;
        };
        for (name, schema) in map {
            index.insert((doc_index, name.as_str()), defs.len());
            defs.push(Def {
                doc: doc_index,
                name,
                schema,
            });
        }
    }
    let resolver = Resolver {
        docs,
        index: &index,
    };

    // Every reference of every definition, resolved once.
    let mut targets: Vec<Vec<usize>> = Vec::new();
    for def in &defs {
        let mut refs = Vec::new();
        collect_refs(def.schema, &mut refs);
        let resolved = refs
            .iter()
            .map(|r| resolver.resolve(def.doc, r, def.name))
            .collect::<Result<Vec<_>>>()?;
        targets.push(resolved);
    }
    for (doc_index, doc) in docs.iter().enumerate() {
        resolver.check_root(doc_index, doc)?;
    }

    // Partition refinement: same name and same content (references compared
    // by the class of their target) → one class → one Rust type. CloudEvent
    // payload definitions are never merged across documents since their
    // dataschema differs.
    let initial_key = |def: &Def<'_>| -> String {
        if is_event(def.schema) {
            format!("{}\u{0}{}", def.name, def.doc)
        } else {
            def.name.to_owned()
        }
    };
    let mut class = assign_classes(defs.iter().map(|d| (initial_key(d), String::new())));
    loop {
        let signatures = defs.iter().enumerate().map(|(i, def)| {
            let mut next = 0;
            let signature = canonical(def.schema, &mut |_| {
                let target = targets[i][next];
                next += 1;
                format!("class:{}", class[target])
            });
            (
                format!("{}\u{0}{}", class[i], def.name),
                signature.to_string(),
            )
        });
        let refined = assign_classes(signatures);
        let stable = refined.iter().max() == class.iter().max();
        class = refined;
        if stable {
            break;
        }
    }

    // Names: the definition's name, prefixed where one name has several classes.
    let class_count = class.iter().max().map_or(0, |m| m + 1);
    let mut first_member = vec![usize::MAX; class_count];
    for (i, c) in class.iter().enumerate() {
        if first_member[*c] == usize::MAX {
            first_member[*c] = i;
        }
    }
    let mut classes_per_name: HashMap<&str, usize> = HashMap::new();
    for member in &first_member {
        *classes_per_name.entry(defs[*member].name).or_default() += 1;
    }
    let mut key_of_class = Vec::with_capacity(class_count);
    for member in &first_member {
        let def = &defs[*member];
        let key = if classes_per_name.get(def.name).copied().unwrap_or(0) > 1 {
            format!("{}{}", naming::type_prefix(&docs[def.doc].module), def.name)
        } else {
            def.name.to_owned()
        };
        key_of_class.push(key);
    }

    // Rust names and the renames typify needs to produce them.
    let mut renames = BTreeMap::new();
    let mut rust_of_class = Vec::with_capacity(class_count);
    let mut seen_typify: HashMap<String, &str> = HashMap::new();
    let mut seen_rust: HashMap<String, &str> = HashMap::new();
    for key in &key_of_class {
        let typify = naming::typify_name(key);
        if let Some(other) = seen_typify.insert(typify.clone(), key) {
            return Err(Error::Schema {
                document: "(bundle)".into(),
                message: format!("definitions {other:?} and {key:?} would both become the Rust type {typify}; rename one"),
            });
        }
        let rust = if naming::is_type_ident(key) {
            key.clone()
        } else {
            typify.clone()
        };
        if let Some(other) = seen_rust.insert(rust.clone(), key) {
            return Err(Error::Schema {
                document: "(bundle)".into(),
                message: format!(
                    "definitions {other:?} and {key:?} would both become the Rust type {rust}"
                ),
            });
        }
        if rust != typify {
            renames.insert(typify, rust.clone());
        }
        rust_of_class.push(rust);
    }

    // The bundle: one schema per class, references rewritten.
    let mut bundle_defs = Map::new();
    for (c, member) in first_member.iter().enumerate() {
        let mut next = 0;
        let schema = rewrite(defs[*member].schema, &mut |_| {
            let target = targets[*member][next];
            next += 1;
            format!("#/$defs/{}", escape(&key_of_class[class[target]]))
        });
        bundle_defs.insert(key_of_class[c].clone(), schema);
    }

    let mut per_doc = vec![Vec::new(); docs.len()];
    let mut events = vec![Vec::new(); docs.len()];
    for (i, def) in defs.iter().enumerate() {
        let rust = rust_of_class[class[i]].clone();
        per_doc[def.doc].push(DefEntry {
            name: def.name.to_owned(),
            rust: rust.clone(),
        });
        if let Some(event) = event_impl(&resolver, &defs, &class, &rust_of_class, def, rust)? {
            events[def.doc].push(event);
        }
    }

    Ok(Bundle {
        root: serde_json::json!({ "$defs": bundle_defs }),
        defs: per_doc,
        events,
        renames,
    })
}

/// The `x-cloudevent-type` of a definition (`x-type-id` is accepted as the
/// older MicroDCS spelling).
pub(crate) fn cloudevent_type(schema: &Value) -> Option<&str> {
    schema
        .get("x-cloudevent-type")
        .or_else(|| schema.get("x-type-id"))
        .and_then(Value::as_str)
}

fn is_event(schema: &Value) -> bool {
    cloudevent_type(schema).is_some()
}

fn event_impl(
    resolver: &Resolver<'_>,
    defs: &[Def<'_>],
    class: &[usize],
    rust_of_class: &[String],
    def: &Def<'_>,
    rust: String,
) -> Result<Option<EventImpl>> {
    let Some(cloudevent_type) = cloudevent_type(def.schema) else {
        return Ok(None);
    };
    let doc = &resolver.docs[def.doc];
    let err = |message: String| Error::Schema {
        document: doc.source.clone(),
        message: format!("$defs/{}: {message}", def.name),
    };
    if let (Some(a), Some(b)) = (
        def.schema.get("x-cloudevent-type"),
        def.schema.get("x-type-id"),
    ) {
        if a != b {
            return Err(err("x-cloudevent-type and x-type-id differ".into()));
        }
    }
    if cloudevent_type.is_empty() || cloudevent_type.contains(char::is_whitespace) {
        return Err(err(format!("{cloudevent_type:?} is not a CloudEvent type")));
    }
    let dataschema = match def.schema.get("x-cloudevent-dataschema") {
        None => format!("{}#/$defs/{}", doc.id, escape(def.name)),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(err("x-cloudevent-dataschema is not a string".into())),
    };
    let response = match def.schema.get("x-response-dataschema") {
        None => None,
        Some(Value::String(reference)) => {
            let target = resolver.resolve(def.doc, reference, def.name)?;
            if !is_event(defs[target].schema) {
                return Err(err(format!(
                    "response {reference} has no x-cloudevent-type"
                )));
            }
            Some(rust_of_class[class[target]].clone())
        }
        Some(_) => return Err(err("x-response-dataschema is not a string".into())),
    };
    Ok(Some(EventImpl {
        rust,
        cloudevent_type: cloudevent_type.to_owned(),
        dataschema,
        response,
    }))
}

struct Resolver<'a> {
    docs: &'a [Doc],
    index: &'a HashMap<(usize, &'a str), usize>,
}

impl Resolver<'_> {
    fn doc_by_id(&self, id: &str) -> Option<usize> {
        let normalized = |s: &str| s.trim_end_matches('#').trim_end_matches('/').to_owned();
        let id = normalized(id);
        self.docs.iter().position(|d| normalized(&d.id) == id)
    }

    /// Resolves `reference`, written in document `doc`, to a definition.
    fn resolve(&self, doc: usize, reference: &str, context: &str) -> Result<usize> {
        self.resolve_depth(doc, reference, context, 0)
    }

    fn resolve_depth(
        &self,
        doc: usize,
        reference: &str,
        context: &str,
        depth: usize,
    ) -> Result<usize> {
        let err = |message: String| Error::Schema {
            document: self.docs[doc].source.clone(),
            message: format!("$defs/{context}: $ref {reference:?} {message}"),
        };
        let (target_doc, fragment) = match reference.split_once('#') {
            Some(("", fragment)) => (doc, fragment),
            Some((uri, fragment)) => (
                self.doc_by_id(uri).ok_or_else(|| {
                    err(format!("names no known document (known: {})", self.known()))
                })?,
                fragment,
            ),
            None => (
                self.doc_by_id(reference).ok_or_else(|| {
                    err(format!("names no known document (known: {})", self.known()))
                })?,
                "",
            ),
        };
        if fragment.is_empty() || fragment == "/" {
            // The document root: allowed when it is itself a reference.
            let root_ref = self.docs[target_doc]
                .json
                .get("$ref")
                .and_then(Value::as_str);
            return match root_ref {
                Some(inner) if depth < 8 => {
                    self.resolve_depth(target_doc, inner, context, depth + 1)
                }
                _ => Err(err(
                    "points at a document root that is not a $ref to one of its $defs".into(),
                )),
            };
        }
        let name = fragment
            .strip_prefix("/$defs/")
            .ok_or_else(|| err("is not of the form <$id>#/$defs/<Name>".into()))?;
        let name = unescape(name);
        self.docs[target_doc]
            .json
            .get("$defs")
            .and_then(|d| d.as_object())
            .and_then(|d| d.get_key_value(name.as_str()))
            .and_then(|(key, _)| self.index.get(&(target_doc, key.as_str())).copied())
            .ok_or_else(|| {
                err(format!(
                    "names no definition of {}",
                    self.docs[target_doc].id
                ))
            })
    }

    fn known(&self) -> String {
        self.docs
            .iter()
            .map(|d| d.id.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// A document root may only be absent/empty or a `$ref` to a definition:
    /// the types live in `$defs`.
    fn check_root(&self, index: usize, doc: &Doc) -> Result<()> {
        let Some(root) = doc.json.as_object() else {
            return Err(Error::Schema {
                document: doc.source.clone(),
                message: "is not a JSON object".into(),
            });
        };
        let structural = [
            "type",
            "properties",
            "items",
            "allOf",
            "anyOf",
            "oneOf",
            "enum",
            "const",
        ];
        if let Some(keyword) = structural.iter().find(|k| root.contains_key(**k)) {
            return Err(Error::Schema {
                document: doc.source.clone(),
                message: format!("the root has {keyword:?}; put the type under $defs and let the root be a $ref to it"),
            });
        }
        if let Some(reference) = root.get("$ref").and_then(Value::as_str) {
            self.resolve(index, reference, "(root)")?;
        }
        Ok(())
    }
}

/// Numbers classes by first appearance of their key.
fn assign_classes(keys: impl Iterator<Item = (String, String)>) -> Vec<usize> {
    let mut ids = HashMap::new();
    keys.map(|key| {
        let next = ids.len();
        *ids.entry(key).or_insert(next)
    })
    .collect()
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    let _ = canonical(value, &mut |r| {
        out.push(r.to_owned());
        String::new()
    });
}

/// `value` with every `$ref` replaced by `f(ref)`, in document order.
fn rewrite(value: &Value, f: &mut dyn FnMut(&str) -> String) -> Value {
    canonical(value, f)
}

fn canonical(value: &Value, f: &mut dyn FnMut(&str) -> String) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, item) in map {
                match (key.as_str(), item) {
                    ("$ref", Value::String(reference)) => {
                        out.insert(key.clone(), Value::String(f(reference)));
                    }
                    _ => {
                        out.insert(key.clone(), canonical(item, f));
                    }
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|i| canonical(i, f)).collect()),
        other => other.clone(),
    }
}

/// JSON Pointer escaping of a `$defs` key.
fn escape(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

fn unescape(name: &str) -> String {
    name.replace("~1", "/").replace("~0", "~")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn doc(module: &str, id: &str, json: Value) -> Doc {
        Doc {
            module: module.into(),
            id: id.into(),
            source: module.into(),
            json,
        }
    }

    #[test]
    fn identical_definitions_merge_and_different_ones_are_prefixed() {
        let text = json!({"type": "object", "properties": {"Text": {"type": "string"}}});
        let a = doc(
            "a_doc",
            "urn:a/",
            json!({"$defs": {
                "LocalizedText": text,
                "Call": {"type": "object", "properties": {"T": {"$ref": "#/$defs/LocalizedText"}}, "x-cloudevent-type": "a.Call.v1"},
            }}),
        );
        let b = doc(
            "b_doc",
            "urn:b/",
            json!({"$defs": {
                "LocalizedText": text,
                "Call": {"type": "object", "properties": {"T": {"$ref": "#/$defs/LocalizedText"}}, "x-cloudevent-type": "b.Call.v1"},
                "Uses": {"$ref": "urn:a/#/$defs/Call"},
            }}),
        );
        let bundle = bundle(&[a, b]).map_err(|e| e.to_string());
        let bundle = bundle.as_ref().map_err(String::as_str);
        let Ok(bundle) = bundle else {
            panic!("{bundle:?}")
        };
        let keys: Vec<&str> = bundle.root["$defs"]
            .as_object()
            .map(|m| m.keys().map(String::as_str).collect())
            .unwrap_or_default();
        assert_eq!(keys, ["LocalizedText", "ADocCall", "BDocCall", "Uses"]);
        assert_eq!(bundle.root["$defs"]["Uses"]["$ref"], "#/$defs/ADocCall");
        assert_eq!(bundle.events[1][0].dataschema, "urn:b/#/$defs/Call");
        assert_eq!(bundle.defs[1][1].rust, "BDocCall");
    }

    #[test]
    fn unresolved_references_name_the_reference() {
        let a = doc(
            "a",
            "urn:a/",
            json!({"$defs": {"X": {"$ref": "urn:nowhere/#/$defs/Y"}}}),
        );
        let err = bundle(&[a]).map(|_| ()).map_err(|e| e.to_string());
        assert!(
            matches!(&err, Err(m) if m.contains("urn:nowhere/#/$defs/Y")),
            "{err:?}"
        );
    }
}
