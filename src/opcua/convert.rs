//! The station's JSON ⇄ OPC UA structures (plan §4.5).
//!
//! The job core speaks the JSON of the generated models (`crate::models`:
//! stored orders as [`normalise_order`](crate::jobs::normalise_order)
//! returns them, job responses, the `JobState` lists of the MQTT status
//! event). The OPC UA face needs the same values as `ExtensionObject`s
//! holding [`DynamicStructure`]s of the ISA95-JOBCONTROL DataTypes. The
//! conversion is generic, driven by the [`StructTypeInfo`] of the run-time
//! type tree ([`Types`]), and follows the JSON mapping of the code generator
//! (`codegen/src/builtins.rs`):
//!
//! | OPC UA field | JSON |
//! |---|---|
//! | structure | object with the DataTypeDefinition's field names (snake_case accepted on input) |
//! | optional field absent (`Variant::Empty`) | key omitted (`null` accepted on input) |
//! | array (`ValueRank` 1) | array; an empty array stays a typed empty array |
//! | Boolean, (U)Int8…64, Float, Double | boolean, integer (range-checked), number |
//! | String, DecimalString | string (a null String is `""`) |
//! | DateTime | RFC 3339 string; 1601-01-01 … 9999-12-31T23:59:59Z (outside: clamped to MinDate/MaxDate, OPC 10000-6 §5.2.2.5), 100 ns resolution |
//! | LocalizedText | `{"Locale"?, "Text"?}`; empty strings are omitted (OPC UA drops them on the wire) |
//! | EUInformation | `{"NamespaceUri"?, "UnitId"?, "DisplayName"?, "Description"?}`; an absent `UnitId` is -1 ("not available") |
//! | RelativePath (`ISA95StateDataType.BrowsePath`) | OPC 10000-4 A.2 text form (`/1:Ready`, printed with namespace prefixes); absent or `""` is the empty path, which is omitted |
//! | BaseDataType (`Value` of parameters and properties) | any JSON value: null → Empty, boolean, integer → Int64 (UInt64 above `i64::MAX`), number → Double, string, array → array (typed when all elements share a type, else an array of Variants); an object is sent as its JSON text (String) |
//!
//! The BaseDataType and EUInformation rules are not reversible for every
//! value (an object comes back as a string, `UnitId: -1` is omitted); every
//! other value survives JSON → OPC UA binary → JSON unchanged (see the
//! round-trip property test).

use super::types::Types;
use opcua::types::custom::{DynamicStructure, ParsedStructureField, StructTypeInfo};
use opcua::types::xml::{XmlEncodable, XmlStreamWriter, XmlType};
use opcua::types::{
    Array, BinaryEncodable, Context, DataTypeId, DateTime, EUInformation, EncodingResult,
    ExpandedMessageInfo, ExpandedNodeId, ExtensionObject, LocalizedText, NodeId, RelativePath,
    UAString, UaNullable, Variant, VariantScalarTypeId, VariantTypeId,
};
use serde_json::{Map, Number, Value};
use std::fmt;
use std::sync::Arc;

/// A [`DynamicStructure`] whose binary length is measured by encoding it.
///
/// async-opcua 0.19's `DynamicStructure::byte_len` counts a field that is
/// an array of structures as if every element carried an ExtensionObject
/// header (node id, encoding byte, length: 9 bytes and more per element),
/// while `encode` writes the bodies only. An `ExtensionObject` writes that
/// length before the body, so a client reading by the length (Python
/// asyncua does) misreads every `ISA95JobResponseDataType` (its `JobState`
/// is such an array). The face wraps every structure it sends at the top
/// level in this type; nested structures are encoded by their parent and
/// need no length.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Structure(pub(crate) DynamicStructure);

/// A writer that only counts.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl BinaryEncodable for Structure {
    fn byte_len(&self, ctx: &Context<'_>) -> usize {
        let mut counter = Counter(0);
        match BinaryEncodable::encode(&self.0, &mut counter, ctx) {
            Ok(()) => counter.0,
            // Encoding fails later with its error anyway.
            Err(_) => BinaryEncodable::byte_len(&self.0, ctx),
        }
    }

    fn encode<S: std::io::Write + ?Sized>(
        &self,
        stream: &mut S,
        ctx: &Context<'_>,
    ) -> EncodingResult<()> {
        BinaryEncodable::encode(&self.0, stream, ctx)
    }
}

impl ExpandedMessageInfo for Structure {
    fn full_type_id(&self) -> ExpandedNodeId {
        self.0.full_type_id()
    }

    fn full_json_type_id(&self) -> ExpandedNodeId {
        self.0.full_json_type_id()
    }

    fn full_xml_type_id(&self) -> ExpandedNodeId {
        self.0.full_xml_type_id()
    }

    fn full_data_type_id(&self) -> ExpandedNodeId {
        self.0.full_data_type_id()
    }
}

impl UaNullable for Structure {
    fn is_ua_null(&self) -> bool {
        self.0.is_ua_null()
    }
}

impl XmlType for Structure {
    const TAG: &'static str = "Unknown";

    fn tag(&self) -> &str {
        self.0.tag()
    }
}

impl XmlEncodable for Structure {
    fn encode(
        &self,
        writer: &mut XmlStreamWriter<&mut dyn std::io::Write>,
        ctx: &Context<'_>,
    ) -> EncodingResult<()> {
        XmlEncodable::encode(&self.0, writer, ctx)
    }
}

/// A value that does not convert: which field (a path such as
/// `WorkMasterID[0].ID`, empty for the value itself) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConvertError {
    /// The field path.
    pub(crate) field: String,
    /// Why it does not convert.
    pub(crate) reason: String,
}

