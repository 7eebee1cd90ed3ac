//! The structured DataTypes of the face (ISA95-JOBCONTROL, Machinery Jobs)
//! as a run-time type tree (plan §4.3).
//!
//! The server cannot decode an `ISA95JobOrderDataType` argument without a
//! type loader for it, and the generated loaders of `async-opcua-codegen`
//! ignore `IsOptional` (wrong on the wire for every ISA95 type). So the
//! tree is built at start from the DataTypeDefinitions of the imported
//! NodeSets plus the namespace-0 types they use (`EUInformation`,
//! `RelativePath`, `DecimalString` → `String`, …), and a
//! [`DynamicTypeLoader`] over it is registered with the server. The same
//! tree drives the JSON ⇄ OPC UA conversion ([`Types::encode`],
//! [`Types::decode`], in `convert.rs`).

use opcua::nodes::DefaultTypeTree;
use opcua::server::address_space::{AddressSpace, NodeType};
use opcua::types::custom::{DataTypeTree, DynamicTypeLoader, EncodingIds, ParentIds, TypeInfo};
use opcua::types::{
    BrowseDirection, DataTypeDefinition, DataTypeId, NodeId, ReferenceTypeId, StructureField,
};
use opcua::types::{DynEncodable, EncodingResult, Error, TypeLoader, TypeLoaderPriority};
use std::cell::Cell;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

// Part of this module's API (the conversion lives in `convert.rs`).
#[allow(unused_imports)]
pub(crate) use super::convert::ConvertError;

/// `JC:ISA95JobOrderDataType`.
pub(crate) const JOB_ORDER: u32 = 3008;
/// `JC:ISA95JobResponseDataType`.
pub(crate) const JOB_RESPONSE: u32 = 3013;
/// `JC:ISA95StateDataType`.
pub(crate) const STATE: u32 = 3006;
/// `JC:ISA95JobOrderAndStateDataType` (`JobOrderList` entries).
#[allow(dead_code)]
pub(crate) const JOB_ORDER_AND_STATE: u32 = 3015;
/// `JC:ISA95WorkMasterDataType` (the receiver's `WorkMaster` list).
#[allow(dead_code)]
pub(crate) const WORK_MASTER: u32 = 3007;

/// How deeply structures of the tree may nest in one message. The
/// recursive `ISA95PropertyDataType.Subproperties` lets a client nest
/// without end, and async-opcua 0.19's `DynamicTypeLoader` recurses without
/// a depth check: some 20 000 levels (260 kB, within the default message
/// size) overflow the stack and abort the server. Real orders nest a
/// handful of levels.
pub(crate) const MAX_NESTING: u32 = 64;

thread_local! {
    /// Structures being decoded on this thread (decoding is synchronous).
    static NESTING: Cell<u32> = const { Cell::new(0) };
}

/// Leaves one nesting level when dropped.
struct Nested;

impl Nested {
    /// Enters a level; `None` past [`MAX_NESTING`].
    fn enter() -> (Nested, bool) {
        let depth = NESTING.with(|n| {
            let d = n.get().saturating_add(1);
            n.set(d);
            d
        });
        (Nested, depth <= MAX_NESTING)
    }
}

impl Drop for Nested {
    fn drop(&mut self) {
        NESTING.with(|n| n.set(n.get().saturating_sub(1)));
    }
}

/// The face's type loader: async-opcua's [`DynamicTypeLoader`] over the
/// tree, refusing structures nested deeper than [`MAX_NESTING`] (a
/// `BadDecodingError` for the request instead of a stack overflow).
pub(crate) struct Loader {
    inner: DynamicTypeLoader,
    tree: Arc<DataTypeTree>,
}

impl Loader {
    fn knows(&self, node_id: &NodeId) -> bool {
        self.tree.encoding_to_data_type().contains_key(node_id)
            || self.tree.get_struct_type(node_id).is_some()
    }

    fn too_deep() -> EncodingResult<Box<dyn DynEncodable>> {
        Err(Error::decoding(format!(
            "structures nested deeper than {MAX_NESTING} levels"
        )))
    }
}

impl TypeLoader for Loader {
    fn load_from_xml(
        &self,
        node_id: &NodeId,
        stream: &mut opcua::types::xml::XmlStreamReader<&mut dyn std::io::Read>,
        ctx: &opcua::types::Context<'_>,
        name: &str,
    ) -> Option<EncodingResult<Box<dyn DynEncodable>>> {
        if !self.knows(node_id) {
            return None;
        }
        let (_level, ok) = Nested::enter();
        if !ok {
            return Some(Self::too_deep());
        }
        self.inner.load_from_xml(node_id, stream, ctx, name)
    }

