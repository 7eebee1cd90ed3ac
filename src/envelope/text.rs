//! Text that travels in MQTT strings and topic levels (wire contract §8).
//!
//! MQTT v5 (§1.5.4) forbids U+0000 in a UTF-8 string and lets a receiver
//! close the connection on control characters and non-characters; Mosquitto
//! does. One such string in a PUBLISH the station sends takes the station
//! off the broker, and the client re-sends the same unacknowledged packet on
//! every reconnect. So every value from outside is checked (or encoded) by
//! these rules where it enters, and the binding checks once more before a
//! packet is built.

use std::borrow::Cow;
use std::fmt::Write as _;

/// Why a text cannot be used as an MQTT string or topic level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    /// Empty where a value is required.
    #[error("{what} is empty")]
    Empty {
        /// What the text is (`subject`, `Equipment`, …).
        what: String,
    },
    /// A character MQTT strings may not carry.
    #[error("{what} contains the character U+{code:04X}, which MQTT strings may not carry")]
    Forbidden {
        /// What the text is.
        what: String,
        /// The offending code point.
        code: u32,
    },
    /// A character a topic level may not contain (`+`, `#`, `/`).
    #[error("{what} '{text}' contains '{ch}', which an MQTT topic level may not contain")]
    Wildcard {
        /// What the text is.
        what: String,
        /// The text (already valid as an MQTT string).
        text: String,
        /// The character.
        ch: char,
    },
    /// Longer than allowed.
    #[error("{what} is {len} bytes long; at most {max} are allowed")]
    TooLong {
        /// What the text is.
        what: String,
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Whether `c` may appear in an MQTT UTF-8 string as the station writes it:
/// not U+0000, not a control character (U+0001–U+001F, U+007F–U+009F), not a
/// Unicode non-character (U+FDD0–U+FDEF, U+xFFFE, U+xFFFF).
pub fn is_mqtt_char(c: char) -> bool {
    let u = c as u32;
    !(u <= 0x1F
        || (0x7F..=0x9F).contains(&u)
        || (0xFDD0..=0xFDEF).contains(&u)
        || u & 0xFFFE == 0xFFFE)
}

/// Whether every character of `s` may appear in an MQTT string.
pub fn is_mqtt_string(s: &str) -> bool {
    s.chars().all(is_mqtt_char)
}

/// The longest MQTT UTF-8 string (or binary data), in bytes: its length is
/// a two-byte prefix (MQTT v5 §1.5.4, §1.5.6). A longer one cannot be
/// encoded, and a broker that receives one mis-framed closes the
/// connection.
pub const MAX_MQTT_STRING: usize = 65_535;

/// Checks that `s` is a valid MQTT string.
///
/// # Errors
/// [`TextError::TooLong`] past [`MAX_MQTT_STRING`] bytes,
/// [`TextError::Forbidden`] naming the first character that is not allowed.
pub fn check_mqtt_string(what: &str, s: &str) -> Result<(), TextError> {
    if s.len() > MAX_MQTT_STRING {
        return Err(TextError::TooLong {
            what: what.to_owned(),
            len: s.len(),
            max: MAX_MQTT_STRING,
        });
    }
    match s.chars().find(|c| !is_mqtt_char(*c)) {
        None => Ok(()),
        Some(c) => Err(TextError::Forbidden {
            what: what.to_owned(),
            code: c as u32,
        }),
    }
}

/// Checks that `s` can be one topic level used for addressing (a scope, a
/// level of an `Equipment` selector): not empty, a valid MQTT string, no
/// `+`, `#` or `/`.
///
/// # Errors
/// The first problem found, naming `what`.
pub fn check_topic_level(what: &str, s: &str) -> Result<(), TextError> {
    if s.is_empty() {
        return Err(TextError::Empty {
            what: what.to_owned(),
        });
    }
    check_mqtt_string(what, s)?;
    match s.chars().find(|c| matches!(c, '+' | '#' | '/')) {
        None => Ok(()),
        Some(ch) => Err(TextError::Wildcard {
            what: what.to_owned(),
            text: s.to_owned(),
            ch,
        }),
    }
}

/// Checks an `Equipment` selector: one or more `/`-separated levels, each
/// [`check_topic_level`].
///
/// # Errors
/// The first level that is not a valid topic level.
pub fn check_topic_path(what: &str, s: &str) -> Result<(), TextError> {
    s.split('/')
        .try_for_each(|level| check_topic_level(what, level))
}

/// Percent-encodes an identifier (a job order id) for one topic level:
/// `%`, `/`, `+`, `#` and every character [`is_mqtt_char`] refuses become
/// `%XX` per UTF-8 byte (uppercase hex); everything else is kept, so an id
/// without those characters is its own topic level.
pub fn encode_level(id: &str) -> Cow<'_, str> {
    let special = |c: char| matches!(c, '%' | '/' | '+' | '#') || !is_mqtt_char(c);
    if !id.chars().any(special) {
        return Cow::Borrowed(id);
    }
    let mut out = String::with_capacity(id.len() + 8);
    for c in id.chars() {
        if special(c) {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                let _ = write!(out, "%{b:02X}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Reverses [`encode_level`] (and any other `%XX` escapes). A `%` not
/// followed by two hex digits is kept as it is; bytes that are not UTF-8
/// after decoding give `None`.
pub fn decode_level(level: &str) -> Option<String> {
    if !level.contains('%') {
        return Some(level.to_owned());
    }
    let b = level.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `s` with every character an MQTT string may not carry written as
/// `\u{XX}`, for text that only informs (error messages, log context):
/// never refused, never able to break a packet.
pub fn escape_for_mqtt(s: &str) -> Cow<'_, str> {
    if is_mqtt_string(s) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_mqtt_char(c) {
            out.push(c);
        } else {
            let _ = write!(out, "\\u{{{:X}}}", c as u32);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn control_and_non_characters_are_refused() {
        for bad in [
            "\0",
            "a\u{1}",
            "\u{1f}",
            "\u{7f}",
            "\u{85}",
            "\u{9f}",
            "\u{fdd0}",
            "\u{fffe}",
            "\u{1ffff}",
            "\u{10ffff}",
        ] {
            assert!(!is_mqtt_string(bad), "{bad:?}");
            assert!(check_mqtt_string("x", bad).is_err());
        }
        for good in ["", "PO#4711+a", "Grüße", "\u{a0}", "\u{fffd}", "😀", "a b"] {
            assert!(is_mqtt_string(good), "{good:?}");
        }
    }

    #[test]
    fn topic_levels_refuse_wildcards_slashes_and_empty() {
        assert!(check_topic_level("subject", "cell-1").is_ok());
        let e = check_topic_level("subject", "cell+1").unwrap_err();
        assert_eq!(
            e.to_string(),
            "subject 'cell+1' contains '+', which an MQTT topic level may not contain"
        );
        assert!(check_topic_level("s", "a#").is_err());
        assert!(check_topic_level("s", "a/b").is_err());
        assert!(check_topic_level("s", "").is_err());
        assert!(check_topic_level("s", "a\tb").is_err());
        assert!(check_topic_path("Equipment", "line-1/press").is_ok());
        assert!(check_topic_path("Equipment", "line-1//press").is_err());
        assert!(check_topic_path("Equipment", "line-1/+").is_err());
    }

    #[test]
    fn ids_without_special_characters_keep_their_topic_level() {
        assert_eq!(encode_level("PO-4711"), "PO-4711");
        assert!(matches!(encode_level("Grüße"), Cow::Borrowed(_)));
        assert_eq!(encode_level("PO#4711+a"), "PO%234711%2Ba");
        assert_eq!(encode_level("a/b%c"), "a%2Fb%25c");
        assert_eq!(encode_level("\u{1}\u{85}"), "%01%C2%85");
    }

    #[test]
    fn escaped_text_is_a_valid_mqtt_string() {
        assert_eq!(escape_for_mqtt("job \u{1}x"), "job \\u{1}x");
        assert!(matches!(escape_for_mqtt("fine"), Cow::Borrowed(_)));
    }

    proptest! {
        #[test]
        fn encoded_levels_are_valid_and_decode_back(id in any::<String>()) {
            let level = encode_level(&id);
            prop_assert!(check_topic_level("id", &level).is_ok() || id.is_empty());
            prop_assert_eq!(decode_level(&level), Some(id.clone()));
        }

        #[test]
        fn escaping_always_gives_an_mqtt_string(s in any::<String>()) {
            prop_assert!(is_mqtt_string(&escape_for_mqtt(&s)));
        }
    }
}
