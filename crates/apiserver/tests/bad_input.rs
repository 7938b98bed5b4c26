//! Bad input over the wire: requests with exact bytes (malformed JSON and YAML, wrong shapes and
//! types, unknown kinds and fields, invalid specs, bad query parameters, bad patches, oversized
//! and absurdly nested bodies, random garbage) must each get the `metav1.Status` kube-apiserver
//! would answer (code, reason, a message that says where and what) and must leave the store
//! exactly as it was: each rejection is checked to leave the store revision and every service's
//! resourceVersion where they were. A fuzz test sends thousands of mutated and random bodies
//! (creates, updates, patches, deletes) and requires no 5xx, a server that still answers
//! `/healthz`, and allocation records that match the services stored.

use std::time::Duration;

use futures::StreamExt;
use http::{HeaderMap, Method, Request};
use http_body_util::BodyExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use switchyard_testkit::InProcessServer;

const SERVICES: &str = "/api/v1/namespaces/default/services";

/// One raw answer.
struct Answer {
    /// The request, for failure messages.
    request: String,
    code: u16,
    headers: HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", self.text))
    }

    /// Assert this is a `Status` failure with `code` and `reason`; returns the Status.
    fn status(&self, code: u16, reason: &str) -> Value {
        let s = self.json();
        assert_eq!(
            (
                self.code,
                s["kind"].as_str(),
                s["code"].as_u64(),
                s["reason"].as_str(),
                s["status"].as_str()
            ),
            (
                code,
                Some("Status"),
                Some(code as u64),
                Some(reason),
                Some("Failure")
            ),
            "unexpected answer to {}: {}",
            self.request,
            self.text
        );
        s
    }

    /// Assert a Status with `code`/`reason` whose message contains every one of `needles`.
    fn status_saying(&self, code: u16, reason: &str, needles: &[&str]) -> Value {
        let s = self.status(code, reason);
        let message = s["message"].as_str().unwrap_or_default();
        for n in needles {
            assert!(
                message.contains(n),
                "message {message:?} to {} should mention {n:?}",
                self.request
            );
        }
        s
    }
}

/// A server, an admin client, and raw request helpers.
struct Harness {
    srv: InProcessServer,
    client: kube::Client,
}

impl Harness {
    async fn start() -> Self {
        let srv = InProcessServer::start().await.expect("server starts");
        let client = srv.client().await.expect("client");
        let h = Self { srv, client };
        // One object to conflict with, update and patch.
        let r = h
            .post(
                SERVICES,
                "application/json",
                service_json("existing").to_string(),
            )
            .await;
        assert_eq!(r.code, 201, "{}", r.text);
        h
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> Answer {
        let request = format!(
            "{method} {path} ({})",
            content_type.unwrap_or("no content type")
        );
        let mut req = Request::builder().method(method).uri(path);
        if let Some(ct) = content_type {
            req = req.header(http::header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(kube::client::Body::from(body.into()))
            .expect("request");
        let resp = self.client.send(req).await.expect("the server answers");
        let code = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.into_body().collect().await.expect("body").to_bytes();
        Answer {
            request,
            code,
            headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, None, Vec::new()).await
    }

    async fn post(&self, path: &str, content_type: &str, body: impl Into<Vec<u8>>) -> Answer {
        self.send(Method::POST, path, Some(content_type), body)
            .await
    }

    async fn revision(&self) -> i64 {
        self.srv
            .server
            .store
            .current_revision()
            .await
            .expect("revision")
    }

    /// Run `f` and assert it changed nothing: the store revision is where it was (every write
    /// moves it) and the services listed are the same objects at the same resourceVersions.
    async fn unchanged<F, Fut, T>(&self, f: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = T>,
    {
        let before = (self.revision().await, self.service_versions().await);
        let out = f().await;
        let after = (self.revision().await, self.service_versions().await);
        assert_eq!(before, after, "a rejected request changed what is stored");
        out
    }

    async fn service_versions(&self) -> Vec<(String, String)> {
        let list = self.get(SERVICES).await.json();
        list["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|s| {
                let m = &s["metadata"];
                (
                    m["name"].as_str().unwrap_or_default().to_string(),
                    m["resourceVersion"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect()
    }
}

fn service_json(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "labels": {"app": "web"}},
        "spec": {"selector": {"app": "web"}, "ports": [{"name": "http", "port": 80}]},
    })
}

/// `service_json("probe")` with `edit` applied.
fn service_with(edit: impl FnOnce(&mut Value)) -> String {
    let mut v = service_json("probe");
    edit(&mut v);
    v.to_string()
}

#[tokio::test]
async fn malformed_json_is_400_naming_line_and_column() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        let body = "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Service\",,\n}";
        let s = h
            .post(SERVICES, "application/json", body)
            .await
            .status_saying(400, "BadRequest", &["line 3", "column"]);
        assert!(
            s["message"].as_str().unwrap_or_default().contains("json"),
            "{s}"
        );
        h.post(SERVICES, "application/json", "{\"apiVersion\": \"v1\"")
            .await
            .status(400, "BadRequest");
        h.post(SERVICES, "application/json", "")
            .await
            .status(400, "BadRequest");
        h.post(SERVICES, "application/json", vec![0xff, 0xfe, b'{', b'}'])
            .await
            .status(400, "BadRequest");
    })
    .await;
}

#[tokio::test]
async fn malformed_yaml_is_400() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        let body = "apiVersion: v1\nkind: Service\nmetadata:\n  name: [unclosed\n";
        h.post(SERVICES, "application/yaml", body)
            .await
            .status_saying(400, "BadRequest", &["yaml"]);
        let tabs = "apiVersion: v1\nkind: Service\nmetadata:\n\tname: x\n";
        h.post(SERVICES, "application/yaml", tabs)
            .await
            .status(400, "BadRequest");
        // Well-formed YAML that is not an object.
        h.post(SERVICES, "application/yaml", "- a\n- b\n")
            .await
            .status(400, "BadRequest");
        h.post(SERVICES, "application/yaml", "just a string\n")
            .await
            .status(400, "BadRequest");
    })
    .await;
}