    fn load_from_binary(
        &self,
        node_id: &NodeId,
        stream: &mut dyn std::io::Read,
        ctx: &opcua::types::Context<'_>,
        length: Option<usize>,
    ) -> Option<EncodingResult<Box<dyn DynEncodable>>> {
        if !self.knows(node_id) {
            return None;
        }
        let (_level, ok) = Nested::enter();
        if !ok {
            return Some(Self::too_deep());
        }
        let Some(length) = length else {
            // A structure inside a structure: framed by its parent.
            return self.inner.load_from_binary(node_id, stream, ctx, None);
        };
        // An ExtensionObject body: decode exactly its declared length.
        // async-opcua's DynamicTypeLoader ignores the length, so bytes a
        // client appends (a newer version of the structure) were read as
        // the next arguments, and a body shorter than declared borrowed
        // them. Read through `take` (no allocation by the declared length:
        // a client may declare 2 GB).
        let mut body = Vec::new();
        let mut limited = std::io::Read::take(stream, length as u64);
        if let Err(e) = std::io::Read::read_to_end(&mut limited, &mut body) {
            return Some(Err(Error::decoding(format!(
                "ExtensionObject body unreadable: {e}"
            ))));
        }
        if body.len() < length {
            return Some(Err(Error::decoding(format!(
                "ExtensionObject body of {} bytes where {length} were declared",
                body.len()
            ))));
        }
        let mut cursor = std::io::Cursor::new(body);
        self.inner
            .load_from_binary(node_id, &mut cursor, ctx, Some(length))
    }

    fn priority(&self) -> TypeLoaderPriority {
        self.inner.priority()
    }
}

/// The structured types of the face: the type tree and the namespace index
/// of ISA95-JOBCONTROL on this server. Cheap to share (`Arc` inside).
pub(crate) struct Types {
    pub(super) tree: Arc<DataTypeTree>,
    /// The ISA95-JOBCONTROL namespace index (the `jc_type` numbers of
    /// [`Types::encode`] are in it).
    pub(super) jc: u16,
}

impl std::fmt::Debug for Types {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Types").field("jc", &self.jc).finish()
    }
}

/// The first node of `id` found in `spaces`.
fn find<'a>(spaces: &[&'a AddressSpace], id: &NodeId) -> Option<&'a NodeType> {
    spaces.iter().find_map(|s| s.find(id))
}

/// The targets of `reference` from `id` in `direction`, over all `spaces`.
fn related(
    spaces: &[&AddressSpace],
    id: &NodeId,
    reference: ReferenceTypeId,
    direction: BrowseDirection,
) -> Vec<NodeId> {
    // Exact reference type: no populated type tree needed.
    let tt = DefaultTypeTree::new();
    let mut out = Vec::new();
    for s in spaces {
        for r in s.find_references(id, Some((reference, false)), &tt, direction) {
            if !out.contains(r.target_node) {
                out.push(r.target_node.clone());
            }
        }
    }
    out
}

/// Whether `id` is a namespace-0 type the type tree resolves by itself
/// (`ParentIds::get_builtin_type` knows it without a parent).
fn is_root(id: &NodeId) -> bool {
    id.namespace == 0
        && matches!(
            id.as_data_type_id(),
            Ok(DataTypeId::Boolean
                | DataTypeId::SByte
                | DataTypeId::Byte
                | DataTypeId::Int16
                | DataTypeId::UInt16
                | DataTypeId::Int32
                | DataTypeId::UInt32
                | DataTypeId::Int64
                | DataTypeId::UInt64
                | DataTypeId::Float
                | DataTypeId::Double
                | DataTypeId::String
                | DataTypeId::DateTime
                | DataTypeId::Guid
                | DataTypeId::ByteString
                | DataTypeId::XmlElement
                | DataTypeId::NodeId
                | DataTypeId::ExpandedNodeId
                | DataTypeId::StatusCode
                | DataTypeId::QualifiedName
                | DataTypeId::LocalizedText
                | DataTypeId::DataValue
                | DataTypeId::DiagnosticInfo
                | DataTypeId::BaseDataType
                | DataTypeId::Structure
                | DataTypeId::Decimal
                | DataTypeId::Enumeration)
        )
}

