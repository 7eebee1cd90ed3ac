//! State machine tables read from the NodeSet's references.
//!
//! For every `FiniteStateMachineType` subtype of a NodeSet: its states
//! (`StateType` instance declarations with their `StateNumber`) and
//! transitions (`TransitionType` instance declarations with
//! `TransitionNumber`, `FromState`, `ToState`, `HasCause`, `HasEffect`),
//! inherited ones included, followed through `HasSubStateMachine` into the
//! substate machines, which are flattened into the same tables with the path
//! of their parent state.

use crate::address_space::{refs, ua, AddressSpace};
use crate::error::{Error, Result};
use crate::nodeset::{Node, NodeClass, NodeRef, NodeSet, Value};

/// Nesting limit for substate machines (guards against reference cycles).
const MAX_DEPTH: usize = 8;

/// A state machine type and everything reachable from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateMachine {
    /// Browse name of the state machine type, e.g. `ISA95JobOrderReceiverSubStatesType`.
    pub name: String,
    /// NodeId as written in the NodeSet, e.g. `ns=1;i=1008`.
    pub node_id: String,
    /// Rust module (of the NodeSet) the table is emitted into.
    pub module: String,
    /// Top-level states first (by number), then the states of each
    /// substate machine after their parent's siblings.
    pub states: Vec<State>,
    /// Top-level transitions first (by number), then those of the substate
    /// machines.
    pub transitions: Vec<Transition>,
}

/// One state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct State {
    /// Browse name, e.g. `Ready`.
    pub name: String,
    /// `StateNumber`.
    pub number: u32,
    /// Path of the enclosing state for substates (`AllowedToStart`,
    /// nested ones `A/B`); `None` at the top level.
    pub parent: Option<String>,
    /// Whether it is an `InitialStateType`.
    pub initial: bool,
    /// NodeId of the declaring node.
    pub node_id: String,
}

/// One transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// Browse name, e.g. `FromAllowedToStartToRunning`.
    pub name: String,
    /// `TransitionNumber`.
    pub number: u32,
    /// Path of the state whose substate machine owns it; `None` at the top level.
    pub parent: Option<String>,
    /// Browse name of the `FromState` target.
    pub from: String,
    /// Browse name of the `ToState` target.
    pub to: String,
    /// Browse names of the `HasCause` targets (the methods that trigger it).
    pub causes: Vec<String>,
    /// Browse names of the `HasEffect` targets (the events it generates).
    pub effects: Vec<String>,
    /// NodeId of the declaring node.
    pub node_id: String,
}

/// All state machine types defined by `nodeset` (its own namespace).
pub(crate) fn extract(
    space: &AddressSpace,
    nodeset: &NodeSet,
    module: &str,
) -> Result<Vec<StateMachine>> {
    let fsm = NodeRef::ua(ua::FINITE_STATE_MACHINE_TYPE);
    let mut machines = Vec::new();
    for node in nodeset
        .nodes
        .iter()
        .filter(|n| n.class == NodeClass::ObjectType && n.id.namespace == nodeset.model.uri)
    {
        if node.id == fsm || !space.is_subtype_of(&node.id, &fsm) {
            continue;
        }
        let cx = Cx { space, nodeset };
        let mut states = Vec::new();
        let mut transitions = Vec::new();
        cx.flatten(&node.id, None, 0, &mut states, &mut transitions)?;
        if states.is_empty() {
            continue;
        }
        machines.push(StateMachine {
            name: node.browse_name.clone(),
            node_id: node.local_id.clone(),
            module: module.to_owned(),
            states,
            transitions,
        });
    }
    Ok(machines)
}

struct Cx<'a> {
    space: &'a AddressSpace,
    nodeset: &'a NodeSet,
}

impl<'a> Cx<'a> {
    fn err(&self, node: &Node, message: String) -> Error {
        Error::NodeSet {
            path: self.nodeset.path.clone(),
            line: node.line,
            message,
        }
    }

    fn is_a(&self, id: Option<&NodeRef>, ancestor: u32) -> bool {
        id.is_some_and(|id| self.space.is_subtype_of(id, &NodeRef::ua(ancestor)))
    }

