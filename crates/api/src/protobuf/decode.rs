//! From protobuf bytes to Kubernetes JSON: the envelope, messages by the generated schema, and the
//! handful of types Kubernetes encodes specially (times, durations, int-or-strings, quantities,
//! raw JSON). Fields come out in schema order, which is the order Kubernetes prints them in, and
//! zero scalars are dropped as Go's `omitempty` drops them (see the module docs).

use super::wire::{Reader, Wire};
use super::{schema, Field, Kind, Message, ProtobufError};
use base64::Engine as _;
use serde_json::{Map, Value};

/// The magic prefix of every Kubernetes protobuf body.
pub const MAGIC: &[u8] = b"k8s\0";

/// The deepest message nesting accepted. Kubernetes objects nest about fifteen messages deep
/// (a Deployment's pod template's volume's projected sources); the bound keeps a hostile body
/// from exhausting the stack.
pub const MAX_DEPTH: usize = 64;

/// One step of the path to the field being decoded, for error messages.
enum Seg {
    Field(&'static str),
    Index(usize),
    Key(String),
}

/// A decoding failure deep in a message, with the path collected on the way out (innermost
/// step first).
struct Fault {
    path: Vec<Seg>,
    what: What,
}

enum What {
    /// Bytes that are no valid encoding: reported with the path.
    Malformed(String),
    /// A failure that stands on its own (a bad envelope, too deep a nesting).
    Error(ProtobufError),
}

impl Fault {
    fn new(reason: impl Into<String>) -> Self {
        Self {
            path: Vec::new(),
            what: What::Malformed(reason.into()),
        }
    }

    fn error(e: ProtobufError) -> Self {
        Self {
            path: Vec::new(),
            what: What::Error(e),
        }
    }

    fn at(mut self, seg: Seg) -> Self {
        self.path.push(seg);
        self
    }

    /// Inside field `f` (no step for an inlined field, which has no JSON name of its own).
    fn in_field(self, f: &Field) -> Self {
        if f.inline {
            self
        } else {
            self.at(Seg::Field(f.json))
        }
    }

    fn into_error(self) -> ProtobufError {
        let reason = match self.what {
            What::Error(e) => return e,
            What::Malformed(reason) => reason,
        };
        let mut path = String::new();
        for seg in self.path.iter().rev() {
            match seg {
                Seg::Field(name) if path.is_empty() => path.push_str(name),
                Seg::Field(name) => {
                    path.push('.');
                    path.push_str(name);
                }
                Seg::Index(i) => path.push_str(&format!("[{i}]")),
                Seg::Key(k) => path.push_str(&format!("[{k:?}]")),
            }
        }
        ProtobufError::Malformed { path, reason }
    }
}

impl From<String> for Fault {
    fn from(reason: String) -> Self {
        Fault::new(reason)
    }
}

/// Decode a Kubernetes protobuf body (magic, `runtime.Unknown` envelope, object) into the
/// object's Kubernetes JSON, `kind` and `apiVersion` first.
pub fn decode(body: &[u8]) -> Result<Value, ProtobufError> {
    decode_envelope(body, 0).map_err(Fault::into_error)
}

/// The fields of a `runtime.Unknown`.
#[derive(Default)]
struct Envelope<'a> {
    api_version: String,
    kind: String,
    raw: &'a [u8],
    content_encoding: String,
    content_type: String,
}