#[tokio::test]
async fn a_body_that_is_a_json_array_string_or_number_is_400() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        for body in [
            "[]",
            "[{\"kind\": \"Service\"}]",
            "\"Service\"",
            "42",
            "null",
            "true",
        ] {
            let a = h.post(SERVICES, "application/json", body).await;
            a.status(400, "BadRequest");
        }
    })
    .await;
}

#[tokio::test]
async fn an_unknown_kind_or_a_mismatched_api_version_in_the_body_is_400() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        let widget = service_with(|v| v["kind"] = json!("Widget"));
        h.post(SERVICES, "application/json", widget)
            .await
            .status_saying(400, "BadRequest", &["Widget", "Service"]);
        let pod = service_with(|v| v["kind"] = json!("Pod"));
        h.post(SERVICES, "application/json", pod)
            .await
            .status_saying(400, "BadRequest", &["Pod"]);
        let apps = service_with(|v| v["apiVersion"] = json!("apps/v1"));
        h.post(SERVICES, "application/json", apps)
            .await
            .status_saying(400, "BadRequest", &["apps/v1", "v1"]);
        let v2 = service_with(|v| v["apiVersion"] = json!("v2"));
        h.post(SERVICES, "application/json", v2)
            .await
            .status(400, "BadRequest");
        let deployment_body = service_with(|v| {
            v["apiVersion"] = json!("apps/v1");
            v["kind"] = json!("Deployment");
        });
        h.post(SERVICES, "application/json", deployment_body)
            .await
            .status(400, "BadRequest");
    })
    .await;
}

#[tokio::test]
async fn an_unknown_resource_path_is_404() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        h.get("/api/v1/namespaces/default/widgets")
            .await
            .status(404, "NotFound");
        h.post(
            "/api/v1/namespaces/default/widgets",
            "application/json",
            service_json("w").to_string(),
        )
        .await
        .status(404, "NotFound");
        h.get("/apis/example.com/v1/widgets")
            .await
            .status(404, "NotFound");
        h.get("/api/v3/services").await.status(404, "NotFound");
        h.get("/apis/apps/v1/namespaces/default/deployments/d/bogus-subresource")
            .await
            .status(404, "NotFound");
        h.get("/not-an-api").await.status(404, "NotFound");
    })
    .await;
}

#[tokio::test]
async fn a_body_over_3_mib_is_413() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        let big = service_with(|v| {
            v["metadata"]["annotations"] = json!({"big": "x".repeat(3 * 1024 * 1024 + 1)})
        });
        let s = h
            .post(SERVICES, "application/json", big)
            .await
            .status(413, "RequestEntityTooLarge");
        assert!(
            s["message"]
                .as_str()
                .unwrap_or_default()
                .contains("limit is 3145728"),
            "{s}"
        );
    })
    .await;
    assert_eq!(h.get("/healthz").await.text, "ok");
}

#[tokio::test]
async fn deeply_nested_json_and_yaml_are_400_without_a_crash() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        for depth in [150, 10_000, 200_000] {
            let nested = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
            let body = format!("{{\"apiVersion\":\"v1\",\"kind\":\"Service\",\"metadata\":{{\"name\":\"deep\"}},\"spec\":{nested}}}");
            h.post(SERVICES, "application/json", body).await.status(400, "BadRequest");
            let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
            h.post(SERVICES, "application/json", objects).await.status(400, "BadRequest");
            let yaml = format!("apiVersion: v1\nkind: Service\nspec: {nested}\n");
            h.post(SERVICES, "application/yaml", yaml).await.status(400, "BadRequest");
        }
        // Deep nesting in a patch, too.
        let patch = format!("{{\"metadata\":{{\"annotations\":{}1{}}}}}", "[".repeat(10_000), "]".repeat(10_000));
        let a = h.send(Method::PATCH, &format!("{SERVICES}/existing"), Some("application/merge-patch+json"), patch).await;
        a.status(400, "BadRequest");
    })
    .await;
    assert_eq!(h.get("/healthz").await.text, "ok");
}