/// The `Default Binary` / `Default XML` / `Default JSON` encodings of a
/// DataType (null ids for those the NodeSet does not declare).
fn encodings(spaces: &[&AddressSpace], id: &NodeId) -> EncodingIds {
    let mut ids = EncodingIds::default();
    for enc in related(
        spaces,
        id,
        ReferenceTypeId::HasEncoding,
        BrowseDirection::Forward,
    ) {
        let Some(node) = find(spaces, &enc) else {
            continue;
        };
        match node.as_node().browse_name().name.as_ref() {
            "Default Binary" => ids.binary_id = enc,
            "Default XML" => ids.xml_id = enc,
            "Default JSON" => ids.json_id = enc,
            _ => {}
        }
    }
    ids
}

/// The structure fields of a DataType node, if it is a structure.
fn struct_fields(node: &NodeType) -> Option<&[StructureField]> {
    let NodeType::DataType(dt) = node else {
        return None;
    };
    match dt.data_type_definition()? {
        DataTypeDefinition::Structure(s) => Some(s.fields.as_deref().unwrap_or_default()),
        DataTypeDefinition::Enum(_) => None,
    }
}

/// The structured DataTypes below `Structure` in the namespaces `owned`
/// (the HasSubtype tree as far as it is in `space`).
fn owned_structures(space: &AddressSpace, owned: &[u16]) -> Vec<NodeId> {
    let mut out = Vec::new();
    let mut queue = VecDeque::from([NodeId::from(DataTypeId::Structure)]);
    let mut seen = HashSet::new();
    while let Some(id) = queue.pop_front() {
        for child in related(
            &[space],
            &id,
            ReferenceTypeId::HasSubtype,
            BrowseDirection::Forward,
        ) {
            if seen.insert(child.clone()) {
                if owned.contains(&child.namespace) {
                    out.push(child.clone());
                }
                queue.push_back(child);
            }
        }
    }
    out
}

/// Fills what the NodeSet import leaves empty in the `DataTypeDefinition`
/// of our structured DataTypes: `DefaultEncodingId` (the `Default Binary`
/// encoding; async-opcua's NodeSet import finds it only when the file's
/// namespace indices equal the server's, which they never do here) and `BaseDataType` (the
/// supertype). Generic clients build their ExtensionObjects from these:
/// Python asyncua sends a null type id when `DefaultEncodingId` is null,
/// which the server cannot decode. Returns how many definitions changed.
pub(crate) fn complete_definitions(space: &mut AddressSpace, owned: &[u16]) -> usize {
    let mut changes = Vec::new();
    for id in owned_structures(space, owned) {
        let Some(NodeType::DataType(dt)) = space.find(&id) else {
            continue;
        };
        let Some(DataTypeDefinition::Structure(def)) = dt.data_type_definition() else {
            continue;
        };
        let mut def = def.clone();
        let mut changed = false;
        if def.default_encoding_id.is_null() {
            let binary = encodings(&[space], &id).binary_id;
            if !binary.is_null() {
                def.default_encoding_id = binary;
                changed = true;
            }
        }
        if def.base_data_type.is_null() {
            if let Some(parent) = related(
                &[space],
                &id,
                ReferenceTypeId::HasSubtype,
                BrowseDirection::Inverse,
            )
            .into_iter()
            .next()
            {
                def.base_data_type = parent;
                changed = true;
            }
        }
        if changed {
            changes.push((id, def));
        }
    }
    let n = changes.len();
    for (id, def) in changes {
        if let Some(NodeType::DataType(dt)) = space.find_mut(&id) {
            dt.set_data_type_definition(Some(DataTypeDefinition::Structure(def)));
        }
    }
    n
}

