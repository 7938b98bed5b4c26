//! Generic access to objects held as JSON (`serde_json::Value`), the form the API server stores
//! and serves: metadata accessors shared by every resource.

use serde_json::Value;

/// `metadata.name`, or "" when absent.
pub fn name(obj: &Value) -> &str {
    obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("")
}

/// `metadata.namespace`, if set.
pub fn namespace(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/namespace").and_then(Value::as_str)
}
