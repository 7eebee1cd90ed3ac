//! Correlation ids: any bytes a client sends, echoed back unchanged.

use super::text::is_mqtt_string;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use std::fmt;
use uuid::Uuid;

/// A correlation id as both the `correlationid` attribute text and the MQTT
/// Correlation Data bytes (wire contract §8).
///
/// MicroDCS insists on exactly 16 bytes and crashes otherwise; here any bytes
/// are kept. 16 bytes render as a canonical UUID; other bytes that are valid
/// text for an MQTT string render as that text (unless that text would read
/// back as other bytes: a UUID, or `base64:…`); anything else (a binary
/// counter such as `00 00 00 00 00 00 00 2A`) as `base64:` followed by the
/// standard base64 of the bytes. The rendering is always a valid MQTT string,
/// the original bytes always go back out unchanged, and replies are matched
/// by [`CorrelationId::as_bytes`], never by the rendering.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CorrelationId {
    text: String,
    bytes: Bytes,
}

/// Prefix of a `correlationid` rendered from bytes that are not text.
const BASE64_PREFIX: &str = "base64:";

impl CorrelationId {
    /// A fresh random UUID correlation id.
    pub fn new_uuid() -> Self {
        Self::from_uuid(Uuid::new_v4())
    }

    /// From a UUID.
    pub fn from_uuid(u: Uuid) -> Self {
        CorrelationId {
            text: u.hyphenated().to_string(),
            bytes: Bytes::copy_from_slice(u.as_bytes()),
        }
    }

    /// From MQTT Correlation Data.
    pub fn from_bytes(bytes: Bytes) -> Self {
        let text = if bytes.len() == 16 {
            let mut a = [0u8; 16];
            a.copy_from_slice(&bytes);
            Uuid::from_bytes(a).hyphenated().to_string()
        } else {
            // Text that `from_text` would read as other bytes (a UUID's 16,
            // a `base64:` payload) is rendered as base64 instead.
            match std::str::from_utf8(&bytes) {
                Ok(s)
                    if is_mqtt_string(s)
                        && !s.starts_with(BASE64_PREFIX)
                        && !is_hyphenated_uuid(s) =>
                {
                    s.to_owned()
                }
                _ => format!("{BASE64_PREFIX}{}", STANDARD.encode(&bytes)),
            }
        };
        CorrelationId { text, bytes }
    }

    /// The Correlation Data as text when it is UTF-8, whatever its length:
    /// how the station reads back the ids it sent itself (command ids), so
    /// a device that echoes only the Correlation Data is matched even when
    /// the id happens to be 16 bytes long and renders as a UUID.
    pub fn bytes_as_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.bytes).ok()
    }

    /// From the `correlationid` attribute text: a UUID string maps to its 16
    /// bytes, `base64:…` to the bytes it encodes, anything else to its UTF-8
    /// bytes.
    ///
    /// The text must already be a valid MQTT string (attribute values from
    /// the wire are checked where they enter); anything else is rendered
    /// from its bytes instead, so the attribute stays sendable.
    pub fn from_text(text: impl Into<String>) -> Self {
        let text = text.into();
        if let Ok(u) = Uuid::parse_str(&text) {
            if text.len() == 36 {
                return CorrelationId {
                    bytes: Bytes::copy_from_slice(u.as_bytes()),
                    text,
                };
            }
        }
        if let Some(b64) = text.strip_prefix(BASE64_PREFIX) {
            if let Ok(raw) = STANDARD.decode(b64) {
                return CorrelationId {
                    bytes: Bytes::from(raw),
                    text,
                };
            }
        }
        if !is_mqtt_string(&text) {
            return Self::from_bytes(Bytes::from(text.into_bytes()));
        }
        let bytes = Bytes::copy_from_slice(text.as_bytes());
        CorrelationId { text, bytes }
    }

    /// The attribute text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The Correlation Data bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }
}

/// Whether `from_text` reads `text` as a UUID (its 16 bytes).
fn is_hyphenated_uuid(text: &str) -> bool {
    text.len() == 36 && Uuid::parse_str(text).is_ok()
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CorrelationId({})", self.text)
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixteen_bytes_render_as_uuid_and_round_trip() {
        let u = Uuid::new_v4();
        let c = CorrelationId::from_bytes(Bytes::copy_from_slice(u.as_bytes()));
        assert_eq!(c.as_str(), u.to_string());
        assert_eq!(
            CorrelationId::from_text(c.as_str()).as_bytes(),
            c.as_bytes()
        );
    }

    #[test]
    fn opaque_bytes_are_kept_verbatim() {
        let raw = Bytes::from_static(&[0xff, 0x00, 0x01]);
        let c = CorrelationId::from_bytes(raw.clone());
        assert_eq!(c.as_str(), "base64:/wAB");
        assert_eq!(c.as_bytes(), &raw);
        let t = CorrelationId::from_bytes(Bytes::from_static(b"req-7"));
        assert_eq!(t.as_str(), "req-7");
        assert_eq!(t.as_bytes().as_ref(), b"req-7");
    }

    #[test]
    fn control_bytes_render_as_base64_and_round_trip() {
        for raw in [
            &[0u8, 0, 0, 0, 0, 0, 0, 0x2a][..],
            &[1, 2, 3],
            b"base64:x",
            b"a\tb",
        ] {
            let c = CorrelationId::from_bytes(Bytes::copy_from_slice(raw));
            assert!(c.as_str().starts_with("base64:"), "{}", c.as_str());
            assert!(is_mqtt_string(c.as_str()));
            assert_eq!(c.as_bytes().as_ref(), raw);
            assert_eq!(CorrelationId::from_text(c.as_str()), c);
        }
        assert_eq!(
            CorrelationId::from_bytes(Bytes::from_static(&[0, 0, 0, 0, 0, 0, 0, 0x2a])).as_str(),
            "base64:AAAAAAAAACo="
        );
    }

    #[test]
    fn uuid_text_that_is_not_sixteen_bytes_renders_as_base64_and_round_trips() {
        // Found by fuzz/fuzz_targets/command_id.rs: 36 bytes of UUID text
        // rendered as themselves, and `from_text` read that back as the
        // UUID's 16 bytes, so a re-decoded event lost its Correlation Data.
        let raw = Bytes::from_static(b"0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0");
        let c = CorrelationId::from_bytes(raw.clone());
        assert!(c.as_str().starts_with("base64:"), "{}", c.as_str());
        assert_eq!(c.as_bytes(), &raw);
        assert_eq!(CorrelationId::from_text(c.as_str()), c);
        assert_eq!(
            c.bytes_as_str(),
            Some("0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0")
        );
    }

    #[test]
    fn a_sixteen_byte_text_id_is_still_readable_from_its_bytes() {
        let c = CorrelationId::from_bytes(Bytes::from_static(b"q7/J-ab12/pick/1"));
        assert_eq!(c.as_str().len(), 36, "renders as a UUID");
        assert_eq!(c.bytes_as_str(), Some("q7/J-ab12/pick/1"));
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_render_as_an_mqtt_string_and_keep_their_bytes(raw in proptest::collection::vec(proptest::num::u8::ANY, 0..40)) {
            let c = CorrelationId::from_bytes(Bytes::from(raw.clone()));
            proptest::prop_assert!(is_mqtt_string(c.as_str()));
            proptest::prop_assert_eq!(c.as_bytes().as_ref(), &raw[..]);
        }
    }
}
