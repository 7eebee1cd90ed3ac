//! What the simulated equipment does: connection settings and one rule per
//! command type, from a TOML or JSON file or built in code.

use super::SimError;
use crate::error::ErrorKind;
use serde::Deserialize;
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// The whole simulator configuration.
///
/// Every field has a default, so an empty file is a valid configuration (an
/// equipment that answers every command with `{}` after
/// [`SimConfig::default_delay_ms`]). Unknown keys are errors, so a typo cannot
/// silently fall back to a default.
///
/// # Example
///
/// ```
/// let config = microdcs::sim::SimConfig::from_toml_str(r#"
/// host = "localhost"
/// port = 1883
/// prefix = "app/equipment"
/// seed = 42
/// default_delay_ms = 5
///
/// [[rules]]
/// type_id = "com.example.press.Press.v1"
/// delay_ms = [20, 80]                 # or 50, or "20..80"
/// fail_probability = 0.05
/// result = { Force = "{{param.Force}}", Seq = "{{seq}}", Temp = "{{random.f64 20 30}}" }
///
/// [[rules.emit]]
/// type = "com.example.press.Pressed.v1"
/// delay_ms = 10
/// intent = "events"
/// equipment = "gauge"                 # as {scope}/gauge; default: the pressed equipment
/// data = { Force = "{{param.Force}}" }
///
/// [[rules]]
/// type_id = "com.example.*"           # every other type of this prefix
/// result = {}
/// "#)?;
/// assert_eq!(config.rules.len(), 2);
/// # Ok::<(), microdcs::sim::SimError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimConfig {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id. Keep it stable: the broker keeps the session (and
    /// the commands queued while the simulator is away) under this id.
    pub client_id: String,
    /// Optional broker username.
    pub username: Option<String>,
    /// Optional broker password.
    pub password: Option<String>,
    /// Topic prefix of the equipment: commands arrive on
    /// `{prefix}/{subject}/commands`, events go to `{prefix}/{subject}/events`.
    pub prefix: String,
    /// Subscribes `{prefix}/+/commands` … `{prefix}/+/…/+/commands` with
    /// 1 to this many `+` levels (equipment names with up to this many
    /// `.`-separated parts).
    pub wildcard_levels: u8,
    /// CloudEvent `source` of replies and events.
    pub source: String,
    /// Seed of every random decision: the same sequence of commands gets the
    /// same decisions.
    pub seed: u64,
    /// Reply delay of commands no rule matches, and of rules without
    /// `delay_ms`.
    pub default_delay_ms: u64,
    /// How long the broker keeps the session while the simulator is
    /// disconnected (0: a clean session on every connect).
    pub session_expiry_secs: u32,
    /// MQTT keep-alive interval in seconds.
    pub keep_alive_secs: u64,
    /// Largest MQTT packet accepted, in bytes.
    pub max_packet_size: u32,
    /// How many command ids are remembered to answer re-deliveries
    /// identically (oldest forgotten first; 0 remembers none).
    pub remember_ids: usize,
    /// One rule per command type (see [`Rule::type_id`] for how they match).
    pub rules: Vec<Rule>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            host: "localhost".into(),
            port: 1883,
            client_id: "microdcs-sim".into(),
            username: None,
            password: None,
            prefix: "app/equipment".into(),
            wildcard_levels: 2,
            source: "microdcs-sim".into(),
            seed: 0,
            default_delay_ms: 0,
            session_expiry_secs: 3600,
            keep_alive_secs: 30,
            max_packet_size: 16 * 1024 * 1024,
            remember_ids: 100_000,
            rules: Vec::new(),
        }
    }
}

