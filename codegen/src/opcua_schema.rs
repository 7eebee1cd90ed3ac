//! One JSON Schema document per NodeSet: `$defs` for every data type, a
//! `<Method>Call`/`<Method>Response` pair per method and one def per event
//! type, each CloudEvent payload def tagged with `x-cloudevent-type`.
//!
//! # Which fields are required
//!
//! - Structure fields: required unless `IsOptional="true"`.
//! - Method arguments (OPC UA has no optional arguments): scalars are
//!   required, arrays are not — a null array and an absent one are the same
//!   in the OPC UA JSON encoding (e.g. `Comment` of `Start`).
//! - Event type properties: required when their modelling rule is
//!   `Mandatory`, otherwise optional.
//! - [`crate::Generator::nullable_field`] makes a required field optional
//!   where the companion specification allows a null value (e.g.
//!   `ISA95StateDataType.BrowsePath`, "null when the top-level state is
//!   represented").

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Map, Value};

use crate::address_space::{refs, ua, AddressSpace};
use crate::builtins;
use crate::error::{Error, Result};
use crate::naming;
use crate::nodeset::{
    Argument, Field, Node, NodeClass, NodeRef, NodeSet, Value as NodeValue, UA_NAMESPACE,
};

/// Event types of namespace 0 below `BaseEventType` whose own fields the
/// generator does not know; deriving from them is an error instead of a
/// silently incomplete schema.
const UNSUPPORTED_UA_EVENT_TYPES: &[u32] = &[2052, 2130, 2131, 2132, 2311, 2782, 2915, 11436];

/// A JSON Schema document generated from a NodeSet.
#[derive(Debug, Clone)]
pub(crate) struct NodeSetDoc {
    pub(crate) module: String,
    pub(crate) nodeset: usize,
    pub(crate) id: String,
    pub(crate) json: Value,
}

/// A `(definition, field)` pair made optional by configuration.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Nullable {
    pub(crate) def: String,
    pub(crate) field: String,
}

/// Builds the documents of all NodeSets of `space`; `used` collects the
/// nullable overrides that matched something.
pub(crate) fn build_docs(
    space: &AddressSpace,
    base_uri: &str,
    nullable: &[Nullable],
    used: &mut BTreeSet<Nullable>,
) -> Result<Vec<NodeSetDoc>> {
    let ids: HashMap<String, String> = space
        .nodesets
        .iter()
        .map(|n| {
            let m = &n.model;
            (
                m.uri.clone(),
                naming::schema_id(base_uri, &m.uri, &m.version),
            )
        })
        .collect();
    let mut docs = Vec::new();
    for (index, nodeset) in space.nodesets.iter().enumerate() {
        let mut builder = DocBuilder {
            space,
            nodeset,
            id: ids.get(&nodeset.model.uri).cloned().unwrap_or_default(),
            ids: &ids,
            helpers: BTreeSet::new(),
            data_types: BTreeSet::new(),
            nullable,
            used: &mut *used,
        };
        docs.push(builder.build(index)?);
    }
    Ok(docs)
}

struct DocBuilder<'a> {
    space: &'a AddressSpace,
    nodeset: &'a NodeSet,
    id: String,
    /// Model URI → `$id` of every generated document.
    ids: &'a HashMap<String, String>,
    helpers: BTreeSet<&'static str>,
    /// Names of the data types that get a def in this document.
    data_types: BTreeSet<String>,
    nullable: &'a [Nullable],
    used: &'a mut BTreeSet<Nullable>,
}

