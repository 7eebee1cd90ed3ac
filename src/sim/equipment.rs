//! The simulated equipment's decisions, without any I/O: a command goes in,
//! what to answer (when, whether at all, which events follow) comes out.
//!
//! Decisions are drawn from one seeded generator in the order commands
//! arrive, so the same sequence of commands gets the same decisions. A
//! re-delivered command (same `source` and `id`) is answered from memory and
//! draws nothing, so re-deliveries do not shift the decisions of the
//! commands after them.

use super::config::{Delay, EmitIntent, Rule, SimConfig};
use super::rng::SplitMix64;
use super::template::{Context, Template};
use super::SimError;
use serde_json::Value;
use std::collections::{HashMap, VecDeque};
use std::time::Duration;

/// A decoded command, as far as the equipment cares.
#[derive(Debug, Clone)]
pub(crate) struct ReceivedCommand {
    pub(crate) source: String,
    pub(crate) id: String,
    pub(crate) ty: String,
    pub(crate) subject: Option<String>,
    /// The `jobid` custom metadata (the station's job).
    pub(crate) jobid: Option<String>,
    /// The command's data, `null` when it has none.
    pub(crate) params: Value,
}

/// The answer to one command.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// Success: the result JSON.
    Result(Value),
    /// Failure: `mdcserrorkind` and `mdcserrormessage`.
    Error { kind: String, message: String },
}

/// A reply: its CloudEvent `id` (kept for re-deliveries, so a station that
/// already processed it drops it as a duplicate) and its answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Reply {
    pub(crate) id: String,
    pub(crate) answer: Answer,
}

/// An event to publish after the reply.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlannedEvent {
    pub(crate) ty: String,
    /// After the previous publication.
    pub(crate) delay: Duration,
    pub(crate) data: Value,
    pub(crate) intent: EmitIntent,
    /// Published as this equipment of the command's scope.
    pub(crate) equipment: Option<String>,
}

/// What to do with one command.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    /// Answer after `delay`, a second time if `duplicate`, then publish
    /// `events` (only after a successful answer).
    Answer {
        delay: Duration,
        reply: Reply,
        duplicate: bool,
        events: Vec<PlannedEvent>,
    },
    /// Seen before: the same reply again, at once, and no events (they
    /// already happened).
    Redelivery { reply: Reply },
    /// The command is lost.
    Drop,
}

#[derive(Debug)]
enum Pattern {
    Exact(String),
    Prefix(String),
}

#[derive(Debug)]
struct CompiledEmit {
    ty: String,
    delay: Delay,
    data: Template,
    intent: EmitIntent,
    equipment: Option<String>,
}

#[derive(Debug)]
struct CompiledRule {
    pattern: Pattern,
    delay: Delay,
    result: Template,
    fail_probability: f64,
    fail_kind: String,
    fail_message: String,
    drop_probability: f64,
    duplicate_probability: f64,
    emit: Vec<CompiledEmit>,
}

impl CompiledRule {
    fn compile(rule: &Rule, default_delay: Delay) -> Result<Self, SimError> {
        rule.validate()?;
        let pattern = match rule.type_id.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None => Pattern::Exact(rule.type_id.clone()),
        };
        let empty = Value::Object(Default::default());
        let emit = rule
            .emit
            .iter()
            .map(|e| {
                Ok(CompiledEmit {
                    ty: e.ty.clone(),
                    delay: e.delay_ms.unwrap_or(Delay::Fixed(0)),
                    data: Template::compile(
                        e.data.as_ref().unwrap_or(&empty),
                        &format!("rule '{}' event '{}' data", rule.type_id, e.ty),
                    )?,
                    intent: e.intent,
                    equipment: e.equipment.clone(),
                })
            })
            .collect::<Result<_, SimError>>()?;
        Ok(CompiledRule {
            pattern,
            delay: rule.delay_ms.unwrap_or(default_delay),
            result: Template::compile(
                rule.result.as_ref().unwrap_or(&empty),
                &format!("rule '{}' result", rule.type_id),
            )?,
            fail_probability: rule.fail_probability,
            fail_kind: rule.fail_kind.clone(),
            fail_message: rule.fail_message.clone(),
            drop_probability: rule.drop_probability,
            duplicate_probability: rule.duplicate_probability,
            emit,
        })
    }
}

/// The equipment: rules, the seeded generator and the memory of answers.
#[derive(Debug)]
pub(crate) struct Equipment {
    rules: Vec<CompiledRule>,
    fallback: CompiledRule,
    rng: SplitMix64,
    seq: u64,
    remember: usize,
    seen: HashMap<(String, String), Reply>,
    seen_order: VecDeque<(String, String)>,
}

