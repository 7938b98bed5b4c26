//! Request and response bodies: JSON, YAML and Kubernetes protobuf in, JSON or YAML out, chosen
//! by `Content-Type` and `Accept` as kube-apiserver negotiates them. Decoding never panics:
//! malformed input becomes a 400 that says where it went wrong.

use serde_json::Value;
use switchyard_api::status::StatusError;

/// The largest request body accepted (kube-apiserver caps writes at 3 MiB as well).
pub const MAX_BODY_BYTES: usize = 3 * 1024 * 1024;

/// The largest nesting depth accepted in a body, far beyond any real object, so that a hostile
/// body cannot exhaust the stack in later recursive passes.
const MAX_DEPTH: usize = 100;

fn depth(v: &Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 1usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            Value::Object(o) => stack.extend(o.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    max
}

fn check_depth(v: Value) -> Result<Value, StatusError> {
    if depth(&v) > MAX_DEPTH {
        return Err(StatusError::bad_request(format!(
            "object nesting is deeper than {MAX_DEPTH} levels"
        )));
    }
    Ok(v)
}

/// The YAML parser (libyaml) scans in time quadratic in the nesting of flow collections: a few
/// hundred KiB of `[[[[...` cost minutes of CPU before its own recursion limit (128, which also
/// counts block nesting) refuses them. Bodies with more unclosed brackets than that limit are
/// refused before parsing, in linear time (kube-apiserver's YAML library caps nesting for the same
/// reason, CVE-2019-11253).
const MAX_YAML_FLOW_DEPTH: usize = 128;

/// Whether some prefix of `body` opens more than `max` brackets it has not closed. This counts
/// brackets without lexing YAML, so brackets in strings and comments count too: it refuses only
/// bodies that are absurd either way, but a body crafted to hide its nesting (closing brackets in
/// comments) still reaches the parser.
fn unclosed_brackets_exceed(body: &[u8], max: usize) -> bool {
    // Errs on the side of refusing: an opener counts wherever it is (outside comments), a closer
    // only where it really closes a flow collection, i.e. not inside a comment or a quoted
    // scalar. (Block scalars cannot occur inside flow collections, so a closer in one can only
    // lower a depth that is already 0.)
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut comment = false;
    let mut prev = b'\n';
    let mut i = 0;
    while i < body.len() {
        let b = body[i];
        if comment {
            comment = b != b'\n';
        } else if let Some(q) = quote {
            match b {
                b'\\' if q == b'"' => i += 1,
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                _ if b == q => quote = None,
                _ => {}
            }
        } else {
            match b {
                b'#' if prev.is_ascii_whitespace() => comment = true,
                b'\'' | b'"'
                    if matches!(
                        prev,
                        b' ' | b'\t' | b'\n' | b'\r' | b'[' | b'{' | b',' | b':'
                    ) =>
                {
                    quote = Some(b)
                }
                b'[' | b'{' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b']' | b'}' => depth = depth.saturating_sub(1),
                _ => {}
            }
        }
        prev = b;
        i += 1;
    }
    false
}

/// Decode a body as JSON, or as YAML if it is not JSON.
pub fn decode_yaml_or_json(body: &[u8]) -> Result<Value, StatusError> {
    // Delete options arrive here whatever their content type; protobuf clients send them as
    // protobuf, recognisable by the envelope's magic bytes (never valid YAML or JSON).
    if body.starts_with(switchyard_api::protobuf::MAGIC) {
        return decode_protobuf(body);
    }
    let trimmed = body
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .map(|i| &body[i..])
        .unwrap_or(&[]);
    if trimmed.is_empty() {
        return Err(StatusError::bad_request(
            "the request body is empty; expected an object",
        ));
    }
    if trimmed[0] == b'{' {
        return decode_json(body);
    }
    if unclosed_brackets_exceed(body, MAX_YAML_FLOW_DEPTH) {
        return Err(StatusError::bad_request(format!(
            "error converting YAML to JSON: yaml: more than {MAX_YAML_FLOW_DEPTH} unclosed '[' or '{{' (nesting is limited to {MAX_YAML_FLOW_DEPTH} levels)"
        )));
    }
    let v: Value = serde_yaml::from_slice(body).map_err(|e| {
        StatusError::bad_request(format!("error converting YAML to JSON: yaml: {e}"))
    })?;
    if !v.is_object() {
        return Err(StatusError::bad_request(
            "the request body must be an object",
        ));
    }
    check_depth(v)
}

/// Decode a JSON body; errors name line and column.
pub fn decode_json(body: &[u8]) -> Result<Value, StatusError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| {
        StatusError::bad_request(format!(
            "error decoding request body: json parse error at line {} column {}: {e}",
            e.line(),
            e.column()
        ))
    })?;
    if !v.is_object() {
        return Err(StatusError::bad_request(
            "the request body must be a JSON object",
        ));
    }
    check_depth(v)
}

