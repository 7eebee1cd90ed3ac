//! The stable id of an action run's command: the CloudEvent `id` of every
//! send of it and the correlation data its result comes back with.

use std::fmt;
use std::str::FromStr;

/// The id of one action run's command:
/// `{scope}/{job}/{action}/{activation}`, each text part with `%`, `/`,
/// `+`, `#` and control characters percent-encoded, so that the id splits
/// on `/` again and is always a valid MQTT string whatever the job id
/// holds (wire contract §8). The same on every re-send of the run.
///
/// # Example
///
/// ```
/// use microdcs::sfc::exec::CommandId;
///
/// let id = CommandId::new("line-1", "job/7", "clamp", 2);
/// assert_eq!(id.to_string(), "line-1/job%2F7/clamp/2");
/// assert_eq!("line-1/job%2F7/clamp/2".parse::<CommandId>(), Ok(id));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CommandId {
    /// The job's scope.
    pub scope: String,
    /// The job order id.
    pub job: String,
    /// The action.
    pub action: String,
    /// The activation of the action's step.
    pub activation: u32,
}

impl CommandId {
    /// The id of `action`'s run in `activation` of its step, for `job` in
    /// `scope`.
    pub fn new(scope: &str, job: &str, action: &str, activation: u32) -> CommandId {
        CommandId {
            scope: scope.to_owned(),
            job: job.to_owned(),
            action: action.to_owned(),
            activation,
        }
    }
}

impl fmt::Display for CommandId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use crate::envelope::encode_level as enc;
        write!(
            f,
            "{}/{}/{}/{}",
            enc(&self.scope),
            enc(&self.job),
            enc(&self.action),
            self.activation
        )
    }
}

/// Text that is not a [`CommandId`]: not four `/`-separated parts, an empty
/// scope or job, a part that is not UTF-8 once decoded, or an activation
/// that is not a number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a command id: '{text}'")]
pub struct CommandIdError {
    text: String,
}

impl FromStr for CommandId {
    type Err = CommandIdError;

    fn from_str(text: &str) -> Result<CommandId, CommandIdError> {
        let error = || CommandIdError {
            text: crate::envelope::escape_for_mqtt(text).into_owned(),
        };
        let dec = |part: &str| crate::envelope::decode_level(part).ok_or_else(error);
        let mut parts = text.split('/');
        let (Some(scope), Some(job), Some(action), Some(activation), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(error());
        };
        if scope.is_empty() || job.is_empty() {
            return Err(error());
        }
        Ok(CommandId {
            scope: dec(scope)?,
            job: dec(job)?,
            action: dec(action)?,
            activation: activation.parse().map_err(|_| error())?,
        })
    }
}

/// Scope, job, action and activation of a command id made by
/// [`Execution::command_id`](super::Execution::command_id); `None` for anything else.
/// The tuple form of [`CommandId`]'s `FromStr`.
pub fn parse_command_id(id: &str) -> Option<(String, String, String, u32)> {
    let id: CommandId = id.parse().ok()?;
    Some((id.scope, id.job, id.action, id.activation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_text_of_a_command_id_is_the_stored_format() {
        assert_eq!(
            CommandId::new("line", "j1", "clamp", 1).to_string(),
            "line/j1/clamp/1"
        );
        // Captured from the code before `CommandId` existed.
        assert_eq!(
            CommandId::new("line+a", "j/1", "air", 1).to_string(),
            "line%2Ba/j%2F1/air/1"
        );
        assert_eq!(
            CommandId::new("a#b", "50%", "x\u{1}y", 12).to_string(),
            "a%23b/50%25/x%01y/12"
        );
    }

    #[test]
    fn text_that_is_not_a_command_id_is_refused() {
        for text in [
            "",
            "a/b/c",
            "a/b/c/1/2",
            "/j/a/1",
            "s//a/1",
            "s/j/a/x",
            "s/j/a/-1",
        ] {
            assert!(text.parse::<CommandId>().is_err(), "{text}");
            assert_eq!(parse_command_id(text), None, "{text}");
        }
        // An empty action is allowed, as it always was.
        assert_eq!(
            parse_command_id("s/j//3"),
            Some(("s".into(), "j".into(), String::new(), 3))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn a_command_id_reads_back_from_its_text(
            scope in "\\PC{1,8}|[a/%+#]{1,4}",
            job in "\\PC{1,8}|[a/%+#\u{0}-\u{1f}]{1,4}",
            action in "\\PC{0,8}",
            activation in any::<u32>(),
        ) {
            let id = CommandId::new(&scope, &job, &action, activation);
            let text = id.to_string();
            prop_assert_eq!(text.split('/').count(), 4);
            prop_assert_eq!(text.parse::<CommandId>(), Ok(id));
        }
    }
}