impl ConvertError {
    fn new(field: &str, reason: impl Into<String>) -> Self {
        ConvertError {
            field: field.to_owned(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConvertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            f.write_str(&self.reason)
        } else {
            write!(f, "{}: {}", self.field, self.reason)
        }
    }
}

impl std::error::Error for ConvertError {}

/// `parent.name` (or `name` at the top).
fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// `JobOrderID` → `job_order_id` (the snake_case the models accept too).
fn snake(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in chars.iter().enumerate() {
        if c.is_uppercase() && i > 0 {
            let prev = chars[i - 1];
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if prev.is_lowercase() || prev.is_ascii_digit() || (prev.is_uppercase() && next_lower) {
                out.push('_');
            }
        }
        out.extend(c.to_lowercase());
    }
    out
}

/// The value of field `name` in `obj`: its OPC UA name or its snake_case.
fn lookup<'a>(obj: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    obj.get(name).or_else(|| obj.get(&snake(name)))
}

fn expected(path: &str, what: &str, got: &Value) -> ConvertError {
    let kind = match got {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ConvertError::new(path, format!("expected {what}, got {kind}"))
}

/// An integer of type `T` (`name` for the message), range-checked.
fn int<T: TryFrom<i64> + TryFrom<u64>>(
    v: &Value,
    path: &str,
    name: &str,
) -> Result<T, ConvertError> {
    let n = if let Some(i) = v.as_i64() {
        T::try_from(i).ok()
    } else if let Some(u) = v.as_u64() {
        T::try_from(u).ok()
    } else {
        return Err(expected(path, &format!("an integer ({name})"), v));
    };
    n.ok_or_else(|| ConvertError::new(path, format!("{v} is out of range for {name}")))
}

fn float(v: &Value, path: &str) -> Result<f64, ConvertError> {
    v.as_f64().ok_or_else(|| expected(path, "a number", v))
}

fn string<'a>(v: &'a Value, path: &str) -> Result<&'a str, ConvertError> {
    v.as_str().ok_or_else(|| expected(path, "a string", v))
}

