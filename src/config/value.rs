//! Reading one setting from a TOML value or an environment string, and the
//! checks shared by several settings. Messages say what was expected and
//! what was found, never which key (the caller knows that).

use crate::telemetry::LogFormat;

/// One raw value, from the file or from the environment. TOML values must
/// have the right TOML type; environment values are text to be parsed.
pub(super) enum Raw<'a> {
    /// A value from the configuration file.
    Toml(&'a toml::Value),
    /// The text of an environment variable (or of one `name:value` entry).
    Env(&'a str),
}

impl<'a> Raw<'a> {
    pub(super) fn is_env(&self) -> bool {
        matches!(self, Raw::Env(_))
    }

    /// The value as text; a TOML value must be a string.
    pub(super) fn text(&self) -> Result<&'a str, String> {
        match self {
            Raw::Toml(toml::Value::String(s)) => Ok(s),
            Raw::Toml(v) => Err(format!("expected a string, found {}", type_name(v))),
            Raw::Env(s) => Ok(s),
        }
    }

    /// Non-empty text.
    pub(super) fn non_empty(&self) -> Result<String, String> {
        let s = self.text()?;
        if s.is_empty() {
            return Err("must not be empty (leave it out to use the default)".into());
        }
        Ok(s.to_owned())
    }

    /// Text checked by `check`.
    pub(super) fn checked(&self, check: fn(&str) -> Result<(), String>) -> Result<String, String> {
        let s = self.non_empty()?;
        check(&s)?;
        Ok(s)
    }

    /// An integer in `min..=max`.
    pub(super) fn integer(&self, min: u64, max: u64) -> Result<u64, String> {
        let expected = || {
            if max == u64::MAX {
                format!("an integer of at least {min}")
            } else {
                format!("an integer from {min} to {max}")
            }
        };
        let n = match self {
            Raw::Toml(toml::Value::Integer(i)) => {
                u64::try_from(*i).map_err(|_| format!("expected {}, found {i}", expected()))?
            }
            Raw::Toml(v) => {
                return Err(format!("expected {}, found {}", expected(), type_name(v)));
            }
            Raw::Env(s) => s
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("expected {}, found {s:?}", expected()))?,
        };
        if n < min || n > max {
            return Err(format!("expected {}, found {n}", expected()));
        }
        Ok(n)
    }

    /// A TCP port, 1 to 65535.
    pub(super) fn port(&self) -> Result<u16, String> {
        self.integer(1, u16::MAX.into())
            .map(|n| n as u16)
            .map_err(|e| format!("invalid port: {e}"))
    }

    /// A boolean: TOML `true`/`false`; in the environment also `1`/`0` and
    /// `yes`/`no`, in any case.
    pub(super) fn boolean(&self) -> Result<bool, String> {
        match self {
            Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
            Raw::Toml(v) => Err(format!("expected true or false, found {}", type_name(v))),
            Raw::Env(s) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(format!("expected true/false, 1/0 or yes/no, found {s:?}")),
            },
        }
    }
}

fn type_name(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

/// A host name or IP address: no whitespace, no scheme.
pub(super) fn host(s: &str) -> Result<(), String> {
    if s.chars().any(char::is_whitespace) {
        return Err(format!("host {s:?} contains whitespace"));
    }
    if s.contains("://") {
        return Err(format!(
            "host {s:?} looks like a URL; give only the host name or address"
        ));
    }
    Ok(())
}

/// The nodes of a Redis Cluster: `host:port` entries separated by commas
/// (in the file also an array of such strings), each host as [`host`]
/// checks it (an IPv6 address in brackets, `[::1]:7000`), each port 1 to
/// 65535; at least one.
/// A list of names: a TOML array of strings, or `a,b` in the
/// environment; blanks around names are dropped, duplicates kept once.
/// Each name must be usable as a topic level (a processor name is one).
pub(super) fn names(raw: &Raw<'_>) -> Result<Vec<String>, String> {
    let entries: Vec<String> = match raw {
        Raw::Toml(toml::Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s.clone()),
                v => Err(format!("expected names, found {}", type_name(v))),
            })
            .collect::<Result<_, _>>()?,
        r => r.text()?.split(',').map(str::to_owned).collect(),
    };
    let mut out: Vec<String> = Vec::new();
    for e in entries {
        let e = e.trim();
        if e.is_empty() {
            continue;
        }
        topic_level(e).map_err(|m| format!("name {e:?}: {m}"))?;
        if !out.iter().any(|n| n == e) {
            out.push(e.to_owned());
        }
    }
    Ok(out)
}

