//! The node manager of the job management face: owns the ISA95-JOBCONTROL,
//! Machinery Jobs and station namespaces (one manager must own all three,
//! or method calls are routed nowhere) and the per-scope `JobManagement`
//! instances.

use super::types::Types;
use crate::jobs::JobManager;
use opcua::nodes::{DefaultTypeTree, NodeSetImport, ReferenceDirection};
use opcua::server::address_space::{
    AddressSpace, EventNotifier, MethodBuilder, NodeType, ObjectBuilder, VariableBuilder,
};
use opcua::server::diagnostics::NamespaceMetadata;
use opcua::server::node_manager::memory::{
    CoreNodeManager, InMemoryNodeManagerImpl, InMemoryNodeManagerImplBuilder,
};
use opcua::server::node_manager::{MethodCall, RequestContext, ServerContext};
use opcua::sync::RwLock;
use opcua::types::{
    BrowseDirection, DataEncoding, LocalizedText, NodeClass, NodeId, NumericRange, ObjectId,
    QualifiedName, ReferenceTypeId, StatusCode, TimestampsToReturn, Variant,
};
use std::collections::HashSet;
use std::sync::{Arc, OnceLock};
use tracing::{debug, error, info, warn};

/// Namespace URI of ISA95-JOBCONTROL (the job order receiver and its
/// methods).
pub(crate) const JC_URI: &str = "http://opcfoundation.org/UA/ISA95-JOBCONTROL_V2/";
/// Namespace URI of OPC UA Machinery Job Management.
pub(crate) const MJ_URI: &str = "http://opcfoundation.org/UA/Machinery/Jobs/";
/// Namespace URI of the station's own nodes (the scopes' instances).
pub(crate) const STATION_URI: &str = "urn:microdcs:jobs";

/// `MJ:JobManagementType`.
const JOB_MANAGEMENT_TYPE: u32 = 1003;
/// `JC:ISA95JobOrderReceiverObjectType` and `JC:ISA95JobResponseProviderObjectType`:
/// their methods are Optional in the type and not redeclared by Machinery
/// Jobs, so an instance gets them from the type.
const METHOD_TYPES: [u32; 2] = [1002, 1003];

/// Builds [`JobsNodeManager`]: imports the NodeSets into the address space.
pub(crate) struct JobsNodeManagerBuilder {
    pub(crate) imports: Vec<Box<dyn NodeSetImport>>,
    pub(crate) scopes: Vec<String>,
    pub(crate) manager: JobManager,
    /// This replica's instance id (audit trail source).
    pub(crate) instance: String,
}

impl InMemoryNodeManagerImplBuilder for JobsNodeManagerBuilder {
    type Impl = JobsNodeManager;

    fn build(self, context: ServerContext, address_space: &mut AddressSpace) -> JobsNodeManager {
        let mut namespaces = Vec::new();
        {
            // The type tree lock is free here (not in `init`).
            let mut type_tree = context.type_tree.write();
            for import in &self.imports {
                address_space.import_node_set(&**import, type_tree.namespaces_mut());
            }
            for uri in [JC_URI, MJ_URI, STATION_URI] {
                let index = type_tree.namespaces_mut().add_namespace(uri);
                namespaces.push(NamespaceMetadata {
                    namespace_uri: uri.to_owned(),
                    namespace_index: index,
                    ..Default::default()
                });
            }
        }
        for ns in &namespaces {
            address_space.add_namespace(&ns.namespace_uri, ns.namespace_index);
        }
        JobsNodeManager {
            namespaces,
            scopes: self.scopes,
            manager: self.manager,
            instance: self.instance,
            types: OnceLock::new(),
        }
    }
}

/// The job management node manager (`InMemoryNodeManagerImpl`).
pub(crate) struct JobsNodeManager {
    namespaces: Vec<NamespaceMetadata>,
    scopes: Vec<String>,
    manager: JobManager,
    instance: String,
    /// The structured DataTypes, built in `init` (absent only if the
    /// NodeSets could not be described: then structured calls fail).
    types: OnceLock<Arc<Types>>,
}

impl JobsNodeManager {
    /// The structured DataTypes (JSON ⇄ OPC UA conversion); `None` before
    /// `init` or when they could not be built (logged at start).
    pub(crate) fn types(&self) -> Option<Arc<Types>> {
        self.types.get().cloned()
    }

