//! Job order states as numbers and names (OPC 10031-4 ISA95-JOBCONTROL v2),
//! and their wire form: a list of `ISA95StateDataType`, outer state first.

use crate::models::isa95_jobcontrol::LocalizedText;
use std::fmt;

/// The main states of a job order, with their OPC UA state numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MainState {
    /// Before Store/StoreAndStart (never stored).
    InitialState,
    /// Stored, not yet released for execution.
    NotAllowedToStart,
    /// Released: may be executed.
    AllowedToStart,
    /// Being executed.
    Running,
    /// Execution paused.
    Interrupted,
    /// Execution finished.
    Ended,
    /// Execution aborted.
    Aborted,
    /// Cancelled or cleared: kept for the retention time only.
    EndState,
}

impl MainState {
    /// All main states in number order.
    pub const ALL: [MainState; 8] = [
        MainState::InitialState,
        MainState::NotAllowedToStart,
        MainState::AllowedToStart,
        MainState::Running,
        MainState::Interrupted,
        MainState::Ended,
        MainState::Aborted,
        MainState::EndState,
    ];

    /// The OPC UA state number.
    pub fn number(self) -> u32 {
        self as u32
    }

    /// The browse name.
    pub fn name(self) -> &'static str {
        match self {
            MainState::InitialState => "InitialState",
            MainState::NotAllowedToStart => "NotAllowedToStart",
            MainState::AllowedToStart => "AllowedToStart",
            MainState::Running => "Running",
            MainState::Interrupted => "Interrupted",
            MainState::Ended => "Ended",
            MainState::Aborted => "Aborted",
            MainState::EndState => "EndState",
        }
    }

    /// The state with that browse name.
    pub fn from_name(name: &str) -> Option<MainState> {
        MainState::ALL.into_iter().find(|s| s.name() == name)
    }

    /// The state with that number.
    pub fn from_number(n: u32) -> Option<MainState> {
        MainState::ALL.get(usize::try_from(n).ok()?).copied()
    }

    /// The substates this state has.
    pub fn substates(self) -> &'static [SubState] {
        match self {
            MainState::NotAllowedToStart | MainState::AllowedToStart => {
                &[SubState::Waiting, SubState::Ready, SubState::Loaded]
            }
            MainState::Interrupted => &[SubState::Held, SubState::Suspended],
            MainState::Ended => &[SubState::Completed, SubState::Closed],
            _ => &[],
        }
    }

    /// Whether a job in this state counts as live (against acceptance
    /// limits, in the state index).
    pub fn is_live(self) -> bool {
        !matches!(self, MainState::InitialState | MainState::EndState)
    }
}

/// Substates of NotAllowedToStart/AllowedToStart, Interrupted and Ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubState {
    /// Waiting for resources (number 1).
    Waiting,
    /// Ready (number 2).
    Ready,
    /// Loaded (number 3).
    Loaded,
    /// Held (number 1).
    Held,
    /// Suspended (number 2).
    Suspended,
    /// Completed (number 1).
    Completed,
    /// Closed (number 2).
    Closed,
}

impl SubState {
    /// The OPC UA state number (within its parent state).
    pub fn number(self) -> u32 {
        match self {
            SubState::Waiting | SubState::Held | SubState::Completed => 1,
            SubState::Ready | SubState::Suspended | SubState::Closed => 2,
            SubState::Loaded => 3,
        }
    }

    /// The browse name.
    pub fn name(self) -> &'static str {
        match self {
            SubState::Waiting => "Waiting",
            SubState::Ready => "Ready",
            SubState::Loaded => "Loaded",
            SubState::Held => "Held",
            SubState::Suspended => "Suspended",
            SubState::Completed => "Completed",
            SubState::Closed => "Closed",
        }
    }
}

/// A job's state: a main state and, where it has them, a substate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobState {
    /// The main state.
    pub main: MainState,
    /// The substate, if the main state has substates and one is known.
    pub sub: Option<SubState>,
}

impl JobState {
    /// The state before a job exists.
    pub const INITIAL: JobState = JobState::new(MainState::InitialState, None);

    /// A state.
    pub const fn new(main: MainState, sub: Option<SubState>) -> Self {
        JobState { main, sub }
    }

    /// A compact, stable key (`main` or `main.sub` by number), used for
    /// Redis indexes: `"2.2"` is AllowedToStart/Ready.
    pub fn key(self) -> String {
        match self.sub {
            Some(s) => format!("{}.{}", self.main.number(), s.number()),
            None => self.main.number().to_string(),
        }
    }

    /// The wire form: outer state first, then the substate.
    pub fn to_wire(self) -> Vec<StateEntry> {
        let mut out = vec![entry(self.main.name(), self.main.number())];
        if let Some(s) = self.sub {
            out.push(entry(s.name(), s.number()));
        }
        out
    }