#[tokio::test]
async fn yaml_that_hides_its_nesting_behind_comments_is_refused_quickly() {
    let h = Harness::start().await;
    let body = format!(
        "apiVersion: v1\nkind: Service\nspec: {}1{}\n",
        "[ #]\n".repeat(100_000),
        "]".repeat(100_000)
    );
    let a = tokio::time::timeout(
        Duration::from_secs(5),
        h.post(SERVICES, "application/yaml", body),
    )
    .await
    .expect("answered within 5 seconds");
    a.status(400, "BadRequest");
    // Closing brackets inside quoted scalars do not close anything either.
    let body = format!(
        "apiVersion: v1\nkind: Service\nspec: {}1{}\n",
        "[ \"]\", ".repeat(100_000),
        "]".repeat(100_000)
    );
    let a = tokio::time::timeout(
        Duration::from_secs(5),
        h.post(SERVICES, "application/yaml", body),
    )
    .await
    .expect("answered within 5 seconds");
    a.status(400, "BadRequest");
}

/// Post `body` and expect 422 Invalid with a cause on `field`.
async fn expect_invalid(h: &Harness, body: String, field: &str) -> Value {
    let s = h
        .post(SERVICES, "application/json", body)
        .await
        .status(422, "Invalid");
    let causes = s["details"]["causes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(
        causes.iter().any(|c| c["field"].as_str() == Some(field)),
        "expected a cause on {field}, got {}",
        s["details"]
    );
    assert_eq!(s["details"]["kind"], "Service", "{s}");
    let message = s["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(field),
        "the message names {field}: {message}"
    );
    s
}

#[tokio::test]
async fn invalid_service_specs_are_422_with_a_cause_per_field() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        let port = |p: Value| service_with(|v| v["spec"]["ports"][0]["port"] = p);
        expect_invalid(&h, port(json!(0)), "spec.ports[0].port").await;
        expect_invalid(&h, port(json!(70000)), "spec.ports[0].port").await;
        let dup = service_with(|v| {
            v["spec"]["ports"] = json!([{"name": "a", "port": 80}, {"name": "a", "port": 81}])
        });
        let s = expect_invalid(&h, dup, "spec.ports[1].name").await;
        assert_eq!(s["details"]["causes"][0]["reason"], "FieldValueDuplicate");
        let s = expect_invalid(
            &h,
            service_with(|v| v["metadata"]["name"] = json!("Bad_Name")),
            "metadata.name",
        )
        .await;
        assert_eq!(s["details"]["name"], "Bad_Name");
        let external = service_with(|v| {
            v["spec"] = json!({"type": "ExternalName"});
        });
        expect_invalid(&h, external, "spec.externalName").await;
        let headless_node_port = service_with(|v| {
            v["spec"]["type"] = json!("NodePort");
            v["spec"]["clusterIP"] = json!("None");
        });
        let s = expect_invalid(&h, headless_node_port, "spec.clusterIPs[0]").await;
        assert!(
            s["message"]
                .as_str()
                .unwrap_or_default()
                .contains("may not be set to 'None' for NodePort services"),
            "{s}"
        );
        let affinity = service_with(|v| {
            v["spec"]["sessionAffinity"] = json!("ClientIP");
            v["spec"]["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 0}});
        });
        expect_invalid(
            &h,
            affinity,
            "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
        )
        .await;
        let label =
            service_with(|v| v["metadata"]["labels"] = json!({"app": "not a valid value!"}));
        expect_invalid(&h, label, "metadata.labels").await;
        let protocol = service_with(|v| v["spec"]["ports"][0]["protocol"] = json!("ICMP"));
        let s = expect_invalid(&h, protocol, "spec.ports[0].protocol").await;
        assert_eq!(
            s["details"]["causes"][0]["reason"],
            "FieldValueNotSupported"
        );
        // Several errors at once: one cause each.
        let both = service_with(|v| {
            v["metadata"]["name"] = json!("Bad_Name");
            v["spec"]["ports"][0]["port"] = json!(0);
        });
        let s = h
            .post(SERVICES, "application/json", both)
            .await
            .status(422, "Invalid");
        assert!(
            s["details"]["causes"].as_array().map_or(0, Vec::len) >= 2,
            "{s}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_wrongly_typed_field_is_400_naming_the_field() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        let body = service_with(|v| v["spec"]["ports"][0]["port"] = json!("eighty"));
        h.post(SERVICES, "application/json", body)
            .await
            .status_saying(400, "BadRequest", &["spec.ports[0].port"]);
        let body = service_with(|v| v["spec"]["ports"] = json!({"port": 80}));
        h.post(SERVICES, "application/json", body)
            .await
            .status_saying(400, "BadRequest", &["spec.ports"]);
        let body = service_with(|v| v["metadata"]["labels"] = json!(["app"]));
        h.post(SERVICES, "application/json", body)
            .await
            .status_saying(400, "BadRequest", &["metadata.labels"]);
        let body = service_with(|v| v["spec"] = json!("ClusterIP"));
        h.post(SERVICES, "application/json", body)
            .await
            .status_saying(400, "BadRequest", &["spec"]);
        let body = service_with(|v| v["metadata"]["name"] = json!(7));
        h.post(SERVICES, "application/json", body)
            .await
            .status_saying(400, "BadRequest", &["metadata.name"]);
    })
    .await;
}