    /// Builds the type tree from our address space and the core node
    /// manager's (namespace 0) and registers its type loader with the
    /// server, so structured arguments decode. Runs in `init`, before the
    /// first connection (each connection copies the loaders when it opens).
    fn init_types(&self, address_space: &mut AddressSpace, context: &ServerContext) {
        let owned = [self.index(JC_URI), self.index(MJ_URI)];
        let completed = super::types::complete_definitions(address_space, &owned);
        debug!(completed, "OPC UA DataTypeDefinitions completed");
        let address_space = &*address_space;
        let core = context.node_managers.get_of_type::<CoreNodeManager>();
        let core_space = core.as_ref().map(|c| c.address_space().read());
        let mut spaces = vec![address_space];
        if let Some(c) = &core_space {
            spaces.push(&**c);
        } else {
            warn!("OPC UA core node manager not found: namespace-0 types unknown");
        }
        let built = Types::build(&spaces, &owned, self.index(JC_URI));
        drop(core_space);
        match built {
            Ok(types) => {
                let types = Arc::new(types);
                context.info.add_type_loader(types.loader());
                // Set once: `init` runs once.
                let _ = self.types.set(types);
            }
            Err(e) => error!(
                error = %e,
                "OPC UA structured DataTypes cannot be described: structured method calls will fail"
            ),
        }
    }

    fn index(&self, uri: &str) -> u16 {
        self.namespaces
            .iter()
            .find(|n| n.namespace_uri == uri)
            .map_or(0, |n| n.namespace_index)
    }
}

#[async_trait::async_trait]
impl InMemoryNodeManagerImpl for JobsNodeManager {
    async fn init(&self, address_space: &mut AddressSpace, context: ServerContext) {
        // No `context.type_tree` lock here: the server holds it while it
        // calls `init` (deadlock).
        self.init_types(address_space, &context);
        let ids = Indices {
            jc: self.index(JC_URI),
            mj: self.index(MJ_URI),
            station: self.index(STATION_URI),
        };
        for scope in &self.scopes {
            let nodes = add_scope(address_space, &ids, scope);
            info!(scope, nodes, "OPC UA JobManagement instance added");
        }
    }

    fn name(&self) -> &str {
        "microdcs-jobs"
    }

    fn namespaces(&self) -> Vec<NamespaceMetadata> {
        self.namespaces.clone()
    }

    async fn call(
        &self,
        context: &RequestContext,
        _address_space: &RwLock<AddressSpace>,
        methods_to_call: &mut [&mut &mut MethodCall],
    ) -> Result<(), StatusCode> {
        let station = self.index(STATION_URI);
        let types = self.types();
        for call in methods_to_call.iter_mut() {
            super::methods::call(
                &self.manager,
                types.as_deref(),
                station,
                &self.instance,
                &context.token.0,
                call,
            )
            .await;
        }
        Ok(())
    }
}

/// The namespace indices the server gave the three namespaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Indices {
    pub(crate) jc: u16,
    pub(crate) mj: u16,
    pub(crate) station: u16,
}

impl JobsNodeManager {
    /// The indices of the ISA95-JOBCONTROL, Machinery Jobs and station
    /// namespaces (fixed when the server is built).
    pub(crate) fn indices(&self) -> Indices {
        Indices {
            jc: self.index(JC_URI),
            mj: self.index(MJ_URI),
            station: self.index(STATION_URI),
        }
    }
}

/// A node to create, planned while the address space is read.
enum Plan {
    Object {
        id: NodeId,
        browse: QualifiedName,
        display: LocalizedText,
        type_def: Option<NodeId>,
        parent: NodeId,
        reference: ReferenceTypeId,
    },
    Variable {
        id: NodeId,
        browse: QualifiedName,
        display: LocalizedText,
        data_type: NodeId,
        value_rank: i32,
        value: Option<Variant>,
        type_def: Option<NodeId>,
        parent: NodeId,
        reference: ReferenceTypeId,
    },
    Method {
        id: NodeId,
        browse: QualifiedName,
        display: LocalizedText,
        parent: NodeId,
    },
}

