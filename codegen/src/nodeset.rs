//! Reading one NodeSet2 XML file into plain owned structs.
//!
//! Only what the generator needs is kept: nodes with their class, NodeId,
//! browse name, parent, description, data type, value rank, references,
//! `Definition` (data types) and the few `Value`s we interpret (method
//! arguments and unsigned numbers such as `StateNumber`). NodeIds are
//! resolved against the file's `NamespaceUris` into [`NodeRef`]s, so nodes of
//! different files can be related.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use roxmltree::Node as XmlNode;

use crate::error::{Error, Result};

/// Namespace URI of the OPC UA base model (namespace index 0).
pub(crate) const UA_NAMESPACE: &str = "http://opcfoundation.org/UA/";

/// A NodeId independent of any file's namespace table: namespace URI plus
/// the identifier part (`i=3008`, `s=Name`, `g=…`, `b=…`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct NodeRef {
    pub(crate) namespace: String,
    pub(crate) identifier: String,
}

impl NodeRef {
    /// A node of the OPC UA base namespace with a numeric identifier.
    pub(crate) fn ua(id: u32) -> Self {
        Self {
            namespace: UA_NAMESPACE.to_owned(),
            identifier: format!("i={id}"),
        }
    }

    /// The numeric identifier if this is a node of namespace 0.
    pub(crate) fn ua_numeric(&self) -> Option<u32> {
        if self.namespace != UA_NAMESPACE {
            return None;
        }
        self.identifier.strip_prefix("i=")?.parse().ok()
    }

    pub(crate) fn is_ua(&self, id: u32) -> bool {
        self.ua_numeric() == Some(id)
    }
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace == UA_NAMESPACE {
            f.write_str(&self.identifier)
        } else {
            write!(f, "nsu={};{}", self.namespace, self.identifier)
        }
    }
}

/// The node classes of NodeSet2.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum NodeClass {
    Object,
    ObjectType,
    Variable,
    VariableType,
    Method,
    DataType,
    ReferenceType,
    View,
}

impl NodeClass {
    fn from_element(name: &str) -> Option<Self> {
        Some(match name {
            "UAObject" => Self::Object,
            "UAObjectType" => Self::ObjectType,
            "UAVariable" => Self::Variable,
            "UAVariableType" => Self::VariableType,
            "UAMethod" => Self::Method,
            "UADataType" => Self::DataType,
            "UAReferenceType" => Self::ReferenceType,
            "UAView" => Self::View,
            _ => return None,
        })
    }
}

/// One `<Reference>` as written on a node.
#[derive(Clone, Debug)]
pub(crate) struct Reference {
    pub(crate) reference_type: NodeRef,
    pub(crate) is_forward: bool,
    pub(crate) target: NodeRef,
}

/// A `<Field>` of a data type `<Definition>`.
#[derive(Clone, Debug)]
pub(crate) struct Field {
    pub(crate) name: String,
    /// `BaseDataType` (`i=24`) when the attribute is absent, as the schema says.
    pub(crate) data_type: NodeRef,
    pub(crate) value_rank: i32,
    pub(crate) is_optional: bool,
    pub(crate) description: Option<String>,
    /// The numeric value of an enumeration or option-set field.
    pub(crate) value: Option<i64>,
}

/// A data type `<Definition>`.
#[derive(Clone, Debug)]
pub(crate) struct Definition {
    pub(crate) fields: Vec<Field>,
    pub(crate) is_option_set: bool,
    pub(crate) is_union: bool,
}

/// An `Argument` of a method's `InputArguments`/`OutputArguments` value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Argument {
    pub(crate) name: String,
    pub(crate) data_type: NodeRef,
    pub(crate) value_rank: i32,
    pub(crate) description: Option<String>,
}

/// The interpreted `<Value>` of a variable.
#[derive(Clone, Debug)]
pub(crate) enum Value {
    /// A scalar of a built-in numeric type, as text.
    Number(String),
    /// A list of `Argument` extension objects.
    Arguments(Vec<Argument>),
    /// Anything else (not needed by the generator).
    Other,
}

