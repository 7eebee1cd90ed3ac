//! Correlation ids: any bytes a client sends, echoed back unchanged.

use bytes::Bytes;
use std::fmt;
use uuid::Uuid;

/// A correlation id as both the `correlationid` attribute text and the MQTT
/// Correlation Data bytes.
///
/// MicroDCS insists on exactly 16 bytes and crashes otherwise; here any bytes
/// are kept. 16 bytes render as a canonical UUID, UTF-8 text as itself, other
/// bytes as `0x…` hex. The original bytes always go back out unchanged.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CorrelationId {
    text: String,
    bytes: Bytes,
}

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
        } else if let Ok(s) = std::str::from_utf8(&bytes) {
            s.to_owned()
        } else {
            let mut s = String::with_capacity(2 + bytes.len() * 2);
            s.push_str("0x");
            for b in bytes.iter() {
                s.push_str(&format!("{b:02x}"));
            }
            s
        };
        CorrelationId { text, bytes }
    }

    /// From the `correlationid` attribute text: a UUID string maps to its 16
    /// bytes, anything else to its UTF-8 bytes.
    pub fn from_text(text: impl Into<String>) -> Self {
        let text = text.into();
        let bytes = match Uuid::parse_str(&text) {
            Ok(u) if text.len() == 36 => Bytes::copy_from_slice(u.as_bytes()),
            _ => Bytes::copy_from_slice(text.as_bytes()),
        };
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
        assert_eq!(c.as_str(), "0xff0001");
        assert_eq!(c.as_bytes(), &raw);
        let t = CorrelationId::from_bytes(Bytes::from_static(b"req-7"));
        assert_eq!(t.as_str(), "req-7");
        assert_eq!(t.as_bytes().as_ref(), b"req-7");
    }
}