#[tokio::test]
async fn an_unknown_field_is_400_under_strict_validation_and_a_warning_otherwise() {
    let h = Harness::start().await;
    let body = |name: &str| {
        let mut v = service_json(name);
        v["spec"]["bogus"] = json!(true);
        v.to_string()
    };
    h.unchanged(|| async {
        h.post(
            &format!("{SERVICES}?fieldValidation=Strict"),
            "application/json",
            body("strict"),
        )
        .await
        .status_saying(
            400,
            "BadRequest",
            &["strict decoding error: unknown field \"spec.bogus\""],
        );
        h.post(
            &format!("{SERVICES}?fieldValidation=Bogus"),
            "application/json",
            body("bad-directive"),
        )
        .await
        .status_saying(400, "BadRequest", &["fieldValidation"]);
    })
    .await;

    for query in ["", "?fieldValidation=Warn"] {
        let name = if query.is_empty() {
            "warned"
        } else {
            "warned-explicitly"
        };
        let a = h
            .post(
                &format!("{SERVICES}{query}"),
                "application/json",
                body(name),
            )
            .await;
        assert_eq!(a.code, 201, "{}", a.text);
        let warnings: Vec<&str> = a
            .headers
            .get_all(http::header::WARNING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        assert_eq!(
            warnings,
            ["299 - \"unknown field \\\"spec.bogus\\\"\""],
            "Warning headers"
        );
        assert!(
            a.json()["spec"].get("bogus").is_none(),
            "the unknown field is dropped"
        );
    }
    let a = h
        .post(
            &format!("{SERVICES}?fieldValidation=Ignore"),
            "application/json",
            body("ignored"),
        )
        .await;
    assert_eq!(a.code, 201, "{}", a.text);
    assert!(a.headers.get(http::header::WARNING).is_none());
}

#[tokio::test]
async fn a_namespace_in_the_body_that_differs_from_the_url_is_400() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        let body = service_with(|v| v["metadata"]["namespace"] = json!("kube-system"));
        h.post(SERVICES, "application/json", body.clone())
            .await
            .status_saying(
                400,
                "BadRequest",
                &["namespace of the provided object does not match"],
            );
        let put = h
            .send(
                Method::PUT,
                &format!("{SERVICES}/probe"),
                Some("application/json"),
                body,
            )
            .await;
        put.status(400, "BadRequest");
    })
    .await;
}

#[tokio::test]
async fn creating_in_a_missing_namespace_is_404() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        let s = h
            .post(
                "/api/v1/namespaces/nope/services",
                "application/json",
                service_json("x").to_string(),
            )
            .await
            .status_saying(404, "NotFound", &["namespaces \"nope\" not found"]);
        assert_eq!(s["details"]["name"], "nope");
    })
    .await;
}

#[tokio::test]
async fn creating_an_existing_name_is_409_already_exists() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        let s = h
            .post(
                SERVICES,
                "application/json",
                service_json("existing").to_string(),
            )
            .await
            .status_saying(
                409,
                "AlreadyExists",
                &["services \"existing\" already exists"],
            );
        assert_eq!(
            (s["details"]["name"].as_str(), s["details"]["kind"].as_str()),
            (Some("existing"), Some("services"))
        );
    })
    .await;
}

#[tokio::test]
async fn updating_or_patching_a_missing_object_is_404() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        let put = h
            .send(
                Method::PUT,
                &format!("{SERVICES}/ghost"),
                Some("application/json"),
                service_json("ghost").to_string(),
            )
            .await;
        put.status_saying(404, "NotFound", &["services \"ghost\" not found"]);
        let patch = h
            .send(
                Method::PATCH,
                &format!("{SERVICES}/ghost"),
                Some("application/merge-patch+json"),
                "{}",
            )
            .await;
        patch.status(404, "NotFound");
        let delete = h
            .send(
                Method::DELETE,
                &format!("{SERVICES}/ghost"),
                None,
                Vec::new(),
            )
            .await;
        delete.status(404, "NotFound");
        // A name in the body that differs from the URL's is a 400, not a rename.
        let renamed = h
            .send(
                Method::PUT,
                &format!("{SERVICES}/existing"),
                Some("application/json"),
                service_json("other").to_string(),
            )
            .await;
        renamed.status(400, "BadRequest");
    })
    .await;
}