    /// States and transitions declared on `machine_type` or inherited,
    /// a subtype's declaration replacing its supertype's of the same name.
    fn parts(&self, machine_type: &NodeRef) -> (Vec<&'a Node>, Vec<&'a Node>) {
        let space: &'a AddressSpace = self.space;
        let (chain, _) = space.ancestry(machine_type);
        let mut states: Vec<&Node> = Vec::new();
        let mut transitions: Vec<&Node> = Vec::new();
        for declaring in chain.iter().rev() {
            for child in space.children(&declaring.id) {
                if child.class != NodeClass::Object {
                    continue;
                }
                let definition = space.type_definition(&child.id);
                let list = if definition.is_some_and(|d| d.is_ua(ua::INITIAL_STATE_TYPE))
                    || self.is_a(definition, ua::STATE_TYPE)
                {
                    &mut states
                } else if self.is_a(definition, ua::TRANSITION_TYPE) {
                    &mut transitions
                } else {
                    continue;
                };
                list.retain(|n| n.browse_name != child.browse_name);
                list.push(child);
            }
        }
        (states, transitions)
    }

    fn number(&self, node: &Node, property: &str) -> Result<u32> {
        let value = self
            .space
            .child_named(&node.id, property)
            .and_then(|v| match &v.value {
                Some(Value::Number(text)) => text.parse().ok(),
                _ => None,
            });
        value.ok_or_else(|| {
            self.err(
                node,
                format!(
                    "{} ({}) has no numeric {property}",
                    node.browse_name, node.local_id
                ),
            )
        })
    }

    fn name_of(&self, owner: &Node, reference: u32, what: &str) -> Result<String> {
        let target = self
            .space
            .targets(&owner.id, reference)
            .first()
            .ok_or_else(|| {
                self.err(
                    owner,
                    format!("transition {} has no {what} reference", owner.browse_name),
                )
            })?;
        self.space
            .node(target)
            .map(|n| n.browse_name.clone())
            .ok_or_else(|| {
                self.err(
                    owner,
                    format!(
                        "transition {}: {what} target {target} is not loaded",
                        owner.browse_name
                    ),
                )
            })
    }

    fn names(&self, owner: &Node, reference: u32) -> Vec<String> {
        self.space
            .targets(&owner.id, reference)
            .iter()
            .map(|t| {
                self.space
                    .node(t)
                    .map_or_else(|| t.to_string(), |n| n.browse_name.clone())
            })
            .collect()
    }

    fn flatten(
        &self,
        machine_type: &NodeRef,
        parent: Option<&str>,
        depth: usize,
        states: &mut Vec<State>,
        transitions: &mut Vec<Transition>,
    ) -> Result<()> {
        let (state_nodes, transition_nodes) = self.parts(machine_type);
        let mut own_states = Vec::new();
        for node in state_nodes {
            let number = self.number(node, "StateNumber")?;
            own_states.push((number, node));
        }
        own_states.sort_by_key(|(number, node)| (*number, node.browse_name.clone()));
        let mut own_transitions = Vec::new();
        for node in transition_nodes {
            own_transitions.push(Transition {
                name: node.browse_name.clone(),
                number: self.number(node, "TransitionNumber")?,
                parent: parent.map(str::to_owned),
                from: self.name_of(node, refs::FROM_STATE, "FromState")?,
                to: self.name_of(node, refs::TO_STATE, "ToState")?,
                causes: self.names(node, refs::HAS_CAUSE),
                effects: self.names(node, refs::HAS_EFFECT),
                node_id: node.local_id.clone(),
            });
        }
        own_transitions.sort_by(|a, b| (a.number, &a.name).cmp(&(b.number, &b.name)));

        for (number, node) in &own_states {
            let definition = self.space.type_definition(&node.id);
            states.push(State {
                name: node.browse_name.clone(),
                number: *number,
                parent: parent.map(str::to_owned),
                initial: definition.is_some_and(|d| d.is_ua(ua::INITIAL_STATE_TYPE)),
                node_id: node.local_id.clone(),
            });
        }
        transitions.extend(own_transitions);

        for (_, node) in &own_states {
            for sub in self.space.targets(&node.id, refs::HAS_SUB_STATE_MACHINE) {
                let sub_type = self.space.type_definition(sub).ok_or_else(|| {
                    self.err(
                        node,
                        format!(
                            "substate machine of {} has no type definition",
                            node.browse_name
                        ),
                    )
                })?;
                if depth >= MAX_DEPTH {
                    return Err(self.err(
                        node,
                        format!(
                            "substate machines nested deeper than {MAX_DEPTH} levels below {}",
                            node.browse_name
                        ),
                    ));
                }
                let path = match parent {
                    Some(parent) => format!("{parent}/{}", node.browse_name),
                    None => node.browse_name.clone(),
                };
                self.flatten(sub_type, Some(&path), depth + 1, states, transitions)?;
            }
        }
        Ok(())
    }
}
