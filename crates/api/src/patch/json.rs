//! JSON patch (RFC 6902, `application/json-patch+json`): a list of operations (`add`, `remove`,
//! `replace`, `move`, `copy`, `test`) addressed by JSON pointers (RFC 6901). The operations apply
//! in order to a copy of the document, so a failing operation leaves the original untouched.
//!
//! kube-apiserver (via github.com/evanphx/json-patch) rejects a body that is not a list of
//! operation objects with 400, more than 10000 operations with 413, and any operation that fails
//! to apply with 422.

use serde_json::Value;

use super::fieldpath::json_eq;
use super::PatchError;

/// The most operations kube-apiserver accepts in one JSON patch (`maxJSONPatchOperations`).
pub const MAX_JSON_PATCH_OPERATIONS: usize = 10_000;

/// Applies a JSON patch. On error the document is not modified (the patch works on a copy).
pub fn json_patch(doc: &Value, patch: &Value) -> Result<Value, PatchError> {
    let Some(ops) = patch.as_array() else {
        return Err(PatchError::InvalidPatch {
            message: "json patch must be a JSON array of operations".to_string(),
        });
    };
    if let Some(i) = ops.iter().position(|op| !op.is_object()) {
        return Err(PatchError::InvalidPatch {
            message: format!("json patch operation {i} is not a JSON object"),
        });
    }
    if ops.len() > MAX_JSON_PATCH_OPERATIONS {
        return Err(PatchError::TooManyOperations {
            count: ops.len(),
            limit: MAX_JSON_PATCH_OPERATIONS,
        });
    }
    let mut out = doc.clone();
    for (index, op) in ops.iter().enumerate() {
        apply_op(&mut out, index, op)?;
    }
    Ok(out)
}

fn invalid(index: usize, message: impl std::fmt::Display) -> PatchError {
    PatchError::Unprocessable {
        message: format!("json patch operation {index}: {message}"),
    }
}

fn member<'a>(op: &'a Value, index: usize, name: &str) -> Result<&'a Value, PatchError> {
    op.get(name)
        .ok_or_else(|| invalid(index, format!("missing {name:?}")))
}

fn pointer_member(op: &Value, index: usize, name: &str) -> Result<Vec<String>, PatchError> {
    let p = member(op, index, name)?
        .as_str()
        .ok_or_else(|| invalid(index, format!("{name:?} must be a string")))?;
    parse_pointer(p).map_err(|e| invalid(index, e))
}

fn apply_op(doc: &mut Value, index: usize, op: &Value) -> Result<(), PatchError> {
    let name = member(op, index, "op")?
        .as_str()
        .ok_or_else(|| invalid(index, "\"op\" must be a string"))?;
    let path_text = op
        .get("path")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let not_found = |path: &str| PatchError::PathNotFound {
        index,
        op: name.to_string(),
        path: path.to_string(),
    };
    match name {
        "add" => {
            let path = pointer_member(op, index, "path")?;
            let value = member(op, index, "value")?.clone();
            add(doc, &path, value).map_err(|e| e.into_error(index, name, &path_text))
        }
        "remove" => {
            let path = pointer_member(op, index, "path")?;
            remove(doc, &path)
                .map(drop)
                .map_err(|e| e.into_error(index, name, &path_text))
        }
        "replace" => {
            let path = pointer_member(op, index, "path")?;
            let value = member(op, index, "value")?.clone();
            let target = get_mut(doc, &path).ok_or_else(|| not_found(&path_text))?;
            *target = value;
            Ok(())
        }
        "move" => {
            let from = pointer_member(op, index, "from")?;
            let path = pointer_member(op, index, "path")?;
            let from_text = op.get("from").and_then(Value::as_str).unwrap_or_default();
            // RFC 6902 section 4.4: a location cannot be moved into one of its children.
            if path.len() > from.len() && path.starts_with(&from) {
                return Err(invalid(
                    index,
                    format!("cannot move {from_text:?} into its child {path_text:?}"),
                ));
            }
            if from == path {
                return get(doc, &from)
                    .map(drop)
                    .ok_or_else(|| not_found(from_text));
            }
            let value = remove(doc, &from).map_err(|e| e.into_error(index, name, from_text))?;
            add(doc, &path, value).map_err(|e| e.into_error(index, name, &path_text))
        }
        "copy" => {
            let from = pointer_member(op, index, "from")?;
            let path = pointer_member(op, index, "path")?;
            let from_text = op.get("from").and_then(Value::as_str).unwrap_or_default();
            let value = get(doc, &from)
                .cloned()
                .ok_or_else(|| not_found(from_text))?;
            add(doc, &path, value).map_err(|e| e.into_error(index, name, &path_text))
        }
        "test" => {
            let path = pointer_member(op, index, "path")?;
            let value = member(op, index, "value")?;
            match get(doc, &path) {
                Some(actual) if json_eq(actual, value) => Ok(()),
                Some(_) => Err(PatchError::TestFailed {
                    index,
                    path: path_text,
                }),
                None => Err(not_found(&path_text)),
            }
        }
        other => Err(invalid(index, format!("unexpected operation {other:?}"))),
    }
}