impl<'a> DocBuilder<'a> {
    /// The nodes of the NodeSet's own namespace, in file order.
    fn own(&self, class: NodeClass) -> Vec<&'a Node> {
        let nodeset: &'a NodeSet = self.nodeset;
        nodeset
            .nodes
            .iter()
            .filter(|n| n.id.namespace == nodeset.model.uri && n.class == class)
            .collect()
    }

    fn err(&self, node: &Node, message: String) -> Error {
        Error::NodeSet {
            path: self.nodeset.path.clone(),
            line: node.line,
            message,
        }
    }

    fn build(&mut self, index: usize) -> Result<NodeSetDoc> {
        let model = &self.nodeset.model;
        let module = naming::nodeset_module(&model.uri);
        let mut defs = Map::new();

        // Pass 1: which data types get a def (so references can be checked).
        let mut data_types = self.own(NodeClass::DataType);
        data_types.sort_by(|a, b| a.browse_name.cmp(&b.browse_name));
        for node in &data_types {
            if node.definition.is_some() || self.simple_root(node).is_some() {
                self.data_types.insert(node.browse_name.clone());
            }
        }
        for node in data_types {
            if let Some(def) = self.data_type_def(node)? {
                self.insert(&mut defs, node, node.browse_name.clone(), def)?;
            }
        }

        let mut methods: BTreeMap<String, (&Node, (Value, Value))> = BTreeMap::new();
        for node in self.own(NodeClass::Method) {
            let pair = self.method_defs(node)?;
            match methods.get(&node.browse_name) {
                None => {
                    methods.insert(node.browse_name.clone(), (node, pair));
                }
                Some((_, existing)) if strip_origin(existing) == strip_origin(&pair) => {}
                Some((first, _)) => {
                    return Err(self.err(
                        node,
                        format!(
                            "method {} is declared on {} and {} with different arguments; \
                             one CloudEvent type cannot describe both",
                            node.browse_name, first.local_id, node.local_id
                        ),
                    ));
                }
            }
        }

        let mut events = Vec::new();
        for node in self.own(NodeClass::ObjectType) {
            if let Some(def) = self.event_def(node)? {
                events.push((node, def));
            }
        }
        events.sort_by(|a, b| a.0.browse_name.cmp(&b.0.browse_name));

        for name in std::mem::take(&mut self.helpers) {
            let def = builtins::helper_def(name).unwrap_or_default();
            if defs.contains_key(name) {
                return Err(Error::Schema {
                    document: self.id.clone(),
                    message: format!(
                        "data type {name} clashes with the OPC UA base type of the same name"
                    ),
                });
            }
            defs.insert(name.to_owned(), def);
        }
        for (name, (node, (call, response))) in methods {
            self.insert(&mut defs, node, format!("{name}Call"), call)?;
            self.insert(&mut defs, node, format!("{name}Response"), response)?;
        }
        for (node, def) in events {
            self.insert(&mut defs, node, node.browse_name.clone(), def)?;
        }

        let json = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": self.id,
            "title": format!("{} {}", model.uri, model.version),
            "description": format!(
                "Data types, method arguments and event types of the OPC UA information model {} \
                 version {} (published {}), generated by microdcs-codegen from its NodeSet2 file. \
                 Payloads use the OPC UA field names; CloudEvent payload definitions carry their \
                 CloudEvent type in x-cloudevent-type.",
                model.uri, model.version, model.publication_date
            ),
            "x-opcua-model": {
                "ModelUri": model.uri,
                "Version": model.version,
                "PublicationDate": model.publication_date,
            },
            "$defs": defs,
        });
        Ok(NodeSetDoc {
            module,
            nodeset: index,
            id: self.id.clone(),
            json,
        })
    }

    fn insert(
        &self,
        defs: &mut Map<String, Value>,
        node: &Node,
        name: String,
        def: Value,
    ) -> Result<()> {
        if name.contains(['/', '~', '#', '%']) {
            return Err(self.err(node, format!("{name:?} cannot be used as a $defs key")));
        }
        if defs.contains_key(&name) {
            return Err(self.err(node, format!("two definitions would be named {name}")));
        }
        defs.insert(name, ordered(def));
        Ok(())
    }

    /// The namespace-0 scalar a data type without `Definition` derives from.
    fn simple_root(&self, node: &Node) -> Option<u32> {
        let (_, root) = self.space.ancestry(&node.id);
        let root = root?.ua_numeric()?;
        (root != ua::STRUCTURE && root != ua::ENUMERATION && builtins::schema_of(root).is_some())
            .then_some(root)
    }

    fn data_type_def(&mut self, node: &Node) -> Result<Option<Value>> {
        let (_, root) = self.space.ancestry(&node.id);
        let root_id = root.as_ref().and_then(NodeRef::ua_numeric);
        let mut def = Map::new();
        let Some(definition) = &node.definition else {
            let Some(root) = self.simple_root(node) else {
                // Abstract structures without fields have no JSON form; a
                // field using one fails with a clear error in `type_schema`.
                return Ok(None);
            };
            let mapped = builtins::schema_of(root)
                .map(|m| m.schema)
                .unwrap_or_default();
            let mut def = mapped.as_object().cloned().unwrap_or_default();
            describe(&mut def, node, None);
            return Ok(Some(Value::Object(def)));
        };
        if definition.is_union || root_id == Some(ua::UNION) {
            return Err(self.err(
                node,
                format!("{}: union data types are not supported", node.browse_name),
            ));
        }
        if root_id == Some(ua::ENUMERATION) {
            let fields = self.valued_fields(
                node,
                &definition.fields,
                "enumeration field without Value",
                |value| format!("`{value}`"),
            )?;
            let values = fields.iter().map(|f| json!(f.value)).collect();
            let names = fields.iter().map(|f| json!(f.field.name)).collect();
            let lines: Vec<&str> = fields.iter().map(|f| f.line.as_str()).collect();
            def.insert("type".into(), "integer".into());
            def.insert("format".into(), "int32".into());
            def.insert("enum".into(), Value::Array(values));
            def.insert("x-enum-varnames".into(), Value::Array(names));
            describe(
                &mut def,
                node,
                Some(format!(
                    "OPC UA enumeration, encoded as its integer value:\n\n{}",
                    lines.join("\n")
                )),
            );
            return Ok(Some(Value::Object(def)));
        }
        if definition.is_option_set {
            let base = root_id
                .and_then(builtins::schema_of)
                .filter(|m| m.schema["type"] == "integer")
                .ok_or_else(|| {
                    self.err(
                        node,
                        format!(
                            "{}: option set on a base type other than an unsigned integer",
                            node.browse_name
                        ),
                    )
                })?;
            let fields = self.valued_fields(
                node,
                &definition.fields,
                "option set field without Value (its bit)",
                |bit| format!("bit {bit}"),
            )?;
            let bits: Map<String, Value> = fields
                .iter()
                .map(|f| (f.field.name.clone(), json!(f.value)))
                .collect();
            let lines: Vec<&str> = fields.iter().map(|f| f.line.as_str()).collect();
            let mut def = base.schema.as_object().cloned().unwrap_or_default();
            def.insert("x-opcua-option-set-bits".into(), Value::Object(bits));
            describe(
                &mut def,
                node,
                Some(format!(
                    "OPC UA option set, encoded as an integer bit mask:\n\n{}",
                    lines.join("\n")
                )),
            );
            return Ok(Some(Value::Object(def)));
        }
        if root_id != Some(ua::STRUCTURE) {
            return Err(self.err(
                node,
                format!(
                    "{}: has a Definition but derives from {}, which is neither Structure nor Enumeration",
                    node.browse_name,
                    root.map(|r| self.space.describe(&r)).unwrap_or_else(|| "nothing".into())
                ),
            ));
        }
        // A subtype's Definition lists the inherited fields too (OPC 10000-3 §8.49).
        let members = definition
            .fields
            .iter()
            .map(|field| Member {
                name: &field.name,
                data_type: &field.data_type,
                value_rank: field.value_rank,
                description: field.description.as_deref(),
                mandatory: !field.is_optional,
                context: format!(
                    "{}: {}.{}",
                    self.nodeset.path.display(),
                    node.browse_name,
                    field.name
                ),
            })
            .collect();
        let (properties, required) = self.object_members(&node.browse_name, members)?;
        def.insert("type".into(), "object".into());
        describe(&mut def, node, None);
        def.insert("properties".into(), Value::Object(properties));
        if !required.is_empty() {
            def.insert("required".into(), Value::Array(required));
        }
        Ok(Some(Value::Object(def)))
    }

    /// Each field with its `Value` (an enumeration's value, an option set's
    /// bit) and its documentation line, `- {label(value)} Name: description`;
    /// a field without a `Value` is an error saying it is `missing`.
    fn valued_fields<'f>(
        &self,
        node: &Node,
        fields: &'f [Field],
        missing: &str,
        label: impl Fn(i64) -> String,
    ) -> Result<Vec<Valued<'f>>> {
        fields
            .iter()
            .map(|field| {
                let value = field.value.ok_or_else(|| {
                    self.err(
                        node,
                        format!("{}.{}: {missing}", node.browse_name, field.name),
                    )
                })?;
                let line = format!(
                    "- {} {}{}",
                    label(value),
                    field.name,
                    field
                        .description
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default()
                );
                Ok(Valued { field, value, line })
            })
            .collect()
    }

    /// An object schema's `properties` and `required` list from its
    /// members, in order: a mandatory member is required unless `def`'s
    /// nullable overrides name it.
    fn object_members(
        &mut self,
        def: &str,
        members: Vec<Member<'_>>,
    ) -> Result<(Map<String, Value>, Vec<Value>)> {
        let mut properties = Map::new();
        let mut required = Vec::new();
        for member in members {
            let property = self.property(
                member.data_type,
                member.value_rank,
                member.description,
                &member.context,
            )?;
            if member.mandatory && !self.is_nullable(def, member.name) {
                required.push(json!(member.name));
            }
            properties.insert(member.name.to_owned(), property);
        }
        Ok((properties, required))
    }

    fn is_nullable(&mut self, def: &str, field: &str) -> bool {
        let found = self
            .nullable
            .iter()
            .find(|n| n.def == def && n.field == field);
        if let Some(n) = found {
            self.used.insert(n.clone());
        }
        found.is_some()
    }

    /// The schema of a field/argument/property: its type, arrays per value
    /// rank, and the description.
    fn property(
        &mut self,
        data_type: &NodeRef,
        value_rank: i32,
        description: Option<&str>,
        context: &str,
    ) -> Result<Value> {
        let (schema, note) = self.type_schema(data_type, context)?;
        let mut schema = match value_rank {
            -1 => schema,
            rank if rank >= 1 => (0..rank).fold(
                schema,
                |items, _| json!({ "type": "array", "items": items }),
            ),
            rank => {
                return Err(Error::UnsupportedDataType {
                    context: context.to_owned(),
                    data_type: format!(
                        "{} with ValueRank {rank} (only scalars and arrays are mapped)",
                        self.space.describe(data_type)
                    ),
                })
            }
        };
        let text = match (description, note) {
            (Some(d), Some(n)) => Some(format!("{d}\n\n{n}")),
            (Some(d), None) => Some(d.to_owned()),
            (None, Some(n)) => Some(n.to_owned()),
            (None, None) => None,
        };
        if let (Some(text), Some(object)) = (text, schema.as_object_mut()) {
            object.insert("description".into(), text.into());
        }
        Ok(schema)
    }

    fn type_schema(
        &mut self,
        data_type: &NodeRef,
        context: &str,
    ) -> Result<(Value, Option<&'static str>)> {
        let unsupported = || Error::UnsupportedDataType {
            context: context.to_owned(),
            data_type: self.space.describe(data_type),
        };
        if data_type.namespace == UA_NAMESPACE {
            let mapped = data_type
                .ua_numeric()
                .and_then(builtins::schema_of)
                .ok_or_else(unsupported)?;
            self.helpers.extend(mapped.helper_defs);
            return Ok((mapped.schema, mapped.note));
        }
        let node = self
            .space
            .node(data_type)
            .filter(|n| n.class == NodeClass::DataType)
            .ok_or_else(unsupported)?;
        let target_id = self.ids.get(&data_type.namespace).ok_or_else(unsupported)?;
        if data_type.namespace == self.nodeset.model.uri {
            if !self.data_types.contains(&node.browse_name) {
                return Err(Error::UnsupportedDataType {
                    context: context.to_owned(),
                    data_type: format!(
                        "{} (abstract, no Definition)",
                        self.space.describe(data_type)
                    ),
                });
            }
            Ok((
                json!({ "$ref": format!("#/$defs/{}", node.browse_name) }),
                None,
            ))
        } else {
            Ok((
                json!({ "$ref": format!("{target_id}#/$defs/{}", node.browse_name) }),
                None,
            ))
        }
    }

    fn arguments(&self, method: &Node, name: &str) -> Result<Vec<Argument>> {
        let Some(variable) = self.space.child_named(&method.id, name) else {
            return Ok(Vec::new());
        };
        match &variable.value {
            Some(NodeValue::Arguments(arguments)) => Ok(arguments.clone()),
            None => Ok(Vec::new()),
            Some(_) => Err(self.err(
                variable,
                format!(
                    "{} of method {} is not a list of Argument",
                    name, method.browse_name
                ),
            )),
        }
    }

    /// `Type › Object` path of a method, for descriptions.
    fn owner_path(&self, method: &Node) -> String {
        let mut names = Vec::new();
        let mut current = method.parent.clone();
        while let Some(id) = current {
            let Some(node) = self.space.node(&id) else {
                break;
            };
            names.push(node.browse_name.clone());
            if node.class == NodeClass::ObjectType {
                break;
            }
            current = node.parent.clone();
        }
        names.reverse();
        names.join(" › ")
    }

    fn method_defs(&mut self, method: &Node) -> Result<(Value, Value)> {
        let model = &self.nodeset.model;
        let name = &method.browse_name;
        let cloudevent_type = format!(
            "{}.{name}.v{}",
            naming::cloudevent_prefix(&model.uri),
            naming::major_version(&model.version)
        );
        let owner = self.owner_path(method);
        let origin = json!({ "NodeId": method.id.to_string(), "BrowseName": name, "Owner": owner });
        let mut pair = Vec::new();
        for (list, suffix, what) in [
            ("InputArguments", "Call", "Input"),
            ("OutputArguments", "Response", "Output"),
        ] {
            let def_name = format!("{name}{suffix}");
            let arguments = self.arguments(method, list)?;
            let members = arguments
                .iter()
                .map(|argument| Member {
                    name: &argument.name,
                    data_type: &argument.data_type,
                    value_rank: argument.value_rank,
                    description: argument.description.as_deref(),
                    // OPC UA has no optional arguments; a null array and an
                    // absent one are the same.
                    mandatory: argument.value_rank == -1,
                    context: format!(
                        "{}: method {name} {list} {}",
                        self.nodeset.path.display(),
                        argument.name
                    ),
                })
                .collect();
            let (properties, required) = self.object_members(&def_name, members)?;
            let mut def = Map::new();
            def.insert("type".into(), "object".into());
            let intro = format!("{what} arguments of the OPC UA method `{name}` of `{owner}`.");
            let mut text = vec![intro];
            text.extend(method.description.clone());
            text.extend(
                method
                    .documentation
                    .as_ref()
                    .map(|d| format!("Specification: <{d}>")),
            );
            def.insert("description".into(), text.join("\n\n").into());
            def.insert("properties".into(), Value::Object(properties));
            if !required.is_empty() {
                def.insert("required".into(), Value::Array(required));
            }
            def.insert("x-cloudevent-type".into(), cloudevent_type.clone().into());
            def.insert(
                "x-cloudevent-dataschema".into(),
                format!("{}#/$defs/{def_name}", self.id).into(),
            );
            if suffix == "Call" {
                def.insert(
                    "x-response-dataschema".into(),
                    format!("{}#/$defs/{name}Response", self.id).into(),
                );
            }
            def.insert("x-opcua-method".into(), origin.clone());
            pair.push(Value::Object(def));
        }
        let response = pair.pop().unwrap_or_default();
        let call = pair.pop().unwrap_or_default();
        Ok((call, response))
    }

    fn event_def(&mut self, node: &Node) -> Result<Option<Value>> {
        let space: &'a AddressSpace = self.space;
        let (chain, root) = space.ancestry(&node.id);
        let Some(root) = root.as_ref().and_then(NodeRef::ua_numeric) else {
            return Ok(None);
        };
        if UNSUPPORTED_UA_EVENT_TYPES.contains(&root) {
            return Err(self.err(
                node,
                format!(
                    "event type {} derives from {}, whose fields the generator does not model",
                    node.browse_name,
                    self.space.describe(&NodeRef::ua(root))
                ),
            ));
        }
        if root != ua::BASE_EVENT_TYPE {
            return Ok(None);
        }
        // Properties of the type and its loaded supertypes, supertypes first;
        // the standard BaseEventType fields travel as CloudEvent attributes.
        let mut fields: Vec<(String, &Node)> = Vec::new();
        for event_type in chain.iter().rev() {
            for child in space.children(&event_type.id) {
                if child.class != NodeClass::Variable {
                    continue;
                }
                fields.retain(|(name, _)| name != &child.browse_name);
                fields.push((child.browse_name.clone(), child));
            }
        }
        let mut properties = Map::new();
        let mut required = Vec::new();
        for (name, variable) in fields {
            let data_type = variable
                .data_type
                .clone()
                .unwrap_or_else(|| NodeRef::ua(24));
            let context = format!(
                "{}: event type {}.{name}",
                self.nodeset.path.display(),
                node.browse_name
            );
            let property = self.property(
                &data_type,
                variable.value_rank,
                variable.description.as_deref(),
                &context,
            )?;
            let mandatory = self
                .space
                .targets(&variable.id, refs::HAS_MODELLING_RULE)
                .iter()
                .any(|r| r.is_ua(ua::MANDATORY));
            if mandatory && !self.is_nullable(&node.browse_name, &name) {
                required.push(json!(name));
            }
            properties.insert(name, property);
        }
        let model = &self.nodeset.model;
        let name = &node.browse_name;
        let mut def = Map::new();
        def.insert("type".into(), "object".into());
        let intro = format!(
            "Payload of the OPC UA event type `{name}`: its own properties; the BaseEventType fields (EventId, Time, SourceNode, …) are CloudEvent attributes."
        );
        describe(&mut def, node, Some(intro));
        def.insert("properties".into(), Value::Object(properties));
        if !required.is_empty() {
            def.insert("required".into(), Value::Array(required));
        }
        def.insert(
            "x-cloudevent-type".into(),
            format!(
                "{}.{name}.v{}",
                naming::cloudevent_prefix(&model.uri),
                naming::major_version(&model.version)
            )
            .into(),
        );
        def.insert(
            "x-cloudevent-dataschema".into(),
            format!("{}#/$defs/{name}", self.id).into(),
        );
        Ok(Some(Value::Object(def)))
    }
}

