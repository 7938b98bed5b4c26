//! JSON merge patch (RFC 7386, `application/merge-patch+json`): the patch is an object shaped
//! like the document; its members replace the document's, objects merge recursively, `null`
//! removes a member, and anything that is not an object replaces the target whole (so lists are
//! always replaced).

use serde_json::{Map, Value};

use super::PatchError;

/// Applies a JSON merge patch (RFC 7386 section 2, `MergePatch(Target, Patch)`).
///
/// RFC 7386 lets a non-object patch replace the whole document; kube-apiserver instead rejects a
/// patch body that is not a JSON object with 400 BadRequest, so the API server should call
/// [`check_merge_patch`] first.
pub fn merge_patch(doc: &Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut target = match doc {
        Value::Object(m) => m.clone(),
        _ => Map::new(),
    };
    for (key, value) in p {
        if value.is_null() {
            target.shift_remove(key);
        } else {
            let merged = merge_patch(target.get(key).unwrap_or(&Value::Null), value);
            // `insert` keeps an existing key in place, so merged objects keep their key order.
            target.insert(key.clone(), merged);
        }
    }
    Value::Object(target)
}

/// Rejects a merge patch body that is not a JSON object, as kube-apiserver does (400).
pub fn check_merge_patch(patch: &Value) -> Result<(), PatchError> {
    if patch.is_object() {
        Ok(())
    } else {
        Err(PatchError::InvalidPatch {
            message: "merge patch must be a JSON object".to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_rfc_7386_appendix_examples_all_hold() {
        // RFC 7386 Appendix A: (original, patch, result).
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (
                json!({"a": "b", "b": "c"}),
                json!({"a": null}),
                json!({"b": "c"}),
            ),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (
                json!({"a": [{"b": "c"}]}),
                json!({"a": [1]}),
                json!({"a": [1]}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (json!({"a": "foo"}), json!(null), json!(null)),
            (json!({"a": "foo"}), json!("bar"), json!("bar")),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!([1, 2]),
                json!({"a": "b", "c": null}),
                json!({"a": "b"}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ];
        for (original, patch, expected) in cases {
            assert_eq!(
                merge_patch(&original, &patch),
                expected,
                "patch {patch} on {original}"
            );
        }
    }

    #[test]
    fn the_rfc_7386_section_3_example_updates_a_document() {
        let original = json!({
            "title": "Goodbye!",
            "author": {"givenName": "John", "familyName": "Doe"},
            "tags": ["example", "sample"],
            "content": "This will be unchanged"
        });
        let patch = json!({
            "title": "Hello!",
            "phoneNumber": "+01-123-456-7890",
            "author": {"familyName": null},
            "tags": ["example"]
        });
        let expected = json!({
            "title": "Hello!",
            "author": {"givenName": "John"},
            "tags": ["example"],
            "content": "This will be unchanged",
            "phoneNumber": "+01-123-456-7890"
        });
        assert_eq!(merge_patch(&original, &patch), expected);
    }

    #[test]
    fn merging_keeps_the_key_order_of_the_document() {
        let doc = json!({"metadata": {"name": "a", "labels": {"x": "1"}}, "spec": {}});
        let out = merge_patch(&doc, &json!({"metadata": {"labels": {"y": "2"}}}));
        assert_eq!(
            out.to_string(),
            r#"{"metadata":{"name":"a","labels":{"x":"1","y":"2"}},"spec":{}}"#
        );
    }

    #[test]
    fn a_non_object_patch_is_rejected_like_kube_apiserver_does() {
        assert!(check_merge_patch(&json!({"a": 1})).is_ok());
        assert_eq!(
            check_merge_patch(&json!([1])).map_err(|e| e.code()),
            Err(400)
        );
    }
}
