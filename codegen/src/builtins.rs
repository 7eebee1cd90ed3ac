//! The deliberate JSON mapping of OPC UA base (namespace 0) data types.
//!
//! The representation follows the OPC UA JSON encoding (OPC 10000-6 §5.4) in
//! its non-reversible form, which is what MES integrations send: numbers as
//! JSON numbers (also 64-bit ones — the wire contract uses a numeric
//! `ReturnStatus` such as `4294967296`), text as strings, structures as
//! objects with the OPC UA field names.
//!
//! | OPC UA | JSON Schema | Rust (via typify) |
//! |---|---|---|
//! | Boolean | `boolean` | `bool` |
//! | SByte … UInt64 | `integer` with `format` and exact range | `i8` … `u64` |
//! | Float / Double / Duration / Number | `number` | `f32` / `f64` |
//! | String / LocaleId / XmlElement | `string` | `String` |
//! | DateTime / UtcTime | `string`, `format: date-time` | `chrono::DateTime<Utc>` |
//! | Guid | `string`, `format: uuid` | `uuid::Uuid` |
//! | ByteString | `string`, `contentEncoding: base64` | `String` |
//! | NodeId / ExpandedNodeId | `string` (`ns=1;i=3008`, `nsu=…;s=…`) | `String` |
//! | QualifiedName | `string` (`1:Name`) | `String` |
//! | StatusCode | `integer` (UInt32) | `u32` |
//! | LocalizedText | `$defs/LocalizedText` `{Locale?, Text?}` | struct |
//! | EUInformation | `$defs/EUInformation` `{NamespaceUri?, UnitId?, DisplayName?, Description?}` | struct |
//! | RelativePath | `string` in the text format of OPC 10000-4 Annex A.2 (`/1:Ready`) | `String` |
//! | DecimalString | `string` (a decimal number, keeps precision) | `String` |
//! | BaseDataType (and fields without `DataType`) | any JSON value | `serde_json::Value` |
//!
//! Any other namespace-0 type is an error naming the type; extending the
//! mapping is a deliberate edit of [`schema_of`].

use serde_json::{json, Value};

/// A namespace-0 data type mapped to JSON.
pub(crate) struct Mapped {
    pub(crate) schema: Value,
    /// A sentence added to the property's description explaining an
    /// encoding that is not obvious from the JSON type.
    pub(crate) note: Option<&'static str>,
    /// `$defs` entries the schema refers to (see [`helper_def`]).
    pub(crate) helper_defs: &'static [&'static str],
}

const NAMES: &[(u32, &str)] = &[
    (1, "Boolean"),
    (2, "SByte"),
    (3, "Byte"),
    (4, "Int16"),
    (5, "UInt16"),
    (6, "Int32"),
    (7, "UInt32"),
    (8, "Int64"),
    (9, "UInt64"),
    (10, "Float"),
    (11, "Double"),
    (12, "String"),
    (13, "DateTime"),
    (14, "Guid"),
    (15, "ByteString"),
    (16, "XmlElement"),
    (17, "NodeId"),
    (18, "ExpandedNodeId"),
    (19, "StatusCode"),
    (20, "QualifiedName"),
    (21, "LocalizedText"),
    (24, "BaseDataType"),
    (26, "Number"),
    (27, "Integer"),
    (28, "UInteger"),
    (290, "Duration"),
    (294, "UtcTime"),
    (295, "LocaleId"),
    (540, "RelativePath"),
    (887, "EUInformation"),
    (12878, "DecimalString"),
];

/// The name of a mapped namespace-0 data type.
pub(crate) fn name_of(id: u32) -> Option<&'static str> {
    NAMES.iter().find(|(i, _)| *i == id).map(|(_, n)| *n)
}

fn with_type(mut schema: Value, name: &str) -> Value {
    if let Some(object) = schema.as_object_mut() {
        object.insert("x-opcua-type".into(), name.into());
    }
    schema
}

fn integer(format: &str, min: i64, max: u64) -> Value {
    json!({ "type": "integer", "format": format, "minimum": min, "maximum": max })
}

