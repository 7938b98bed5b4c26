//! REST handlers: one function per verb on a resource, translating HTTP (query parameters,
//! content types, status codes) into [`Registry`] calls and back.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::{json, Value};
use switchyard_api::resources::{ResourceInfo, Subresource};
use switchyard_api::selector::{FieldSelector, LabelSelector};
use switchyard_api::status::StatusError;
use switchyard_api::table::{self, IncludeObject};

use crate::codec::{self, Format};
use crate::registry::{
    DeleteOpts, FieldValidation, ListParams, PatchType, Propagation, Registry, WriteCtx,
};
use crate::request::ResourceRequest;
use crate::watch::{self, WatchParams};

/// What a handler answers: a whole body, or a stream of watch events.
pub enum Reply {
    Object {
        code: StatusCode,
        body: Value,
        format: Format,
        warnings: Vec<String>,
    },
    /// An already encoded JSON body.
    Raw {
        code: StatusCode,
        body: Vec<u8>,
    },
    Stream(tokio::sync::mpsc::Receiver<Bytes>),
    /// A node's answer passed through (`pods/log`).
    Proxied(crate::kubelet::KubeletResponse),
}

impl Reply {
    fn ok(body: Value, format: Format) -> Reply {
        Reply::Object {
            code: StatusCode::OK,
            body,
            format,
            warnings: Vec::new(),
        }
    }
}

pub struct RequestParts<'a> {
    pub method: &'a Method,
    pub query: &'a HashMap<String, String>,
    pub content_type: &'a str,
    pub accept: &'a str,
    pub user_agent: &'a str,
    /// The authenticated user's name.
    pub user: &'a str,
    pub body: &'a [u8],
}

fn truthy(q: &HashMap<String, String>, k: &str) -> bool {
    matches!(q.get(k).map(String::as_str), Some("1" | "true" | "True"))
}

/// Label and field selectors, limit and continue from the query.
fn list_params(r: &ResourceInfo, q: &HashMap<String, String>) -> Result<ListParams, StatusError> {
    let label_selector =
        match q.get("labelSelector").filter(|s| !s.is_empty()) {
            Some(s) => Some(LabelSelector::parse(s).map_err(|e| {
                StatusError::bad_request(format!("unable to parse requirement: {e}"))
            })?),
            None => None,
        };
    let field_selector = match q.get("fieldSelector").filter(|s| !s.is_empty()) {
        Some(s) => {
            let fs =
                FieldSelector::parse(s).map_err(|e| StatusError::bad_request(e.to_string()))?;
            fs.validate_for(r)
                .map_err(|e| StatusError::bad_request(e.to_string()))?;
            Some(fs)
        }
        None => None,
    };
    let limit = match q.get("limit").filter(|s| !s.is_empty()) {
        Some(s) => Some(
            s.parse::<i64>()
                .map_err(|_| StatusError::bad_request(format!("invalid limit: {s:?}")))?
                .max(0) as usize,
        ),
        None => None,
    };
    let exact_revision =
        match (
            q.get("resourceVersion"),
            q.get("resourceVersionMatch").map(String::as_str),
        ) {
            (Some(rv), Some("Exact")) => Some(rv.parse().map_err(|_| {
                StatusError::bad_request(format!("invalid resource version: {rv:?}"))
            })?),
            _ => None,
        };
    Ok(ListParams {
        label_selector,
        field_selector,
        limit,
        continue_token: q.get("continue").filter(|s| !s.is_empty()).cloned(),
        exact_revision,
    })
}