/// Sets `description` (intro, node description, documentation link) and
/// the `x-opcua-node-id` of a def.
fn describe(def: &mut Map<String, Value>, node: &Node, intro: Option<String>) {
    let mut text: Vec<String> = node.description.iter().cloned().collect();
    text.extend(intro);
    text.extend(
        node.documentation
            .as_ref()
            .map(|d| format!("Specification: <{d}>")),
    );
    if !text.is_empty() {
        def.insert("description".into(), text.join("\n\n").into());
    }
    def.insert("x-opcua-node-id".into(), node.id.to_string().into());
}

/// `def` with its keywords in a reading order: type and range, description,
/// structure, then the `x-` extensions.
fn ordered(def: Value) -> Value {
    const ORDER: &[&str] = &[
        "type",
        "format",
        "minimum",
        "maximum",
        "enum",
        "description",
        "properties",
        "required",
    ];
    let Value::Object(mut map) = def else {
        return def;
    };
    let mut out = Map::new();
    for key in ORDER {
        if let Some(value) = map.remove(*key) {
            out.insert((*key).to_owned(), value);
        }
    }
    out.extend(map);
    Value::Object(out)
}

/// A method pair without the parts that name the declaring node, to
/// compare two declarations of the same method.
fn strip_origin(pair: &(Value, Value)) -> (Value, Value) {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(o) = v.as_object_mut() {
            o.remove("x-opcua-method");
            o.remove("description");
        }
        v
    };
    (strip(&pair.0), strip(&pair.1))
}

/// A field of an enumeration or option set with its `Value` and its
/// documentation line.
struct Valued<'f> {
    field: &'f Field,
    value: i64,
    line: String,
}

/// A structure field or a method argument: a property of an object schema.
struct Member<'m> {
    name: &'m str,
    data_type: &'m NodeRef,
    value_rank: i32,
    description: Option<&'m str>,
    /// Required, unless a nullable override says otherwise.
    mandatory: bool,
    /// Where it is, for errors.
    context: String,
}
