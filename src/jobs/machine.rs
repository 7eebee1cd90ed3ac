//! The job order state machine as a pure function:
//! `(state, trigger) -> new state`, no I/O.
//!
//! The transitions between the six main states and the methods that cause
//! them are read from the ISA95-JOBCONTROL NodeSet at build time
//! ([`crate::models`]); the transitions the specification gives only in its
//! text (InitialState/EndState, Store, StoreAndStart, Cancel, Clear) are added
//! here. Internal triggers (execution starts, the recipe completes or fails)
//! may only follow an edge of the NodeSet's table.

use super::state::{JobState, MainState, SubState};
use std::collections::HashMap;
use std::fmt;
use std::sync::LazyLock;

/// The OPC UA methods that change a job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    /// Store a new job order (NotAllowedToStart).
    Store,
    /// Store and release a new job order (AllowedToStart).
    StoreAndStart,
    /// Replace the job order, keeping the main state.
    Update,
    /// Release for execution.
    Start,
    /// Take back the release.
    RevokeStart,
    /// Interrupt execution.
    Pause,
    /// Continue after Pause.
    Resume,
    /// End execution (completed).
    Stop,
    /// Abort.
    Abort,
    /// Drop a job that never ran.
    Cancel,
    /// Drop a finished job.
    Clear,
}

impl Method {
    /// All methods.
    pub const ALL: [Method; 11] = [
        Method::Store,
        Method::StoreAndStart,
        Method::Update,
        Method::Start,
        Method::RevokeStart,
        Method::Pause,
        Method::Resume,
        Method::Stop,
        Method::Abort,
        Method::Cancel,
        Method::Clear,
    ];

    /// The OPC UA browse name.
    pub fn name(self) -> &'static str {
        match self {
            Method::Store => "Store",
            Method::StoreAndStart => "StoreAndStart",
            Method::Update => "Update",
            Method::Start => "Start",
            Method::RevokeStart => "RevokeStart",
            Method::Pause => "Pause",
            Method::Resume => "Resume",
            Method::Stop => "Stop",
            Method::Abort => "Abort",
            Method::Cancel => "Cancel",
            Method::Clear => "Clear",
        }
    }

    /// The method with that browse name.
    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// What the execution side (the SFC engine, or a hand-written processor)
/// reports about a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Internal {
    /// Execution starts: AllowedToStart → Running.
    Begin,
    /// The recipe completed: Running → Ended/Completed.
    Complete,
    /// Execution failed: Running or Interrupted → Aborted.
    Fail,
}

/// What may change a job's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// A method called by the MES.
    Method(Method),
    /// An execution event.
    Internal(Internal),
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Trigger::Method(m) => f.write_str(m.name()),
            Trigger::Internal(i) => write!(f, "{i:?} (internal)"),
        }
    }
}

/// The trigger is not allowed in the job's state (ReturnStatus 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{trigger} is not allowed in state {state}")]
pub struct NotAllowed {
    /// The job's state.
    pub state: JobState,
    /// What was attempted.
    pub trigger: Trigger,
}

/// One edge of the main-state graph, as the NodeSet (or the specification
/// text) defines it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Edge {
    /// Source main state.
    pub from: MainState,
    /// Target main state.
    pub to: MainState,
    /// The method that causes it, if any (none: an internal transition).
    pub cause: Option<Method>,
}

/// The transition table: NodeSet edges plus the specification's text.
#[derive(Debug, Clone)]
pub struct Machine {
    edges: Vec<Edge>,
    by_method: HashMap<(MainState, Method), MainState>,
}

/// Building a [`Machine`] from a table failed: a name the state machine does
/// not know (the NodeSet changed in a way this code does not understand).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("state machine table: unknown {what} '{name}'")]
pub struct TableError {
    /// `state` or `method`.
    pub what: &'static str,
    /// The unknown name.
    pub name: String,
}

