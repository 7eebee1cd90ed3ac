//! What a schema check found, and how it travels as an error.

use crate::error::{ErrorKind, HandlerError};

/// How many violations an error lists at most; past it the message says how
/// many more there were. Bounds the reply's `mdcserrorcontext` (an MQTT user
/// property) whatever a client sends.
pub const MAX_LISTED: usize = 100;

/// The longest description of one violation, in bytes (longer ones, which
/// quote a large part of the payload, are cut with `…`).
const MAX_MESSAGE: usize = 200;

/// One schema violation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// Where in the payload, as a JSON Pointer (`/JobOrder/Priority`); `/`
    /// for the payload as a whole.
    pub path: String,
    /// What was expected (`"high" is not of type "integer"`).
    pub message: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every violation of one payload against one schema (never empty when
/// returned as an error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violations {
    /// The schema checked against (the `dataschema` URI).
    pub dataschema: String,
    /// The violations sorted by instance path, at most
    /// [`MAX_LISTED`].
    pub list: Vec<Violation>,
    /// How many there were in all (more than `list.len()` when cut).
    pub total: usize,
}

impl Violations {
    pub(crate) fn new(dataschema: &str, found: Vec<Violation>) -> Violations {
        let total = found.len();
        let mut list = found;
        list.truncate(MAX_LISTED);
        for v in &mut list {
            cut(&mut v.message);
        }
        Violations {
            dataschema: dataschema.to_owned(),
            list,
            total,
        }
    }

    /// The violations listed.
    pub fn iter(&self) -> std::slice::Iter<'_, Violation> {
        self.list.iter()
    }

    /// The error a handler would return: `PAYLOAD_INVALID`, the message
    /// naming `ty` and the schema and listing the violations, one context
    /// entry per violation (path → what was expected).
    #[must_use]
    pub fn to_handler_error(&self, ty: &str) -> HandlerError {
        let message = format!("payload of '{ty}' {self}");
        HandlerError::terminal(ErrorKind::PayloadInvalid, message).with_context_entries(
            self.list
                .iter()
                .map(|v| (v.path.clone(), v.message.clone())),
        )
    }
}

/// `does not match schema <uri> (N violations): <path>: <what>; …`.
impl std::fmt::Display for Violations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let noun = if self.total == 1 {
            "violation"
        } else {
            "violations"
        };
        write!(
            f,
            "does not match schema {} ({} {noun}): ",
            self.dataschema, self.total
        )?;
        for (i, v) in self.list.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{v}")?;
        }
        if self.total > self.list.len() {
            write!(f, "; and {} more", self.total - self.list.len())?;
        }
        Ok(())
    }
}

impl std::error::Error for Violations {}

fn cut(message: &mut String) {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_lists_and_messages_are_bounded() {
        let found = (0..MAX_LISTED + 5)
            .map(|i| Violation {
                path: format!("/Items/{i}"),
                message: "é".repeat(MAX_MESSAGE),
            })
            .collect();
        let v = Violations::new("urn:s", found);
        assert_eq!(v.list.len(), MAX_LISTED);
        assert_eq!(v.total, MAX_LISTED + 5);
        assert!(v.list[0].message.len() <= MAX_MESSAGE + '…'.len_utf8());
        assert!(v.to_string().ends_with("; and 5 more"));
        let e = v.to_handler_error("t.v1");
        assert_eq!(e.kind(), ErrorKind::PayloadInvalid);
        assert_eq!(e.context_entries().len(), MAX_LISTED);
        assert!(e.message().contains("urn:s"), "{}", e.message());
    }
}