/// The JSON Schema of the namespace-0 data type `i=<id>`, or `None` when
/// the generator has no mapping for it.
pub(crate) fn schema_of(id: u32) -> Option<Mapped> {
    let name = name_of(id)?;
    let mut note = None;
    let mut helper_defs: &'static [&'static str] = &[];
    let schema = match id {
        1 => json!({ "type": "boolean" }),
        2 => integer("int8", i8::MIN.into(), i8::MAX.unsigned_abs().into()),
        3 => integer("uint8", u8::MIN.into(), u8::MAX.into()),
        4 => integer("int16", i16::MIN.into(), i16::MAX.unsigned_abs().into()),
        5 => integer("uint16", u16::MIN.into(), u16::MAX.into()),
        6 | 27 => integer("int32", i32::MIN.into(), i32::MAX.unsigned_abs().into()),
        7 | 19 => integer("uint32", u32::MIN.into(), u32::MAX.into()),
        8 => integer("int64", i64::MIN, i64::MAX.unsigned_abs()),
        9 | 28 => integer("uint64", 0, u64::MAX),
        10 => json!({ "type": "number", "format": "float" }),
        11 | 26 | 290 => json!({ "type": "number", "format": "double" }),
        12 | 16 | 295 => json!({ "type": "string" }),
        13 | 294 => json!({ "type": "string", "format": "date-time" }),
        14 => json!({ "type": "string", "format": "uuid" }),
        15 => {
            note = Some("OPC UA ByteString: base64-encoded bytes.");
            json!({ "type": "string", "contentEncoding": "base64" })
        }
        17 | 18 => {
            note = Some("OPC UA NodeId in its string form, e.g. `ns=1;i=3008` or `nsu=http://example.com/;s=Name`.");
            json!({ "type": "string" })
        }
        20 => {
            note = Some("OPC UA QualifiedName as `<namespace index>:<name>`.");
            json!({ "type": "string" })
        }
        21 => {
            helper_defs = &["LocalizedText"];
            json!({ "$ref": "#/$defs/LocalizedText" })
        }
        24 => {
            note = Some(
                "Any JSON value (OPC UA BaseDataType / Variant, non-reversible JSON encoding).",
            );
            json!({})
        }
        540 => {
            note = Some("OPC UA RelativePath as a string in the text format of OPC 10000-4 Annex A.2, e.g. `/1:AllowedToStart/1:Ready`.");
            json!({ "type": "string" })
        }
        887 => {
            helper_defs = &["EUInformation", "LocalizedText"];
            json!({ "$ref": "#/$defs/EUInformation" })
        }
        12878 => {
            note = Some("OPC UA DecimalString: a decimal number as text, so no precision is lost.");
            json!({ "type": "string" })
        }
        _ => return None,
    };
    let schema = if schema.get("$ref").is_some() || id == 24 {
        schema
    } else {
        with_type(schema, name)
    };
    Some(Mapped {
        schema,
        note,
        helper_defs,
    })
}

/// The `$defs` entry of a structured namespace-0 type (see [`Mapped::helper_defs`]).
pub(crate) fn helper_def(name: &str) -> Option<Value> {
    let mut def = match name {
        "LocalizedText" => json!({
            "type": "object",
            "description": "OPC UA LocalizedText: a human readable text and the locale it is written in. Both fields may be omitted, as in the OPC UA JSON encoding.",
            "properties": {
                "Locale": { "type": "string", "description": "The locale of the text, e.g. `en` or `de-DE`." },
                "Text": { "type": "string", "description": "The text." }
            }
        }),
        "EUInformation" => json!({
            "type": "object",
            "description": "OPC UA EUInformation (OPC 10000-8 §5.6.3): an engineering unit, normally from UNECE Recommendation 20. OPC UA JSON encoders omit fields that hold default values, so none is required.",
            "properties": {
                "NamespaceUri": { "type": "string", "description": "The organisation that defines the unit, e.g. `http://www.opcfoundation.org/UA/units/un/cefact`." },
                "UnitId": { "type": "integer", "format": "int32", "minimum": i32::MIN, "maximum": i32::MAX, "description": "The unit's identifier, -1 if not available.", "x-opcua-type": "Int32" },
                "DisplayName": { "$ref": "#/$defs/LocalizedText", "description": "The unit's symbol, e.g. `°C`." },
                "Description": { "$ref": "#/$defs/LocalizedText", "description": "The unit's full name, e.g. `degree Celsius`." }
            }
        }),
        _ => return None,
    };
    if let Some(object) = def.as_object_mut() {
        object.insert("x-opcua-type".into(), name.into());
    }
    Some(def)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sixty_four_bit_ranges_are_exact() {
        let mapped = schema_of(9).map(|m| m.schema);
        assert_eq!(
            mapped.as_ref().and_then(|s| s["maximum"].as_u64()),
            Some(u64::MAX)
        );
        let mapped = schema_of(8).map(|m| m.schema);
        assert_eq!(
            mapped.as_ref().and_then(|s| s["minimum"].as_i64()),
            Some(i64::MIN)
        );
    }

    #[test]
    fn unknown_types_are_not_mapped() {
        // IdType (an enumeration) has no deliberate mapping.
        assert!(schema_of(256).is_none());
        assert!(schema_of(7594).is_none());
    }

    #[test]
    fn every_named_type_has_a_schema() {
        for (id, name) in NAMES {
            assert!(schema_of(*id).is_some(), "{name}");
        }
    }
}