    /// Reads the wire form. The first entry is the main state (by number, the
    /// text must agree when present); a second entry names its substate.
    ///
    /// # Errors
    /// An empty list, an unknown state number, a text that contradicts the
    /// number, or a substate that the main state does not have.
    pub fn from_wire(entries: &[StateEntry]) -> Result<JobState, StateError> {
        let first = entries.first().ok_or(StateError::Empty)?;
        let main = MainState::from_number(first.state_number)
            .ok_or(StateError::UnknownNumber(first.state_number))?;
        if let Some(text) = text(first).filter(|t| !t.is_empty() && *t != main.name()) {
            return Err(StateError::Mismatch {
                number: first.state_number,
                text: text.to_owned(),
            });
        }
        let sub = match entries.get(1) {
            None => None,
            Some(e) => Some(
                main.substates()
                    .iter()
                    .copied()
                    .find(|s| {
                        s.number() == e.state_number
                            && text(e).is_none_or(|t| t.is_empty() || t == s.name())
                    })
                    .ok_or_else(|| StateError::UnknownSubstate {
                        main: main.name(),
                        number: e.state_number,
                    })?,
            ),
        };
        if entries.len() > 2 {
            return Err(StateError::TooDeep(entries.len()));
        }
        Ok(JobState { main, sub })
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.sub {
            Some(s) => write!(f, "{}/{}", self.main.name(), s.name()),
            None => f.write_str(self.main.name()),
        }
    }
}

/// A state list entry could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    /// The list is empty.
    #[error("the state list is empty")]
    Empty,
    /// No main state has that number.
    #[error("no job order state has number {0}")]
    UnknownNumber(u32),
    /// Text and number disagree.
    #[error("state number {number} is not '{text}'")]
    Mismatch {
        /// The number given.
        number: u32,
        /// The text given.
        text: String,
    },
    /// The main state has no such substate.
    #[error("{main} has no substate number {number}")]
    UnknownSubstate {
        /// The main state.
        main: &'static str,
        /// The substate number given.
        number: u32,
    },
    /// More than a main state and one substate.
    #[error("a state list has at most 2 entries, got {0}")]
    TooDeep(usize),
}

/// One entry of a state list: the generated `ISA95StateDataType`
/// (`BrowsePath` is not used by job orders and stays absent).
pub type StateEntry = crate::models::isa95_jobcontrol::ISA95StateDataType;

fn entry(name: &str, number: u32) -> StateEntry {
    StateEntry {
        browse_path: None,
        state_number: number,
        state_text: LocalizedText {
            locale: Some("en".into()),
            text: Some(name.into()),
        },
    }
}

fn text(e: &StateEntry) -> Option<&str> {
    e.state_text.text.as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_matches_the_contract_example() {
        let s = JobState::new(MainState::AllowedToStart, Some(SubState::Ready));
        let expected: serde_json::Value = serde_json::from_str(
            r#"[{"StateText":{"Locale":"en","Text":"AllowedToStart"},"StateNumber":2},{"StateText":{"Locale":"en","Text":"Ready"},"StateNumber":2}]"#,
        )
        .unwrap();
        assert_eq!(serde_json::to_value(s.to_wire()).unwrap(), expected);
        assert_eq!(JobState::from_wire(&s.to_wire()).unwrap(), s);
        assert_eq!(s.key(), "2.2");
    }

    #[test]
    fn every_state_round_trips() {
        for main in MainState::ALL {
            let mut states = vec![JobState::new(main, None)];
            states.extend(
                main.substates()
                    .iter()
                    .map(|s| JobState::new(main, Some(*s))),
            );
            for s in states {
                assert_eq!(JobState::from_wire(&s.to_wire()).unwrap(), s, "{s}");
            }
        }
    }

    #[test]
    fn snake_case_and_texts_without_locale_are_accepted() {
        let e: Vec<StateEntry> = serde_json::from_str(
            r#"[{"state_text":{"locale":"en","text":"Interrupted"},"state_number":4},{"StateText":{},"StateNumber":2}]"#,
        )
        .unwrap();
        assert_eq!(
            JobState::from_wire(&e).unwrap(),
            JobState::new(MainState::Interrupted, Some(SubState::Suspended))
        );
    }

    #[test]
    fn contradictions_are_errors() {
        let bad: Vec<StateEntry> =
            serde_json::from_str(r#"[{"StateText":{"Text":"Running"},"StateNumber":2}]"#).unwrap();
        assert!(matches!(
            JobState::from_wire(&bad),
            Err(StateError::Mismatch { .. })
        ));
        let bad: Vec<StateEntry> = serde_json::from_str(
            r#"[{"StateText":{},"StateNumber":3},{"StateText":{},"StateNumber":1}]"#,
        )
        .unwrap();
        assert!(matches!(
            JobState::from_wire(&bad),
            Err(StateError::UnknownSubstate { .. })
        ));
        assert_eq!(JobState::from_wire(&[]), Err(StateError::Empty));
        let bad: Vec<StateEntry> =
            serde_json::from_str(r#"[{"StateText":{},"StateNumber":9}]"#).unwrap();
        assert_eq!(JobState::from_wire(&bad), Err(StateError::UnknownNumber(9)));
    }
}