fn decode_envelope(body: &[u8], depth: usize) -> Result<Value, Fault> {
    let Some(rest) = body.strip_prefix(MAGIC) else {
        return Err(Fault::error(ProtobufError::MissingMagic));
    };
    let env = read_envelope(rest)
        .map_err(|e| Fault::new(format!("in the runtime.Unknown envelope: {e}")))?;
    if !env.content_encoding.is_empty() {
        return Err(Fault::error(ProtobufError::UnsupportedContentEncoding(
            env.content_encoding,
        )));
    }
    if !env.content_type.is_empty() && env.content_type != "application/vnd.kubernetes.protobuf" {
        return Err(Fault::error(ProtobufError::UnsupportedContentType(
            env.content_type,
        )));
    }
    if env.kind.is_empty() {
        return Err(Fault::error(ProtobufError::MissingKind));
    }
    let top = schema::TOP_LEVEL
        .iter()
        .find(|t| t.kind == env.kind && t.api_version.is_none_or(|v| v == env.api_version))
        .ok_or_else(|| {
            Fault::error(ProtobufError::UnsupportedKind {
                api_version: env.api_version.clone(),
                kind: env.kind.clone(),
            })
        })?;
    let mut obj = Map::new();
    obj.insert("kind".into(), Value::String(env.kind));
    if !env.api_version.is_empty() {
        obj.insert("apiVersion".into(), Value::String(env.api_version));
    }
    decode_message(top.message, env.raw, depth + 1, &mut obj)?;
    Ok(Value::Object(obj))
}

fn read_envelope(bytes: &[u8]) -> Result<Envelope<'_>, String> {
    let mut env = Envelope::default();
    let mut r = Reader::new(bytes);
    while !r.is_empty() {
        match r.key()? {
            (1, Wire::Len) => {
                let mut tm = Reader::new(r.len_delimited()?);
                while !tm.is_empty() {
                    match tm.key()? {
                        (1, Wire::Len) => env.api_version = utf8(tm.len_delimited()?)?,
                        (2, Wire::Len) => env.kind = utf8(tm.len_delimited()?)?,
                        (_, wire) => tm.skip(wire)?,
                    }
                }
            }
            (2, Wire::Len) => env.raw = r.len_delimited()?,
            (3, Wire::Len) => env.content_encoding = utf8(r.len_delimited()?)?,
            (4, Wire::Len) => env.content_type = utf8(r.len_delimited()?)?,
            (1..=4, wire) => {
                return Err(format!(
                    "{} value where a string or message was expected",
                    wire.name()
                ))
            }
            (_, wire) => r.skip(wire)?,
        }
    }
    Ok(env)
}

fn utf8(bytes: &[u8]) -> Result<String, String> {
    String::from_utf8(bytes.to_vec()).map_err(|e| format!("invalid UTF-8 in a string: {e}"))
}

/// What has been read of one field while scanning its message (only the part its kind uses is
/// filled).
#[derive(Default)]
struct Slot<'a> {
    scalar: Option<Value>,
    /// The payloads of a singular message field: a message sent in parts is their
    /// concatenation (protobuf's merge rule).
    chunks: Vec<&'a [u8]>,
    list: Vec<Value>,
    map: Map<String, Value>,
}

/// Decode `bytes` as `msg`, adding its JSON fields to `out` in schema order.
fn decode_message(
    msg: &'static Message,
    bytes: &[u8],
    depth: usize,
    out: &mut Map<String, Value>,
) -> Result<(), Fault> {
    if depth > MAX_DEPTH {
        return Err(Fault::error(ProtobufError::TooDeep(MAX_DEPTH)));
    }
    let mut slots: Vec<Slot<'_>> = msg.fields.iter().map(|_| Slot::default()).collect();
    let mut r = Reader::new(bytes);
    while !r.is_empty() {
        let (tag, wire) = r.key()?;
        let Some((i, f)) = msg.field(tag) else {
            // A field this version of the schema does not know: skipped, as Kubernetes skips it.
            r.skip(wire)?;
            continue;
        };
        read_field(f, wire, &mut r, &mut slots[i], depth).map_err(|e| e.in_field(f))?;
    }
    for (f, slot) in msg.fields.iter().zip(slots) {
        if let Some(v) = slot.scalar {
            if f.keep_zero || !is_zero(&v) {
                out.insert(f.json.into(), v);
            }
        } else if !slot.chunks.is_empty() {
            let joined;
            let bytes = match slot.chunks.as_slice() {
                [one] => *one,
                many => {
                    joined = many.concat();
                    &joined
                }
            };
            match (f.inline, f.kind) {
                (true, Kind::Message(inner)) => decode_message(inner, bytes, depth + 1, out)?,
                _ => {
                    let v = decode_value(f.kind, bytes, depth + 1).map_err(|e| e.in_field(f))?;
                    out.insert(f.json.into(), v);
                }
            }
        } else if !slot.list.is_empty() {
            out.insert(f.json.into(), Value::Array(slot.list));
        } else if !slot.map.is_empty() {
            out.insert(f.json.into(), Value::Object(slot.map));
        }
    }
    Ok(())
}