fn write_ctx(req: &RequestParts<'_>, default_manager: &str) -> Result<WriteCtx, StatusError> {
    let (q, user_agent) = (req.query, req.user_agent);
    let dry_run = match q.get("dryRun").map(String::as_str) {
        None | Some("") => false,
        Some("All") => true,
        Some(other) => {
            return Err(StatusError::bad_request(format!(
                "dryRun: Unsupported value: {other:?}: supported values: \"All\""
            )))
        }
    };
    let field_validation = match q.get("fieldValidation").map(String::as_str) {
        None | Some("") | Some("Warn") => FieldValidation::Warn,
        Some("Strict") => FieldValidation::Strict,
        Some("Ignore") => FieldValidation::Ignore,
        Some(other) => {
            return Err(StatusError::bad_request(format!(
                "fieldValidation: Unsupported value: {other:?}: supported values: \"Ignore\", \"Warn\", \"Strict\""
            )))
        }
    };
    let field_manager = match q.get("fieldManager").filter(|s| !s.is_empty()) {
        Some(m) if m.len() > 128 => {
            return Err(StatusError::invalid(
                "",
                "",
                "",
                &[switchyard_api::status::FieldError::too_long(
                    "fieldManager",
                    128,
                )],
            ))
        }
        Some(m) => m.clone(),
        // kube-apiserver derives the manager from the user agent's program name.
        None => user_agent
            .split('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or(default_manager)
            .to_string(),
    };
    Ok(WriteCtx {
        now: jiff::Timestamp::now(),
        dry_run,
        field_manager,
        field_validation,
        user: req.user.to_string(),
    })
}

fn list_metadata(rv: i64, cont: Option<String>, remaining: Option<usize>) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if let Some(c) = cont {
        meta["continue"] = Value::String(c);
    }
    if let Some(n) = remaining {
        meta["remainingItemCount"] = Value::from(n);
    }
    meta
}

/// A list response written from items already encoded as JSON.
fn raw_list(r: &ResourceInfo, items: Vec<Vec<u8>>, meta: Value) -> Vec<u8> {
    let head = json!({"kind": r.list_kind(), "apiVersion": r.api_version(), "metadata": meta});
    let mut out = serde_json::to_vec(&head).unwrap_or_default();
    out.pop(); // the closing brace; the items follow
    let size: usize = items.iter().map(|i| i.len() + 1).sum();
    out.reserve(size + 12);
    out.extend_from_slice(b",\"items\":[");
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"]}");
    out
}

fn list_object(
    r: &ResourceInfo,
    items: Vec<Value>,
    rv: i64,
    cont: Option<String>,
    remaining: Option<usize>,
) -> Value {
    let meta = list_metadata(rv, cont, remaining);
    // `items` is moved in, not passed to `json!`, which would deep-copy every item through
    // `to_value` (a second copy of a 10,000-service list, in time and in peak memory).
    let mut list = json!({"kind": r.list_kind(), "apiVersion": r.api_version(), "metadata": meta});
    list["items"] = Value::Array(items);
    list
}

/// The autoscaling/v1 Scale view of a Deployment or ReplicaSet.
fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector")
        .and_then(|s| {
            serde_json::from_value::<
                switchyard_api::k8s::apimachinery::pkg::apis::meta::v1::LabelSelector,
            >(s.clone())
            .ok()
        })
        .and_then(|s| LabelSelector::from_metav1(&s).ok())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let meta = obj.get("metadata").cloned().unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": meta.get("name"), "namespace": meta.get("namespace"), "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"), "creationTimestamp": meta.get("creationTimestamp"),
        },
        "spec": {"replicas": obj.pointer("/spec/replicas").cloned().unwrap_or(Value::from(1))},
        "status": {
            "replicas": obj.pointer("/status/replicas").cloned().unwrap_or(Value::from(0)),
            "selector": selector,
        },
    })
}

fn subresource(r: &ResourceInfo, sub: Option<&str>) -> Result<Option<Subresource>, StatusError> {
    match sub {
        None => Ok(None),
        Some("status") if r.has_subresource(Subresource::Status) => Ok(Some(Subresource::Status)),
        Some("scale") if r.has_subresource(Subresource::Scale) => Ok(Some(Subresource::Scale)),
        Some(other) => Err(StatusError::no_route(&format!("{}/{other}", r.plural))),
    }
}