/// Decode a Kubernetes protobuf body (`application/vnd.kubernetes.protobuf`, as kubectl sends
/// typed creates) into the object's JSON form.
pub fn decode_protobuf(body: &[u8]) -> Result<Value, StatusError> {
    let v = switchyard_api::protobuf::decode(body).map_err(|e| {
        StatusError::bad_request(format!("error decoding protobuf request body: {e}"))
    })?;
    check_depth(v)
}

/// Decode a body by its content type (create and update; patches are decoded by type).
pub fn decode_body(content_type: &str, body: &[u8]) -> Result<Value, StatusError> {
    let ct = content_type.split(';').next().unwrap_or("").trim();
    match ct {
        "" | "application/json" | "*/*" => decode_json(body),
        "application/yaml" | "application/x-yaml" | "text/yaml" => decode_yaml_or_json(body),
        "application/vnd.kubernetes.protobuf" => decode_protobuf(body),
        other => Err(StatusError::unsupported_media_type(other)),
    }
}

/// How the client wants the response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Json,
    Yaml,
    /// `meta.k8s.io/v1 Table` (for `kubectl get`).
    Table,
}

/// Pick the response format from an `Accept` header, in the client's order of preference.
pub fn negotiate(accept: &str) -> Result<Format, StatusError> {
    if accept.trim().is_empty() {
        return Ok(Format::Json);
    }
    for part in accept.split(',') {
        let mut params = part.split(';').map(str::trim);
        let media = params.next().unwrap_or("");
        let rest: Vec<&str> = params.collect();
        let as_table = rest.iter().any(|p| p.replace(' ', "") == "as=Table");
        match media {
            "application/json" if as_table => return Ok(Format::Table),
            "application/json" | "*/*" | "application/*"
                if !rest.iter().any(|p| p.starts_with("as=")) =>
            {
                return Ok(Format::Json)
            }
            "application/yaml" => return Ok(Format::Yaml),
            _ => {}
        }
    }
    Err(StatusError::not_acceptable(
        "only the following media types are accepted: application/json, application/yaml",
    ))
}