#[tokio::test]
async fn invalid_list_and_watch_parameters_are_400() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        for selector in [
            "a%20in%20(",
            "a%3D%3D%3Db",
            "!",
            "a%20notin%20b",
            "-bad%3Dv",
            "a%3Db-",
        ] {
            h.get(&format!("{SERVICES}?labelSelector={selector}"))
                .await
                .status(400, "BadRequest");
            h.get(&format!("{SERVICES}?watch=1&labelSelector={selector}"))
                .await
                .status(400, "BadRequest");
        }
        h.get(&format!("{SERVICES}?fieldSelector=spec.bogus%3D1"))
            .await
            .status_saying(400, "BadRequest", &["field label not supported"]);
        h.get(&format!("{SERVICES}?watch=1&fieldSelector=spec.bogus%3D1"))
            .await
            .status_saying(400, "BadRequest", &["field label not supported"]);
        for token in ["not-a-token", "eyJ2IjoibWV0YS5rOHMuaW8vdjEifQ", "%25%25%25"] {
            h.get(&format!("{SERVICES}?limit=1&continue={token}"))
                .await
                .status_saying(400, "BadRequest", &["continue"]);
        }
        for rv in ["abc", "-", "1.5"] {
            h.get(&format!("{SERVICES}?watch=1&resourceVersion={rv}"))
                .await
                .status_saying(400, "BadRequest", &["resource version"]);
        }
        h.get(&format!("{SERVICES}?limit=many"))
            .await
            .status(400, "BadRequest");
    })
    .await;
}

#[tokio::test]
async fn bad_patches_are_415_422_or_400_and_change_nothing() {
    let h = Harness::start().await;
    let existing = format!("{SERVICES}/existing");
    h.unchanged(|| async {
        for ct in ["text/plain", "application/xml", "application/json"] {
            h.send(Method::PATCH, &existing, Some(ct), "{}")
                .await
                .status(415, "UnsupportedMediaType");
        }
        let failing_test = json!([
            {"op": "add", "path": "/metadata/labels/x", "value": "1"},
            {"op": "test", "path": "/spec/ports/0/port", "value": 81},
        ]);
        let a = h
            .send(
                Method::PATCH,
                &existing,
                Some("application/json-patch+json"),
                failing_test.to_string(),
            )
            .await;
        assert_eq!(a.code, 422, "{}", a.text);
        assert_eq!(a.json()["kind"], "Status");
        let missing_path = json!([{"op": "remove", "path": "/spec/nothing/here"}]);
        let a = h
            .send(
                Method::PATCH,
                &existing,
                Some("application/json-patch+json"),
                missing_path.to_string(),
            )
            .await;
        assert!(a.code == 422 || a.code == 400, "{} {}", a.code, a.text);
        for body in ["[1]", "\"x\"", "42", "null"] {
            let a = h
                .send(
                    Method::PATCH,
                    &existing,
                    Some("application/merge-patch+json"),
                    body,
                )
                .await;
            a.status(400, "BadRequest");
        }
        let a = h
            .send(
                Method::PATCH,
                &existing,
                Some("application/strategic-merge-patch+json"),
                "[1]",
            )
            .await;
        a.status(400, "BadRequest");
        let a = h
            .send(
                Method::PATCH,
                &existing,
                Some("application/json-patch+json"),
                "{\"op\": \"add\"}",
            )
            .await;
        a.status(400, "BadRequest");
        let a = h
            .send(
                Method::PATCH,
                &existing,
                Some("application/merge-patch+json"),
                "{not json",
            )
            .await;
        a.status(400, "BadRequest");
        // A patch that yields an invalid object is 422 with the field.
        let a = h
            .send(
                Method::PATCH,
                &existing,
                Some("application/merge-patch+json"),
                "{\"spec\":{\"ports\":[{\"port\":0}]}}",
            )
            .await;
        a.status(422, "Invalid");
        // A patch that yields a wrongly typed field is 400.
        let a = h
            .send(
                Method::PATCH,
                &existing,
                Some("application/merge-patch+json"),
                "{\"spec\":{\"ports\":[{\"port\":\"eighty\"}]}}",
            )
            .await;
        a.status_saying(400, "BadRequest", &["spec.ports[0].port"]);
        // Server-side apply needs a fieldManager.
        let a = h
            .send(
                Method::PATCH,
                &existing,
                Some("application/apply-patch+yaml"),
                service_json("existing").to_string(),
            )
            .await;
        a.status_saying(400, "BadRequest", &["fieldManager"]);
    })
    .await;
}

#[tokio::test]
async fn an_unsupported_request_content_type_is_415() {
    let h = Harness::start().await;
    h.unchanged(|| async {
        for ct in [
            "text/plain",
            "application/xml",
            "application/vnd.kubernetes.protobuf-garbage",
        ] {
            h.post(SERVICES, ct, service_json("ct").to_string())
                .await
                .status(415, "UnsupportedMediaType");
        }
    })
    .await;
}

