//! `microdcs dlq list|show|replay|delete|purge`: the dead letters a station
//! keeps in Redis (`microdcs::dlq`), and re-injecting them after a fix.

use super::output::{self, OutputArgs};
use base64::Engine as _;
use microdcs::dlq::{DeadLetter, DeadLetters};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// How long a replay waits for the broker's acknowledgement.
const REPLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// `dlq …`.
#[derive(Debug, PartialEq, Eq, clap::Subcommand)]
pub(crate) enum DlqCommand {
    List(ListArgs),
    Show(ShowArgs),
    Replay(ReplayArgs),
    Delete(DeleteArgs),
    Purge(PurgeArgs),
}

/// List dead letters, newest first: id, time, processor, kind, reason, topic, size
#[derive(Debug, PartialEq, Eq, clap::Args)]
#[command(after_help = super::CONFIG_SOURCES)]
pub(crate) struct ListArgs {
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Only this processor's dead letters ("-": messages no processor took).
    #[arg(long, value_name = "P")]
    pub(crate) processor: Option<String>,
    /// At most this many (the newest).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub(crate) limit: usize,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

/// Show one dead letter: the original message with every property, and why
///
/// The payload is shown as text when it is valid UTF-8, else as base64.
#[derive(Debug, PartialEq, Eq, clap::Args)]
#[command(verbatim_doc_comment, after_help = super::CONFIG_SOURCES)]
pub(crate) struct ShowArgs {
    /// The dead letter's id (as `dlq list` prints it).
    #[arg(value_name = "ID")]
    pub(crate) id: String,
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Its processor (needed when the id exists for several).
    #[arg(long, value_name = "P")]
    pub(crate) processor: Option<String>,
    #[command(flatten)]
    pub(crate) output: OutputArgs,
}

/// Re-publish a dead letter's original message, unchanged, to the broker
///
/// Publishes the original topic, payload, QoS, retain flag and properties
/// (content type, correlation data, response topic, user properties,
/// message expiry, payload format indicator) with the station's MQTT
/// settings on a connection of its own, waits for the broker's
/// acknowledgement and records the replay. A dead letter replayed before is
/// replayed again only with --force.
#[derive(Debug, PartialEq, Eq, clap::Args)]
#[command(verbatim_doc_comment, after_help = super::CONFIG_SOURCES)]
pub(crate) struct ReplayArgs {
    /// The dead letter's id.
    #[arg(value_name = "ID")]
    pub(crate) id: String,
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Its processor (needed when the id exists for several).
    #[arg(long, value_name = "P")]
    pub(crate) processor: Option<String>,
    /// Replay even if it was replayed before.
    #[arg(long)]
    pub(crate) force: bool,
}

/// Delete one dead letter
#[derive(Debug, PartialEq, Eq, clap::Args)]
#[command(after_help = super::CONFIG_SOURCES)]
pub(crate) struct DeleteArgs {
    /// The dead letter's id.
    #[arg(value_name = "ID")]
    pub(crate) id: String,
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Its processor (needed when the id exists for several).
    #[arg(long, value_name = "P")]
    pub(crate) processor: Option<String>,
}

/// Delete every dead letter (of one processor with --processor)
#[derive(Debug, PartialEq, Eq, clap::Args)]
#[command(after_help = super::CONFIG_SOURCES)]
pub(crate) struct PurgeArgs {
    /// TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Only this processor's dead letters.
    #[arg(long, value_name = "P")]
    pub(crate) processor: Option<String>,
}

fn store(config: &microdcs::config::Config, redis: microdcs::Redis) -> DeadLetters {
    DeadLetters::new(
        redis.conn,
        config.redis.key_prefix.clone(),
        config.mqtt.dead_letter_max_len,
    )
}

/// The one dead letter `id` names (in `processor`'s stream, or the only
/// stream that has it), or why there is none.
async fn one(
    letters: &DeadLetters,
    id: &str,
    processor: Option<&str>,
) -> Result<DeadLetter, String> {
    let mut found = letters
        .find(id, processor)
        .await
        .map_err(|e| e.to_string())?;
    match found.len() {
        0 => Err(match processor {
            Some(p) => format!("no dead letter '{id}' of processor '{p}'"),
            None => format!("no dead letter '{id}'"),
        }),
        1 => Ok(found.remove(0)),
        _ => Err(format!(
            "dead letter '{id}' exists for several processors: {}; choose one with --processor",
            found
                .iter()
                .map(|l| l.processor.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// `dlq list`.
pub(crate) fn list(args: &ListArgs) -> ExitCode {
    super::with_station_redis(args.config.as_deref(), |config, redis| async move {
        let letters = store(&config, redis)
            .list(args.processor.as_deref(), args.limit)
            .await
            .map_err(|e| e.to_string())?;
        if args.output.json {
            let rows: Vec<Value> = letters.iter().map(summary_json).collect();
            super::out(&format!("{}\n", output::json(&rows)));
        } else if letters.is_empty() {
            eprintln!("no dead letters");
        } else {
            let rows = letters.iter().map(|l| {
                vec![
                    l.id.clone(),
                    super::time(l.at_ms),
                    l.processor.clone(),
                    l.kind.clone(),
                    clip(&l.reason, 60),
                    l.message.topic.clone(),
                    l.message.payload.len().to_string(),
                    l.replayed_ms.map_or_else(|| "-".into(), super::time),
                ]
            });
            super::out(&format!(
                "{}\n",
                output::table(
                    [
                        "ID",
                        "TIME",
                        "PROCESSOR",
                        "KIND",
                        "REASON",
                        "TOPIC",
                        "SIZE",
                        "REPLAYED"
                    ],
                    rows
                )
            ));
        }
        Ok(())
    })
}

/// `dlq show`.
pub(crate) fn show(args: &ShowArgs) -> ExitCode {
    super::with_station_redis(args.config.as_deref(), |config, redis| async move {
        let letter = one(&store(&config, redis), &args.id, args.processor.as_deref()).await?;
        if args.output.json {
            super::out(&format!("{}\n", output::json(&detail_json(&letter))));
        } else {
            super::out(&detail_text(&letter));
        }
        Ok(())
    })
}

/// `dlq replay`.
pub(crate) fn replay(args: &ReplayArgs) -> ExitCode {
    super::with_station_redis(args.config.as_deref(), |config, redis| async move {
        let letters = store(&config, redis);
        let letter = one(&letters, &args.id, args.processor.as_deref()).await?;
        // The webhook sink keeps undeliverable HTTP requests here too
        // (`microdcs::webhook`); they were never MQTT messages.
        if letter.processor == "webhook" {
            return Err(format!(
                "dead letter '{}' is a webhook delivery to {}, not an MQTT message: it is not replayed to the broker (`dlq show` has its body and ce- headers)",
                letter.id, letter.message.topic
            ));
        }
        if let (Some(at), false) = (letter.replayed_ms, args.force) {
            return Err(format!(
                "dead letter '{}' was replayed at {}; use --force to replay it again",
                letter.id,
                super::time(at)
            ));
        }
        microdcs::dlq::replay(&config.mqtt_settings(), &letter.message, REPLAY_TIMEOUT)
            .await
            .map_err(|e| e.to_string())?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if let Err(e) = letters.mark_replayed(&letter, now).await {
            return Err(format!(
                "replayed '{}' to '{}', but cannot record it: {e}",
                letter.id, letter.message.topic
            ));
        }
        eprintln!(
            "replayed dead letter {} ({}) to {}",
            letter.id, letter.processor, letter.message.topic
        );
        Ok(())
    })
}

/// `dlq delete`.
pub(crate) fn delete(args: &DeleteArgs) -> ExitCode {
    super::with_station_redis(args.config.as_deref(), |config, redis| async move {
        let letters = store(&config, redis);
        let letter = one(&letters, &args.id, args.processor.as_deref()).await?;
        letters
            .delete(&letter.processor, &letter.id)
            .await
            .map_err(|e| e.to_string())?;
        eprintln!("deleted dead letter {} ({})", letter.id, letter.processor);
        Ok(())
    })
}

/// `dlq purge`.
pub(crate) fn purge(args: &PurgeArgs) -> ExitCode {
    super::with_station_redis(args.config.as_deref(), |config, redis| async move {
        let n = store(&config, redis)
            .purge(args.processor.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        eprintln!("deleted {n} dead letters");
        Ok(())
    })
}

/// `text` cut to `max` characters with an ellipsis.
fn clip(text: &str, max: usize) -> String {
    let one_line = text.replace(['\n', '\r'], " ");
    if one_line.chars().count() <= max {
        return one_line;
    }
    let mut s: String = one_line.chars().take(max.saturating_sub(1)).collect();
    s.push('…');
    s
}

fn summary_json(l: &DeadLetter) -> Value {
    json!({
        "id": l.id,
        "time": super::time(l.at_ms),
        "processor": l.processor,
        "kind": l.kind,
        "reason": l.reason,
        "topic": l.message.topic,
        "size": l.message.payload.len(),
        "replayed": l.replayed_ms.map(super::time),
    })
}

/// The payload as text when it is UTF-8, else base64, with which it is.
fn payload(l: &DeadLetter) -> (&'static str, String) {
    match std::str::from_utf8(&l.message.payload) {
        Ok(t) => ("utf-8", t.to_owned()),
        Err(_) => (
            "base64",
            base64::engine::general_purpose::STANDARD.encode(&l.message.payload),
        ),
    }
}

fn detail_json(l: &DeadLetter) -> Value {
    let (encoding, text) = payload(l);
    let mut v = summary_json(l);
    v["qos"] = json!(l.message.qos);
    v["retain"] = json!(l.message.retain);
    v["properties"] = serde_json::to_value(&l.message.properties).unwrap_or(Value::Null);
    v["payload_encoding"] = json!(encoding);
    v["payload"] = json!(text);
    v
}

fn detail_text(l: &DeadLetter) -> String {
    let p = &l.message.properties;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut rows: Vec<(String, String)> = vec![
        ("ID".into(), l.id.clone()),
        ("Time".into(), super::time(l.at_ms)),
        ("Processor".into(), l.processor.clone()),
        ("Kind".into(), l.kind.clone()),
        ("Reason".into(), l.reason.clone()),
        (
            "Replayed".into(),
            l.replayed_ms.map_or_else(|| "-".into(), super::time),
        ),
        ("Topic".into(), l.message.topic.clone()),
        ("QoS".into(), l.message.qos.to_string()),
        ("Retain".into(), l.message.retain.to_string()),
    ];
    let opt = |v: Option<String>| v.unwrap_or_else(|| "-".into());
    rows.push(("Content type".into(), opt(p.content_type.clone())));
    rows.push((
        "Correlation data".into(),
        opt(p
            .correlation_data
            .as_deref()
            .map(|c| match std::str::from_utf8(c) {
                Ok(t) if !t.chars().any(char::is_control) => format!("{t:?}"),
                _ => format!("base64:{}", b64(c)),
            })),
    ));
    rows.push(("Response topic".into(), opt(p.response_topic.clone())));
    rows.push((
        "Message expiry".into(),
        opt(p.message_expiry_interval.map(|s| format!("{s} s"))),
    ));
    rows.push((
        "Payload format".into(),
        opt(p.payload_format_indicator.map(|f| f.to_string())),
    ));
    for (k, v) in &p.user_properties {
        rows.push((format!("User property {k}"), v.clone()));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in rows {
        out.push_str(&format!("{:w$}  {v}\n", format!("{k}:"), w = width + 1));
    }
    let (encoding, text) = payload(l);
    out.push_str(&format!(
        "\nPayload ({} bytes, {encoding}):\n{text}\n",
        l.message.payload.len()
    ));
    out
}