impl Types {
    /// Builds the tree from `spaces`: every structured DataType below
    /// `Structure` in the namespaces `owned` (searched in `spaces[0]`),
    /// and every type their fields use, found in any of `spaces` (pass the
    /// face's address space first and the core node manager's, with
    /// namespace 0, after it). `jc` is the ISA95-JOBCONTROL namespace index.
    ///
    /// # Errors
    /// A type of an `owned` namespace cannot be described (a field type
    /// that no space defines, missing encodings): a NodeSet defect.
    pub(crate) fn build(spaces: &[&AddressSpace], owned: &[u16], jc: u16) -> Result<Self, String> {
        let Some(own) = spaces.first() else {
            return Err("no address space to read the types from".to_owned());
        };
        // 1. The structured types of our namespaces.
        let start = owned_structures(own, owned);
        if start.is_empty() {
            return Err("the NodeSets define no structured DataType".to_owned());
        }

        // 2. Their closure over field types, with every type's parent chain.
        let mut parents = ParentIds::new();
        let mut structs: Vec<NodeId> = Vec::new();
        let mut visited: HashSet<NodeId> = HashSet::new();
        let mut queue: VecDeque<NodeId> = start.iter().cloned().collect();
        while let Some(id) = queue.pop_front() {
            if is_root(&id) || !visited.insert(id.clone()) {
                continue;
            }
            // The parent chain up to a type the tree knows by itself.
            let mut child = id.clone();
            while !is_root(&child) {
                let Some(parent) = related(
                    spaces,
                    &child,
                    ReferenceTypeId::HasSubtype,
                    BrowseDirection::Inverse,
                )
                .into_iter()
                .next() else {
                    return Err(format!("DataType {child} has no supertype"));
                };
                parents.add_type(child.clone(), parent.clone());
                child = parent;
            }
            let Some(node) = find(spaces, &id) else {
                return Err(format!("DataType {id} is not in the address space"));
            };
            if let Some(fields) = struct_fields(node) {
                structs.push(id.clone());
                for f in fields {
                    queue.push_back(f.data_type.clone());
                }
            }
        }

        // 3. A TypeInfo per structure.
        let mut tree = DataTypeTree::new(parents);
        for id in &structs {
            let Some(node @ NodeType::DataType(dt)) = find(spaces, id) else {
                continue;
            };
            let Some(def) = dt.data_type_definition() else {
                continue;
            };
            let name = node.as_node().browse_name().name.as_ref().to_owned();
            let mut enc = encodings(spaces, id);
            // A missing XML/JSON encoding would map the null NodeId to this
            // type in the loader, and an ExtensionObject with a null type
            // id would be decoded as it (garbage) instead of failing. The
            // face sends binary only.
            for other in [&mut enc.xml_id, &mut enc.json_id] {
                if other.is_null() {
                    other.clone_from(&enc.binary_id);
                }
            }
            let info = TypeInfo::from_type_definition(
                def.clone(),
                name.clone(),
                Some(enc),
                dt.is_abstract(),
                id,
                tree.parent_ids(),
            )
            .map_err(|e| format!("DataType {name} ({id}): {e}"))?;
            if let TypeInfo::Struct(s) = &info {
                if s.encoding_ids.binary_id.is_null() {
                    return Err(format!(
                        "DataType {name} ({id}) has no Default Binary encoding"
                    ));
                }
            }
            tree.add_type(id.clone(), info);
        }
        Ok(Types {
            tree: Arc::new(tree),
            jc,
        })
    }

    /// The type loader to register with the server (`ServerInfo::add_type_loader`)
    /// so that arguments of these types are decoded as [`DynamicStructure`](opcua::types::custom::DynamicStructure)s
    /// (nested at most [`MAX_NESTING`] levels).
    pub(crate) fn loader(&self) -> Arc<Loader> {
        Arc::new(Loader {
            inner: DynamicTypeLoader::new(self.tree.clone()),
            tree: self.tree.clone(),
        })
    }

