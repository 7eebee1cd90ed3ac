//! The effective configuration as TOML, for `microdcs config check` and
//! for logs: every setting, passwords redacted, environment values
//! annotated. Written by hand from the key tables (the TOML writer is not
//! compiled in), and it reads back with [`Config::from_sources`].

use super::keys::{Shown, KEYS, PROCESSOR_KEYS, SECTIONS};
use super::{Config, InstanceIdSource};
use std::fmt::Write;

/// What a redacted secret looks like.
const REDACTED: &str = "***";

pub(super) fn redacted_toml(c: &Config) -> String {
    let mut out = String::from(
        "# Effective microdcs configuration. Passwords are shown as \"***\"; a\n\
         # trailing comment names the environment variable a value came from.\n",
    );
    for section in SECTIONS {
        if *section == "processors" {
            processors(c, &mut out);
            continue;
        }
        let _ = writeln!(out, "\n[{section}]");
        for k in KEYS.iter().filter(|k| k.section == *section) {
            let key = format!("{}.{}", k.section, k.name);
            match (k.get)(c) {
                Shown::Unset => {
                    let env = k.env.map(|v| format!(" ({v})")).unwrap_or_default();
                    let _ = writeln!(out, "# {} is not set{env}", k.name);
                }
                shown => {
                    let _ = writeln!(out, "{} = {}{}", k.name, literal(shown), note(c, &key));
                }
            }
            if key == "mqtt.client_id" {
                let _ = writeln!(
                    out,
                    "# effective MQTT client id: {}",
                    quote(&c.mqtt_client_id())
                );
            }
        }
    }
    out
}

fn processors(c: &Config, out: &mut String) {
    if c.processors.is_empty() {
        out.push_str("\n# No [processors.NAME] topics: every processor uses its own defaults.\n");
        return;
    }
    for (name, topics) in &c.processors {
        let _ = writeln!(out, "\n[processors.{}]", key(name));
        for k in PROCESSOR_KEYS {
            let shown = (k.get)(topics);
            if matches!(shown, Shown::Unset) {
                continue;
            }
            let path = format!("processors.{name}.{}", k.name);
            let _ = writeln!(out, "{} = {}{}", k.name, literal(shown), note(c, &path));
        }
    }
}

/// A trailing comment saying where a value came from, when that is not
/// the file or the defaults.
fn note(c: &Config, key: &str) -> String {
    if key == "instance.id" {
        match c.instance.id_source {
            InstanceIdSource::Hostname => return "  # from the host name".into(),
            InstanceIdSource::Random => {
                return "  # random: set POD_ID or instance.id for a stable id".into()
            }
            InstanceIdSource::PodId | InstanceIdSource::File => {}
        }
    }
    match c.origin(key).and_then(|o| o.env_var()) {
        Some(var) => format!("  # from {var}"),
        None => String::new(),
    }
}

fn literal(v: Shown) -> String {
    match v {
        Shown::Str(s) => quote(&s),
        Shown::Int(n) => n.to_string(),
        Shown::Bool(b) => b.to_string(),
        Shown::Secret => quote(REDACTED),
        Shown::Unset => String::new(),
    }
}

/// A table key: bare when TOML allows it, else quoted.
fn key(name: &str) -> String {
    let bare = !name.is_empty()
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
    if bare {
        name.to_owned()
    } else {
        quote(name)
    }
}

/// A TOML basic string.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for ch in s.chars() {
        match ch {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ch if ch.is_control() => {
                let _ = write!(out, "\\u{:04X}", ch as u32);
            }
            ch => out.push(ch),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_escaped_for_toml() {
        let s = "a\"b\\c\nd\u{7f}é";
        let quoted = quote(s);
        let parsed: toml::Table = toml::from_str(&format!("k = {quoted}")).unwrap();
        assert_eq!(parsed["k"].as_str(), Some(s));
    }

    #[test]
    fn odd_processor_names_are_quoted() {
        assert_eq!(key("machinery-jobs"), "machinery-jobs");
        assert_eq!(key("my.proc"), "\"my.proc\"");
    }
}