impl Machine {
    /// The machine of the generated NodeSet table plus the specification text.
    pub fn standard() -> &'static Machine {
        static M: LazyLock<Machine> = LazyLock::new(|| {
            Machine::from_table(super::nodeset_edges()).unwrap_or_else(|e| {
                // The table is generated from a NodeSet shipped with the
                // crate and tested; reaching this is a build defect.
                panic!("generated job state machine is inconsistent: {e}")
            })
        });
        &M
    }

    /// Builds a machine from `(from, to, causes)` rows naming main states and
    /// methods by browse name, adding the specification-text transitions.
    ///
    /// # Errors
    /// A row names an unknown state or method.
    pub fn from_table<'a>(
        rows: impl IntoIterator<Item = (&'a str, &'a str, &'a [&'a str])>,
    ) -> Result<Machine, TableError> {
        let state = |name: &str| {
            MainState::from_name(name).ok_or_else(|| TableError {
                what: "state",
                name: name.to_owned(),
            })
        };
        let mut edges = Vec::new();
        for (from, to, causes) in rows {
            let (from, to) = (state(from)?, state(to)?);
            if causes.is_empty() {
                edges.push(Edge {
                    from,
                    to,
                    cause: None,
                });
            }
            for c in causes {
                let m = Method::from_name(c).ok_or_else(|| TableError {
                    what: "method",
                    name: (*c).to_owned(),
                })?;
                edges.push(Edge {
                    from,
                    to,
                    cause: Some(m),
                });
            }
        }
        use MainState::{
            Aborted, AllowedToStart, EndState, Ended, InitialState, NotAllowedToStart,
        };
        // Specification text (OPC 10031-4 §6.2): these are not modelled as
        // transitions in the NodeSet.
        let text = [
            (InitialState, NotAllowedToStart, Method::Store),
            (InitialState, AllowedToStart, Method::StoreAndStart),
            (NotAllowedToStart, EndState, Method::Cancel),
            (AllowedToStart, EndState, Method::Cancel),
            (Ended, EndState, Method::Clear),
            (Aborted, EndState, Method::Clear),
        ];
        edges.extend(text.into_iter().map(|(from, to, m)| Edge {
            from,
            to,
            cause: Some(m),
        }));
        let by_method = edges
            .iter()
            .filter_map(|e| Some(((e.from, e.cause?), e.to)))
            .collect();
        Ok(Machine { edges, by_method })
    }

    /// Every edge.
    pub fn edges(&self) -> &[Edge] {
        &self.edges
    }

    /// The state after `trigger`, or why it is not allowed. Pure.
    ///
    /// # Errors
    /// [`NotAllowed`] when the table has no such transition from `state`
    /// (EndState allows nothing).
    pub fn next(&self, state: JobState, trigger: Trigger) -> Result<JobState, NotAllowed> {
        let refuse = NotAllowed { state, trigger };
        let to = match trigger {
            Trigger::Method(m) => *self.by_method.get(&(state.main, m)).ok_or(refuse)?,
            Trigger::Internal(i) => {
                let (froms, to): (&[MainState], MainState) = match i {
                    Internal::Begin => (&[MainState::AllowedToStart], MainState::Running),
                    Internal::Complete => (&[MainState::Running], MainState::Ended),
                    Internal::Fail => (
                        &[MainState::Running, MainState::Interrupted],
                        MainState::Aborted,
                    ),
                };
                let edge = froms.contains(&state.main)
                    && self
                        .edges
                        .iter()
                        .any(|e| e.from == state.main && e.to == to);
                if !edge {
                    return Err(refuse);
                }
                to
            }
        };
        Ok(JobState::new(to, entry_substate(to)))
    }
}