/// Go's `omitempty` notion of empty, for scalars.
fn is_zero(v: &Value) -> bool {
    match v {
        Value::String(s) => s.is_empty(),
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_i64() == Some(0) || n.as_f64() == Some(0.0),
        Value::Null => true,
        Value::Array(_) | Value::Object(_) => false,
    }
}

fn is_scalar(kind: Kind) -> bool {
    matches!(
        kind,
        Kind::String | Kind::Bytes | Kind::Bool | Kind::Int32 | Kind::Int64 | Kind::Double
    )
}

/// Read one occurrence of field `f` into its slot.
fn read_field<'a>(
    f: &Field,
    wire: Wire,
    r: &mut Reader<'a>,
    slot: &mut Slot<'a>,
    depth: usize,
) -> Result<(), Fault> {
    if let Kind::Map(value_kind) = f.kind {
        let entry = expect_len(wire, r, "map entry")?;
        let (key, value) = read_map_entry(entry, *value_kind, depth)?;
        // A repeated key keeps its last value, as Go's decoder does.
        slot.map.insert(key, value);
        return Ok(());
    }
    if is_scalar(f.kind) {
        if !f.repeated {
            slot.scalar = Some(read_scalar(f.kind, wire, r)?);
        } else if wire == Wire::Len && !matches!(f.kind, Kind::String | Kind::Bytes) {
            // Packed numbers: one payload of back-to-back values.
            let mut packed = Reader::new(r.len_delimited()?);
            let inner = if matches!(f.kind, Kind::Double) {
                Wire::Fixed64
            } else {
                Wire::Varint
            };
            while !packed.is_empty() {
                let i = slot.list.len();
                slot.list.push(
                    read_scalar(f.kind, inner, &mut packed).map_err(|e| e.at(Seg::Index(i)))?,
                );
            }
        } else {
            let i = slot.list.len();
            slot.list
                .push(read_scalar(f.kind, wire, r).map_err(|e| e.at(Seg::Index(i)))?);
        }
        return Ok(());
    }
    let payload = expect_len(wire, r, "message")?;
    if f.repeated {
        let i = slot.list.len();
        slot.list
            .push(decode_value(f.kind, payload, depth + 1).map_err(|e| e.at(Seg::Index(i)))?);
    } else {
        slot.chunks.push(payload);
    }
    Ok(())
}

fn expect_len<'a>(wire: Wire, r: &mut Reader<'a>, what: &str) -> Result<&'a [u8], Fault> {
    if wire != Wire::Len {
        return Err(Fault::new(format!(
            "{} value where a {what} was expected",
            wire.name()
        )));
    }
    Ok(r.len_delimited()?)
}

/// One scalar value as JSON.
fn read_scalar(kind: Kind, wire: Wire, r: &mut Reader<'_>) -> Result<Value, Fault> {
    let expected = match kind {
        Kind::String | Kind::Bytes => Wire::Len,
        Kind::Double => Wire::Fixed64,
        _ => Wire::Varint,
    };
    if wire != expected {
        return Err(Fault::new(format!(
            "{} value where a {} was expected",
            wire.name(),
            expected.name()
        )));
    }
    Ok(match kind {
        Kind::String => Value::String(utf8(r.len_delimited()?)?),
        Kind::Bytes => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(r.len_delimited()?))
        }
        Kind::Bool => Value::Bool(r.varint()? != 0),
        // Negative int32s are sign-extended to ten bytes on the wire; truncating restores them.
        Kind::Int32 => Value::from(r.varint()? as i32),
        Kind::Int64 => Value::from(r.varint()? as i64),
        Kind::Double => {
            let f = f64::from_bits(r.fixed64()?);
            Value::Number(
                serde_json::Number::from_f64(f)
                    .ok_or_else(|| Fault::new(format!("{f} is not a JSON number")))?,
            )
        }
        _ => return Err(Fault::new("internal: not a scalar kind")),
    })
}