/// Adds `Objects/<scope>/JobManagement` (an `MJ:JobManagementType`
/// instance built from the type's instance declarations) and returns how
/// many nodes were created. Node ids are strings in the station namespace:
/// `<scope>/JobManagement/JobOrderControl/Store`.
pub(crate) fn add_scope(address_space: &mut AddressSpace, ns: &Indices, scope: &str) -> usize {
    let folder = NodeId::new(ns.station, scope.to_owned());
    if address_space.node_exists(&folder) {
        return 0;
    }
    let root_path = format!("{scope}/JobManagement");
    let root = NodeId::new(ns.station, root_path.clone());
    let root_type = NodeId::new(ns.mj, JOB_MANAGEMENT_TYPE);
    let method_types: Vec<NodeId> = METHOD_TYPES
        .iter()
        .map(|i| NodeId::new(ns.jc, *i))
        .collect();
    let mut plan = Vec::new();
    plan_children(
        address_space,
        &root_type,
        &root,
        &root_path,
        ns.station,
        &method_types,
        &mut plan,
    );

    let mut created = 0;
    if ObjectBuilder::new(&folder, QualifiedName::new(ns.station, scope), scope)
        .is_folder()
        .organized_by(ObjectId::ObjectsFolder)
        .event_notifier(EventNotifier::SUBSCRIBE_TO_EVENTS)
        .insert(address_space)
    {
        created += 1;
    }
    if ObjectBuilder::new(
        &root,
        QualifiedName::new(ns.mj, "JobManagement"),
        "JobManagement",
    )
    .has_type_definition(root_type)
    .organized_by(folder)
    .event_notifier(EventNotifier::SUBSCRIBE_TO_EVENTS)
    .insert(address_space)
    {
        created += 1;
    }
    for p in plan {
        let ok = match p {
            Plan::Object {
                id,
                browse,
                display,
                type_def,
                parent,
                reference,
            } => {
                let mut b = ObjectBuilder::new(&id, browse, display)
                    .reference(parent, reference, ReferenceDirection::Inverse)
                    .event_notifier(EventNotifier::SUBSCRIBE_TO_EVENTS);
                if let Some(t) = type_def {
                    b = b.has_type_definition(t);
                }
                b.insert(address_space)
            }
            Plan::Variable {
                id,
                browse,
                display,
                data_type,
                value_rank,
                value,
                type_def,
                parent,
                reference,
            } => {
                let mut b = VariableBuilder::new(&id, browse, display)
                    .data_type(data_type)
                    .value_rank(value_rank)
                    .reference(parent, reference, ReferenceDirection::Inverse);
                if let Some(v) = value {
                    b = b.value(v);
                }
                if let Some(t) = type_def {
                    b = b.has_type_definition(t);
                }
                b.insert(address_space)
            }
            Plan::Method {
                id,
                browse,
                display,
                parent,
            } => MethodBuilder::new(&id, browse, display)
                .component_of(parent)
                .executable(true)
                .user_executable(true)
                .insert(address_space),
        };
        if ok {
            created += 1;
        } else {
            warn!(
                scope,
                "an OPC UA node of the JobManagement instance was not created"
            );
        }
    }
    created
}

/// The first target of `reference` from `source`, forward.
fn target(asp: &AddressSpace, source: &NodeId, reference: ReferenceTypeId) -> Option<NodeId> {
    let tt = DefaultTypeTree::new();
    let found = asp
        .find_references(
            source,
            Some((reference, false)),
            &tt,
            BrowseDirection::Forward,
        )
        .next()
        .map(|r| r.target_node.clone());
    found
}

/// Plans the instance children of `decl` (a type or an instance
/// declaration) under `inst`: its mandatory components and properties,
/// recursively, then the mandatory children of an object's own type not
/// redeclared, and every method of `method_types`.
fn plan_children(
    asp: &AddressSpace,
    decl: &NodeId,
    inst: &NodeId,
    path: &str,
    station: u16,
    method_types: &[NodeId],
    out: &mut Vec<Plan>,
) {
    let mut seen = HashSet::new();
    plan_declared(
        asp,
        decl,
        inst,
        path,
        station,
        method_types,
        out,
        &mut seen,
        true,
    );
    if let Some(type_def) = target(asp, decl, ReferenceTypeId::HasTypeDefinition) {
        let all = method_types.contains(&type_def);
        plan_declared(
            asp,
            &type_def,
            inst,
            path,
            station,
            method_types,
            out,
            &mut seen,
            !all,
        );
    }
}

