//! Topic layout of the wire contract (§2): what a processor binding
//! subscribes to and where it publishes.

use std::fmt;

/// The last topic segment: what kind of message travels there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Intent {
    /// Requests to a processor (`commands`).
    Commands,
    /// Things that happened (`events`).
    Events,
    /// Measurements and results (`data`).
    Data,
    /// Self-descriptions, usually retained (`metadata`).
    Metadata,
}

impl Intent {
    /// The topic segment.
    pub fn as_str(self) -> &'static str {
        match self {
            Intent::Commands => "commands",
            Intent::Events => "events",
            Intent::Data => "data",
            Intent::Metadata => "metadata",
        }
    }
}

impl fmt::Display for Intent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which way a processor faces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Faces the MES: receives `commands`, sends `events`/`data`/`metadata`.
    Northbound,
    /// Faces equipment: receives `events`/`data`/`metadata`, sends `commands`.
    Southbound,
}

impl Direction {
    /// The intents this direction subscribes to.
    pub fn subscribed(self) -> &'static [Intent] {
        match self {
            Direction::Northbound => &[Intent::Commands],
            Direction::Southbound => &[Intent::Events, Intent::Data, Intent::Metadata],
        }
    }

    /// Whether this direction may publish `intent`.
    pub fn publishes(self, intent: Intent) -> bool {
        !self.subscribed().contains(&intent)
    }
}

/// How one processor is bound to topics on one transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicBinding {
    /// Topic prefix, e.g. `app/jobs`.
    pub prefix: String,
    /// Optional discriminator segment before the intent, e.g. `v2`.
    pub discriminator: Option<String>,
    /// How many single-level wildcards to subscribe below the prefix.
    pub wildcard_levels: u8,
    /// Shared subscription group (`$share/{group}/…`), if any.
    pub shared_group: Option<String>,
    /// Base of this instance's response topic (`{base}/{instance-id}`).
    pub response_base: Option<String>,
    /// A response topic every replica receives, through the shared group
    /// when one is set: replies to requests sent with it reach whichever
    /// replica is alive, not only the sender (the SFC engine's equipment
    /// commands). Messages on it go to this binding's processor.
    pub shared_response_topic: Option<String>,
}

impl TopicBinding {
    /// A binding with only a prefix.
    pub fn new(prefix: impl Into<String>) -> Self {
        TopicBinding {
            prefix: prefix.into(),
            discriminator: None,
            wildcard_levels: 0,
            shared_group: None,
            response_base: None,
            shared_response_topic: None,
        }
    }

    /// The topic filters to subscribe for `direction`, shared-group wrapped
    /// when a group is set. The instance response topic is separate
    /// ([`TopicBinding::response_topic`]) and never shared.
    pub fn subscriptions(&self, direction: Direction) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(t) = &self.shared_response_topic {
            out.push(match &self.shared_group {
                Some(g) => format!("$share/{g}/{t}"),
                None => t.clone(),
            });
        }
        for intent in direction.subscribed() {
            for levels in 0..=self.wildcard_levels {
                let mut t = self.prefix.clone();
                for _ in 0..levels {
                    t.push_str("/+");
                }
                if let Some(d) = &self.discriminator {
                    t.push('/');
                    t.push_str(d);
                }
                t.push('/');
                t.push_str(intent.as_str());
                out.push(match &self.shared_group {
                    Some(g) => format!("$share/{g}/{t}"),
                    None => t,
                });
            }
        }
        out
    }

    /// The topic for a message about `subject` with `intent`:
    /// `{prefix}[/{subject with '.' as '/'}][/{discriminator}]/{intent}`.
    pub fn publish_topic(&self, subject: Option<&str>, intent: Intent) -> String {
        let mut t = self.prefix.clone();
        if let Some(s) = subject.filter(|s| !s.is_empty()) {
            t.push('/');
            t.push_str(&s.replace('.', "/"));
        }
        if let Some(d) = &self.discriminator {
            t.push('/');
            t.push_str(d);
        }
        t.push('/');
        t.push_str(intent.as_str());
        t
    }

    /// This instance's response topic, `{response-base}/{instance-id}`.
    pub fn response_topic(&self, instance_id: &str) -> Option<String> {
        self.response_base
            .as_ref()
            .map(|b| format!("{b}/{instance_id}"))
    }

    /// Whether a message on `topic` belongs to this binding for `direction`.
    pub fn matches(&self, direction: Direction, topic: &str) -> bool {
        self.subscriptions(direction)
            .iter()
            .any(|f| filter_matches(strip_share(f), topic))
    }
}

/// Removes a `$share/{group}/` wrapper from a filter.
pub fn strip_share(filter: &str) -> &str {
    match filter.strip_prefix("$share/") {
        Some(rest) => rest.split_once('/').map(|(_, f)| f).unwrap_or(rest),
        None => filter,
    }
}

/// MQTT topic filter matching with `+` and `#`.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_contract_example_topics() {
        let mut b = TopicBinding::new("app/jobs");
        b.wildcard_levels = 1;
        b.response_base = Some("app/jobs/responses".into());
        assert_eq!(
            b.subscriptions(Direction::Northbound),
            ["app/jobs/commands", "app/jobs/+/commands"]
        );
        assert_eq!(
            b.response_topic("inst-1").as_deref(),
            Some("app/jobs/responses/inst-1")
        );
        assert_eq!(
            b.publish_topic(Some("machine-42"), Intent::Events),
            "app/jobs/machine-42/events"
        );
    }

    #[test]
    fn discriminator_shared_group_and_dotted_subject() {
        let mut b = TopicBinding::new("plant/eq");
        b.discriminator = Some("v2".into());
        b.wildcard_levels = 2;
        b.shared_group = Some("station".into());
        let s = b.subscriptions(Direction::Southbound);
        assert!(s.contains(&"$share/station/plant/eq/+/+/v2/events".to_string()));
        assert!(s.contains(&"$share/station/plant/eq/v2/data".to_string()));
        assert_eq!(s.len(), 9);
        assert_eq!(
            b.publish_topic(Some("line1.press"), Intent::Commands),
            "plant/eq/line1/press/v2/commands"
        );
        assert!(b.matches(Direction::Southbound, "plant/eq/a/b/v2/metadata"));
        assert!(!b.matches(Direction::Southbound, "plant/eq/a/b/c/v2/metadata"));
        assert!(!b.matches(Direction::Northbound, "plant/eq/a/v2/events"));
    }

    #[test]
    fn filters_match_like_mqtt() {
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert_eq!(strip_share("$share/g/a/b"), "a/b");
    }
}