/// A map entry: key (field 1, a string) and value (field 2, of `kind`). Missing parts are their
/// zero values, as protobuf defines.
fn read_map_entry(entry: &[u8], kind: Kind, depth: usize) -> Result<(String, Value), Fault> {
    let mut key = String::new();
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut r = Reader::new(entry);
    while !r.is_empty() {
        match r.key()? {
            (1, wire) => key = utf8(expect_len(wire, &mut r, "map key")?)?,
            (2, wire) => chunks.push(expect_len(wire, &mut r, "map value")?),
            (_, wire) => r.skip(wire)?,
        }
    }
    let value = match kind {
        // A scalar value sent twice keeps the last; a message value merges.
        Kind::String | Kind::Bytes => {
            decode_value(kind, chunks.last().copied().unwrap_or(&[]), depth + 1)
        }
        _ => decode_value(kind, &chunks.concat(), depth + 1),
    }
    .map_err(|e| e.at(Seg::Key(key.clone())))?;
    Ok((key, value))
}

/// A length-delimited payload of `kind` as JSON.
fn decode_value(kind: Kind, bytes: &[u8], depth: usize) -> Result<Value, Fault> {
    match kind {
        Kind::String => Ok(Value::String(utf8(bytes)?)),
        Kind::Bytes => Ok(Value::String(
            base64::engine::general_purpose::STANDARD.encode(bytes),
        )),
        Kind::Message(m) => {
            let mut out = Map::new();
            decode_message(m, bytes, depth, &mut out)?;
            Ok(Value::Object(out))
        }
        Kind::Time => time(bytes, false),
        Kind::MicroTime => time(bytes, true),
        Kind::Duration => {
            let mut nanos = 0;
            for_each_field(bytes, |tag, wire, r| {
                if tag == 1 {
                    nanos = expect_varint(wire, r)? as i64;
                    return Ok(true);
                }
                Ok(false)
            })?;
            Ok(Value::String(go_duration(nanos)))
        }
        Kind::IntOrString => {
            let (mut ty, mut int_val, mut str_val) = (0i64, 0i32, String::new());
            for_each_field(bytes, |tag, wire, r| {
                match tag {
                    1 => ty = expect_varint(wire, r)? as i64,
                    2 => int_val = expect_varint(wire, r)? as i32,
                    3 => str_val = utf8(expect_len(wire, r, "string")?)?,
                    _ => return Ok(false),
                }
                Ok(true)
            })?;
            match ty {
                0 => Ok(Value::from(int_val)),
                1 => Ok(Value::String(str_val)),
                other => Err(Fault::new(format!(
                    "IntOrString type {other} is neither 0 (int) nor 1 (string)"
                ))),
            }
        }
        Kind::Quantity => {
            // An empty message is Go's zero Quantity, which prints as "0".
            let mut s = "0".to_string();
            for_each_field(bytes, |tag, wire, r| {
                if tag == 1 {
                    s = utf8(expect_len(wire, r, "string")?)?;
                    return Ok(true);
                }
                Ok(false)
            })?;
            Ok(Value::String(s))
        }
        Kind::RawExtension | Kind::FieldsV1 => {
            let mut raw: &[u8] = &[];
            for_each_field(bytes, |tag, wire, r| {
                if tag == 1 {
                    raw = expect_len(wire, r, "bytes")?;
                    return Ok(true);
                }
                Ok(false)
            })?;
            if raw.is_empty() {
                Ok(Value::Null)
            } else if raw.starts_with(MAGIC) && matches!(kind, Kind::RawExtension) {
                // An embedded object a protobuf client encoded as protobuf too.
                decode_envelope(raw, depth)
            } else {
                serde_json::from_slice(raw)
                    .map_err(|e| Fault::new(format!("embedded JSON is invalid: {e}")))
            }
        }
        Kind::Bool | Kind::Int32 | Kind::Int64 | Kind::Double | Kind::Map(_) => Err(Fault::new(
            "internal: a scalar or map kind is not a message",
        )),
    }
}