impl SimConfig {
    /// The defaults with another broker address.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        SimConfig {
            host: host.into(),
            port,
            ..SimConfig::default()
        }
    }

    /// Adds a rule.
    #[must_use]
    pub fn rule(mut self, rule: Rule) -> Self {
        self.rules.push(rule);
        self
    }

    /// Reads a file: JSON when its name ends in `.json`, TOML otherwise.
    ///
    /// # Errors
    /// The file cannot be read or does not parse; the error names the file.
    pub fn from_file(path: &Path) -> Result<Self, SimError> {
        let text = std::fs::read_to_string(path).map_err(|e| SimError::Config {
            origin: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        let parsed = if json {
            Self::from_json_str(&text)
        } else {
            Self::from_toml_str(&text)
        };
        parsed.map_err(|e| match e {
            SimError::Config { reason, .. } => SimError::Config {
                origin: path.display().to_string(),
                reason,
            },
            other => other,
        })
    }

    /// Parses TOML.
    ///
    /// # Errors
    /// Not TOML, an unknown key, or a value of the wrong type.
    pub fn from_toml_str(text: &str) -> Result<Self, SimError> {
        toml::from_str(text).map_err(|e| SimError::Config {
            origin: "TOML".into(),
            reason: e.to_string(),
        })
    }

    /// Parses JSON (the same keys as TOML).
    ///
    /// # Errors
    /// Not JSON, an unknown key, or a value of the wrong type.
    pub fn from_json_str(text: &str) -> Result<Self, SimError> {
        serde_json::from_str(text).map_err(|e| SimError::Config {
            origin: "JSON".into(),
            reason: e.to_string(),
        })
    }

    /// The topic filters the simulator subscribes to:
    /// `{prefix}/+/commands` up to [`SimConfig::wildcard_levels`] `+` levels.
    pub fn subscriptions(&self) -> Vec<String> {
        (1..=self.wildcard_levels.max(1))
            .map(|levels| format!("{}{}/commands", self.prefix, "/+".repeat(levels.into())))
            .collect()
    }
}

/// How the equipment answers commands of one type.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The command `type` this rule answers: exact, or a prefix ending in
    /// `*` (`com.example.*`, or `*` for everything). An exact rule wins over
    /// patterns, a longer pattern over a shorter one. Commands no rule
    /// matches are answered with `{}` after the default delay.
    pub type_id: String,
    /// Reply delay; the simulator's default delay when absent.
    #[serde(default)]
    pub delay_ms: Option<Delay>,
    /// The result (`data` of the reply), any JSON, with placeholders (see
    /// the [module documentation](crate::sim)). `{}` when absent.
    #[serde(default)]
    pub result: Option<Value>,
    /// Chance (0 to 1) that the command fails: the reply carries
    /// `mdcserrorkind` = [`Rule::fail_kind`] and no result.
    #[serde(default)]
    pub fail_probability: f64,
    /// The error kind of a simulated failure (a wire-contract kind).
    #[serde(default = "default_fail_kind")]
    pub fail_kind: String,
    /// The `mdcserrormessage` of a simulated failure.
    #[serde(default = "default_fail_message")]
    pub fail_message: String,
    /// Chance (0 to 1) that the command is lost: no reply, no events, and
    /// the id is not remembered (the equipment never saw it).
    #[serde(default)]
    pub drop_probability: f64,
    /// Chance (0 to 1) that the reply is sent twice (same correlation, the
    /// second with a fresh `id`).
    #[serde(default)]
    pub duplicate_probability: f64,
    /// Events published after a successful reply, in order.
    #[serde(default)]
    pub emit: Vec<EmitSpec>,
}

fn default_fail_kind() -> String {
    ErrorKind::CommunicationError.as_str().to_owned()
}

fn default_fail_message() -> String {
    "simulated equipment failure".to_owned()
}

impl Rule {
    /// A rule answering `type_id` with `{}` after the default delay.
    pub fn new(type_id: impl Into<String>) -> Self {
        Rule {
            type_id: type_id.into(),
            delay_ms: None,
            result: None,
            fail_probability: 0.0,
            fail_kind: default_fail_kind(),
            fail_message: default_fail_message(),
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            emit: Vec::new(),
        }
    }

    /// Sets the reply delay.
    #[must_use]
    pub fn delay(mut self, delay: Delay) -> Self {
        self.delay_ms = Some(delay);
        self
    }

    /// Sets the result template.
    #[must_use]
    pub fn result(mut self, template: Value) -> Self {
        self.result = Some(template);
        self
    }

    /// Sets the failure probability.
    #[must_use]
    pub fn fail_probability(mut self, p: f64) -> Self {
        self.fail_probability = p;
        self
    }

    /// Sets the error kind of simulated failures.
    #[must_use]
    pub fn fail_kind(mut self, kind: ErrorKind) -> Self {
        self.fail_kind = kind.as_str().to_owned();
        self
    }

    /// Sets the probability of losing the command.
    #[must_use]
    pub fn drop_probability(mut self, p: f64) -> Self {
        self.drop_probability = p;
        self
    }

    /// Sets the probability of replying twice.
    #[must_use]
    pub fn duplicate_probability(mut self, p: f64) -> Self {
        self.duplicate_probability = p;
        self
    }

    /// Adds an event published after the reply.
    #[must_use]
    pub fn emit(mut self, event: EmitSpec) -> Self {
        self.emit.push(event);
        self
    }