/// An optional string member of a small object (`null` = absent).
fn member_string(
    obj: &Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<UAString, ConvertError> {
    match lookup(obj, name) {
        None | Some(Value::Null) => Ok(UAString::null()),
        Some(v) => Ok(UAString::from(string(v, &join(path, name))?)),
    }
}

fn date_time(v: &Value, path: &str) -> Result<DateTime, ConvertError> {
    let s = string(v, path)?;
    let t = chrono::DateTime::parse_from_rfc3339(s)
        .map_err(|e| ConvertError::new(path, format!("not an RFC 3339 date-time ({e})")))?
        .with_timezone(&chrono::Utc);
    // Dates the OPC UA range cannot hold are MinDate and MaxDate (OPC
    // 10000-6 §5.2.2.5), as a .NET MES's `0001-01-01` should be.
    Ok(clamp(&DateTime::from(t)))
}

/// A DateTime within the OPC UA range: earlier than 1601-01-01 is
/// 1601-01-01T00:00:00Z (MinDate), 9999-12-31T23:59:59Z and later is that
/// (MaxDate), OPC 10000-6 §5.2.2.5. A client may send any Int64 of ticks;
/// stored unclamped, a year such as -27627 or 30828 has no RFC 3339 form.
fn clamp(d: &DateTime) -> DateTime {
    DateTime::from(d.checked_ticks())
}

fn localized_text(v: &Value, path: &str) -> Result<LocalizedText, ConvertError> {
    let Value::Object(obj) = v else {
        return Err(expected(path, "an object {Locale?, Text?}", v));
    };
    Ok(LocalizedText {
        locale: member_string(obj, "Locale", path)?,
        text: member_string(obj, "Text", path)?,
    })
}

fn optional_localized_text(
    obj: &Map<String, Value>,
    name: &str,
    path: &str,
) -> Result<LocalizedText, ConvertError> {
    match lookup(obj, name) {
        None | Some(Value::Null) => Ok(LocalizedText::null()),
        Some(v) => localized_text(v, &join(path, name)),
    }
}

fn eu_information(v: &Value, path: &str) -> Result<EUInformation, ConvertError> {
    let Value::Object(obj) = v else {
        return Err(expected(path, "an object (EUInformation)", v));
    };
    let unit_id = match lookup(obj, "UnitId") {
        None | Some(Value::Null) => -1,
        Some(v) => int::<i32>(v, &join(path, "UnitId"), "Int32")?,
    };
    Ok(EUInformation {
        namespace_uri: member_string(obj, "NamespaceUri", path)?,
        unit_id,
        display_name: optional_localized_text(obj, "DisplayName", path)?,
        description: optional_localized_text(obj, "Description", path)?,
    })
}

fn relative_path(v: &Value, path: &str) -> Result<RelativePath, ConvertError> {
    let s = string(v, path)?;
    if s.is_empty() {
        return Ok(RelativePath {
            elements: Some(Vec::new()),
        });
    }
    RelativePath::try_from(s)
        .map_err(|e| ConvertError::new(path, format!("not a relative path ({e})")))
}

/// A JSON value as an OPC UA BaseDataType value (see the module table).
fn any_value(v: &Value) -> Variant {
    match v {
        Value::Null => Variant::Empty,
        Value::Bool(b) => Variant::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Variant::Int64(i)
            } else if let Some(u) = n.as_u64() {
                Variant::UInt64(u)
            } else {
                Variant::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => Variant::String(s.as_str().into()),
        Value::Array(items) => {
            let values: Vec<Variant> = items.iter().map(any_value).collect();
            let scalar = |x: &Variant| match x.type_id() {
                VariantTypeId::Scalar(t) if t != VariantScalarTypeId::Variant => Some(t),
                _ => None,
            };
            let first = values.first().and_then(scalar);
            let array = match first {
                Some(t) if values.iter().all(|x| scalar(x) == Some(t)) => Array::new(t, values),
                _ => Array::new(
                    VariantScalarTypeId::Variant,
                    values
                        .into_iter()
                        .map(|x| Variant::Variant(Box::new(x)))
                        .collect::<Vec<_>>(),
                ),
            };
            match array {
                Ok(a) => Variant::Array(Box::new(a)),
                // Not reachable (the element types were checked); keep
                // the value rather than lose it.
                Err(_) => Variant::String(v.to_string().into()),
            }
        }
        Value::Object(_) => Variant::String(v.to_string().into()),
    }
}

/// The OPC UA type of a value, for messages.
fn kind(v: &Variant) -> String {
    match v.type_id() {
        VariantTypeId::Empty => "empty".to_owned(),
        VariantTypeId::Scalar(t) => t.to_string(),
        VariantTypeId::Array(t, _) => format!("{t}[]"),
    }
}

/// A JSON number, `null` for NaN and infinities (JSON has none).
fn number(x: f64) -> Value {
    Number::from_f64(x).map_or(Value::Null, Value::Number)
}

fn ua_string(s: &UAString) -> Value {
    Value::String(s.as_ref().to_owned())
}

fn date_json(d: &DateTime) -> Value {
    // The models' own serialisation (chrono), so decoded values equal
    // normalised ones.
    let d = clamp(d);
    serde_json::to_value(d.as_chrono()).unwrap_or_else(|_| Value::String(d.to_rfc3339()))
}

fn lt_json(t: &LocalizedText) -> Value {
    let mut m = Map::new();
    if !t.locale.is_empty() {
        m.insert("Locale".into(), ua_string(&t.locale));
    }
    if !t.text.is_empty() {
        m.insert("Text".into(), ua_string(&t.text));
    }
    Value::Object(m)
}

fn eu_json(eu: &EUInformation) -> Value {
    let mut m = Map::new();
    if !eu.namespace_uri.is_empty() {
        m.insert("NamespaceUri".into(), ua_string(&eu.namespace_uri));
    }
    if eu.unit_id != -1 {
        m.insert("UnitId".into(), eu.unit_id.into());
    }
    for (name, t) in [
        ("DisplayName", &eu.display_name),
        ("Description", &eu.description),
    ] {
        if !t.locale.is_empty() || !t.text.is_empty() {
            m.insert(name.into(), lt_json(t));
        }
    }
    Value::Object(m)
}

/// An OPC UA BaseDataType value as JSON (see the module table).
fn base_json(v: &Variant) -> Value {
    match v {
        Variant::Empty => Value::Null,
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(n) => (*n).into(),
        Variant::Byte(n) => (*n).into(),
        Variant::Int16(n) => (*n).into(),
        Variant::UInt16(n) => (*n).into(),
        Variant::Int32(n) => (*n).into(),
        Variant::UInt32(n) => (*n).into(),
        Variant::Int64(n) => (*n).into(),
        Variant::UInt64(n) => (*n).into(),
        Variant::Float(x) => number(f64::from(*x)),
        Variant::Double(x) => number(*x),
        Variant::String(s) => ua_string(s),
        Variant::DateTime(d) => date_json(d),
        Variant::LocalizedText(t) => lt_json(t),
        Variant::Variant(inner) => base_json(inner),
        Variant::Array(a) => Value::Array(a.values.iter().map(base_json).collect()),
        other => Value::String(other.to_string()),
    }
}

impl Types {
    /// One structure of JC DataType `jc_type` (e.g. [`JOB_ORDER`](super::types::JOB_ORDER))
    /// from its JSON: a `Variant::ExtensionObject` holding a
    /// [`DynamicStructure`].
    ///
    /// # Errors
    /// `jc_type` is not a structure of the tree, or the JSON does not match
    /// it (a field of the wrong JSON type, out of range, a required field
    /// missing); the error names the field.
    pub(crate) fn encode(&self, jc_type: u32, json: &Value) -> Result<Variant, ConvertError> {
        let info = self.jc_struct(jc_type)?;
        let ds = self.dynamic(&info, json, "")?;
        Ok(Variant::ExtensionObject(ExtensionObject::new(Structure(
            ds,
        ))))
    }

    /// An array of JC DataType `jc_type`: a `Variant::Array` of
    /// `ExtensionObject`, typed also when empty.
    ///
    /// # Errors
    /// As [`Types::encode`]; the field path starts with the index (`[2].ID`).
    pub(crate) fn encode_array(
        &self,
        jc_type: u32,
        items: &[Value],
    ) -> Result<Variant, ConvertError> {
        let info = self.jc_struct(jc_type)?;
        let values = items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                self.dynamic(&info, item, &format!("[{i}]"))
                    .map(|ds| Variant::ExtensionObject(ExtensionObject::new(Structure(ds))))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Array::new(VariantScalarTypeId::ExtensionObject, values)
            .map(|a| Variant::Array(Box::new(a)))
            .map_err(|e| ConvertError::new("", format!("not an array of structures ({e:?})")))
    }

    /// A structure (scalar or array `Variant` of `ExtensionObject`) back to
    /// the station's JSON. `Variant::Empty` and a null `ExtensionObject`
    /// are `null`.
    ///
    /// # Errors
    /// The value is not a structure, or a structure of a type the tree does
    /// not describe (a client sent a type the face does not know), or holds
    /// a value the JSON mapping has no form for.
    pub(crate) fn decode(&self, v: &Variant) -> Result<Value, ConvertError> {
        match v {
            Variant::Empty => Ok(Value::Null),
            Variant::ExtensionObject(eo) => self.eo_json(eo, ""),
            Variant::Array(a) => a
                .values
                .iter()
                .enumerate()
                .map(|(i, x)| match x {
                    Variant::ExtensionObject(eo) => self.eo_json(eo, &format!("[{i}]")),
                    other => Err(ConvertError::new(
                        &format!("[{i}]"),
                        format!("expected a structure, got {}", kind(other)),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            other => Err(ConvertError::new(
                "",
                format!("expected a structure, got {}", kind(other)),
            )),
        }
    }

    fn jc_struct(&self, jc_type: u32) -> Result<Arc<StructTypeInfo>, ConvertError> {
        let id = self.jc_type(jc_type);
        self.tree
            .get_struct_type(&id)
            .cloned()
            .ok_or_else(|| ConvertError::new("", format!("{id} is not a known structure")))
    }

    /// A nested structure (encoded by its parent: no length of its own).
    fn encode_struct(
        &self,
        info: &Arc<StructTypeInfo>,
        json: &Value,
        path: &str,
    ) -> Result<ExtensionObject, ConvertError> {
        self.dynamic(info, json, path).map(ExtensionObject::new)
    }

    fn dynamic(
        &self,
        info: &Arc<StructTypeInfo>,
        json: &Value,
        path: &str,
    ) -> Result<DynamicStructure, ConvertError> {
        let Value::Object(obj) = json else {
            return Err(expected(path, &format!("an object ({})", info.name), json));
        };
        let mut values = Vec::with_capacity(info.fields.len());
        for f in &info.fields {
            let fpath = join(path, &f.name);
            let value = match lookup(obj, &f.name) {
                None | Some(Value::Null) if f.is_optional => Variant::Empty,
                // BaseDataType: null is a value.
                v if f.scalar_type == VariantScalarTypeId::Variant && f.value_rank < 1 => {
                    Variant::Variant(Box::new(v.map_or(Variant::Empty, any_value)))
                }
                None | Some(Value::Null) => absent_required(f, &fpath)?,
                Some(v) => self.field_value(f, v, &fpath)?,
            };
            values.push(value);
        }
        DynamicStructure::new_struct(info.clone(), self.tree.clone(), values)
            .map_err(|e| ConvertError::new(path, e.to_string()))
    }

    fn field_value(
        &self,
        f: &ParsedStructureField,
        v: &Value,
        path: &str,
    ) -> Result<Variant, ConvertError> {
        if f.value_rank > 1 {
            return Err(ConvertError::new(
                path,
                "multi-dimensional arrays are not supported",
            ));
        }
        if f.value_rank < 1 {
            return self.scalar(f, v, path);
        }
        let Value::Array(items) = v else {
            return Err(expected(path, "an array", v));
        };
        let values = items
            .iter()
            .enumerate()
            .map(|(i, x)| self.scalar(f, x, &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        Array::new(f.scalar_type, values)
            .map(|a| Variant::Array(Box::new(a)))
            .map_err(|e| ConvertError::new(path, format!("mixed array ({e:?})")))
    }

    fn scalar(
        &self,
        f: &ParsedStructureField,
        v: &Value,
        path: &str,
    ) -> Result<Variant, ConvertError> {
        use VariantScalarTypeId as T;
        Ok(match f.scalar_type {
            T::Boolean => {
                Variant::Boolean(v.as_bool().ok_or_else(|| expected(path, "a boolean", v))?)
            }
            T::SByte => Variant::SByte(int(v, path, "SByte")?),
            T::Byte => Variant::Byte(int(v, path, "Byte")?),
            T::Int16 => Variant::Int16(int(v, path, "Int16")?),
            T::UInt16 => Variant::UInt16(int(v, path, "UInt16")?),
            T::Int32 => Variant::Int32(int(v, path, "Int32")?),
            T::UInt32 => Variant::UInt32(int(v, path, "UInt32")?),
            T::Int64 => Variant::Int64(int(v, path, "Int64")?),
            T::UInt64 => Variant::UInt64(int(v, path, "UInt64")?),
            #[allow(clippy::cast_possible_truncation)]
            T::Float => Variant::Float(float(v, path)? as f32),
            T::Double => Variant::Double(float(v, path)?),
            T::String => Variant::String(string(v, path)?.into()),
            T::DateTime => Variant::DateTime(Box::new(date_time(v, path)?)),
            T::LocalizedText => Variant::LocalizedText(Box::new(localized_text(v, path)?)),
            T::ExtensionObject => Variant::ExtensionObject(self.nested(&f.type_id, v, path)?),
            T::Variant => Variant::Variant(Box::new(any_value(v))),
            other => {
                return Err(ConvertError::new(
                    path,
                    format!("the OPC UA type {other} has no JSON form here"),
                ))
            }
        })
    }

    /// A structure-typed field: the namespace-0 structures as their
    /// generated types (what the server's decoder produces for them too),
    /// ours as dynamic structures.
    fn nested(
        &self,
        type_id: &NodeId,
        v: &Value,
        path: &str,
    ) -> Result<ExtensionObject, ConvertError> {
        if *type_id == DataTypeId::EUInformation {
            return Ok(ExtensionObject::new(eu_information(v, path)?));
        }
        if *type_id == DataTypeId::RelativePath {
            return Ok(ExtensionObject::new(relative_path(v, path)?));
        }
        let Some(info) = self.tree.get_struct_type(type_id) else {
            return Err(ConvertError::new(
                path,
                format!("structure type {type_id} is not known"),
            ));
        };
        if info.is_abstract {
            return Err(ConvertError::new(
                path,
                format!("structure type {} is abstract", info.name),
            ));
        }
        self.encode_struct(&info.clone(), v, path)
    }

    fn eo_json(&self, eo: &ExtensionObject, path: &str) -> Result<Value, ConvertError> {
        if eo.body.is_none() {
            return Ok(Value::Null);
        }
        if let Some(ds) = eo.inner_as::<DynamicStructure>() {
            return self.struct_json(ds, path);
        }
        if let Some(s) = eo.inner_as::<Structure>() {
            return self.struct_json(&s.0, path);
        }
        if let Some(eu) = eo.inner_as::<EUInformation>() {
            return Ok(eu_json(eu));
        }
        if let Some(rp) = eo.inner_as::<RelativePath>() {
            return Ok(Value::String(String::from(rp)));
        }
        let kind = eo
            .data_type()
            .map_or_else(|| "unknown".to_owned(), |t| t.to_string());
        Err(ConvertError::new(
            path,
            format!("a structure of type {kind}, which this face does not know"),
        ))
    }

    fn struct_json(&self, ds: &DynamicStructure, path: &str) -> Result<Value, ConvertError> {
        let id = ds.full_data_type_id().node_id;
        let Some(info) = self.tree.get_struct_type(&id) else {
            return Err(ConvertError::new(
                path,
                format!("structure type {id} is not known"),
            ));
        };
        let mut m = Map::new();
        for (f, v) in info.fields.iter().zip(ds.values()) {
            if matches!(v, Variant::Empty) {
                continue;
            }
            let fpath = join(path, &f.name);
            let value = self.field_json(v, &fpath)?;
            if f.type_id == DataTypeId::RelativePath && value.as_str() == Some("") {
                // The empty path: the wire shape omits it.
                continue;
            }
            m.insert(f.name.clone(), value);
        }
        Ok(Value::Object(m))
    }

    fn field_json(&self, v: &Variant, path: &str) -> Result<Value, ConvertError> {
        match v {
            Variant::Array(a) => a
                .values
                .iter()
                .enumerate()
                .map(|(i, x)| self.scalar_json(x, &format!("{path}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            x => self.scalar_json(x, path),
        }
    }

    fn scalar_json(&self, v: &Variant, path: &str) -> Result<Value, ConvertError> {
        Ok(match v {
            Variant::ExtensionObject(eo) => self.eo_json(eo, path)?,
            Variant::Variant(inner) => base_json(inner),
            Variant::Empty
            | Variant::Boolean(_)
            | Variant::SByte(_)
            | Variant::Byte(_)
            | Variant::Int16(_)
            | Variant::UInt16(_)
            | Variant::Int32(_)
            | Variant::UInt32(_)
            | Variant::Int64(_)
            | Variant::UInt64(_)
            | Variant::Float(_)
            | Variant::Double(_)
            | Variant::String(_)
            | Variant::DateTime(_)
            | Variant::LocalizedText(_) => base_json(v),
            other => {
                return Err(ConvertError::new(
                    path,
                    format!("a {} value has no JSON form here", kind(other)),
                ))
            }
        })
    }
}

/// The value of a required field the JSON leaves out: the empty
/// RelativePath (the station's state entries carry none); otherwise an
/// error.
fn absent_required(f: &ParsedStructureField, path: &str) -> Result<Variant, ConvertError> {
    if f.type_id == DataTypeId::RelativePath && f.value_rank < 1 {
        return Ok(Variant::ExtensionObject(ExtensionObject::new(
            RelativePath {
                elements: Some(Vec::new()),
            },
        )));
    }
    Err(ConvertError::new(path, "required field missing"))
}

#[cfg(test)]
mod tests {
    use super::super::types::tests::fixture;
    use super::super::types::{JOB_ORDER, JOB_ORDER_AND_STATE, JOB_RESPONSE, STATE, WORK_MASTER};
    use super::*;
    use crate::jobs::{normalise_order, JobState, MainState, SubState};
    use opcua::types::{
        BinaryDecodable, BinaryEncodable, ContextOwned, DecodingOptions, NamespaceMap,
    };
    use proptest::prelude::*;
    use serde_json::json;
    use std::sync::OnceLock;

    fn shared() -> &'static (Types, NamespaceMap) {
        static FIXTURE: OnceLock<(Types, NamespaceMap)> = OnceLock::new();
        FIXTURE.get_or_init(fixture)
    }

    /// `v` through the OPC UA binary encoding and back, decoded with the
    /// dynamic type loader as the server decodes arguments.
    fn wire(v: &Variant) -> Variant {
        let (types, ns) = shared();
        let mut owned = ContextOwned::new_default(ns.clone(), DecodingOptions::default());
        owned.loaders_mut().add(types.loader());
        let ctx = owned.context();
        let mut buf = Vec::new();
        BinaryEncodable::encode(v, &mut buf, &ctx).expect("encodes");
        assert_eq!(
            buf.len(),
            BinaryEncodable::byte_len(v, &ctx),
            "byte_len is the encoded length"
        );
        Variant::decode(&mut std::io::Cursor::new(buf), &ctx).expect("decodes")
    }

    fn round_trip(jc_type: u32, json: &Value) -> Value {
        let (types, _) = shared();
        let v = types.encode(jc_type, json).expect("encodes to a Variant");
        let back = wire(&v);
        types.decode(&back).expect("decodes to JSON")
    }

    #[test]
    fn a_job_order_survives_the_wire() {
        let order = json!({
            "JobOrderID": "j1",
            "Description": [{"Locale": "en", "Text": "a job"}],
            "WorkMasterID": [{"ID": "wm", "Parameters": [
                {"ID": "speed", "Value": 12.5, "EngineeringUnits": {
                    "NamespaceUri": "http://www.opcfoundation.org/UA/units/un/cefact",
                    "UnitId": 4408652, "DisplayName": {"Locale": "en", "Text": "m/s"}}},
                {"ID": "count", "Value": 3},
                {"ID": "flags", "Value": [true, false]},
                {"ID": "none", "Value": null},
                {"ID": "mixed", "Value": [1, "a", [2]]},
            ]}],
            "StartTime": "2026-11-30T10:00:00.123Z",
            "Priority": -3,
            "MaterialRequirements": [{"MaterialClassID": "steel", "Quantity": "12.50"}],
            "EquipmentRequirements": [],
        });
        let expected = normalise_order(order.clone()).expect("a valid order");
        assert_eq!(round_trip(JOB_ORDER, &order), expected);
    }

    #[test]
    fn the_station_state_list_survives_the_wire() {
        let (types, _) = shared();
        let state = JobState::new(MainState::AllowedToStart, Some(SubState::Ready));
        let json = serde_json::to_value(state.to_wire()).expect("JSON");
        let items = json.as_array().expect("a list").clone();
        let v = types.encode_array(STATE, &items).expect("encodes");
        let back = types.decode(&wire(&v)).expect("decodes");
        assert_eq!(back, json);
        let entries: Vec<crate::jobs::state::StateEntry> =
            serde_json::from_value(back).expect("state entries");
        assert_eq!(JobState::from_wire(&entries), Ok(state));
        // A browse path in text form comes back with its namespace.
        let with_path = json!({"BrowsePath": "/1:Ready", "StateText": {}, "StateNumber": 2});
        assert_eq!(round_trip(STATE, &with_path)["BrowsePath"], "/1:Ready");
    }

    #[test]
    fn a_job_response_and_the_order_list_survive_the_wire() {
        let response = json!({
            "JobResponseID": "j1-response",
            "JobOrderID": "j1",
            "StartTime": "2026-11-30T10:00:00Z",
            "EndTime": "2026-11-30T10:00:01.5Z",
            "JobState": JobState::new(MainState::Ended, Some(SubState::Completed)).to_wire(),
            "JobResponseData": [{"ID": "weight", "Value": 4.25}],
        });
        let typed: crate::models::isa95_jobcontrol::ISA95JobResponseDataType =
            serde_json::from_value(response.clone()).expect("a valid response");
        let expected = serde_json::to_value(typed).expect("JSON");
        assert_eq!(round_trip(JOB_RESPONSE, &response), expected);

        let entry = json!({
            "JobOrder": {"JobOrderID": "j2"},
            "State": JobState::new(MainState::Running, None).to_wire(),
        });
        assert_eq!(round_trip(JOB_ORDER_AND_STATE, &entry), entry);
        let wm = json!({"ID": "wm", "Description": {"Text": "mill"}});
        assert_eq!(round_trip(WORK_MASTER, &wm), wm);
    }

    #[test]
    fn json_objects_in_base_data_type_values_are_sent_as_text() {
        let response = json!({
            "JobResponseID": "r", "JobOrderID": "j", "JobState": [],
            "JobResponseData": [{"ID": "steps", "Value": [{"Step": "s1"}]}],
        });
        let back = round_trip(JOB_RESPONSE, &response);
        assert_eq!(
            back["JobResponseData"][0]["Value"],
            json!([r#"{"Step":"s1"}"#])
        );
    }

    /// Any Int64 of ticks a client sends is a date JSON and RFC 3339 have.
    #[test]
    fn date_times_outside_the_opc_ua_range_are_min_and_max_date() {
        let json = |t: i64| base_json(&Variant::DateTime(Box::new(DateTime::from(t))));
        for t in [0, -1, i64::MIN] {
            assert_eq!(json(t), json!("1601-01-01T00:00:00Z"), "{t}");
        }
        for t in [i64::MAX, i64::MAX - 1, DateTime::endtimes_ticks() + 1] {
            assert_eq!(json(t), json!("9999-12-31T23:59:59Z"), "{t}");
        }
        assert_eq!(json(10_000_000), json!("1601-01-01T00:00:01Z"));
    }

    #[test]
    fn arrays_are_typed_also_when_empty() {
        let (types, _) = shared();
        let Variant::Array(a) = types.encode_array(JOB_RESPONSE, &[]).expect("encodes") else {
            panic!("an array");
        };
        assert_eq!(a.value_type, VariantScalarTypeId::ExtensionObject);
        assert!(a.values.is_empty());
        assert_eq!(
            types.decode(&Variant::Array(a)).expect("decodes"),
            json!([])
        );
        let back = round_trip(JOB_ORDER, &json!({"JobOrderID": "j", "WorkMasterID": []}));
        assert_eq!(back, json!({"JobOrderID": "j", "WorkMasterID": []}));
    }

    #[test]
    fn snake_case_input_is_accepted() {
        let back = round_trip(
            JOB_ORDER,
            &json!({"job_order_id": "j", "work_master_id": [{"id": "wm"}], "priority": 2}),
        );
        assert_eq!(
            back,
            json!({"JobOrderID": "j", "WorkMasterID": [{"ID": "wm"}], "Priority": 2})
        );
    }

    #[test]
    fn values_that_do_not_match_name_their_field() {
        let (types, _) = shared();
        let err = |jc: u32, v: Value| types.encode(jc, &v).expect_err("refused").to_string();
        assert_eq!(
            err(JOB_ORDER, json!({"JobOrderID": 5})),
            "JobOrderID: expected a string, got a number"
        );
        assert!(
            err(JOB_ORDER, json!({"JobOrderID": "j", "Priority": 70000}))
                .starts_with("Priority: 70000 is out of range for Int16")
        );
        assert_eq!(
            err(
                JOB_ORDER,
                json!({"JobOrderID": "j", "WorkMasterID": [{"ID": "a"}, {}]})
            ),
            "WorkMasterID[1].ID: required field missing"
        );
        assert!(err(
            JOB_ORDER,
            json!({"JobOrderID": "j", "StartTime": "yesterday"})
        )
        .starts_with("StartTime: not an RFC 3339 date-time"));
        // Outside the OPC UA range: MinDate and MaxDate, not an error.
        assert_eq!(
            round_trip(
                JOB_ORDER,
                &json!({"JobOrderID": "j", "EndTime": "0001-01-01T00:00:00Z"})
            ),
            json!({"JobOrderID": "j", "EndTime": "1601-01-01T00:00:00Z"})
        );
        assert_eq!(
            err(
                JOB_ORDER,
                json!({"JobOrderID": "j", "WorkMasterID": {"ID": "a"}})
            ),
            "WorkMasterID: expected an array, got an object"
        );
        assert_eq!(
            err(JOB_ORDER, json!(["j"])),
            "expected an object (ISA95JobOrderDataType), got an array"
        );
        assert!(err(9999, json!({})).contains("is not a known structure"));
        let e = types
            .encode_array(STATE, &[json!({"StateText": {}, "StateNumber": -1})])
            .expect_err("refused");
        assert_eq!(e.field, "[0].StateNumber");
        // Not structures.
        assert!(types.decode(&Variant::UInt32(3)).is_err());
        assert!(types.decode(&Variant::from(vec![1u32, 2])).is_err());
        assert_eq!(types.decode(&Variant::Empty), Ok(Value::Null));
    }

    /// The body of the `ISA95JobOrderDataType` Python asyncua 2.1 sends for
    /// `ISA95JobOrderDataType(JobOrderID="o1", Description=[LocalizedText("rear axle", "en")],
    /// WorkMasterID=[ISA95WorkMasterDataType(ID="wm-axle")], Priority=3)`.
    const ASYNCUA_ORDER: &str = "13000000020000006f31010000000302000000656e09000000726561722061786c65010000000000000007000000776d2d61786c650300";

    #[test]
    fn an_order_encoded_by_asyncua_decodes() {
        use opcua::types::TypeLoader;
        let (types, ns) = shared();
        let bytes: Vec<u8> = (0..ASYNCUA_ORDER.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&ASYNCUA_ORDER[i..i + 2], 16).expect("hex"))
            .collect();
        let loader = types.loader();
        let mut owned = ContextOwned::new_default(ns.clone(), DecodingOptions::default());
        owned.loaders_mut().add(loader.clone());
        let ctx = owned.context();
        let body = loader
            .load_from_binary(
                &types.jc_type(JOB_ORDER),
                &mut std::io::Cursor::new(&bytes),
                &ctx,
                None,
            )
            .expect("a type of the tree")
            .expect("decodes");
        let eo = ExtensionObject { body: Some(body) };
        assert_eq!(
            types.decode(&Variant::ExtensionObject(eo)).expect("JSON"),
            json!({
                "JobOrderID": "o1",
                "Description": [{"Locale": "en", "Text": "rear axle"}],
                "WorkMasterID": [{"ID": "wm-axle"}],
                "Priority": 3
            })
        );
        // A null type id is no type of the tree (not decoded as some
        // arbitrary one).
        assert!(loader
            .load_from_binary(
                &NodeId::null(),
                &mut std::io::Cursor::new(&bytes),
                &ctx,
                None
            )
            .is_none());
    }

    /// An ExtensionObject body is decoded within its declared length:
    /// bytes after the structure are skipped (not left for the next
    /// value), a body shorter than declared is an error.
    #[test]
    fn a_body_is_decoded_within_its_declared_length() {
        use opcua::types::TypeLoader;
        let (types, ns) = shared();
        let mut bytes: Vec<u8> = (0..ASYNCUA_ORDER.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&ASYNCUA_ORDER[i..i + 2], 16).expect("hex"))
            .collect();
        let exact = bytes.len();
        bytes.extend_from_slice(&[6, 7, 0, 0, 0, 0xAA]);
        let loader = types.loader();
        let mut owned = ContextOwned::new_default(ns.clone(), DecodingOptions::default());
        owned.loaders_mut().add(loader.clone());
        let ctx = owned.context();
        let id = types.jc_type(JOB_ORDER);
        let mut stream = std::io::Cursor::new(&bytes);
        let body = loader
            .load_from_binary(&id, &mut stream, &ctx, Some(exact + 5))
            .expect("a type of the tree")
            .expect("decodes");
        assert_eq!(stream.position(), (exact + 5) as u64, "the whole body read");
        let json = types
            .decode(&Variant::ExtensionObject(ExtensionObject {
                body: Some(body),
            }))
            .expect("JSON");
        assert_eq!(json["JobOrderID"], "o1");
        let short = loader
            .load_from_binary(
                &id,
                &mut std::io::Cursor::new(&bytes[..exact]),
                &ctx,
                Some(i32::MAX as usize),
            )
            .expect("a type of the tree");
        assert!(short.is_err(), "a body shorter than declared");
    }

    /// `ISA95PropertyDataType` bodies nested `levels` deep through
    /// `Subproperties` (each: mask, empty ID, empty Value, one element).
    fn nested_properties(levels: usize) -> Vec<u8> {
        let mut bytes = Vec::new();
        for i in 0..levels {
            let last = i + 1 == levels;
            let mask: u32 = if last { 0 } else { 4 };
            bytes.extend_from_slice(&mask.to_le_bytes());
            bytes.extend_from_slice(&0i32.to_le_bytes());
            bytes.push(0);
            if !last {
                bytes.extend_from_slice(&1i32.to_le_bytes());
            }
        }
        bytes
    }

    /// A client nesting Subproperties without end gets a decoding error,
    /// not a server aborted by a stack overflow; ordinary nesting decodes.
    #[test]
    fn endless_nesting_is_a_decoding_error() {
        use super::super::types::MAX_NESTING;
        use opcua::types::TypeLoader;
        let (types, ns) = shared();
        let property = types.jc_type(3002);
        let decode = |levels: usize| {
            let bytes = nested_properties(levels);
            let loader = types.loader();
            let mut owned = ContextOwned::new_default(ns.clone(), DecodingOptions::default());
            owned.loaders_mut().add(loader.clone());
            let ctx = owned.context();
            // On a small stack, as a server's worker thread has.
            std::thread::scope(|s| {
                std::thread::Builder::new()
                    .stack_size(2 << 20)
                    .spawn_scoped(s, || {
                        loader
                            .load_from_binary(
                                &property,
                                &mut std::io::Cursor::new(&bytes),
                                &ctx,
                                None,
                            )
                            .expect("a type of the tree")
                            .map(|_| ())
                    })
                    .expect("thread")
                    .join()
                    .expect("no panic")
            })
        };
        assert!(decode(8).is_ok());
        let e = decode(20_000).expect_err("refused");
        assert!(e.to_string().contains("nested deeper than"), "{e}");
        assert!(decode(usize::try_from(MAX_NESTING).expect("small")).is_ok());
    }

    // --- round-trip property ------------------------------------------------

    fn text() -> BoxedStrategy<String> {
        "[a-zA-Z0-9 äöü/._-]{1,12}".boxed()
    }

    fn lt() -> BoxedStrategy<Value> {
        (proptest::option::of("[a-z]{2}(-[A-Z]{2})?"), text())
            .prop_map(|(locale, t)| {
                let mut m = Map::new();
                if let Some(l) = locale {
                    m.insert("Locale".into(), l.into());
                }
                m.insert("Text".into(), t.into());
                Value::Object(m)
            })
            .boxed()
    }

    fn eu() -> BoxedStrategy<Value> {
        (
            proptest::option::of(text()),
            proptest::option::of(any::<i32>().prop_filter("-1 is absent", |i| *i != -1)),
            proptest::option::of(lt()),
            proptest::option::of(lt()),
        )
            .prop_map(|(ns, unit, dn, d)| {
                object(vec![
                    ("NamespaceUri", ns.map(Value::from)),
                    ("UnitId", unit.map(Value::from)),
                    ("DisplayName", dn),
                    ("Description", d),
                ])
            })
            .boxed()
    }

    fn object(fields: Vec<(&str, Option<Value>)>) -> Value {
        Value::Object(
            fields
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_owned(), v)))
                .collect(),
        )
    }

    fn scalar_value() -> BoxedStrategy<Value> {
        prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            (-1.0e9f64..1.0e9).prop_map(Value::from),
            text().prop_map(Value::from),
        ]
        .boxed()
    }

    fn value() -> BoxedStrategy<Value> {
        prop_oneof![
            4 => scalar_value(),
            1 => proptest::collection::vec(scalar_value(), 0..4).prop_map(Value::from),
        ]
        .boxed()
    }

    fn vec_of(s: BoxedStrategy<Value>) -> BoxedStrategy<Option<Value>> {
        proptest::option::of(proptest::collection::vec(s, 0..3).prop_map(Value::from)).boxed()
    }

    /// ISA95PropertyDataType / ISA95ParameterDataType (`sub` is the name
    /// of the nested list), nested `depth` levels.
    fn parameter(sub: &'static str, depth: u32) -> BoxedStrategy<Value> {
        let nested = if depth == 0 {
            Just(None).boxed()
        } else {
            vec_of(parameter(sub, depth - 1))
        };
        (
            text(),
            value(),
            vec_of(lt()),
            proptest::option::of(eu()),
            nested,
        )
            .prop_map(move |(id, v, d, e, n)| {
                let mut o = object(vec![
                    ("ID", Some(id.into())),
                    ("Description", d),
                    ("EngineeringUnits", e),
                    (sub, n),
                ]);
                o["Value"] = v;
                o
            })
            .boxed()
    }

    fn quantity() -> BoxedStrategy<Option<Value>> {
        proptest::option::of("-?[0-9]{1,6}(\\.[0-9]{1,4})?".prop_map(Value::from)).boxed()
    }

    /// Personnel, equipment, physical asset requirements (`use_` names the
    /// `…Use` field).
    fn requirement(use_: &'static str) -> BoxedStrategy<Value> {
        (
            text(),
            vec_of(lt()),
            proptest::option::of(text()),
            quantity(),
            proptest::option::of(eu()),
            vec_of(parameter("Subproperties", 1)),
        )
            .prop_map(move |(id, d, u, q, e, p)| {
                object(vec![
                    ("ID", Some(id.into())),
                    ("Description", d),
                    (use_, u.map(Value::from)),
                    ("Quantity", q),
                    ("EngineeringUnits", e),
                    ("Properties", p),
                ])
            })
            .boxed()
    }

    fn material() -> BoxedStrategy<Value> {
        (
            proptest::option::of(text()),
            proptest::option::of(text()),
            proptest::option::of(text()),
            vec_of(lt()),
            quantity(),
            proptest::option::of(eu()),
            vec_of(parameter("Subproperties", 1)),
        )
            .prop_map(|(class, lot, usage, d, q, e, p)| {
                object(vec![
                    ("MaterialClassID", class.map(Value::from)),
                    ("MaterialLotID", lot.map(Value::from)),
                    ("MaterialUse", usage.map(Value::from)),
                    ("Description", d),
                    ("Quantity", q),
                    ("EngineeringUnits", e),
                    ("Properties", p),
                ])
            })
            .boxed()
    }

    fn time() -> BoxedStrategy<Option<Value>> {
        proptest::option::of((0i64..4_102_444_800_000).prop_map(|ms| {
            let t = chrono::DateTime::<chrono::Utc>::from_timestamp_millis(ms).unwrap_or_default();
            Value::from(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        }))
        .boxed()
    }

    fn work_master() -> BoxedStrategy<Value> {
        (
            text(),
            proptest::option::of(lt()),
            vec_of(parameter("Subparameters", 1)),
        )
            .prop_map(|(id, d, p)| {
                object(vec![
                    ("ID", Some(id.into())),
                    ("Description", d),
                    ("Parameters", p),
                ])
            })
            .boxed()
    }

    fn job_order() -> impl Strategy<Value = Value> {
        (
            (text(), vec_of(lt()), vec_of(work_master()), time(), time()),
            (
                proptest::option::of(any::<i16>()),
                vec_of(parameter("Subparameters", 2)),
                vec_of(requirement("PersonnelUse")),
                vec_of(requirement("EquipmentUse")),
                vec_of(requirement("PhysicalAssetUse")),
                vec_of(material()),
            ),
        )
            .prop_map(
                |((id, d, wm, start, end), (prio, params, pers, equ, asset, mat))| {
                    object(vec![
                        ("JobOrderID", Some(id.into())),
                        ("Description", d),
                        ("WorkMasterID", wm),
                        ("StartTime", start),
                        ("EndTime", end),
                        ("Priority", prio.map(Value::from)),
                        ("JobOrderParameters", params),
                        ("PersonnelRequirements", pers),
                        ("EquipmentRequirements", equ),
                        ("PhysicalAssetRequirements", asset),
                        ("MaterialRequirements", mat),
                    ])
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any job order: JSON → Variant → OPC UA binary → decoded by the
        /// dynamic type loader → JSON equals the normalised order.
        #[test]
        fn job_orders_round_trip_through_the_binary_encoding(order in job_order()) {
            let expected = normalise_order(order.clone()).expect("generated orders are valid");
            prop_assert_eq!(round_trip(JOB_ORDER, &order), expected);
        }
    }
}