/// Mutations of a valid Service body: byte flips, insertions, deletions, truncation, splices, and
/// structural replacements of values with values of other types.
fn mutate(rng: &mut StdRng, seed_doc: &Value) -> Vec<u8> {
    const JUNK: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        ",",
        ":",
        "\"",
        "\\",
        "\\u0000",
        "\\ud800",
        "null",
        "-0",
        "1e999",
        "9223372036854775808",
        "\u{feff}",
        "\n",
        "\t",
        "'",
        "!!",
        "&a",
        "*a",
        "---",
        "%YAML 1.1",
        "\u{0}",
    ];
    let text = seed_doc.to_string();
    match rng.random_range(0..5) {
        0 => (0..rng.random_range(0..200))
            .map(|_| rng.random::<u8>())
            .collect(),
        1 => {
            // Byte-level mutations of valid JSON.
            let mut b = text.into_bytes();
            for _ in 0..rng.random_range(1..6) {
                if b.is_empty() {
                    break;
                }
                let i = rng.random_range(0..b.len());
                match rng.random_range(0..4) {
                    0 => b[i] = rng.random(),
                    1 => {
                        b.remove(i);
                    }
                    2 => {
                        let junk = JUNK[rng.random_range(0..JUNK.len())].as_bytes();
                        b.splice(i..i, junk.iter().copied());
                    }
                    _ => b.truncate(i),
                }
            }
            b
        }
        2 => {
            // Structural: replace random values, of any type.
            let mut v = seed_doc.clone();
            for _ in 0..rng.random_range(1..4) {
                replace_random(rng, &mut v, 0);
            }
            v.to_string().into_bytes()
        }
        3 => {
            // The same, as YAML.
            let mut v = seed_doc.clone();
            replace_random(rng, &mut v, 0);
            serde_yaml::to_string(&v).unwrap_or_default().into_bytes()
        }
        _ => {
            // Splice a prefix onto a suffix from elsewhere.
            let a = text.as_bytes();
            let mut b = a[..rng.random_range(0..a.len())].to_vec();
            b.extend_from_slice(&a[rng.random_range(0..a.len())..]);
            b
        }
    }
}

fn pick<T: Clone>(rng: &mut StdRng, options: &[T]) -> T {
    options[rng.random_range(0..options.len())].clone()
}

/// A port number, mostly from the edges of what is valid.
fn interesting_int(rng: &mut StdRng) -> Value {
    match rng.random_range(0..4) {
        0 => json!(rng.random_range(30000..32768)),
        1 => json!(rng.random_range(1..65536)),
        _ => json!(pick(
            rng,
            &[
                -1i64,
                0,
                1,
                53,
                80,
                443,
                65535,
                65536,
                30000,
                32767,
                32768,
                86400,
                86401,
                i32::MAX as i64,
                i64::MAX
            ]
        )),
    }
}

fn random_value(rng: &mut StdRng, depth: usize) -> Value {
    match rng.random_range(0..if depth > 3 { 7 } else { 9 }) {
        0 => Value::Null,
        1 => json!(rng.random::<bool>()),
        2 => json!(rng.random::<i64>()),
        3 => interesting_int(rng),
        4 => json!(rng.random::<f64>() * 1e6),
        5 => json!(pick(rng, &[
            "", "None", "ClusterIP", "NodePort", "LoadBalancer", "ExternalName", "TCP", "UDP", "SCTP", "ClientIP", "IPv4",
            "IPv6", "SingleStack", "PreferDualStack", "RequireDualStack", "10.96.0.10", "::1", "300.1.1.1", "web", "Bad_Name",
            "a/b", "this-name-is-way-too-long-for-a-dns-label-because-it-has-more-than-sixty-three-characters",
        ])),
        6 => json!(format!("s{}", rng.random::<u32>())),
        7 => Value::Array((0..rng.random_range(0..4)).map(|_| random_value(rng, depth + 1)).collect()),
        _ => {
            let keys = ["port", "name", "protocol", "type", "clusterIP", "clusterIPs", "ports", "selector", "nodePort", "targetPort", "ipFamilies"];
            let mut m = serde_json::Map::new();
            for _ in 0..rng.random_range(0..4) {
                m.insert(pick(rng, &keys).to_string(), random_value(rng, depth + 1));
            }
            Value::Object(m)
        }
    }
}

fn replace_random(rng: &mut StdRng, v: &mut Value, depth: usize) {
    let stop = depth > 0 && rng.random_range(0..3) == 0;
    match v {
        Value::Object(m) if !m.is_empty() && !stop => {
            let key = m
                .keys()
                .nth(rng.random_range(0..m.len()))
                .cloned()
                .expect("index in range");
            if rng.random_range(0..8) == 0 {
                m.remove(&key);
            } else {
                replace_random(rng, m.get_mut(&key).expect("key exists"), depth + 1);
            }
        }
        Value::Array(a) if !a.is_empty() && !stop => {
            let i = rng.random_range(0..a.len());
            replace_random(rng, &mut a[i], depth + 1);
        }
        other => *other = random_value(rng, depth),
    }
}

/// A random but well-typed Service port: these get past decoding into validation and allocation.
fn random_port(rng: &mut StdRng) -> Value {
    let mut p = serde_json::Map::new();
    if rng.random_range(0..4) != 0 {
        p.insert(
            "name".into(),
            json!(pick(rng, &["a", "b", "c", "", "Bad_Name", "http"])),
        );
    }
    if rng.random_range(0..10) != 0 {
        p.insert("port".into(), interesting_int(rng));
    }
    if rng.random::<bool>() {
        p.insert("nodePort".into(), interesting_int(rng));
    }
    if rng.random::<bool>() {
        let target = if rng.random::<bool>() {
            interesting_int(rng)
        } else {
            json!(pick(
                rng,
                &["http", "Bad_Name", "", "x".repeat(16).as_str()]
            ))
        };
        p.insert("targetPort".into(), target);
    }
    if rng.random::<bool>() {
        p.insert(
            "protocol".into(),
            json!(pick(rng, &["TCP", "UDP", "SCTP", "ICMP", ""])),
        );
    }
    if rng.random_range(0..4) == 0 {
        p.insert(
            "appProtocol".into(),
            json!(pick(rng, &["http", "kubernetes.io/h2c", "bad proto/x/y"])),
        );
    }
    Value::Object(p)
}