    /// Checks probabilities and the error kind.
    pub(crate) fn validate(&self) -> Result<(), SimError> {
        let bad = |reason: String| SimError::Rule {
            type_id: self.type_id.clone(),
            reason,
        };
        if self.type_id.is_empty() {
            return Err(bad("type_id is empty".into()));
        }
        let head = self.type_id.strip_suffix('*').unwrap_or(&self.type_id);
        if head.contains('*') {
            return Err(bad("'*' is only allowed at the end of type_id".into()));
        }
        for (name, p) in [
            ("fail_probability", self.fail_probability),
            ("drop_probability", self.drop_probability),
            ("duplicate_probability", self.duplicate_probability),
        ] {
            if !(0.0..=1.0).contains(&p) {
                return Err(bad(format!("{name} {p} is not between 0 and 1")));
            }
        }
        if ErrorKind::from_wire(&self.fail_kind).as_str() != self.fail_kind {
            return Err(bad(format!(
                "fail_kind '{}' is not an error kind of the wire contract (e.g. COMMUNICATION_ERROR)",
                self.fail_kind
            )));
        }
        for e in &self.emit {
            if e.ty.is_empty() {
                return Err(bad("an emitted event has an empty type".into()));
            }
            if let Some(eq) = &e.equipment {
                crate::envelope::check_topic_path("equipment", eq)
                    .map_err(|m| bad(format!("event '{}': {m}", e.ty)))?;
            }
        }
        Ok(())
    }
}

/// An event the equipment publishes after answering a command, to
/// `{prefix}/{subject}/{intent}`, with `correlationid` = the command's
/// `jobid` metadata so that a waiting `pull_event` action of that job
/// matches it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmitSpec {
    /// The event `type`.
    #[serde(rename = "type")]
    pub ty: String,
    /// Delay after the previous publication (the reply, for the first event).
    #[serde(default)]
    pub delay_ms: Option<Delay>,
    /// The event `data` template (same placeholders as results); `{}` when
    /// absent.
    #[serde(default)]
    pub data: Option<Value>,
    /// The topic's last segment.
    #[serde(default)]
    pub intent: EmitIntent,
    /// Publish as this equipment of the command's scope (subject
    /// `{scope}/{equipment}`, e.g. a camera reporting after the nutrunner
    /// finished); `None`: as the equipment the command addressed. A
    /// `pull_event` action with an `Equipment` selector takes only events
    /// from the equipment it names.
    #[serde(default)]
    pub equipment: Option<String>,
}

impl EmitSpec {
    /// An event of type `ty`, data `{}`, on `events`, right after the reply.
    pub fn new(ty: impl Into<String>) -> Self {
        EmitSpec {
            ty: ty.into(),
            delay_ms: None,
            data: None,
            intent: EmitIntent::Events,
            equipment: None,
        }
    }

    /// Sets the delay after the previous publication.
    #[must_use]
    pub fn delay(mut self, delay: Delay) -> Self {
        self.delay_ms = Some(delay);
        self
    }

    /// Sets the data template.
    #[must_use]
    pub fn data(mut self, template: Value) -> Self {
        self.data = Some(template);
        self
    }

    /// Sets the intent.
    #[must_use]
    pub fn intent(mut self, intent: EmitIntent) -> Self {
        self.intent = intent;
        self
    }

    /// Publishes the event as `equipment` of the command's scope (subject
    /// `{scope}/{equipment}`) instead of as the commanded equipment.
    #[must_use]
    pub fn equipment(mut self, equipment: impl Into<String>) -> Self {
        self.equipment = Some(equipment.into());
        self
    }
}

/// Where an emitted event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EmitIntent {
    /// `{prefix}/{subject}/events`.
    #[default]
    Events,
    /// `{prefix}/{subject}/data`.
    Data,
}

/// A delay in milliseconds: fixed, or drawn uniformly from a range.
///
/// In a file: `50`, `[20, 80]` or `"20..80"` (both bounds included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "DelayRepr")]
pub enum Delay {
    /// Always this many milliseconds.
    Fixed(u64),
    /// Uniformly between the two bounds (inclusive), in milliseconds.
    Range(u64, u64),
}

impl Delay {
    /// A fixed delay.
    pub fn fixed(ms: u64) -> Self {
        Delay::Fixed(ms)
    }

    /// A delay drawn from `min..=max` (swapped if given the wrong way round).
    pub fn range(min: u64, max: u64) -> Self {
        Delay::Range(min.min(max), min.max(max))
    }

