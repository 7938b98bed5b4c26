//! Kubernetes protobuf request bodies (`application/vnd.kubernetes.protobuf`), decoded into the
//! Kubernetes JSON form the rest of Switchyard works on. Real `kubectl` and client-go programs
//! send the bodies of typed writes this way (`kubectl create service|deployment|configmap|
//! namespace`, the pods of `kubectl debug`, client-go's delete options); responses stay JSON.
//!
//! A body is the Kubernetes envelope: the magic bytes `k8s\0`, then a `runtime.Unknown` message
//! whose `typeMeta` names the object's `apiVersion` and `kind` and whose `raw` bytes are the
//! object's own protobuf message. [`decode`] reads the envelope, finds the message of that kind in
//! [`schema`] (generated from the `k8s-pb` crate's prost definitions and `k8s-openapi`'s JSON
//! names by `cargo run -p switchyard-protobuf-gen`; see that crate) and returns the object as the
//! JSON that Kubernetes' Go types would print for it.
//!
//! Kubernetes' Go structs, not their protobuf messages, define that JSON, and the two differ in
//! one way this module has to bridge: Go writes every plain (non-pointer) field to protobuf even
//! when it holds its zero value, but leaves zero-valued optional fields out of JSON. So a zero
//! scalar (`""`, `0`, `false`) is dropped unless the JSON always carries the field (OpenAPI marks
//! it required) or the Go field is a pointer whose explicit zero means something
//! (`spec.replicas: 0`); see [`Field::keep_zero`]. Empty nested messages stay (`"status": {}`),
//! as Go prints non-pointer structs, and an empty `metav1.Time` is `null`, as Go prints it.
//!
//! Decoding is pure and total: malformed input (truncated, wrong wire types, invalid UTF-8,
//! absurd nesting) is a [`ProtobufError`], never a panic.

mod decode;
pub mod schema;
#[cfg(test)]
mod tests;
mod wire;

pub use decode::{decode, MAGIC, MAX_DEPTH};

/// What a field holds on the wire and how it becomes JSON.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// `string`: a JSON string; invalid UTF-8 is an error.
    String,
    /// `bytes`: a base64 JSON string, as Go's `encoding/json` writes `[]byte`.
    Bytes,
    Bool,
    /// `int32` varint, a JSON number.
    Int32,
    /// `int64` varint, a JSON number.
    Int64,
    /// `double` (fixed 64 bits), a JSON number.
    Double,
    /// A nested message, a JSON object.
    Message(&'static Message),
    /// A `map<string, V>`, carried as repeated entry messages (key = 1, value = 2); the value's
    /// kind is given. A JSON object.
    Map(&'static Kind),
    /// `meta/v1 Time`: seconds and nanos, printed as RFC 3339 in whole seconds, or `null` when
    /// empty (Go's zero time).
    Time,
    /// `meta/v1 MicroTime`: as [`Kind::Time`] with six fractional digits.
    MicroTime,
    /// `meta/v1 Duration`: nanoseconds, printed as Go's `time.Duration` prints (`1m30s`).
    Duration,
    /// `util/intstr IntOrString`: a JSON number or string, by its `type`.
    IntOrString,
    /// `api/resource Quantity`: its canonical string.
    Quantity,
    /// `runtime RawExtension`: raw bytes that are a JSON document, embedded as is.
    RawExtension,
    /// `meta/v1 FieldsV1`: raw bytes that are a JSON document (managed fields), embedded as is.
    FieldsV1,
}

/// One field of a message.
#[derive(Clone, Copy, Debug)]
pub struct Field {
    /// The protobuf field number.
    pub tag: u32,
    /// The field's name in Kubernetes JSON (`clusterIP`); empty for an inlined field.
    pub json: &'static str,
    pub kind: Kind,
    /// A `repeated` field: a JSON array (maps are [`Kind::Map`], not repeated).
    pub repeated: bool,
    /// Print the field even at its zero value. Set where Go's JSON does: fields without
    /// `omitempty` (OpenAPI-required ones), and pointer fields whose explicit zero differs from
    /// unset (`replicas: 0`, `ready: false`). Protobuf cannot tell a Go pointer from a plain
    /// field, so the generator is given the latter list.
    pub keep_zero: bool,
    /// A Go struct embedded with `json:",inline"`: a nested message in protobuf whose fields
    /// JSON prints in the parent (`ConfigMapEnvSource`'s `LocalObjectReference` gives it `name`).
    pub inline: bool,
}

impl Field {
    /// A singular field that is dropped at its zero value.
    pub const fn new(tag: u32, json: &'static str, kind: Kind) -> Self {
        Self {
            tag,
            json,
            kind,
            repeated: false,
            keep_zero: false,
            inline: false,
        }
    }

    /// An embedded message whose fields are printed in the parent.
    pub const fn inline(tag: u32, kind: Kind) -> Self {
        Self {
            tag,
            json: "",
            kind,
            repeated: false,
            keep_zero: false,
            inline: true,
        }
    }

    pub const fn repeated(self) -> Self {
        Self {
            repeated: true,
            ..self
        }
    }

    pub const fn keep_zero(self) -> Self {
        Self {
            keep_zero: true,
            ..self
        }
    }
}

/// One protobuf message: its fields in Go declaration order, which is the order Kubernetes
/// prints them in JSON.
#[derive(Debug)]
pub struct Message {
    /// The OpenAPI name of the type (`io.k8s.api.core.v1.ServiceSpec`).
    pub name: &'static str,
    pub fields: &'static [Field],
}

impl Message {
    /// The field with protobuf number `tag`, if the schema knows it.
    pub fn field(&self, tag: u32) -> Option<(usize, &'static Field)> {
        self.fields.iter().enumerate().find(|(_, f)| f.tag == tag)
    }
}

/// A kind a request body may carry at the top level.
#[derive(Debug)]
pub struct TopLevel {
    /// The `apiVersion` it must come with; `None` accepts any (Kubernetes registers
    /// `DeleteOptions` in every group version, and clients send the resource's).
    pub api_version: Option<&'static str>,
    pub kind: &'static str,
    pub message: &'static Message,
}

/// Why a body could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ProtobufError {
    #[error("the body does not start with the Kubernetes protobuf magic bytes \"k8s\\x00\"")]
    MissingMagic,
    #[error("the protobuf envelope names no kind (typeMeta.kind is empty)")]
    MissingKind,
    #[error("the protobuf envelope's content encoding {0:?} is not supported")]
    UnsupportedContentEncoding(String),
    #[error(
        "the protobuf envelope's content type {0:?} is not application/vnd.kubernetes.protobuf"
    )]
    UnsupportedContentType(String),
    #[error("protobuf bodies of kind {kind:?} in version {api_version:?} are not supported")]
    UnsupportedKind { api_version: String, kind: String },
    /// The bytes are not a valid encoding of the message; `path` is the JSON path of the field
    /// being read (`spec.ports[0].name`), empty at the top.
    #[error("malformed protobuf{}: {reason}", if path.is_empty() { String::new() } else { format!(" at {path}") })]
    Malformed { path: String, reason: String },
    #[error("the protobuf message nests deeper than {0} levels")]
    TooDeep(usize),
}