impl Equipment {
    /// Checks the rules and their templates.
    pub(crate) fn new(config: &SimConfig) -> Result<Self, SimError> {
        let default_delay = Delay::Fixed(config.default_delay_ms);
        let mut rules: Vec<CompiledRule> = Vec::with_capacity(config.rules.len());
        for (i, rule) in config.rules.iter().enumerate() {
            if config.rules[..i].iter().any(|r| r.type_id == rule.type_id) {
                return Err(SimError::Rule {
                    type_id: rule.type_id.clone(),
                    reason: "defined more than once".into(),
                });
            }
            rules.push(CompiledRule::compile(rule, default_delay)?);
        }
        Ok(Equipment {
            rules,
            fallback: CompiledRule::compile(&Rule::new("*"), default_delay)?,
            rng: SplitMix64::new(config.seed),
            seq: 0,
            remember: config.remember_ids,
            seen: HashMap::new(),
            seen_order: VecDeque::new(),
        })
    }

    /// The index of the rule for `ty`: an exact one, else the longest
    /// matching prefix; `None` means the fallback (answer `{}`).
    fn rule_index(&self, ty: &str) -> Option<usize> {
        let exact = self
            .rules
            .iter()
            .position(|r| matches!(&r.pattern, Pattern::Exact(t) if t == ty));
        exact.or_else(|| {
            self.rules
                .iter()
                .enumerate()
                .filter_map(|(i, r)| match &r.pattern {
                    Pattern::Prefix(p) if ty.starts_with(p.as_str()) => Some((p.len(), i)),
                    _ => None,
                })
                .max_by_key(|(len, _)| *len)
                .map(|(_, i)| i)
        })
    }

    /// Decides what to do with `cmd`.
    pub(crate) fn decide(&mut self, cmd: &ReceivedCommand) -> Decision {
        let key = (cmd.source.clone(), cmd.id.clone());
        if let Some(reply) = self.seen.get(&key) {
            return Decision::Redelivery {
                reply: reply.clone(),
            };
        }
        self.seq += 1;
        // Always four draws, whatever the probabilities, so that changing
        // one rule's probability does not reshuffle every later decision.
        let draws = [
            self.rng.next_f64(),
            self.rng.next_f64(),
            self.rng.next_f64(),
            self.rng.next_f64(),
        ];
        let seq = self.seq;
        // The rule and the generator are disjoint fields: both borrowed.
        let rule = match self.rule_index(&cmd.ty) {
            Some(i) => &self.rules[i],
            None => &self.fallback,
        };
        let rng = &mut self.rng;
        let delay = rule.delay.pick(draws[0]);
        if draws[1] < rule.drop_probability {
            return Decision::Drop;
        }
        let ctx = Context {
            seq,
            id: &cmd.id,
            ty: &cmd.ty,
            subject: cmd.subject.as_deref(),
            jobid: cmd.jobid.as_deref(),
            params: &cmd.params,
        };
        let (answer, events) = if draws[2] < rule.fail_probability {
            (
                Answer::Error {
                    kind: rule.fail_kind.clone(),
                    message: rule.fail_message.clone(),
                },
                Vec::new(),
            )
        } else {
            let result = rule.result.render(&ctx, rng);
            let events = rule
                .emit
                .iter()
                .map(|e| PlannedEvent {
                    ty: e.ty.clone(),
                    delay: e.delay.pick(rng.next_f64()),
                    data: e.data.render(&ctx, rng),
                    intent: e.intent,
                    equipment: e.equipment.clone(),
                })
                .collect();
            (Answer::Result(result), events)
        };
        let reply = Reply {
            id: uuid::Uuid::new_v4().to_string(),
            answer,
        };
        let duplicate = draws[3] < rule.duplicate_probability;
        self.remember(key, reply.clone());
        Decision::Answer {
            delay,
            reply,
            duplicate,
            events,
        }
    }