/// Parses a JSON pointer (RFC 6901) into its reference tokens.
fn parse_pointer(p: &str) -> Result<Vec<String>, String> {
    if p.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = p.strip_prefix('/') else {
        return Err(format!("JSON pointer {p:?} must start with \"/\""));
    };
    rest.split('/')
        .map(|token| {
            let mut out = String::with_capacity(token.len());
            let mut chars = token.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    out.push(c);
                    continue;
                }
                // `~1` is "/", `~0` is "~"; decoding them one at a time makes "~01" come out as
                // "~1", as RFC 6901 section 4 requires.
                match chars.next() {
                    Some('0') => out.push('~'),
                    Some('1') => out.push('/'),
                    _ => return Err(format!("JSON pointer {p:?} has an invalid escape")),
                }
            }
            Ok(out)
        })
        .collect()
}

/// An array index token: decimal digits without leading zeros (RFC 6901 section 4).
fn array_index(token: &str) -> Option<usize> {
    if token.is_empty()
        || !token.bytes().all(|b| b.is_ascii_digit())
        || (token.len() > 1 && token.starts_with('0'))
    {
        return None;
    }
    token.parse().ok()
}

fn get<'a>(doc: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, token| match v {
        Value::Object(m) => m.get(token),
        Value::Array(items) => items.get(array_index(token)?),
        _ => None,
    })
}

fn get_mut<'a>(doc: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(doc, |v, token| match v {
        Value::Object(m) => m.get_mut(token),
        Value::Array(items) => items.get_mut(array_index(token)?),
        _ => None,
    })
}

/// Why an `add` or `remove` failed, before it is tied to an operation.
enum OpFailure {
    NotFound,
    Invalid(String),
}

impl OpFailure {
    fn into_error(self, index: usize, op: &str, path: &str) -> PatchError {
        match self {
            OpFailure::NotFound => PatchError::PathNotFound {
                index,
                op: op.to_string(),
                path: path.to_string(),
            },
            OpFailure::Invalid(message) => invalid(index, format!("{op} {path:?}: {message}")),
        }
    }
}

fn add(doc: &mut Value, path: &[String], value: Value) -> Result<(), OpFailure> {
    let Some((last, parent_path)) = path.split_last() else {
        *doc = value;
        return Ok(());
    };
    match get_mut(doc, parent_path).ok_or(OpFailure::NotFound)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(items) => {
            if last == "-" {
                items.push(value);
                return Ok(());
            }
            let i = array_index(last)
                .ok_or_else(|| OpFailure::Invalid(format!("invalid array index {last:?}")))?;
            if i > items.len() {
                return Err(OpFailure::Invalid(format!(
                    "index {i} is out of bounds for a list of {}",
                    items.len()
                )));
            }
            items.insert(i, value);
            Ok(())
        }
        _ => Err(OpFailure::NotFound),
    }
}