/// A random, well-typed value for a random Service spec field.
fn random_spec_field(rng: &mut StdRng) -> (&'static str, Value) {
    let ip = |rng: &mut StdRng| {
        pick(
            rng,
            &[
                "",
                "None",
                "10.96.0.50",
                "10.96.0.1",
                "10.111.1.1",
                "192.168.0.1",
                "::1",
                "fd00::10",
                "bogus",
            ],
        )
    };
    match rng.random_range(0..17) {
        0 => (
            "type",
            json!(pick(
                rng,
                &[
                    "ClusterIP",
                    "NodePort",
                    "LoadBalancer",
                    "ExternalName",
                    "",
                    "Bogus"
                ]
            )),
        ),
        1 => ("clusterIP", json!(ip(rng))),
        2 => (
            "clusterIPs",
            Value::Array(
                (0..rng.random_range(0..3))
                    .map(|_| json!(ip(rng)))
                    .collect(),
            ),
        ),
        3 => (
            "externalName",
            json!(pick(
                rng,
                &["example.com", "", "bad_name", "a.b.c.d.example.com."]
            )),
        ),
        4 => (
            "externalIPs",
            json!([pick(rng, &["1.2.3.4", "bogus", "::1", "0.0.0.0"])]),
        ),
        5 => (
            "ipFamilies",
            json!(pick(
                rng,
                &[
                    json!(["IPv4"]),
                    json!(["IPv6"]),
                    json!(["IPv4", "IPv6"]),
                    json!(["IPv4", "IPv4"]),
                    json!([])
                ]
            )),
        ),
        6 => (
            "ipFamilyPolicy",
            json!(pick(
                rng,
                &[
                    "SingleStack",
                    "PreferDualStack",
                    "RequireDualStack",
                    "Bogus"
                ]
            )),
        ),
        7 => (
            "sessionAffinity",
            json!(pick(rng, &["None", "ClientIP", "Bogus"])),
        ),
        8 => (
            "sessionAffinityConfig",
            json!({"clientIP": {"timeoutSeconds": pick(rng, &[-1, 0, 1, 10800, 86400, 86401])}}),
        ),
        9 => (
            "externalTrafficPolicy",
            json!(pick(rng, &["Cluster", "Local", "Bogus", ""])),
        ),
        10 => (
            "internalTrafficPolicy",
            json!(pick(rng, &["Cluster", "Local", "Bogus"])),
        ),
        11 => ("healthCheckNodePort", interesting_int(rng)),
        12 => ("allocateLoadBalancerNodePorts", json!(rng.random::<bool>())),
        13 => (
            "loadBalancerSourceRanges",
            json!([pick(rng, &["10.0.0.0/8", "bogus", "1.2.3.4/33"])]),
        ),
        14 => (
            "loadBalancerClass",
            json!(pick(rng, &["example.com/lb", "bad class", ""])),
        ),
        15 => (
            "selector",
            json!(pick(
                rng,
                &[json!({"app": "web"}), json!({"bad key!": "x"}), json!({})]
            )),
        ),
        _ => (
            "ports",
            Value::Array(
                (0..rng.random_range(0..4))
                    .map(|_| random_port(rng))
                    .collect(),
            ),
        ),
    }
}

/// A well-typed Service (for create with `name`, or update of `existing`) with random fields.
fn random_service(rng: &mut StdRng, name: &str) -> Value {
    // Half of them start from a valid port, so that more of them get as far as allocation.
    let port = if rng.random::<bool>() {
        json!({"name": "a", "port": rng.random_range(1..65536), "protocol": pick(rng, &["TCP", "UDP", "SCTP"])})
    } else {
        random_port(rng)
    };
    let mut v = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"ports": [port]}});
    for _ in 0..rng.random_range(0..4) {
        let (k, val) = random_spec_field(rng);
        v["spec"][k] = val;
    }
    v
}