#[allow(clippy::too_many_arguments)]
fn plan_declared(
    asp: &AddressSpace,
    decl: &NodeId,
    inst: &NodeId,
    path: &str,
    station: u16,
    method_types: &[NodeId],
    out: &mut Vec<Plan>,
    seen: &mut HashSet<QualifiedName>,
    mandatory_only: bool,
) {
    let tt = DefaultTypeTree::new();
    let mandatory = NodeId::from(ObjectId::ModellingRule_Mandatory);
    for reference in [ReferenceTypeId::HasComponent, ReferenceTypeId::HasProperty] {
        let children: Vec<NodeId> = asp
            .find_references(
                decl,
                Some((reference, false)),
                &tt,
                BrowseDirection::Forward,
            )
            .map(|r| r.target_node.clone())
            .collect();
        for child in children {
            let Some(node) = asp.find(&child) else {
                continue;
            };
            let is_mandatory =
                asp.has_reference(&child, &mandatory, ReferenceTypeId::HasModellingRule);
            let is_method = node.node_class() == NodeClass::Method;
            // Methods of the receiver/provider types are Optional there and
            // wanted all; everything else only when Mandatory.
            if mandatory_only && !is_mandatory {
                continue;
            }
            if !mandatory_only && !is_mandatory && !is_method {
                continue;
            }
            let n = node.as_node();
            let browse = n.browse_name().clone();
            if !seen.insert(browse.clone()) {
                continue;
            }
            let display = n.display_name().clone();
            let child_path = format!("{path}/{}", browse.name);
            let id = NodeId::new(station, child_path.clone());
            let type_def = target(asp, &child, ReferenceTypeId::HasTypeDefinition);
            match node {
                NodeType::Object(_) => {
                    out.push(Plan::Object {
                        id: id.clone(),
                        browse,
                        display,
                        type_def,
                        parent: inst.clone(),
                        reference,
                    });
                    plan_children(asp, &child, &id, &child_path, station, method_types, out);
                }
                NodeType::Variable(v) => {
                    let value = v
                        .value(
                            TimestampsToReturn::Neither,
                            &NumericRange::None,
                            &DataEncoding::Binary,
                            0.0,
                        )
                        .value;
                    out.push(Plan::Variable {
                        id: id.clone(),
                        browse,
                        display,
                        data_type: v.data_type(),
                        value_rank: v.value_rank(),
                        value,
                        type_def,
                        parent: inst.clone(),
                        reference,
                    });
                    let mut inner = HashSet::new();
                    plan_declared(
                        asp,
                        &child,
                        &id,
                        &child_path,
                        station,
                        method_types,
                        out,
                        &mut inner,
                        true,
                    );
                }
                NodeType::Method(_) => {
                    out.push(Plan::Method {
                        id: id.clone(),
                        browse,
                        display,
                        parent: inst.clone(),
                    });
                    // InputArguments / OutputArguments (Mandatory properties).
                    let mut inner = HashSet::new();
                    plan_declared(
                        asp,
                        &child,
                        &id,
                        &child_path,
                        station,
                        method_types,
                        out,
                        &mut inner,
                        true,
                    );
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The NodeSets import into a bare address space and a scope's instance
    /// gets the receiver's eleven methods with their argument properties.
    #[test]
    fn a_scope_instance_has_the_job_methods_with_their_arguments() {
        let mut tt = DefaultTypeTree::new();
        let mut asp = AddressSpace::new();
        for import in super::super::nodesets().unwrap() {
            asp.import_node_set(&*import, tt.namespaces_mut());
        }
        let ns = Indices {
            jc: asp.namespace_index(JC_URI).unwrap(),
            mj: asp.namespace_index(MJ_URI).unwrap(),
            station: tt.namespaces_mut().add_namespace(STATION_URI),
        };
        asp.add_namespace(STATION_URI, ns.station);
        // The receiver type's StoreAndStart is there, imported.
        assert!(asp.node_exists(&NodeId::new(ns.jc, 7004u32)));
        let created = add_scope(&mut asp, &ns, "line-1");
        assert!(created > 30, "{created} nodes");
        assert_eq!(add_scope(&mut asp, &ns, "line-1"), 0, "idempotent");
        let control = "line-1/JobManagement/JobOrderControl";
        for m in [
            "Store",
            "StoreAndStart",
            "Update",
            "Start",
            "RevokeStart",
            "Pause",
            "Resume",
            "Stop",
            "Abort",
            "Cancel",
            "Clear",
        ] {
            let id = NodeId::new(ns.station, format!("{control}/{m}"));
            assert!(
                matches!(asp.find(&id), Some(NodeType::Method(_))),
                "{m} is a method"
            );
            let args = NodeId::new(ns.station, format!("{control}/{m}/InputArguments"));
            assert!(asp.node_exists(&args), "{m} has InputArguments");
        }
        let by_id = NodeId::new(
            ns.station,
            "line-1/JobManagement/JobOrderResults/RequestJobResponseByJobOrderID",
        );
        assert!(asp.node_exists(&by_id));
        let list = NodeId::new(ns.station, format!("{control}/JobOrderList"));
        assert!(matches!(asp.find(&list), Some(NodeType::Variable(_))));
    }
}