fn remove(doc: &mut Value, path: &[String]) -> Result<Value, OpFailure> {
    let Some((last, parent_path)) = path.split_last() else {
        return Err(OpFailure::Invalid(
            "cannot remove the whole document".to_string(),
        ));
    };
    match get_mut(doc, parent_path).ok_or(OpFailure::NotFound)? {
        Value::Object(m) => m.shift_remove(last).ok_or(OpFailure::NotFound),
        Value::Array(items) => match array_index(last) {
            Some(i) if i < items.len() => Ok(items.remove(i)),
            _ => Err(OpFailure::NotFound),
        },
        _ => Err(OpFailure::NotFound),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ok(doc: Value, patch: Value) -> Value {
        match json_patch(&doc, &patch) {
            Ok(v) => v,
            Err(e) => panic!("patch {patch} failed: {e}"),
        }
    }

    #[test]
    fn the_rfc_6902_appendix_examples_all_hold() {
        // RFC 6902 Appendix A.1 to A.16, the successful ones: (document, patch, result).
        let cases = [
            // A.1 adding an object member
            (
                json!({"foo": "bar"}),
                json!([{"op": "add", "path": "/baz", "value": "qux"}]),
                json!({"foo": "bar", "baz": "qux"}),
            ),
            // A.2 adding an array element
            (
                json!({"foo": ["bar", "baz"]}),
                json!([{"op": "add", "path": "/foo/1", "value": "qux"}]),
                json!({"foo": ["bar", "qux", "baz"]}),
            ),
            // A.3 removing an object member
            (
                json!({"baz": "qux", "foo": "bar"}),
                json!([{"op": "remove", "path": "/baz"}]),
                json!({"foo": "bar"}),
            ),
            // A.4 removing an array element
            (
                json!({"foo": ["bar", "qux", "baz"]}),
                json!([{"op": "remove", "path": "/foo/1"}]),
                json!({"foo": ["bar", "baz"]}),
            ),
            // A.5 replacing a value
            (
                json!({"baz": "qux", "foo": "bar"}),
                json!([{"op": "replace", "path": "/baz", "value": "boo"}]),
                json!({"baz": "boo", "foo": "bar"}),
            ),
            // A.6 moving a value
            (
                json!({"foo": {"bar": "baz", "waldo": "fred"}, "qux": {"corge": "grault"}}),
                json!([{"op": "move", "from": "/foo/waldo", "path": "/qux/thud"}]),
                json!({"foo": {"bar": "baz"}, "qux": {"corge": "grault", "thud": "fred"}}),
            ),
            // A.7 moving an array element
            (
                json!({"foo": ["all", "grass", "cows", "eat"]}),
                json!([{"op": "move", "from": "/foo/1", "path": "/foo/3"}]),
                json!({"foo": ["all", "cows", "eat", "grass"]}),
            ),
            // A.8 testing a value: success
            (
                json!({"baz": "qux", "foo": ["a", 2, "c"]}),
                json!([{"op": "test", "path": "/baz", "value": "qux"}, {"op": "test", "path": "/foo/1", "value": 2}]),
                json!({"baz": "qux", "foo": ["a", 2, "c"]}),
            ),
            // A.10 adding a nested member object
            (
                json!({"foo": "bar"}),
                json!([{"op": "add", "path": "/child", "value": {"grandchild": {}}}]),
                json!({"foo": "bar", "child": {"grandchild": {}}}),
            ),
            // A.11 ignoring unrecognized elements
            (
                json!({"foo": "bar"}),
                json!([{"op": "add", "path": "/baz", "value": "qux", "xyz": 123}]),
                json!({"foo": "bar", "baz": "qux"}),
            ),
            // A.14 ~ escape ordering
            (
                json!({"/": 9, "~1": 10}),
                json!([{"op": "test", "path": "/~01", "value": 10}]),
                json!({"/": 9, "~1": 10}),
            ),
            // A.16 adding an array value
            (
                json!({"foo": ["bar"]}),
                json!([{"op": "add", "path": "/foo/-", "value": ["abc", "def"]}]),
                json!({"foo": ["bar", ["abc", "def"]]}),
            ),
        ];
        for (doc, patch, expected) in cases {
            assert_eq!(ok(doc, patch.clone()), expected, "patch {patch}");
        }
    }

    #[test]
    fn the_rfc_6902_appendix_failures_fail() {
        // A.9 testing a value: error
        let e = json_patch(
            &json!({"baz": "qux"}),
            &json!([{"op": "test", "path": "/baz", "value": "bar"}]),
        );
        assert!(
            matches!(e, Err(PatchError::TestFailed { index: 0, .. })),
            "{e:?}"
        );
        // A.12 adding to a nonexistent target
        let e = json_patch(
            &json!({"foo": "bar"}),
            &json!([{"op": "add", "path": "/baz/bat", "value": "qux"}]),
        );
        assert!(matches!(e, Err(PatchError::PathNotFound { .. })), "{e:?}");
        // A.15 comparing strings and numbers
        let e = json_patch(
            &json!({"/": 9, "~1": 10}),
            &json!([{"op": "test", "path": "/~01", "value": "10"}]),
        );
        assert!(matches!(e, Err(PatchError::TestFailed { .. })), "{e:?}");
    }

    #[test]
    fn pointers_unescape_tilde_one_to_slash_and_tilde_zero_to_tilde() {
        let doc = json!({"metadata": {"annotations": {"example.com/a~b": "x"}}});
        let out = ok(
            doc,
            json!([{"op": "replace", "path": "/metadata/annotations/example.com~1a~0b", "value": "y"}]),
        );
        assert_eq!(out["metadata"]["annotations"]["example.com/a~b"], "y");
    }

    #[test]
    fn a_failing_operation_leaves_the_document_untouched() {
        let doc = json!({"spec": {"replicas": 1}});
        let patch = json!([
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "test", "path": "/spec/replicas", "value": 1}
        ]);
        let e = json_patch(&doc, &patch);
        assert!(matches!(e, Err(PatchError::TestFailed { index: 1, .. })));
        assert_eq!(doc, json!({"spec": {"replicas": 1}}));
    }

    #[test]
    fn removing_or_replacing_a_missing_path_is_a_422() {
        let doc = json!({"spec": {}});
        for op in ["remove", "replace"] {
            let e = json_patch(
                &doc,
                &json!([{"op": op, "path": "/spec/replicas", "value": 1}]),
            );
            assert_eq!(e.map_err(|e| e.code()), Err(422), "{op}");
        }
    }

    #[test]
    fn a_body_that_is_not_a_list_of_operations_is_a_400() {
        assert_eq!(
            json_patch(&json!({}), &json!({"op": "add"})).map_err(|e| e.code()),
            Err(400)
        );
        assert_eq!(
            json_patch(&json!({}), &json!([1])).map_err(|e| e.code()),
            Err(400)
        );
        let e = json_patch(&json!({}), &json!([{"op": "frobnicate", "path": "/a"}]));
        assert_eq!(e.map_err(|e| e.code()), Err(422));
    }

    #[test]
    fn array_indexes_must_be_in_bounds_and_without_leading_zeros() {
        let doc = json!({"a": [1, 2]});
        assert!(json_patch(&doc, &json!([{"op": "add", "path": "/a/3", "value": 0}])).is_err());
        assert!(json_patch(&doc, &json!([{"op": "add", "path": "/a/01", "value": 0}])).is_err());
        assert_eq!(
            ok(doc, json!([{"op": "add", "path": "/a/2", "value": 3}])),
            json!({"a": [1, 2, 3]})
        );
    }

    #[test]
    fn copy_duplicates_and_root_replace_swaps_the_document() {
        let out = ok(
            json!({"a": {"b": 1}}),
            json!([{"op": "copy", "from": "/a", "path": "/c"}]),
        );
        assert_eq!(out, json!({"a": {"b": 1}, "c": {"b": 1}}));
        let out = ok(
            json!({"a": 1}),
            json!([{"op": "replace", "path": "", "value": {"b": 2}}]),
        );
        assert_eq!(out, json!({"b": 2}));
    }

    #[test]
    fn numbers_test_equal_by_value() {
        ok(
            json!({"a": 1}),
            json!([{"op": "test", "path": "/a", "value": 1.0}]),
        );
    }

    #[test]
    fn moving_a_member_into_its_own_child_is_refused() {
        let e = json_patch(
            &json!({"a": {"b": {}}}),
            &json!([{"op": "move", "from": "/a", "path": "/a/b/c"}]),
        );
        assert_eq!(e.map_err(|e| e.code()), Err(422));
    }
}