#[tokio::test]
async fn thousands_of_mutated_bodies_never_get_a_5xx_and_never_crash_the_server() {
    let h = Harness::start().await;
    // A fixed seed keeps CI reproducible; SWITCHYARD_FUZZ_SEED explores others.
    let seed = std::env::var("SWITCHYARD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5717c4);
    eprintln!("fuzz seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let seed_doc = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "fuzz", "labels": {"app": "web"}, "annotations": {"a": "b"}},
        "spec": {
            "type": "NodePort", "selector": {"app": "web"}, "sessionAffinity": "ClientIP",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}],
            "ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4"],
        },
    });
    let patch_doc = json!({"metadata": {"labels": {"x": "1"}}, "spec": {"ports": [{"name": "http", "port": 81}]}});
    let json_patch = json!([{"op": "replace", "path": "/spec/ports/0/port", "value": 82}, {"op": "add", "path": "/metadata/labels/y", "value": "2"}]);
    let existing = format!("{SERVICES}/existing");
    let mut requests = Vec::new();
    for i in 0..3000 {
        let request = match i % 8 {
            0 | 1 => (
                Method::POST,
                SERVICES.to_string(),
                "application/json",
                mutate(&mut rng, &seed_doc),
            ),
            2 => (
                Method::POST,
                SERVICES.to_string(),
                "application/yaml",
                mutate(&mut rng, &seed_doc),
            ),
            3 | 4 => {
                let name = format!("f{i}");
                (
                    Method::POST,
                    SERVICES.to_string(),
                    "application/json",
                    random_service(&mut rng, &name).to_string().into_bytes(),
                )
            }
            5 => (
                Method::PUT,
                existing.clone(),
                "application/json",
                random_service(&mut rng, "existing")
                    .to_string()
                    .into_bytes(),
            ),
            6 => {
                // Merge or strategic patches of `existing`: well-typed spec changes (type
                // transitions, allocations) or mutated bytes.
                let ct = pick(
                    &mut rng,
                    &[
                        "application/merge-patch+json",
                        "application/strategic-merge-patch+json",
                    ],
                );
                let body = if rng.random::<bool>() {
                    let (k, v) = random_spec_field(&mut rng);
                    json!({"spec": {k: v}}).to_string().into_bytes()
                } else {
                    mutate(&mut rng, &patch_doc)
                };
                (Method::PATCH, existing.clone(), ct, body)
            }
            _ if rng.random::<bool>() => (
                Method::PATCH,
                existing.clone(),
                "application/json-patch+json",
                mutate(&mut rng, &json_patch),
            ),
            // Deletes of what earlier requests may have created (and release).
            _ => (
                Method::DELETE,
                format!("{SERVICES}/f{}", rng.random_range(0..i)),
                "application/json",
                Vec::new(),
            ),
        };
        requests.push(request);
    }
    let answers: Vec<(u16, String, Vec<u8>)> = futures::stream::iter(requests)
        .map(|(method, path, ct, body)| {
            let h = &h;
            async move {
                let a = h.send(method, &path, Some(ct), body.clone()).await;
                (a.code, a.text, body)
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut by_code = std::collections::BTreeMap::<u16, usize>::new();
    for (code, text, body) in &answers {
        *by_code.entry(*code).or_default() += 1;
        assert!(
            *code < 500,
            "a 5xx for body {:?}: {text}",
            String::from_utf8_lossy(body)
        );
        if *code >= 400 {
            let s: Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("error answer is not a Status ({e}): {text}"));
            assert_eq!(s["kind"], "Status", "{text}");
        }
    }
    eprintln!("fuzz answers by code: {by_code:?}");
    for code in [201, 400, 422] {
        assert!(
            by_code.get(&code).copied().unwrap_or(0) >= 50,
            "the fuzzer reaches {code} often enough: {by_code:?}"
        );
    }

    let health = tokio::time::timeout(Duration::from_secs(10), h.get("/healthz"))
        .await
        .expect("healthz in time");
    assert_eq!((health.code, health.text.as_str()), (200, "ok"));
    // Whatever got stored holds its allocations alone: no cluster IP or node port is shared.
    let list = h.get("/api/v1/services").await.json();
    let mut ips = std::collections::BTreeMap::new();
    let mut node_ports = std::collections::BTreeMap::new();
    for s in list["items"].as_array().expect("items") {
        let name = s["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        for ip in s["spec"]["clusterIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if ip != "None" {
                let prev = ips.insert(ip.to_string(), name.clone());
                assert!(
                    prev.is_none(),
                    "cluster IP {ip} held by both {prev:?} and {name}"
                );
            }
        }
        for p in s["spec"]["ports"].as_array().into_iter().flatten() {
            // 0 is Go's "unset" (kube-apiserver would not even show it).
            if let Some(np) = p["nodePort"].as_i64().filter(|n| *n != 0) {
                // One allocation per number, whatever the protocol (as kube-apiserver's).
                let prev = node_ports.insert(np, name.clone());
                assert!(
                    prev.is_none() || prev.as_deref() == Some(name.as_str()),
                    "node port {np} held by both {prev:?} and {name}"
                );
            }
        }
    }
    // The allocation records in the store are exactly what the stored services hold: nothing a
    // rejected or replaced write allocated has leaked.
    let held: std::collections::BTreeSet<String> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .flat_map(|s| switchyard_apiserver::alloc::Held::of(s).keys())
        .collect();
    let recorded = h
        .srv
        .server
        .store
        .list("/registry/ranges/", Default::default())
        .await
        .expect("list allocation records");
    let recorded: std::collections::BTreeSet<String> =
        recorded.kvs.into_iter().map(|kv| kv.key).collect();
    assert_eq!(recorded, held, "allocation records match the services");
    // And the server still works normally.
    let a = h
        .post(
            SERVICES,
            "application/json",
            service_json("after-fuzz").to_string(),
        )
        .await;
    assert_eq!(a.code, 201, "{}", a.text);
}