/// Walk the fields of a small hand-read message; `visit` returns whether it consumed the value
/// (unknown fields are skipped).
fn for_each_field<'a>(
    bytes: &'a [u8],
    mut visit: impl FnMut(u32, Wire, &mut Reader<'a>) -> Result<bool, Fault>,
) -> Result<(), Fault> {
    let mut r = Reader::new(bytes);
    while !r.is_empty() {
        let (tag, wire) = r.key()?;
        if !visit(tag, wire, &mut r)? {
            r.skip(wire)?;
        }
    }
    Ok(())
}

fn expect_varint(wire: Wire, r: &mut Reader<'_>) -> Result<u64, Fault> {
    if wire != Wire::Varint {
        return Err(Fault::new(format!(
            "{} value where a varint was expected",
            wire.name()
        )));
    }
    Ok(r.varint()?)
}

/// `meta/v1 Time` (RFC 3339 in whole seconds, as Go's `Time.MarshalJSON`) or `MicroTime`
/// (microseconds). An empty message is Go's zero time, which prints as `null`.
fn time(bytes: &[u8], micro: bool) -> Result<Value, Fault> {
    if bytes.is_empty() {
        return Ok(Value::Null);
    }
    let (mut seconds, mut nanos) = (0i64, 0i32);
    for_each_field(bytes, |tag, wire, r| {
        match tag {
            1 => seconds = expect_varint(wire, r)? as i64,
            2 => nanos = expect_varint(wire, r)? as i32,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let ts = jiff::Timestamp::new(seconds, nanos)
        .map_err(|e| Fault::new(format!("time {seconds}s {nanos}ns is out of range: {e}")))?;
    let format = if micro {
        "%Y-%m-%dT%H:%M:%S%.6fZ"
    } else {
        "%Y-%m-%dT%H:%M:%SZ"
    };
    jiff::fmt::strtime::format(format, ts)
        .map(Value::String)
        .map_err(|e| Fault::new(format!("time {seconds}s {nanos}ns cannot be printed: {e}")))
}

/// A duration in nanoseconds as Go's `time.Duration.String` prints it (`1h2m3.5s`, `1.5ms`,
/// `0s`), which is how `meta/v1 Duration` appears in JSON.
pub(super) fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let u = nanos.unsigned_abs();
    // `whole` units plus `frac` of `scale` (a power of ten), trailing zeros trimmed.
    let fixed = |whole: u64, frac: u64, digits: usize| {
        let frac = format!("{frac:0digits$}");
        let frac = frac.trim_end_matches('0');
        if frac.is_empty() {
            whole.to_string()
        } else {
            format!("{whole}.{frac}")
        }
    };
    if u < 1_000 {
        return format!("{sign}{u}ns");
    }
    if u < 1_000_000 {
        return format!("{sign}{}µs", fixed(u / 1_000, u % 1_000, 3));
    }
    if u < 1_000_000_000 {
        return format!("{sign}{}ms", fixed(u / 1_000_000, u % 1_000_000, 6));
    }
    let total_seconds = u / 1_000_000_000;
    let seconds = fixed(total_seconds % 60, u % 1_000_000_000, 9);
    let minutes = (total_seconds / 60) % 60;
    let hours = total_seconds / 3600;
    if hours > 0 {
        format!("{sign}{hours}h{minutes}m{seconds}s")
    } else if minutes > 0 {
        format!("{sign}{minutes}m{seconds}s")
    } else {
        format!("{sign}{seconds}s")
    }
}

/// A payload of `kind` decoded at the top level, for the tests of kinds no served object holds.
#[cfg(test)]
pub(super) fn decode_value_for_tests(kind: Kind, bytes: &[u8]) -> Result<Value, ProtobufError> {
    decode_value(kind, bytes, 1).map_err(Fault::into_error)
}

/// A Namespace message decoded as if nested `depth` messages deep.
#[cfg(test)]
pub(super) fn namespace_at_depth_for_tests(
    bytes: &[u8],
    depth: usize,
) -> Result<Value, ProtobufError> {
    decode_value(Kind::Message(&schema::CORE_V1_NAMESPACE), bytes, depth).map_err(Fault::into_error)
}
