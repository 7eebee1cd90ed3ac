//! Payload codecs selected by `datacontenttype`.

use bytes::Bytes;
use serde::{de::DeserializeOwned, Serialize};
use std::fmt;

/// A `datacontenttype` this runtime can decode and encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentType {
    /// `application/json` (with or without `charset=utf-8`).
    Json,
    /// `application/msgpack` (with or without `charset=utf-8`).
    MsgPack,
    /// `application/octet-stream`: opaque bytes; typed handlers read them as JSON.
    OctetStream,
}

/// A value that cannot be serialised in a content type; the serialiser's
/// message.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// JSON (also used for `application/octet-stream`) refused the value.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// MessagePack refused the value.
    #[error(transparent)]
    MsgPack(#[from] rmp_serde::encode::Error),
}

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The content type is not one of the accepted ones.
    #[error("unsupported content type '{0}' (accepted: application/json, application/msgpack, application/octet-stream)")]
    UnsupportedContentType(String),
    /// The event has no data but the handler needs a payload.
    #[error("the event carries no data")]
    Empty,
    /// The bytes do not decode into the expected type.
    #[error("payload does not decode as {expected}: {reason}")]
    Invalid {
        /// The Rust type that was expected.
        expected: &'static str,
        /// The decoder's message (names the field and position where it can).
        reason: String,
    },
}

impl ContentType {
    /// The default for replies and events: `application/json; charset=utf-8`.
    pub const DEFAULT_HEADER: &'static str = "application/json; charset=utf-8";

    /// Parses a `datacontenttype` value. Parameters other than
    /// `charset=utf-8` are refused, as are other media types.
    ///
    /// # Errors
    /// [`DecodeError::UnsupportedContentType`] naming the value.
    pub fn parse(value: &str) -> Result<ContentType, DecodeError> {
        let unsupported = || DecodeError::UnsupportedContentType(value.to_owned());
        let mut parts = value.split(';');
        let media = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        for p in parts {
            let p = p.trim().to_ascii_lowercase().replace(' ', "");
            if p != "charset=utf-8" && p != "charset=\"utf-8\"" {
                return Err(unsupported());
            }
        }
        match media.as_str() {
            "application/json" => Ok(ContentType::Json),
            "application/msgpack" | "application/x-msgpack" => Ok(ContentType::MsgPack),
            "application/octet-stream" => Ok(ContentType::OctetStream),
            _ => Err(unsupported()),
        }
    }

    /// The header value written for this content type.
    pub fn header(self) -> &'static str {
        match self {
            ContentType::Json => Self::DEFAULT_HEADER,
            ContentType::MsgPack => "application/msgpack",
            ContentType::OctetStream => "application/octet-stream",
        }
    }

    /// Encodes a value.
    ///
    /// # Errors
    /// The value cannot be serialised (e.g. a map with non-string keys).
    pub fn encode<T: Serialize + ?Sized>(self, value: &T) -> Result<Bytes, EncodeError> {
        match self {
            ContentType::Json | ContentType::OctetStream => {
                Ok(Bytes::from(serde_json::to_vec(value)?))
            }
            ContentType::MsgPack => Ok(Bytes::from(rmp_serde::to_vec_named(value)?)),
        }
    }

    /// Decodes bytes into `T`.
    ///
    /// # Errors
    /// [`DecodeError::Invalid`] with the decoder's message.
    pub fn decode<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, DecodeError> {
        let invalid = |reason: String| DecodeError::Invalid {
            expected: short_type_name::<T>(),
            reason,
        };
        match self {
            ContentType::Json | ContentType::OctetStream => {
                serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))
            }
            ContentType::MsgPack => {
                let mut de = rmp_serde::Deserializer::from_read_ref(bytes);
                de.set_max_depth(MAX_MSGPACK_DEPTH);
                T::deserialize(&mut de).map_err(|e| match e {
                    rmp_serde::decode::Error::DepthLimitExceeded => {
                        invalid(format!("nested deeper than {MAX_MSGPACK_DEPTH} levels"))
                    }
                    e => invalid(e.to_string()),
                })
            }
        }
    }
}

impl fmt::Display for ContentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.header())
    }
}

/// How deep a MessagePack payload may nest: the limit `serde_json` puts
/// on JSON, so both content types refuse the same depth bombs before
/// decoding recurses into them (rmp-serde's own limit, 1024, is deep
/// enough to exhaust a task's stack).
const MAX_MSGPACK_DEPTH: usize = 128;

fn short_type_name<T>() -> &'static str {
    let full = std::any::type_name::<T>();
    full.rsplit("::").next().unwrap_or(full)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Serialize, Deserialize, PartialEq)]
    struct P {
        #[serde(rename = "JobOrderID")]
        id: String,
        n: u64,
    }

    #[test]
    fn accepted_content_types_parse() {
        for v in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON;charset=UTF-8",
            "application/msgpack",
            "application/msgpack; charset=utf-8",
            "application/octet-stream",
        ] {
            assert!(ContentType::parse(v).is_ok(), "{v}");
        }
        for v in [
            "text/plain",
            "application/json; charset=latin1",
            "",
            "application/xml",
        ] {
            assert!(matches!(
                ContentType::parse(v),
                Err(DecodeError::UnsupportedContentType(_))
            ));
        }
    }

    #[test]
    fn json_and_msgpack_round_trip() {
        let p = P {
            id: "J1".into(),
            n: 4294967296,
        };
        for ct in [ContentType::Json, ContentType::MsgPack] {
            let b = ct.encode(&p).unwrap();
            assert_eq!(ct.decode::<P>(&b).unwrap(), p);
        }
        let err = ContentType::Json.decode::<P>(b"{\"n\":1}").unwrap_err();
        assert!(err.to_string().contains("JobOrderID"), "{err}");
    }
}
