//! All loaded NodeSets as one address space: nodes by [`NodeRef`] and the
//! references between them in both directions.
//!
//! NodeSet2 files usually write a reference on both ends, but need not; the
//! index therefore normalises every reference into a forward edge, so
//! "children of X via HasComponent" and "supertype of X" work whichever end
//! declared it.

use std::collections::{BTreeSet, HashMap};

use crate::nodeset::{Node, NodeRef, NodeSet};

/// Reference type NodeIds of namespace 0 the generator follows.
pub(crate) mod refs {
    pub(crate) const HAS_MODELLING_RULE: u32 = 37;
    pub(crate) const HAS_TYPE_DEFINITION: u32 = 40;
    pub(crate) const HAS_SUBTYPE: u32 = 45;
    pub(crate) const HAS_PROPERTY: u32 = 46;
    pub(crate) const HAS_COMPONENT: u32 = 47;
    pub(crate) const HAS_ORDERED_COMPONENT: u32 = 49;
    pub(crate) const FROM_STATE: u32 = 51;
    pub(crate) const TO_STATE: u32 = 52;
    pub(crate) const HAS_CAUSE: u32 = 53;
    pub(crate) const HAS_EFFECT: u32 = 54;
    pub(crate) const HAS_SUB_STATE_MACHINE: u32 = 117;
}

/// Well-known nodes of namespace 0.
pub(crate) mod ua {
    pub(crate) const STRUCTURE: u32 = 22;
    pub(crate) const ENUMERATION: u32 = 29;
    pub(crate) const BASE_EVENT_TYPE: u32 = 2041;
    pub(crate) const FINITE_STATE_MACHINE_TYPE: u32 = 2771;
    pub(crate) const STATE_TYPE: u32 = 2307;
    pub(crate) const INITIAL_STATE_TYPE: u32 = 2309;
    pub(crate) const TRANSITION_TYPE: u32 = 2310;
    pub(crate) const MANDATORY: u32 = 78;
    pub(crate) const UNION: u32 = 12756;
}

#[derive(Debug)]
pub(crate) struct AddressSpace {
    pub(crate) nodesets: Vec<NodeSet>,
    index: HashMap<NodeRef, (usize, usize)>,
    /// (source, reference type) → targets, in declaration order.
    forward: HashMap<(NodeRef, NodeRef), Vec<NodeRef>>,
    /// (target, reference type) → sources.
    inverse: HashMap<(NodeRef, NodeRef), Vec<NodeRef>>,
}

impl AddressSpace {
    pub(crate) fn new(nodesets: Vec<NodeSet>) -> Self {
        let mut index = HashMap::new();
        for (set, nodeset) in nodesets.iter().enumerate() {
            for (position, node) in nodeset.nodes.iter().enumerate() {
                index.entry(node.id.clone()).or_insert((set, position));
            }
        }
        let mut seen = BTreeSet::new();
        let mut forward: HashMap<_, Vec<NodeRef>> = HashMap::new();
        let mut inverse: HashMap<_, Vec<NodeRef>> = HashMap::new();
        for node in nodesets.iter().flat_map(|n| &n.nodes) {
            for reference in &node.references {
                let (source, target) = if reference.is_forward {
                    (node.id.clone(), reference.target.clone())
                } else {
                    (reference.target.clone(), node.id.clone())
                };
                let edge = (
                    source.clone(),
                    reference.reference_type.clone(),
                    target.clone(),
                );
                if !seen.insert(edge) {
                    continue;
                }
                forward
                    .entry((source.clone(), reference.reference_type.clone()))
                    .or_default()
                    .push(target.clone());
                inverse
                    .entry((target, reference.reference_type.clone()))
                    .or_default()
                    .push(source);
            }
        }
        Self {
            nodesets,
            index,
            forward,
            inverse,
        }
    }

    pub(crate) fn node(&self, id: &NodeRef) -> Option<&Node> {
        let (set, position) = self.index.get(id)?;
        self.nodesets.get(*set)?.nodes.get(*position)
    }

    /// Forward targets of `reference_type` (a namespace-0 reference type).
    pub(crate) fn targets(&self, source: &NodeRef, reference_type: u32) -> &[NodeRef] {
        self.forward
            .get(&(source.clone(), NodeRef::ua(reference_type)))
            .map_or(&[], Vec::as_slice)
    }

    /// Sources of forward references of `reference_type` pointing at `target`.
    pub(crate) fn sources(&self, target: &NodeRef, reference_type: u32) -> &[NodeRef] {
        self.inverse
            .get(&(target.clone(), NodeRef::ua(reference_type)))
            .map_or(&[], Vec::as_slice)
    }

    /// Children reached by `HasComponent`, `HasOrderedComponent` or `HasProperty`.
    pub(crate) fn children(&self, parent: &NodeRef) -> Vec<&Node> {
        [
            refs::HAS_COMPONENT,
            refs::HAS_ORDERED_COMPONENT,
            refs::HAS_PROPERTY,
        ]
        .into_iter()
        .flat_map(|r| self.targets(parent, r))
        .filter_map(|id| self.node(id))
        .collect()
    }

    /// The child whose browse name is `name`.
    pub(crate) fn child_named(&self, parent: &NodeRef, name: &str) -> Option<&Node> {
        self.children(parent)
            .into_iter()
            .find(|n| n.browse_name == name)
    }

    pub(crate) fn supertype(&self, id: &NodeRef) -> Option<&NodeRef> {
        self.sources(id, refs::HAS_SUBTYPE).first()
    }

    pub(crate) fn type_definition(&self, id: &NodeRef) -> Option<&NodeRef> {
        self.targets(id, refs::HAS_TYPE_DEFINITION).first()
    }

    /// Walks the supertype chain of `id` (starting with `id` itself) until
    /// it leaves the loaded NodeSets; returns the chain and the first
    /// ancestor that is not loaded (normally a namespace-0 type).
    pub(crate) fn ancestry(&self, id: &NodeRef) -> (Vec<&Node>, Option<NodeRef>) {
        let mut chain = Vec::new();
        let mut current = id.clone();
        loop {
            let Some(node) = self.node(&current) else {
                return (chain, Some(current));
            };
            if chain.iter().any(|n: &&Node| n.id == node.id) {
                return (chain, None);
            }
            chain.push(node);
            match self.supertype(&current) {
                Some(next) => current = next.clone(),
                None => return (chain, None),
            }
        }
    }

    /// Whether `id` is `ancestor` or one of its subtypes (for a namespace-0
    /// ancestor: whether the chain ends there).
    pub(crate) fn is_subtype_of(&self, id: &NodeRef, ancestor: &NodeRef) -> bool {
        if id == ancestor {
            return true;
        }
        let (chain, root) = self.ancestry(id);
        chain.iter().any(|n| &n.id == ancestor) || root.as_ref() == Some(ancestor)
    }

    /// A readable name for error messages: `ns=1;i=3008 (ISA95JobOrderDataType)`.
    pub(crate) fn describe(&self, id: &NodeRef) -> String {
        if let Some(node) = self.node(id) {
            return format!("{} ({})", node.local_id, node.browse_name);
        }
        let name = id
            .ua_numeric()
            .and_then(crate::builtins::name_of)
            .map(str::to_owned)
            .or_else(|| {
                self.nodesets
                    .iter()
                    .find_map(|n| n.alias_names.get(id).cloned())
            });
        match name {
            Some(name) => format!("{id} ({name})"),
            None => id.to_string(),
        }
    }
}