    /// The NodeId of JC DataType `jc_type` (e.g. [`JOB_ORDER`]) on this server.
    pub(crate) fn jc_type(&self, jc_type: u32) -> NodeId {
        NodeId::new(self.jc, jc_type)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::node_manager::{JC_URI, MJ_URI};
    use super::*;
    use opcua::server::address_space::CoreNamespace;
    use opcua::types::NamespaceMap;

    /// An address space with the two NodeSets, one with namespace 0 (the
    /// core node manager's), the namespace map and the types built from
    /// them, as the server has them.
    pub(crate) fn fixture() -> (Types, NamespaceMap) {
        let mut tt = DefaultTypeTree::new();
        let mut core = AddressSpace::new();
        core.import_node_set(&CoreNamespace, tt.namespaces_mut());
        // Another namespace at 1, as on the server (its own).
        tt.namespaces_mut().add_namespace("urn:test:server");
        let mut own = AddressSpace::new();
        for import in super::super::nodesets().expect("the NodeSets load") {
            own.import_node_set(&*import, tt.namespaces_mut());
        }
        let jc = own.namespace_index(JC_URI).expect("JC namespace");
        let mj = own.namespace_index(MJ_URI).expect("MJ namespace");
        assert!(complete_definitions(&mut own, &[jc, mj]) >= 11);
        let types = Types::build(&[&own, &core], &[jc, mj], jc).expect("types build");
        (types, tt.namespaces().clone())
    }

    /// Generic clients (asyncua) build ExtensionObjects from the
    /// definition's DefaultEncodingId: it names the Default Binary encoding.
    #[test]
    fn definitions_name_their_binary_encoding_and_supertype() {
        let mut tt = DefaultTypeTree::new();
        // The importer finds the encodings only when the file's namespace
        // indices are the server's; on a server they are not.
        tt.namespaces_mut().add_namespace("urn:test:server");
        let mut own = AddressSpace::new();
        for import in super::super::nodesets().expect("the NodeSets load") {
            own.import_node_set(&*import, tt.namespaces_mut());
        }
        let jc = own.namespace_index(JC_URI).expect("JC namespace");
        let mj = own.namespace_index(MJ_URI).expect("MJ namespace");
        let changed = complete_definitions(&mut own, &[jc, mj]);
        assert!(changed >= 11, "{changed}");
        assert_eq!(complete_definitions(&mut own, &[jc, mj]), 0, "idempotent");
        let order = NodeId::new(jc, JOB_ORDER);
        let Some(NodeType::DataType(dt)) = own.find(&order) else {
            panic!("ISA95JobOrderDataType");
        };
        let Some(DataTypeDefinition::Structure(def)) = dt.data_type_definition() else {
            panic!("a structure definition");
        };
        assert_eq!(
            def.default_encoding_id,
            encodings(&[&own], &order).binary_id
        );
        assert!(!def.default_encoding_id.is_null());
        assert_eq!(def.base_data_type, NodeId::from(DataTypeId::Structure));
    }

    #[test]
    fn every_isa95_structure_and_the_namespace_0_types_they_use_are_described() {
        let (types, _) = fixture();
        for (n, name) in [
            (3002, "ISA95PropertyDataType"),
            (3003, "ISA95ParameterDataType"),
            (3005, "ISA95EquipmentDataType"),
            (STATE, "ISA95StateDataType"),
            (WORK_MASTER, "ISA95WorkMasterDataType"),
            (JOB_ORDER, "ISA95JobOrderDataType"),
            (3010, "ISA95MaterialDataType"),
            (3011, "ISA95PersonnelDataType"),
            (3012, "ISA95PhysicalAssetDataType"),
            (JOB_RESPONSE, "ISA95JobResponseDataType"),
            (JOB_ORDER_AND_STATE, "ISA95JobOrderAndStateDataType"),
        ] {
            let info = types
                .tree
                .get_struct_type(&types.jc_type(n))
                .unwrap_or_else(|| panic!("{name} is in the tree"));
            assert_eq!(info.name, name);
            assert!(!info.encoding_ids.binary_id.is_null(), "{name} binary");
        }
        // Namespace-0 structures used by fields.
        for id in [DataTypeId::EUInformation, DataTypeId::RelativePath] {
            assert!(types.tree.get_struct_type(&id.into()).is_some(), "{id:?}");
        }
        let order = types
            .tree
            .get_struct_type(&types.jc_type(JOB_ORDER))
            .expect("job order");
        assert_eq!(order.fields.len(), 11);
        let id = order.get_field_by_name("JobOrderID").expect("JobOrderID");
        assert!(!id.is_optional);
        let wm = order
            .get_field_by_name("WorkMasterID")
            .expect("WorkMasterID");
        assert!(wm.is_optional && wm.value_rank == 1);
        // DecimalString resolves to String through its parent.
        let material = types
            .tree
            .get_struct_type(&types.jc_type(3010))
            .expect("material");
        let quantity = material.get_field_by_name("Quantity").expect("Quantity");
        assert_eq!(
            quantity.scalar_type,
            opcua::types::VariantScalarTypeId::String
        );
        // A field without DataType is BaseDataType: any Variant.
        let parameter = types
            .tree
            .get_struct_type(&types.jc_type(3003))
            .expect("parameter");
        let value = parameter.get_field_by_name("Value").expect("Value");
        assert_eq!(
            value.scalar_type,
            opcua::types::VariantScalarTypeId::Variant
        );
    }
}