pub(super) fn cluster_nodes(raw: &Raw<'_>) -> Result<Vec<String>, String> {
    let entries: Vec<String> = match raw {
        Raw::Toml(toml::Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s.clone()),
                v => Err(format!(
                    "expected \"host:port\" strings, found {}",
                    type_name(v)
                )),
            })
            .collect::<Result<_, _>>()?,
        r => r.text()?.split(',').map(str::to_owned).collect(),
    };
    let mut nodes = Vec::new();
    for e in entries {
        let e = e.trim();
        if e.is_empty() {
            continue;
        }
        let bad = || format!("expected host:port for a cluster node, found {e:?}");
        let (name, port) = e.rsplit_once(':').ok_or_else(bad)?;
        let bare = name
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(name);
        if bare.is_empty() || (bare.contains(':') && bare == name) {
            return Err(bad());
        }
        host(bare).map_err(|m| format!("cluster node {e:?}: {m}"))?;
        match port.parse::<u16>() {
            Ok(p) if p > 0 => {}
            _ => {
                return Err(format!(
                    "cluster node {e:?}: invalid port {port:?} (1 to 65535)"
                ))
            }
        }
        nodes.push(e.to_owned());
    }
    if nodes.is_empty() {
        return Err(
            "expected at least one host:port for a cluster node (leave it out for a single Redis)"
                .into(),
        );
    }
    Ok(nodes)
}

/// A list of non-empty strings: comma-separated text (in the file also an
/// array of strings); `what` names one entry in messages.
pub(super) fn list(raw: &Raw<'_>, what: &str) -> Result<Vec<String>, String> {
    let entries: Vec<String> = match raw {
        Raw::Toml(toml::Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                toml::Value::String(s) => Ok(s.clone()),
                v => Err(format!("expected {what} strings, found {}", type_name(v))),
            })
            .collect::<Result<_, _>>()?,
        r => r.text()?.split(',').map(str::to_owned).collect(),
    };
    Ok(entries
        .iter()
        .map(|e| e.trim())
        .filter(|e| !e.is_empty())
        .map(str::to_owned)
        .collect())
}

/// A webhook URL: `http://` or (with the `tls` feature) `https://`, with
/// a host. Without the feature `https://` is refused with the reason: the
/// sink's HTTP client has no TLS then, so such a receiver would only ever
/// fail.
pub(super) fn webhook_url(s: &str) -> Result<(), String> {
    let rest = if let Some(rest) = s.strip_prefix("https://") {
        if !cfg!(feature = "tls") {
            return Err(format!(
                "{s:?}: this build sends webhooks without TLS (cargo feature `tls`); build with it, or put a TLS-terminating proxy (or sidecar) in front of the receiver and give its http:// URL"
            ));
        }
        rest
    } else {
        s.strip_prefix("http://")
            .ok_or_else(|| format!("expected an http:// or https:// URL, found {s:?}"))?
    };
    if rest.is_empty() || rest.starts_with('/') || rest.chars().any(char::is_whitespace) {
        return Err(format!("expected a URL with a host, found {s:?}"));
    }
    Ok(())
}

/// An MQTT topic name we publish to or subscribe below: no wildcards, not
/// reserved (`$…`), no trailing `/` (it would produce an empty level).
pub(super) fn topic(s: &str) -> Result<(), String> {
    if s.contains(['+', '#']) {
        return Err(format!(
            "topic {s:?} must not contain the MQTT wildcards '+' or '#'"
        ));
    }
    if s.starts_with('$') {
        return Err(format!(
            "topic {s:?} must not start with '$' (reserved for the broker)"
        ));
    }
    if s.ends_with('/') {
        return Err(format!("topic {s:?} must not end with '/'"));
    }
    utf8_string(s)
}

/// One MQTT topic level (no `/`): discriminators, shared subscription
/// groups, instance ids.
pub(super) fn topic_level(s: &str) -> Result<(), String> {
    if s.contains(['/', '+', '#']) {
        return Err(format!(
            "{s:?} must be a single MQTT topic level (no '/', '+' or '#')"
        ));
    }
    utf8_string(s)
}

/// Anything sent as an MQTT UTF-8 string (client ids, topics).
pub(super) fn utf8_string(s: &str) -> Result<(), String> {
    if s.contains('\0') {
        return Err("must not contain a NUL character".into());
    }
    // The broker closes the connection on these (wire contract §8).
    crate::envelope::check_mqtt_string("the value", s).map_err(|e| e.to_string())?;
    if s.len() > u16::MAX as usize {
        return Err(format!(
            "is {} bytes long; MQTT allows at most 65535",
            s.len()
        ));
    }
    Ok(())
}

/// A log filter in `RUST_LOG` syntax whose bare words are level names, so
/// that a typo like `verbose` or `warning` is an error rather than a filter
/// for a target of that name.
pub(super) fn log_level(s: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];
    for directive in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let bare = !directive.contains(['=', '[', ':']);
        if bare && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "unknown log level {directive:?}; expected one of {} or `target=level` directives",
                LEVELS.join(", ")
            ));
        }
    }
    tracing_subscriber::EnvFilter::try_new(s)
        .map(|_| ())
        .map_err(|e| format!("invalid log filter {s:?}: {e}"))
}