    fn remember(&mut self, key: (String, String), reply: Reply) {
        if self.remember == 0 {
            return;
        }
        while self.seen_order.len() >= self.remember {
            match self.seen_order.pop_front() {
                Some(old) => {
                    self.seen.remove(&old);
                }
                None => break,
            }
        }
        self.seen_order.push_back(key.clone());
        self.seen.insert(key, reply);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::config::EmitSpec;
    use serde_json::json;

    fn command(n: u32, ty: &str) -> ReceivedCommand {
        ReceivedCommand {
            source: "station".into(),
            id: format!("cmd-{n}"),
            ty: ty.into(),
            subject: Some("press".into()),
            jobid: Some("job-1".into()),
            params: json!({"N": n}),
        }
    }

    /// The decision without the random reply id.
    fn shape(d: &Decision) -> String {
        match d {
            Decision::Answer {
                delay,
                reply,
                duplicate,
                events,
            } => format!("{delay:?} {:?} {duplicate} {events:?}", reply.answer),
            Decision::Redelivery { reply } => format!("again {:?}", reply.answer),
            Decision::Drop => "drop".into(),
        }
    }

    fn config(seed: u64) -> SimConfig {
        let mut c = SimConfig {
            seed,
            ..SimConfig::default()
        };
        c.rules.push(
            Rule::new("t.*")
                .delay(Delay::range(0, 100))
                .fail_probability(0.3)
                .drop_probability(0.2)
                .duplicate_probability(0.3)
                .result(json!({"N": "{{param.N}}", "X": "{{random.f64 0 1}}", "S": "{{seq}}"}))
                .emit(EmitSpec::new("t.done").delay(Delay::range(1, 5))),
        );
        c
    }

    fn run(seed: u64) -> Vec<String> {
        let mut e = Equipment::new(&config(seed)).unwrap();
        (0..50)
            .map(|n| shape(&e.decide(&command(n, "t.x"))))
            .collect()
    }

    #[test]
    fn same_seed_same_decisions_other_seed_other_decisions() {
        let a = run(11);
        assert_eq!(a, run(11));
        assert_ne!(a, run(12));
        // Every outcome occurs in 50 commands with these probabilities.
        assert!(a.iter().any(|d| d == "drop"));
        assert!(a.iter().any(|d| d.contains("Error")));
        assert!(a.iter().any(|d| d.contains(" true ")));
    }

    #[test]
    fn redelivery_repeats_the_reply_and_draws_nothing() {
        let mut c = config(3);
        c.rules[0].drop_probability = 0.0;
        let mut a = Equipment::new(&c).unwrap();
        let mut b = Equipment::new(&c).unwrap();
        let first = a.decide(&command(1, "t.x"));
        let again = a.decide(&command(1, "t.x"));
        let Decision::Answer { reply, .. } = &first else {
            panic!("{first:?}")
        };
        assert_eq!(
            again,
            Decision::Redelivery {
                reply: reply.clone()
            }
        );
        // The next new command is decided as if the redelivery never happened.
        b.decide(&command(1, "t.x"));
        assert_eq!(
            shape(&a.decide(&command(2, "t.x"))),
            shape(&b.decide(&command(2, "t.x")))
        );
    }

    #[test]
    fn dropped_commands_are_not_remembered() {
        let mut c = SimConfig::default();
        c.rules.push(Rule::new("t.drop").drop_probability(1.0));
        let mut e = Equipment::new(&c).unwrap();
        assert_eq!(e.decide(&command(1, "t.drop")), Decision::Drop);
        assert_eq!(e.decide(&command(1, "t.drop")), Decision::Drop);
    }

    #[test]
    fn exact_rules_win_then_the_longest_prefix() {
        let mut c = SimConfig::default();
        for (t, v) in [("*", 0), ("a.*", 1), ("a.b.*", 2), ("a.b.c", 3)] {
            c.rules.push(Rule::new(t).result(json!(v)));
        }
        let mut e = Equipment::new(&c).unwrap();
        let result = |e: &mut Equipment, n, ty| match e.decide(&command(n, ty)) {
            Decision::Answer {
                reply:
                    Reply {
                        answer: Answer::Result(v),
                        ..
                    },
                ..
            } => v,
            other => panic!("{other:?}"),
        };
        assert_eq!(result(&mut e, 1, "a.b.c"), json!(3));
        assert_eq!(result(&mut e, 2, "a.b.d"), json!(2));
        assert_eq!(result(&mut e, 3, "a.x"), json!(1));
        assert_eq!(result(&mut e, 4, "z"), json!(0));
        let mut e = Equipment::new(&SimConfig::default()).unwrap();
        assert_eq!(result(&mut e, 5, "z"), json!({}));
    }

    #[test]
    fn memory_is_bounded() {
        let c = SimConfig {
            remember_ids: 2,
            ..SimConfig::default()
        };
        let mut e = Equipment::new(&c).unwrap();
        for n in 0..3 {
            e.decide(&command(n, "t"));
        }
        assert!(matches!(
            e.decide(&command(2, "t")),
            Decision::Redelivery { .. }
        ));
        assert!(matches!(
            e.decide(&command(0, "t")),
            Decision::Answer { .. }
        ));
    }

    #[test]
    fn duplicate_rules_and_bad_templates_are_rejected() {
        let c = SimConfig::default()
            .rule(Rule::new("a"))
            .rule(Rule::new("a"));
        assert!(Equipment::new(&c).is_err());
        let c = SimConfig::default().rule(Rule::new("a").result(json!("{{bogus}}")));
        assert!(Equipment::new(&c).is_err());
    }
}