/// One node of a NodeSet.
#[derive(Clone, Debug)]
pub(crate) struct Node {
    pub(crate) class: NodeClass,
    pub(crate) id: NodeRef,
    /// The NodeId exactly as written in the file (`ns=1;i=3008`).
    pub(crate) local_id: String,
    /// The name part of the browse name (without the `1:` prefix).
    pub(crate) browse_name: String,
    pub(crate) parent: Option<NodeRef>,
    pub(crate) description: Option<String>,
    pub(crate) documentation: Option<String>,
    pub(crate) data_type: Option<NodeRef>,
    pub(crate) value_rank: i32,
    pub(crate) references: Vec<Reference>,
    pub(crate) definition: Option<Definition>,
    pub(crate) value: Option<Value>,
    pub(crate) line: u32,
}

/// The `<Model>` a NodeSet defines.
#[derive(Clone, Debug)]
pub(crate) struct Model {
    pub(crate) uri: String,
    pub(crate) version: String,
    /// `YYYY-MM-DD` part of `PublicationDate`.
    pub(crate) publication_date: String,
}

/// A parsed NodeSet2 file.
#[derive(Clone, Debug)]
pub(crate) struct NodeSet {
    pub(crate) path: PathBuf,
    pub(crate) model: Model,
    /// Alias name → NodeId, for error messages ("i=256 (IdType)").
    pub(crate) alias_names: HashMap<NodeRef, String>,
    pub(crate) nodes: Vec<Node>,
}

impl NodeSet {
    /// Reads and parses a NodeSet2 file.
    pub(crate) fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    pub(crate) fn parse(path: &Path, text: &str) -> Result<Self> {
        let doc = roxmltree::Document::parse(text).map_err(|source| Error::Xml {
            path: path.to_owned(),
            source,
        })?;
        let root = doc.root_element();
        let cx = Cx { path, doc: &doc };
        if root.tag_name().name() != "UANodeSet" {
            return Err(cx.err(root, "root element is not <UANodeSet>"));
        }

        let mut namespaces = vec![UA_NAMESPACE.to_owned()];
        if let Some(uris) = child(root, "NamespaceUris") {
            namespaces.extend(children(uris, "Uri").map(|u| text_of(u).to_owned()));
        }

        let model = {
            let models = child(root, "Models").ok_or_else(|| {
                cx.err(
                    root,
                    "no <Models> element: the generator needs the model URI and version",
                )
            })?;
            let mut list = children(models, "Model");
            let first = list
                .next()
                .ok_or_else(|| cx.err(models, "<Models> declares no <Model>"))?;
            if list.next().is_some() {
                return Err(cx.err(
                    models,
                    "more than one <Model> in one NodeSet is not supported",
                ));
            }
            let attr = |name: &str| {
                first
                    .attribute(name)
                    .map(str::to_owned)
                    .ok_or_else(|| cx.err(first, &format!("<Model> has no {name} attribute")))
            };
            let date = attr("PublicationDate")?;
            Model {
                uri: attr("ModelUri")?,
                version: attr("Version")?,
                publication_date: date.get(..10).unwrap_or(&date).to_owned(),
            }
        };

        let mut aliases = HashMap::new();
        let mut alias_names = HashMap::new();
        if let Some(list) = child(root, "Aliases") {
            for alias in children(list, "Alias") {
                let name = alias
                    .attribute("Alias")
                    .ok_or_else(|| cx.err(alias, "<Alias> without Alias attribute"))?;
                let target = parse_node_id(text_of(alias), &namespaces)
                    .ok_or_else(|| cx.err(alias, &format!("alias {name}: bad NodeId")))?;
                alias_names.insert(target.clone(), name.to_owned());
                aliases.insert(name.to_owned(), target);
            }
        }
        let ids = Ids {
            namespaces: &namespaces,
            aliases: &aliases,
        };

        let mut nodes = Vec::new();
        for element in root.children().filter(XmlNode::is_element) {
            let Some(class) = NodeClass::from_element(element.tag_name().name()) else {
                continue;
            };
            nodes.push(parse_node(&cx, &ids, element, class)?);
        }

        Ok(Self {
            path: path.to_owned(),
            model,
            alias_names,
            nodes,
        })
    }
}

struct Cx<'a, 'input> {
    path: &'a Path,
    doc: &'a roxmltree::Document<'input>,
}

impl Cx<'_, '_> {
    fn err(&self, node: XmlNode<'_, '_>, message: &str) -> Error {
        Error::NodeSet {
            path: self.path.to_owned(),
            line: self.doc.text_pos_at(node.range().start).row,
            message: message.to_owned(),
        }
    }
}

struct Ids<'a> {
    namespaces: &'a [String],
    aliases: &'a HashMap<String, NodeRef>,
}