    /// The delay for one draw `u` in `[0, 1)`.
    pub(crate) fn pick(self, u: f64) -> Duration {
        let ms = match self {
            Delay::Fixed(ms) => ms,
            Delay::Range(lo, hi) => {
                let span = (hi - lo) as f64 + 1.0;
                lo.saturating_add((u * span) as u64).min(hi)
            }
        };
        Duration::from_millis(ms)
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum DelayRepr {
    Fixed(u64),
    Pair([u64; 2]),
    Text(String),
}

impl TryFrom<DelayRepr> for Delay {
    type Error = String;

    fn try_from(r: DelayRepr) -> Result<Self, String> {
        let (lo, hi) = match r {
            DelayRepr::Fixed(ms) => return Ok(Delay::Fixed(ms)),
            DelayRepr::Pair([lo, hi]) => (lo, hi),
            DelayRepr::Text(t) => {
                let parse = |s: &str| s.trim().parse::<u64>().ok();
                match t.split_once("..").map(|(a, b)| (parse(a), parse(b))) {
                    Some((Some(lo), Some(hi))) => (lo, hi),
                    _ => match parse(&t) {
                        Some(ms) => return Ok(Delay::Fixed(ms)),
                        None => {
                            return Err(format!(
                                "delay '{t}' is neither milliseconds nor a range 'min..max'"
                            ))
                        }
                    },
                }
            }
        };
        if lo > hi {
            return Err(format!("delay range {lo}..{hi} has min > max"));
        }
        Ok(Delay::Range(lo, hi))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_parse_in_every_form() {
        #[derive(Deserialize)]
        struct D {
            d: Delay,
        }
        let d = |s: &str| toml::from_str::<D>(s).map(|d| d.d);
        assert_eq!(d("d = 5").unwrap(), Delay::Fixed(5));
        assert_eq!(d("d = [1, 9]").unwrap(), Delay::Range(1, 9));
        assert_eq!(d("d = \"1..9\"").unwrap(), Delay::Range(1, 9));
        assert_eq!(d("d = \"7\"").unwrap(), Delay::Fixed(7));
        assert!(d("d = [9, 1]").is_err());
        assert!(d("d = \"soon\"").is_err());
        for u in [0.0, 0.5, 0.999_999] {
            let ms = Delay::Range(10, 20).pick(u).as_millis();
            assert!((10..=20).contains(&ms), "{ms}");
        }
    }

    #[test]
    fn json_and_toml_give_the_same_config() {
        let t = SimConfig::from_toml_str(
            "seed = 3\n[[rules]]\ntype_id = \"a.*\"\ndelay_ms = \"1..2\"\nresult = { X = 1 }\n",
        )
        .unwrap();
        let j = SimConfig::from_json_str(
            r#"{"seed":3,"rules":[{"type_id":"a.*","delay_ms":[1,2],"result":{"X":1}}]}"#,
        )
        .unwrap();
        assert_eq!(t, j);
        assert_eq!(t.prefix, "app/equipment");
    }

    #[test]
    fn an_event_may_come_from_other_equipment_of_the_scope() {
        let c = SimConfig::from_toml_str(
            "[[rules]]\ntype_id = \"a\"\n[[rules.emit]]\ntype = \"e\"\nequipment = \"camera\"\n",
        )
        .unwrap();
        assert_eq!(c.rules[0].emit[0].equipment.as_deref(), Some("camera"));
        assert!(c.rules[0].validate().is_ok());
        let bad = SimConfig::from_toml_str(
            "[[rules]]\ntype_id = \"a\"\n[[rules.emit]]\ntype = \"e\"\nequipment = \"cam+1\"\n",
        )
        .unwrap();
        let e = bad.rules[0].validate().unwrap_err().to_string();
        assert!(e.contains("equipment"), "{e}");
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(SimConfig::from_toml_str("sed = 3").is_err());
        assert!(SimConfig::from_toml_str("[[rules]]\ntype_id = \"a\"\nfail = 1").is_err());
    }

    #[test]
    fn subscriptions_cover_the_wildcard_levels() {
        let c = SimConfig::default();
        assert_eq!(
            c.subscriptions(),
            ["app/equipment/+/commands", "app/equipment/+/+/commands"]
        );
    }

    #[test]
    fn rules_are_validated() {
        assert!(Rule::new("a").validate().is_ok());
        assert!(Rule::new("a").fail_probability(1.5).validate().is_err());
        assert!(Rule::new("a*b").validate().is_err());
        assert!(Rule::new("").validate().is_err());
        let mut r = Rule::new("a");
        r.fail_kind = "OOPS".into();
        assert!(r.validate().is_err());
    }
}