/// `text` or `json`, in any case.
pub(super) fn log_format(s: &str) -> Result<LogFormat, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "text" => Ok(LogFormat::Text),
        "json" => Ok(LogFormat::Json),
        _ => Err(format!("expected \"text\" or \"json\", found {s:?}")),
    }
}

/// The name of a log format in the configuration.
pub(super) fn log_format_name(f: LogFormat) -> &'static str {
    match f {
        LogFormat::Text => "text",
        LogFormat::Json => "json",
    }
}

/// Appends `s` percent-encoded for the user-info part of a URL: everything
/// but RFC 3986 unreserved characters is escaped.
pub(super) fn percent_encode_into(out: &mut String, s: &str) {
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
}

/// The edit distance between two short strings, for "did you mean" hints.
pub(super) fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// `candidates` closest to `word`, if one is close enough to be a typo.
pub(super) fn suggest<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= 2.max(c.len() / 4))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_booleans_accept_common_spellings() {
        for (s, b) in [("TRUE", true), ("yes", true), ("1", true), ("No", false)] {
            assert_eq!(Raw::Env(s).boolean(), Ok(b), "{s}");
        }
        assert!(Raw::Env("maybe").boolean().is_err());
        assert!(Raw::Toml(&toml::Value::String("true".into()))
            .boolean()
            .is_err());
    }

    #[test]
    fn integers_are_range_checked() {
        assert_eq!(Raw::Env(" 42 ").integer(1, 100), Ok(42));
        assert!(Raw::Env("0")
            .integer(1, 100)
            .unwrap_err()
            .contains("from 1 to 100"));
        assert!(Raw::Toml(&toml::Value::Integer(-1)).port().is_err());
        assert!(Raw::Env("70000").port().unwrap_err().contains("70000"));
    }

    #[test]
    fn log_levels_reject_typos() {
        assert!(log_level("info,microdcs=debug").is_ok());
        assert!(log_level("WARN").is_ok());
        assert!(log_level("warning").is_err());
        assert!(log_level("verbose").is_err());
    }

    #[test]
    fn names_are_a_list_without_blanks_or_duplicates() {
        let ok = names(&Raw::Env(" machinery-jobs, equipment,,equipment")).unwrap();
        assert_eq!(ok, ["machinery-jobs", "equipment"]);
        assert!(names(&Raw::Env("a/b")).is_err());
        assert!(names(&Raw::Env("a+")).is_err());
        let arr = toml::Value::Array(vec!["equipment".into()]);
        assert_eq!(names(&Raw::Toml(&arr)).unwrap(), ["equipment"]);
        assert!(names(&Raw::Toml(&toml::Value::Array(vec![1.into()]))).is_err());
    }

    #[test]
    fn cluster_nodes_are_host_port_pairs() {
        let ok = cluster_nodes(&Raw::Env("10.0.0.1:7000, redis-b:7001,[::1]:7002")).unwrap();
        assert_eq!(ok, ["10.0.0.1:7000", "redis-b:7001", "[::1]:7002"]);
        for bad in [
            "",
            " , ",
            "redis-a",
            "redis-a:",
            "redis-a:0",
            "redis-a:70000",
            ":7000",
            "::1:7000",
            "redis://a:7000",
        ] {
            assert!(cluster_nodes(&Raw::Env(bad)).is_err(), "{bad:?} accepted");
        }
        let arr = toml::Value::Array(vec!["a:1".into(), "b:2".into()]);
        assert_eq!(cluster_nodes(&Raw::Toml(&arr)).unwrap(), ["a:1", "b:2"]);
        let mixed = toml::Value::Array(vec!["a:1".into(), 2.into()]);
        assert!(cluster_nodes(&Raw::Toml(&mixed)).is_err());
    }

    #[test]
    fn topics_reject_wildcards_and_trailing_slash() {
        assert!(topic("app/jobs").is_ok());
        assert!(topic("app/+/jobs").is_err());
        assert!(topic("app/jobs/").is_err());
        assert!(topic("$SYS/x").is_err());
        assert!(topic_level("v2").is_ok());
        assert!(topic_level("a/b").is_err());
    }

    #[test]
    fn userinfo_is_percent_encoded() {
        let mut s = String::new();
        percent_encode_into(&mut s, "p@ss:w/rd é");
        assert_eq!(s, "p%40ss%3Aw%2Frd%20%C3%A9");
    }

    #[test]
    fn suggestions_find_close_keys() {
        let keys = ["host", "port", "identifier"];
        assert_eq!(suggest("hots", keys.into_iter()), Some("host"));
        assert_eq!(suggest("identifer", keys.into_iter()), Some("identifier"));
        assert_eq!(suggest("zzzzzz", keys.into_iter()), None);
    }
}