/// Handle one resource request.
pub async fn handle(
    registry: &Arc<Registry>,
    kubelet: &crate::kubelet::KubeletClient,
    rr: &ResourceRequest,
    req: RequestParts<'_>,
    bookmark_interval: Duration,
) -> Result<Reply, StatusError> {
    let r = rr.resource;
    let q = req.query;
    let format = codec::negotiate(req.accept)?;
    let ns = if r.namespaced {
        rr.namespace.as_deref()
    } else {
        None
    };
    if r.namespaced && rr.name.is_some() && ns.is_none() {
        return Err(StatusError::no_route(
            "a namespaced object needs a namespace",
        ));
    }
    if rr.subresource.as_deref() == Some("binding") && r.kind == "Pod" && r.group.is_empty() {
        return bind(registry, ns, rr.name.as_deref(), req, format).await;
    }
    if rr.subresource.as_deref() == Some("log") && r.kind == "Pod" && r.group.is_empty() {
        return pod_log(registry, kubelet, ns, rr.name.as_deref(), &req).await;
    }
    let sub = subresource(r, rr.subresource.as_deref())?;
    let watching = rr.watch_path || truthy(q, "watch");
    match (req.method.clone(), rr.name.as_deref()) {
        (Method::GET, None) if watching => {
            let list = list_params(r, q)?;
            let timeout = q
                .get("timeoutSeconds")
                .and_then(|s| s.parse::<u64>().ok())
                .map(Duration::from_secs)
                .unwrap_or_else(|| Duration::from_secs(1800 + rand::random::<u64>() % 1800));
            let params = WatchParams {
                list,
                resource_version: q.get("resourceVersion").cloned(),
                allow_bookmarks: truthy(q, "allowWatchBookmarks"),
                send_initial_events: truthy(q, "sendInitialEvents"),
                timeout,
                table: if format == Format::Table {
                    Some(IncludeObject::try_parse(
                        q.get("includeObject").map(String::as_str),
                    )?)
                } else {
                    None
                },
                bookmark_interval,
            };
            let rx = watch::start(registry.clone(), r, ns.map(str::to_string), params).await?;
            Ok(Reply::Stream(rx))
        }
        (Method::GET, None) => {
            let params = list_params(r, q)?;
            if format == Format::Json {
                let (items, rv, cont, remaining) = registry.list_raw(r, ns, &params).await?;
                let body = raw_list(r, items, list_metadata(rv, cont, remaining));
                return Ok(Reply::Raw {
                    code: StatusCode::OK,
                    body,
                });
            }
            let (items, rv, cont, remaining) = registry.list(r, ns, &params).await?;
            if format == Format::Table {
                let meta = list_metadata(rv, cont, remaining);
                let include = IncludeObject::try_parse(q.get("includeObject").map(String::as_str))?;
                return Ok(Reply::ok(
                    table::table(r, &items, meta, include, jiff::Timestamp::now(), true),
                    Format::Json,
                ));
            }
            Ok(Reply::ok(
                list_object(r, items, rv, cont, remaining),
                format,
            ))
        }
        (Method::GET, Some(name)) => {
            let obj = registry.get(r, ns, name).await?;
            match (sub, format) {
                (Some(Subresource::Scale), f) => Ok(Reply::ok(
                    scale_of(&obj),
                    if f == Format::Table { Format::Json } else { f },
                )),
                (_, Format::Table) => {
                    let include =
                        IncludeObject::try_parse(q.get("includeObject").map(String::as_str))?;
                    let rv = obj
                        .pointer("/metadata/resourceVersion")
                        .cloned()
                        .unwrap_or(Value::Null);
                    Ok(Reply::ok(
                        table::table(
                            r,
                            &[obj],
                            json!({"resourceVersion": rv}),
                            include,
                            jiff::Timestamp::now(),
                            true,
                        ),
                        Format::Json,
                    ))
                }
                (_, f) => Ok(Reply::ok(obj, f)),
            }
        }
        (Method::POST, None) => {
            let body = codec::decode_body(req.content_type, req.body)?;
            let ctx = write_ctx(&req, "unknown")?;
            let w = registry.create(r, ns, body, &ctx).await?;
            Ok(Reply::Object {
                code: StatusCode::CREATED,
                body: w.object,
                format: plain(format),
                warnings: w.warnings,
            })
        }
        (Method::PUT, Some(name)) => {
            let body = codec::decode_body(req.content_type, req.body)?;
            let ctx = write_ctx(&req, "unknown")?;
            if sub == Some(Subresource::Scale) {
                let replicas = body
                    .pointer("/spec/replicas")
                    .cloned()
                    .unwrap_or(Value::Null);
                let rv = body
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                return scale_update(registry, r, ns, name, replicas, rv, &ctx, format).await;
            }
            let w = registry.update(r, ns, name, body, sub, &ctx).await?;
            Ok(written(w, format))
        }
        (Method::PATCH, Some(name)) => {
            let patch_type = PatchType::from_content_type(req.content_type)
                .ok_or_else(|| StatusError::unsupported_media_type(req.content_type))?;
            if patch_type == PatchType::Strategic && r.group == "metallb.io" {
                // As for any custom resource: no strategic merge patch.
                return Err(StatusError::unsupported_media_type(req.content_type));
            }
            let ctx = write_ctx(&req, "unknown")?;
            if patch_type == PatchType::Apply && q.get("fieldManager").is_none_or(|m| m.is_empty())
            {
                return Err(StatusError::bad_request(
                    "PATCH requests with apply content type need a fieldManager",
                ));
            }
            if sub == Some(Subresource::Scale) {
                let obj = registry.get(r, ns, name).await?;
                let scale = scale_of(&obj);
                let doc = codec::decode_json(req.body)
                    .or_else(|_| codec::decode_yaml_or_json(req.body))?;
                let patched = match patch_type {
                    PatchType::Json => switchyard_api::patch::json_patch(&scale, &doc)
                        .map_err(|e| e.to_status_error())?,
                    _ => switchyard_api::patch::merge_patch(&scale, &doc),
                };
                let replicas = patched
                    .pointer("/spec/replicas")
                    .cloned()
                    .unwrap_or(Value::Null);
                let rv = doc
                    .pointer("/metadata/resourceVersion")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                return scale_update(registry, r, ns, name, replicas, rv, &ctx, format).await;
            }
            let force = truthy(q, "force");
            let w = registry
                .patch(r, ns, name, patch_type, req.body, sub, force, &ctx)
                .await?;
            Ok(written(w, format))
        }
        (Method::DELETE, Some(name)) => {
            let ctx = write_ctx(&req, "unknown")?;
            let opts = delete_opts(q, req.body)?;
            let (obj, gone) = registry.delete(r, ns, name, &opts, &ctx).await?;
            let code = if gone {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            Ok(Reply::Object {
                code,
                body: obj,
                format: plain(format),
                warnings: Vec::new(),
            })
        }
        (Method::DELETE, None) => {
            let ctx = write_ctx(&req, "unknown")?;
            let opts = delete_opts(q, req.body)?;
            let params = list_params(r, q)?;
            let (items, _, _, _) = registry.list(r, ns, &params).await?;
            let mut deleted = Vec::new();
            for item in items {
                let name = switchyard_api::object::name(&item).to_string();
                let ins = switchyard_api::object::namespace(&item).map(str::to_string);
                match registry.delete(r, ins.as_deref(), &name, &opts, &ctx).await {
                    Ok((obj, _)) => deleted.push(obj),
                    Err(e) if e.code == 404 => {}
                    Err(e) => return Err(e),
                }
            }
            let rv = registry
                .store
                .current_revision()
                .await
                .map_err(crate::registry::store_error)?;
            Ok(Reply::ok(
                list_object(r, deleted, rv, None, None),
                plain(format),
            ))
        }
        (m, _) => Err(StatusError::method_not_allowed(format!(
            "the server does not allow this method on the requested resource ({m})"
        ))),
    }
}

/// The answer to an update or patch: 201 when it created the object.
fn written(w: crate::registry::Written, format: Format) -> Reply {
    let code = if w.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Reply::Object {
        code,
        body: w.object,
        format: plain(format),
        warnings: w.warnings,
    }
}

/// Tables are for reads only; writes answer with the object.
fn plain(f: Format) -> Format {
    if f == Format::Table {
        Format::Json
    } else {
        f
    }
}

/// `POST /api/v1/namespaces/NS/pods/NAME/binding`.
async fn bind(
    registry: &Arc<Registry>,
    ns: Option<&str>,
    name: Option<&str>,
    req: RequestParts<'_>,
    format: Format,
) -> Result<Reply, StatusError> {
    let (Some(ns), Some(name)) = (ns, name) else {
        return Err(StatusError::no_route("pods/binding"));
    };
    if req.method != Method::POST {
        return Err(StatusError::method_not_allowed(req.method.as_str()));
    }
    let body = codec::decode_body(req.content_type, req.body)?;
    let ctx = write_ctx(&req, "unknown")?;
    registry.bind(ns, name, &body, &ctx).await?;
    Ok(Reply::Object {
        code: StatusCode::CREATED,
        body: json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        format: plain(format),
        warnings: Vec::new(),
    })
}

/// `GET /api/v1/namespaces/NS/pods/NAME/log`: checked against the pod, then streamed from its
/// node's kubelet endpoint.
async fn pod_log(
    registry: &Arc<Registry>,
    kubelet: &crate::kubelet::KubeletClient,
    ns: Option<&str>,
    name: Option<&str>,
    req: &RequestParts<'_>,
) -> Result<Reply, StatusError> {
    let (Some(ns), Some(name)) = (ns, name) else {
        return Err(StatusError::no_route("pods/log"));
    };
    if req.method != Method::GET {
        return Err(StatusError::method_not_allowed(req.method.as_str()));
    }
    let pods = switchyard_api::resources::find("", "v1", "pods")
        .ok_or_else(|| StatusError::internal("pods are not served"))?;
    let pod = registry.get(pods, Some(ns), name).await?;
    let container =
        crate::kubelet::log_container(&pod, req.query.get("container").map(String::as_str))?;
    let query = crate::kubelet::log_query(req.query)?;
    let addr = kubelet_of_pod(registry, &pod).await?;
    let mut path = format!("/containerLogs/{ns}/{name}/{container}");
    if !query.is_empty() {
        path.push('?');
        path.push_str(&query);
    }
    Ok(Reply::Proxied(kubelet.get(addr, &path).await?))
}

/// Where the API server reaches the kubelet of the node `pod` is bound to.
pub(crate) async fn kubelet_of_pod(
    registry: &Registry,
    pod: &Value,
) -> Result<std::net::SocketAddr, StatusError> {
    let nodes = switchyard_api::resources::find("", "v1", "nodes")
        .ok_or_else(|| StatusError::internal("nodes are not served"))?;
    let node_name = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let node = registry.get(nodes, None, node_name).await?;
    let node: switchyard_api::k8s::api::core::v1::Node = serde_json::from_value(node)
        .map_err(|e| StatusError::internal(format!("node {node_name}: {e}")))?;
    switchyard_api::node::kubelet_endpoint(&node).ok_or_else(|| {
        StatusError::bad_request(format!("node {node_name} has no address for its kubelet"))
    })
}

/// `pods/exec`, `pods/attach`, `pods/portforward`: upgrade requests proxied to the pod's node.
pub(crate) async fn pod_stream(
    registry: &Registry,
    kubelet: &crate::kubelet::KubeletClient,
    rr: &crate::request::ResourceRequest,
    req: http::Request<hyper::body::Incoming>,
) -> Result<http::Response<crate::server::Body>, StatusError> {
    let (Some(ns), Some(name), Some(sub)) = (
        rr.namespace.as_deref(),
        rr.name.as_deref(),
        rr.subresource.as_deref(),
    ) else {
        return Err(StatusError::no_route("pods"));
    };
    if !req.headers().contains_key(http::header::UPGRADE) {
        return Err(StatusError::bad_request(format!(
            "Upgrade request required: pods/{sub} streams over a WebSocket (v5.channel.k8s.io)"
        )));
    }
    let pod = registry.get(rr.resource, Some(ns), name).await?;
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let path = if sub == "portforward" {
        format!("/portForward/{ns}/{name}")
    } else {
        let query = crate::request::parse_query(Some(&raw_query));
        let container =
            crate::kubelet::stream_container(&pod, query.get("container").map(String::as_str))?;
        format!("/{sub}/{ns}/{name}/{container}")
    };
    let addr = kubelet_of_pod(registry, &pod).await?;
    let target = if raw_query.is_empty() {
        path
    } else {
        format!("{path}?{raw_query}")
    };
    kubelet.upgrade(addr, &target, req).await
}

#[allow(clippy::too_many_arguments)]
async fn scale_update(
    registry: &Arc<Registry>,
    r: &ResourceInfo,
    ns: Option<&str>,
    name: &str,
    replicas: Value,
    rv: Option<String>,
    ctx: &WriteCtx,
    format: Format,
) -> Result<Reply, StatusError> {
    let Some(n) = replicas.as_i64() else {
        return Err(StatusError::invalid(
            "autoscaling",
            "Scale",
            name,
            &[switchyard_api::status::FieldError::required(
                "spec.replicas",
                "",
            )],
        ));
    };
    if n < 0 {
        return Err(StatusError::invalid(
            "autoscaling",
            "Scale",
            name,
            &[switchyard_api::status::FieldError::invalid(
                "spec.replicas",
                n,
                "must be greater than or equal to 0",
            )],
        ));
    }
    let mut obj = registry.get(r, ns, name).await?;
    if let Some(rv) = rv.filter(|s| !s.is_empty()) {
        switchyard_api::object::metadata_mut(&mut obj)
            .insert("resourceVersion".into(), Value::String(rv));
    }
    obj["spec"]["replicas"] = Value::from(n);
    let w = registry.update(r, ns, name, obj, None, ctx).await?;
    Ok(Reply::ok(scale_of(&w.object), plain(format)))
}

fn delete_opts(q: &HashMap<String, String>, body: &[u8]) -> Result<DeleteOpts, StatusError> {
    let mut opts = DeleteOpts::default();
    let mut policy: Option<String> = None;
    let mut orphan_dependents: Option<bool> = None;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let b = codec::decode_yaml_or_json(body)?;
        opts.grace_period_seconds = b.get("gracePeriodSeconds").and_then(Value::as_i64);
        opts.precondition_uid = b
            .pointer("/preconditions/uid")
            .and_then(Value::as_str)
            .map(str::to_string);
        opts.precondition_resource_version = b
            .pointer("/preconditions/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_string);
        policy = b
            .get("propagationPolicy")
            .and_then(Value::as_str)
            .map(str::to_string);
        orphan_dependents = b.get("orphanDependents").and_then(Value::as_bool);
    }
    if let Some(g) = q.get("gracePeriodSeconds").and_then(|s| s.parse().ok()) {
        opts.grace_period_seconds = Some(g);
    }
    if let Some(p) = q.get("propagationPolicy") {
        policy = Some(p.clone());
    }
    if let Some(o) = q.get("orphanDependents") {
        orphan_dependents = Some(o == "true");
    }
    let invalid = |field: &str, value: &str, detail: &str| {
        StatusError::invalid(
            "",
            "DeleteOptions",
            "",
            &[switchyard_api::status::FieldError::invalid(
                field, value, detail,
            )],
        )
    };
    opts.propagation = match (policy.as_deref(), orphan_dependents) {
        (Some(p), Some(_)) => {
            return Err(invalid(
                "propagationPolicy",
                p,
                "orphanDependents and deletionPropagation cannot be both set",
            ))
        }
        (Some("Orphan"), None) => Some(Propagation::Orphan),
        (Some("Background"), None) => Some(Propagation::Background),
        (Some("Foreground"), None) => Some(Propagation::Foreground),
        (Some(other), None) => {
            return Err(invalid(
                "propagationPolicy",
                other,
                "propagationPolicy must be one of: Orphan, Background, Foreground",
            ))
        }
        (None, Some(true)) => Some(Propagation::Orphan),
        (None, Some(false)) => Some(Propagation::Background),
        (None, None) => None,
    };
    Ok(opts)
}