/// Encode a response body.
pub fn encode(format: Format, v: &Value) -> (Vec<u8>, &'static str) {
    match format {
        Format::Yaml => match serde_yaml::to_string(v) {
            Ok(s) => (s.into_bytes(), "application/yaml"),
            Err(_) => (
                serde_json::to_vec(v).unwrap_or_default(),
                "application/json",
            ),
        },
        _ => (
            serde_json::to_vec(v).unwrap_or_default(),
            "application/json",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_is_a_bad_request_that_says_where() {
        let e = decode_json(b"{\"a\": 1,,}").expect_err("fails");
        assert_eq!(e.code, 400);
        assert!(e.message.contains("line 1 column"), "{}", e.message);
    }

    #[test]
    fn yaml_bodies_decode_and_non_objects_are_refused() {
        assert_eq!(decode_yaml_or_json(b"a: 1\n").expect("yaml")["a"], 1);
        assert_eq!(
            decode_yaml_or_json(b"- 1\n").err().map(|e| e.code),
            Some(400)
        );
        assert_eq!(
            decode_yaml_or_json(b"a: [1\n").err().map(|e| e.code),
            Some(400)
        );
    }

    #[test]
    fn deeply_nested_yaml_is_refused_before_parsing() {
        let deep = format!("a: {}1{}\n", "[".repeat(200_000), "]".repeat(200_000));
        let e = decode_yaml_or_json(deep.as_bytes()).expect_err("refused");
        assert_eq!(e.code, 400);
        assert!(e.message.contains("nesting is limited"), "{}", e.message);
        let fine = format!("a: {}1{}\nb: \"]]]]\"\n", "[".repeat(20), "]".repeat(20));
        assert!(decode_yaml_or_json(fine.as_bytes()).is_ok());
    }

    #[test]
    fn absurdly_deep_bodies_are_refused() {
        let deep = format!(
            "{}{}",
            "{\"a\":".repeat(120),
            "1".to_string() + &"}".repeat(120)
        );
        // serde_json's own recursion limit (128) or ours (100) refuses it; either way a 400.
        assert_eq!(
            decode_json(deep.as_bytes()).err().map(|e| e.code),
            Some(400)
        );
    }

    /// `kubectl create namespace team` as kubectl v1.32 sends it.
    const NAMESPACE_PB: &[u8] =
        b"k8s\x00\x0a\x0f\x0a\x02v1\x12\x09Namespace\x12\x1c\x0a\x14\x0a\x04team\
        \x12\x00\x1a\x00\x22\x00*\x002\x008\x00B\x00\x12\x00\x1a\x02\x0a\x00\x1a\x00\x22\x00";

    #[test]
    fn protobuf_bodies_decode_to_the_json_kubectl_would_have_sent() {
        let v = decode_body("application/vnd.kubernetes.protobuf", NAMESPACE_PB).expect("decodes");
        assert_eq!(
            v,
            serde_json::json!({
                "kind": "Namespace",
                "apiVersion": "v1",
                "metadata": {"name": "team", "creationTimestamp": null},
                "spec": {},
                "status": {},
            })
        );
    }

    #[test]
    fn malformed_protobuf_is_a_bad_request_that_says_what_was_wrong() {
        let e = decode_body("application/vnd.kubernetes.protobuf", &NAMESPACE_PB[..30])
            .expect_err("a truncated body fails");
        assert_eq!(e.code, 400);
        assert!(e.message.contains("protobuf"), "{}", e.message);
        let e = decode_body("application/vnd.kubernetes.protobuf", b"{}")
            .expect_err("JSON is no protobuf");
        assert_eq!(e.code, 400);
        assert!(e.message.contains("magic"), "{}", e.message);
    }

    #[test]
    fn protobuf_delete_options_are_recognised_without_a_content_type() {
        // DeleteOptions{gracePeriodSeconds: 0} in an envelope, as a protobuf client sends it.
        let body = b"k8s\x00\x0a\x13\x0a\x02v1\x12\x0dDeleteOptions\x12\x02\x08\x00";
        let v = decode_yaml_or_json(body).expect("decodes");
        assert_eq!(v["gracePeriodSeconds"], 0);
    }

    #[test]
    fn kubectl_table_accept_header_selects_a_table() {
        let kubectl = "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json";
        assert_eq!(negotiate(kubectl).expect("ok"), Format::Table);
        assert_eq!(negotiate("application/yaml").expect("ok"), Format::Yaml);
        assert_eq!(negotiate("").expect("ok"), Format::Json);
        assert_eq!(
            negotiate("application/vnd.kubernetes.protobuf,application/json").expect("ok"),
            Format::Json
        );
        assert_eq!(
            negotiate("application/vnd.kubernetes.protobuf")
                .err()
                .map(|e| e.code),
            Some(406)
        );
    }
}
