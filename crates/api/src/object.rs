//! Generic access to objects held as JSON (`serde_json::Value`), the form the API server stores
//! and serves: metadata accessors shared by every resource.

use serde_json::Value;

/// `metadata.name`, or "" when absent.
pub fn name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.namespace`, if set.
pub fn namespace(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/namespace").and_then(Value::as_str)
}

/// `metadata.resourceVersion`, if set and non-empty.
pub fn resource_version(obj: &Value) -> Option<&str> {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// `metadata.deletionTimestamp` is set: the object is being deleted.
pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// The strings of the array at `pointer` (`/spec/clusterIPs`), empty when absent.
pub fn strings_at(obj: &Value, pointer: &str) -> Vec<String> {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `metadata.finalizers`, empty when absent.
pub fn finalizers(obj: &Value) -> Vec<String> {
    strings_at(obj, "/metadata/finalizers")
}

/// A mutable handle on `metadata`, created if absent or not an object.
pub fn metadata_mut(obj: &mut Value) -> &mut serde_json::Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = Value::Object(Default::default());
    }
    obj["metadata"]
        .as_object_mut()
        .expect("metadata was just made an object")
}

/// The result of decoding a request body through the typed schema of its kind.
pub struct Decoded {
    /// The object as the typed schema re-encodes it: unknown fields dropped.
    pub object: Value,
    /// Paths of fields the schema does not know (`spec.foo`, `spec.ports[0].bar`).
    pub unknown_fields: Vec<String>,
}

fn roundtrip<T>(obj: Value) -> Result<Value, String>
where
    T: serde::de::DeserializeOwned + serde::Serialize,
{
    let typed: T = serde_path_to_error::deserialize(obj).map_err(|e| {
        let path = e.path().to_string();
        if path == "." {
            e.inner().to_string()
        } else {
            format!("{}: {}", path, e.inner())
        }
    })?;
    serde_json::to_value(&typed).map_err(|e| e.to_string())
}

/// Decode `obj` (of `kind`) through its typed schema: rejects wrongly typed fields (the message
/// names the field) and reports fields the schema does not know, as kube-apiserver's strict
/// decoder does (`fieldValidation=Strict|Warn|Ignore` decides what the caller does with them).
pub fn decode(kind: &str, obj: Value) -> Result<Decoded, String> {
    use k8s_openapi::api::{
        apps::v1 as apps, coordination::v1 as coord, core::v1 as core, discovery::v1 as disc,
    };
    let input = obj.clone();
    let object = match kind {
        "Namespace" => roundtrip::<core::Namespace>(obj)?,
        "Service" => roundtrip::<core::Service>(obj)?,
        "Endpoints" => roundtrip::<core::Endpoints>(obj)?,
        "Pod" => roundtrip::<core::Pod>(obj)?,
        "Node" => roundtrip::<core::Node>(obj)?,
        "Event" => roundtrip::<core::Event>(obj)?,
        "ConfigMap" => roundtrip::<core::ConfigMap>(obj)?,
        "EndpointSlice" => roundtrip::<disc::EndpointSlice>(obj)?,
        "Lease" => roundtrip::<coord::Lease>(obj)?,
        "Deployment" => roundtrip::<apps::Deployment>(obj)?,
        "ReplicaSet" => roundtrip::<apps::ReplicaSet>(obj)?,
        "IPAddressPool" => roundtrip::<crate::metallb::IPAddressPool>(obj)?,
        "L2Advertisement" => roundtrip::<crate::metallb::L2Advertisement>(obj)?,
        _ => obj,
    };
    let mut unknown_fields = Vec::new();
    unknown(&input, &object, "", &mut unknown_fields);
    Ok(Decoded {
        object,
        unknown_fields,
    })
}

/// Collect paths present (and non-null) in `input` but absent from `output`.
fn unknown(input: &Value, output: &Value, path: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match o.get(k) {
                    None if !v.is_null() => out.push(p),
                    Some(ov) => unknown(v, ov, &p, out),
                    None => {}
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (iv, ov)) in i.iter().zip(o.iter()).enumerate() {
                unknown(iv, ov, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Insert `"resourceVersion":"<rv>"` as the first field of the top-level `metadata` object of a
/// compact JSON object, without decoding it: the fast path for serving stored objects (which are
/// kept without a resourceVersion) when nothing needs to look inside them. Returns `None` if
/// `raw` is not an object with a `metadata` object, or already names a resourceVersion at the
/// top of its metadata; the caller then decodes.
pub fn splice_resource_version(raw: &[u8], rv: i64) -> Option<Vec<u8>> {
    let insert_at = top_level_metadata_body(raw)?;
    let rest = &raw[insert_at..];
    let field = format!("\"resourceVersion\":\"{rv}\"");
    let mut out = Vec::with_capacity(raw.len() + field.len() + 1);
    out.extend_from_slice(&raw[..insert_at]);
    out.extend_from_slice(field.as_bytes());
    match rest.iter().position(|b| !b.is_ascii_whitespace()) {
        Some(i) if rest[i] == b'}' => {}
        Some(_) => out.push(b','),
        None => return None,
    }
    out.extend_from_slice(rest);
    Some(out)
}

/// The offset just after the `{` of the top-level `"metadata"` object, found by a scan that
/// tracks nesting and strings (so keys or text deeper in the object never match).
fn top_level_metadata_body(raw: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    let mut last_string: Option<(usize, usize)> = None;
    while i < raw.len() {
        match raw[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < raw.len() && raw[i] != b'"' {
                    if raw[i] == b'\\' {
                        i += 1;
                    }
                    i += 1;
                }
                last_string = Some((start, i));
            }
            b'{' | b'[' => {
                if depth == 1 && raw[i] == b'{' {
                    if let Some((s, e)) = last_string {
                        if &raw[s..e] == b"metadata"
                            && raw[e + 1..i]
                                .iter()
                                .all(|b| *b == b':' || b.is_ascii_whitespace())
                        {
                            let body = i + 1;
                            let next = raw[body..].iter().position(|b| !b.is_ascii_whitespace())?;
                            if raw[body + next..].starts_with(b"\"resourceVersion\"") {
                                return None;
                            }
                            return Some(body);
                        }
                    }
                }
                depth += 1;
            }
            b'}' | b']' => depth = depth.checked_sub(1)?,
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn resource_version_is_spliced_into_the_top_level_metadata_only() {
        let raw = br#"{"kind":"Deployment","spec":{"template":{"metadata":{"labels":{"a":"b"}}}},"metadata":{"name":"x \"metadata\":{"}}"#;
        let out = splice_resource_version(raw, 42).expect("spliced");
        let v: Value = serde_json::from_slice(&out).expect("still JSON");
        assert_eq!(v["metadata"]["resourceVersion"], "42");
        assert_eq!(v["metadata"]["name"], "x \"metadata\":{");
        assert!(v
            .pointer("/spec/template/metadata/resourceVersion")
            .is_none());
        let empty = splice_resource_version(br#"{"metadata":{}}"#, 7).expect("spliced");
        assert_eq!(
            serde_json::from_slice::<Value>(&empty).expect("JSON")["metadata"]["resourceVersion"],
            "7"
        );
        assert_eq!(splice_resource_version(br#"{"kind":"X"}"#, 1), None);
        assert_eq!(splice_resource_version(br#"[1]"#, 1), None);
        assert_eq!(
            splice_resource_version(br#"{"metadata":{"resourceVersion":"3"}}"#, 1),
            None
        );
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn decode_reports_unknown_fields_by_path() {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
            "spec": {"ports": [{"port": 80, "bogus": 1}], "colour": "red"}});
        let d = decode("Service", svc).expect("decodes");
        assert_eq!(
            d.unknown_fields,
            vec!["spec.ports[0].bogus".to_string(), "spec.colour".to_string()]
        );
        assert!(d.object.pointer("/spec/colour").is_none());
    }

    #[test]
    fn decode_names_the_wrongly_typed_field() {
        let svc = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "a"},
            "spec": {"ports": [{"port": "eighty"}]}});
        let err = decode("Service", svc).err().expect("fails");
        assert!(err.starts_with("spec.ports[0].port: invalid type"), "{err}");
    }
}