impl Ids<'_> {
    /// Resolves an attribute that may hold an alias or a NodeId.
    fn resolve(&self, text: &str) -> Option<NodeRef> {
        self.aliases
            .get(text.trim())
            .cloned()
            .or_else(|| parse_node_id(text, self.namespaces))
    }
}

/// Parses `i=1`, `ns=1;i=3008`, `nsu=http://…;s=Name`.
fn parse_node_id(text: &str, namespaces: &[String]) -> Option<NodeRef> {
    let text = text.trim();
    let (namespace, identifier) = if let Some(rest) = text.strip_prefix("ns=") {
        let (index, identifier) = rest.split_once(';')?;
        let index: usize = index.parse().ok()?;
        (namespaces.get(index)?.clone(), identifier)
    } else if let Some(rest) = text.strip_prefix("nsu=") {
        let (uri, identifier) = rest.split_once(';')?;
        (uri.to_owned(), identifier)
    } else {
        (UA_NAMESPACE.to_owned(), text)
    };
    let valid = ["i=", "s=", "g=", "b="]
        .iter()
        .any(|prefix| identifier.starts_with(prefix));
    valid.then(|| NodeRef {
        namespace,
        identifier: identifier.to_owned(),
    })
}

fn parse_node(
    cx: &Cx<'_, '_>,
    ids: &Ids<'_>,
    element: XmlNode<'_, '_>,
    class: NodeClass,
) -> Result<Node> {
    let local_id = element
        .attribute("NodeId")
        .ok_or_else(|| cx.err(element, "node without NodeId"))?;
    let id = ids
        .resolve(local_id)
        .ok_or_else(|| cx.err(element, &format!("bad NodeId {local_id:?}")))?;
    let browse_name = element
        .attribute("BrowseName")
        .ok_or_else(|| cx.err(element, &format!("node {local_id} has no BrowseName")))?;
    let browse_name = match browse_name.split_once(':') {
        Some((index, name)) if index.chars().all(|c| c.is_ascii_digit()) => name,
        _ => browse_name,
    }
    .to_owned();
    let resolve_attr = |name: &str| -> Result<Option<NodeRef>> {
        element
            .attribute(name)
            .map(|text| {
                ids.resolve(text)
                    .ok_or_else(|| cx.err(element, &format!("{browse_name}: bad {name} {text:?}")))
            })
            .transpose()
    };
    let parent = resolve_attr("ParentNodeId")?;
    let data_type = resolve_attr("DataType")?;
    let value_rank = parse_i32(cx, element, element.attribute("ValueRank"), -1)?;

    let mut references = Vec::new();
    if let Some(list) = child(element, "References") {
        for reference in children(list, "Reference") {
            let reference_type = reference
                .attribute("ReferenceType")
                .and_then(|t| ids.resolve(t))
                .ok_or_else(|| {
                    cx.err(
                        reference,
                        &format!("{browse_name}: reference without a known ReferenceType"),
                    )
                })?;
            let target = ids.resolve(text_of(reference)).ok_or_else(|| {
                cx.err(
                    reference,
                    &format!(
                        "{browse_name}: reference to bad NodeId {:?}",
                        text_of(reference)
                    ),
                )
            })?;
            references.push(Reference {
                reference_type,
                is_forward: reference.attribute("IsForward") != Some("false"),
                target,
            });
        }
    }

    let definition = child(element, "Definition")
        .map(|definition| parse_definition(cx, ids, definition, &browse_name))
        .transpose()?;
    let value = child(element, "Value")
        .map(|value| parse_value(cx, ids, value, &browse_name))
        .transpose()?;

    Ok(Node {
        class,
        id,
        local_id: local_id.trim().to_owned(),
        browse_name,
        parent,
        description: child(element, "Description").map(|d| text_of(d).to_owned()),
        documentation: child(element, "Documentation").map(|d| text_of(d).to_owned()),
        data_type,
        value_rank,
        references,
        definition,
        value,
        line: cx.doc.text_pos_at(element.range().start).row,
    })
}