/// The substate a job enters with its main state: Ready on (re)storing and
/// releasing, Suspended on Pause (an operator interruption, not a hold by
/// the equipment), Completed on ending.
fn entry_substate(main: MainState) -> Option<SubState> {
    match main {
        MainState::NotAllowedToStart | MainState::AllowedToStart => Some(SubState::Ready),
        MainState::Interrupted => Some(SubState::Suspended),
        MainState::Ended => Some(SubState::Completed),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use MainState::*;

    fn m() -> &'static Machine {
        Machine::standard()
    }

    fn st(main: MainState) -> JobState {
        JobState::new(main, entry_substate(main))
    }

    /// The contract's table (wire-contract §3), written out independently of
    /// the NodeSet, so a NodeSet change that alters behaviour is noticed.
    fn contract_table() -> Vec<(MainState, Method, MainState)> {
        use Method::*;
        vec![
            (InitialState, Store, NotAllowedToStart),
            (InitialState, StoreAndStart, AllowedToStart),
            (NotAllowedToStart, Start, AllowedToStart),
            (NotAllowedToStart, Update, NotAllowedToStart),
            (AllowedToStart, Update, AllowedToStart),
            (AllowedToStart, RevokeStart, NotAllowedToStart),
            (Running, Pause, Interrupted),
            (Interrupted, Resume, Running),
            (Running, Stop, Ended),
            (Interrupted, Stop, Ended),
            (NotAllowedToStart, Abort, Aborted),
            (AllowedToStart, Abort, Aborted),
            (Running, Abort, Aborted),
            (Interrupted, Abort, Aborted),
            (NotAllowedToStart, Cancel, EndState),
            (AllowedToStart, Cancel, EndState),
            (Ended, Clear, EndState),
            (Aborted, Clear, EndState),
        ]
    }

    #[test]
    fn methods_follow_the_contract_table_exactly() {
        let table = contract_table();
        for from in MainState::ALL {
            for method in Method::ALL {
                let expected = table
                    .iter()
                    .find(|(f, mm, _)| *f == from && *mm == method)
                    .map(|(_, _, to)| st(*to));
                let got = m().next(st(from), Trigger::Method(method)).ok();
                assert_eq!(got, expected, "{from:?} --{method:?}-->");
            }
        }
    }

    #[test]
    fn substates_on_entry() {
        let s = m()
            .next(JobState::INITIAL, Trigger::Method(Method::Store))
            .unwrap();
        assert_eq!(s, JobState::new(NotAllowedToStart, Some(SubState::Ready)));
        let s = m()
            .next(st(Running), Trigger::Method(Method::Pause))
            .unwrap();
        assert_eq!(s, JobState::new(Interrupted, Some(SubState::Suspended)));
        let s = m()
            .next(st(Running), Trigger::Internal(Internal::Complete))
            .unwrap();
        assert_eq!(s, JobState::new(Ended, Some(SubState::Completed)));
        // Update resets the substate to Ready, whatever it was.
        let loaded = JobState::new(AllowedToStart, Some(SubState::Loaded));
        let s = m().next(loaded, Trigger::Method(Method::Update)).unwrap();
        assert_eq!(s, JobState::new(AllowedToStart, Some(SubState::Ready)));
    }

    #[test]
    fn internal_triggers_only_where_the_nodeset_has_an_edge() {
        use Internal::*;
        let allowed = [
            (AllowedToStart, Begin, Running),
            (Running, Complete, Ended),
            (Running, Fail, Aborted),
            (Interrupted, Fail, Aborted),
        ];
        for from in MainState::ALL {
            for i in [Begin, Complete, Fail] {
                let expected = allowed
                    .iter()
                    .find(|(f, ii, _)| *f == from && *ii == i)
                    .map(|(_, _, to)| st(*to));
                assert_eq!(m().next(st(from), Trigger::Internal(i)).ok(), expected);
            }
        }
    }

    #[test]
    fn end_state_allows_nothing() {
        for method in Method::ALL {
            assert!(m().next(st(EndState), Trigger::Method(method)).is_err());
        }
    }

    #[test]
    fn unknown_names_in_a_table_are_errors() {
        let rows: [(&str, &str, &[&str]); 1] = [("Running", "Nowhere", &[])];
        assert_eq!(Machine::from_table(rows).unwrap_err().name, "Nowhere");
        let rows: [(&str, &str, &[&str]); 1] = [("Running", "Ended", &["Explode"])];
        assert_eq!(Machine::from_table(rows).unwrap_err().what, "method");
    }

    fn trigger() -> impl Strategy<Value = Trigger> {
        prop_oneof![
            (0..Method::ALL.len()).prop_map(|i| Trigger::Method(Method::ALL[i])),
            prop_oneof![
                Just(Internal::Begin),
                Just(Internal::Complete),
                Just(Internal::Fail)
            ]
            .prop_map(Trigger::Internal),
        ]
    }

    proptest! {
        /// No sequence of triggers reaches a state (or a main-state step)
        /// that the table does not allow, and a refused trigger leaves the
        /// state as it was.
        #[test]
        fn any_sequence_stays_inside_the_table(seq in proptest::collection::vec(trigger(), 0..40)) {
            let mut s = JobState::INITIAL;
            for t in seq {
                let before = s;
                match m().next(s, t) {
                    Ok(next) => {
                        prop_assert!(m().edges().iter().any(|e| e.from == before.main && e.to == next.main));
                        if let Some(sub) = next.sub {
                            prop_assert!(next.main.substates().contains(&sub));
                        }
                        prop_assert_ne!(before.main, EndState);
                        s = next;
                    }
                    Err(e) => {
                        prop_assert_eq!(e.state, before);
                        prop_assert_eq!(s, before);
                    }
                }
            }
        }
    }
}
