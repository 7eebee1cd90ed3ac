//! A MessagePack value as it travels, read and written through
//! `rmp-serde`: enough to tell a frame's shape apart (array, integer,
//! string, binary, map) before anything is interpreted.

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, SerializeSeq, Serializer};
use std::fmt;

/// One MessagePack value. Extension types are not part of the protocol
/// and are refused when read.
/// How deep a frame may nest. A request is 4 levels deep down to a
/// CloudEvent map's values (frame, params, map, `mdcserrorcontext`);
/// rmp-serde's own limit (1024) lets a depth bomb recurse deep enough to
/// exhaust a task's stack, in decoding and again in dropping the value.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Nil,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
    Bin(Vec<u8>),
    Array(Vec<Value>),
    Map(Vec<(Value, Value)>),
}

impl Value {
    /// A string value.
    pub(crate) fn str(s: impl Into<String>) -> Value {
        Value::Str(s.into())
    }

    /// The string, if this is one.
    #[cfg(test)]
    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }

    /// The value as a non-negative integer, if it is one.
    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            Value::UInt(n) => Some(*n),
            Value::Int(n) => u64::try_from(*n).ok(),
            _ => None,
        }
    }

    /// What kind of value this is, for error messages.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Value::Nil => "nil",
            Value::Bool(_) => "a boolean",
            Value::Int(_) | Value::UInt(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::Bin(_) => "binary",
            Value::Array(_) => "an array",
            Value::Map(_) => "a map",
        }
    }

    /// The MessagePack encoding of this value.
    pub(crate) fn encode(&self) -> Vec<u8> {
        // Writing into a Vec cannot fail, and every variant has an
        // encoding: an error here would be a bug of rmp-serde.
        rmp_serde::to_vec(self).unwrap_or_default()
    }

    /// Reads exactly one value from `bytes`.
    ///
    /// # Errors
    /// The bytes are not one well-formed value of the kinds above (an
    /// extension type, nesting deeper than rmp-serde allows, trailing
    /// bytes).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Value, String> {
        let mut cursor = std::io::Cursor::new(bytes);
        let mut de = rmp_serde::Deserializer::new(&mut cursor);
        de.set_max_depth(MAX_DEPTH);
        let v = serde::Deserialize::deserialize(&mut de).map_err(|e| match e {
            rmp_serde::decode::Error::DepthLimitExceeded => format!(
                "values nested deeper than {MAX_DEPTH} levels; a frame holding CloudEvent maps needs 5"
            ),
            e => e.to_string(),
        })?;
        if cursor.position() as usize != bytes.len() {
            return Err("trailing bytes after the value".into());
        }
        Ok(v)
    }
}

impl serde::Serialize for Value {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Value::Nil => s.serialize_unit(),
            Value::Bool(b) => s.serialize_bool(*b),
            Value::Int(n) => s.serialize_i64(*n),
            Value::UInt(n) => s.serialize_u64(*n),
            Value::Float(f) => s.serialize_f64(*f),
            Value::Str(t) => s.serialize_str(t),
            Value::Bin(b) => s.serialize_bytes(b),
            Value::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for i in items {
                    seq.serialize_element(i)?;
                }
                seq.end()
            }
            Value::Map(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

impl<'de> serde::Deserialize<'de> for Value {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
}

struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a MessagePack value")
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Nil)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(ValueVisitor)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }
    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(if n >= 0 {
            Value::UInt(n as u64)
        } else {
            Value::Int(n)
        })
    }
    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::UInt(n))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Value, E> {
        Ok(Value::Float(f))
    }
    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::Str(s.to_owned()))
    }
    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::Str(s))
    }
    fn visit_bytes<E>(self, b: &[u8]) -> Result<Value, E> {
        Ok(Value::Bin(b.to_vec()))
    }
    fn visit_byte_buf<E>(self, b: Vec<u8>) -> Result<Value, E> {
        Ok(Value::Bin(b))
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, _: D) -> Result<Value, D::Error> {
        Err(de::Error::custom(
            "MessagePack extension types are not supported",
        ))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        // The declared length comes from the peer: cap what is reserved.
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(v) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(1024));
        while let Some((k, v)) = map.next_entry()? {
            entries.push((k, v));
        }
        Ok(Value::Map(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_keeping_binary_apart_from_strings() {
        let v = Value::Array(vec![
            Value::UInt(0),
            Value::UInt(7),
            Value::str("publish"),
            Value::Array(vec![
                Value::Map(vec![
                    (Value::str("data"), Value::Bin(b"{}".to_vec())),
                    (Value::str("type"), Value::str("t.v1")),
                ]),
                Value::Nil,
            ]),
            Value::Int(-3),
            Value::Bool(true),
            Value::Float(1.5),
        ]);
        assert_eq!(Value::decode(&v.encode()).unwrap(), v);
    }

    #[test]
    fn trailing_bytes_and_extensions_are_refused() {
        let mut b = Value::UInt(1).encode();
        b.push(0xc0);
        assert!(Value::decode(&b).is_err());
        // fixext1, type 1, one byte.
        assert!(Value::decode(&[0xd4, 0x01, 0x00]).is_err());
    }
}