fn parse_definition(
    cx: &Cx<'_, '_>,
    ids: &Ids<'_>,
    element: XmlNode<'_, '_>,
    owner: &str,
) -> Result<Definition> {
    let mut fields = Vec::new();
    for field in children(element, "Field") {
        let name = field
            .attribute("Name")
            .ok_or_else(|| cx.err(field, &format!("{owner}: <Field> without Name")))?
            .to_owned();
        let data_type = match field.attribute("DataType") {
            Some(text) => ids.resolve(text).ok_or_else(|| {
                cx.err(
                    field,
                    &format!(
                        "{owner}.{name}: unknown DataType {text:?} (neither an alias nor a NodeId)"
                    ),
                )
            })?,
            None => NodeRef::ua(24),
        };
        let value = field
            .attribute("Value")
            .map(|v| {
                v.trim().parse::<i64>().map_err(|_| {
                    cx.err(
                        field,
                        &format!("{owner}.{name}: Value {v:?} is not an integer"),
                    )
                })
            })
            .transpose()?;
        fields.push(Field {
            data_type,
            value_rank: parse_i32(cx, field, field.attribute("ValueRank"), -1)?,
            is_optional: field.attribute("IsOptional") == Some("true"),
            description: child(field, "Description").map(|d| text_of(d).to_owned()),
            value,
            name,
        });
    }
    Ok(Definition {
        fields,
        is_option_set: element.attribute("IsOptionSet") == Some("true"),
        is_union: element.attribute("IsUnion") == Some("true"),
    })
}

fn parse_value(
    cx: &Cx<'_, '_>,
    ids: &Ids<'_>,
    element: XmlNode<'_, '_>,
    owner: &str,
) -> Result<Value> {
    let Some(content) = element.children().find(XmlNode::is_element) else {
        return Ok(Value::Other);
    };
    match content.tag_name().name() {
        "SByte" | "Byte" | "Int16" | "UInt16" | "Int32" | "UInt32" | "Int64" | "UInt64" => {
            Ok(Value::Number(text_of(content).to_owned()))
        }
        "ListOfExtensionObject" => {
            let mut arguments = Vec::new();
            for object in children(content, "ExtensionObject") {
                let Some(argument) = child(object, "Body").and_then(|b| child(b, "Argument"))
                else {
                    // A list of other extension objects (e.g. EnumValueType).
                    return Ok(Value::Other);
                };
                let name = child(argument, "Name")
                    .map(|n| text_of(n).to_owned())
                    .ok_or_else(|| cx.err(argument, &format!("{owner}: Argument without Name")))?;
                let data_type = child(argument, "DataType")
                    .and_then(|d| child(d, "Identifier"))
                    .map(text_of)
                    .ok_or_else(|| {
                        cx.err(
                            argument,
                            &format!("{owner}: Argument {name} without DataType"),
                        )
                    })?;
                let data_type = ids.resolve(data_type).ok_or_else(|| {
                    cx.err(
                        argument,
                        &format!("{owner}: Argument {name} has bad DataType {data_type:?}"),
                    )
                })?;
                let value_rank = child(argument, "ValueRank").map(text_of);
                arguments.push(Argument {
                    value_rank: parse_i32(cx, argument, value_rank, -1)?,
                    description: child(argument, "Description")
                        .and_then(|d| child(d, "Text"))
                        .map(|t| text_of(t).to_owned()),
                    data_type,
                    name,
                });
            }
            Ok(Value::Arguments(arguments))
        }
        _ => Ok(Value::Other),
    }
}

fn parse_i32(
    cx: &Cx<'_, '_>,
    element: XmlNode<'_, '_>,
    text: Option<&str>,
    default: i32,
) -> Result<i32> {
    match text {
        None => Ok(default),
        Some(text) => text
            .trim()
            .parse()
            .map_err(|_| cx.err(element, &format!("{text:?} is not an integer"))),
    }
}

fn child<'a, 'input>(node: XmlNode<'a, 'input>, name: &str) -> Option<XmlNode<'a, 'input>> {
    node.children()
        .find(|c| c.is_element() && c.tag_name().name() == name)
}

fn children<'a, 'input: 'a>(
    node: XmlNode<'a, 'input>,
    name: &'a str,
) -> impl Iterator<Item = XmlNode<'a, 'input>> + 'a {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn text_of<'a>(node: XmlNode<'a, '_>) -> &'a str {
    node.text().map(str::trim).unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_resolve_against_the_namespace_table() {
        let ns = vec![UA_NAMESPACE.to_owned(), "urn:a".to_owned()];
        assert_eq!(parse_node_id("i=12", &ns), Some(NodeRef::ua(12)));
        assert_eq!(
            parse_node_id("ns=1;i=3008", &ns),
            Some(NodeRef {
                namespace: "urn:a".into(),
                identifier: "i=3008".into()
            })
        );
        assert_eq!(parse_node_id("ns=2;i=1", &ns), None);
        assert_eq!(parse_node_id("Boolean", &ns), None);
    }
}
