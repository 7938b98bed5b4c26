//! Watch streams (`?watch=1`): the store's change feed turned into Kubernetes watch events.
//!
//! Without a resourceVersion (or with "0") the stream starts with a synthetic ADDED per existing
//! object; with one, it replays every change after it. Selectors are applied to both the old and
//! the new state of each change, so an object that starts matching is ADDED and one that stops
//! matching is DELETED, as kube-apiserver's watch cache does. A compacted resourceVersion ends the
//! stream with an ERROR event carrying a 410 Expired Status. Bookmarks carry the last revision
//! delivered (never a revision whose events might still be in flight).
//!
//! Each watch runs in its own task that writes encoded lines into a small bounded channel; a
//! client that stops reading stalls only its own task, whose store watcher is then disconnected
//! by the store (writers never wait for it) and the stream ends so the client re-watches.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use serde_json::{json, Value};
use switchyard_api::resources::ResourceInfo;
use switchyard_api::status::StatusError;
use switchyard_api::table::{self, IncludeObject};
use switchyard_store::{Event, Revision, StoreError};
use tokio::sync::mpsc;

use crate::registry::{from_kv, selected, store_error, ListParams, Registry};

/// What a watch asked for.
#[derive(Clone, Debug)]
pub struct WatchParams {
    pub list: ListParams,
    pub resource_version: Option<String>,
    pub allow_bookmarks: bool,
    pub send_initial_events: bool,
    pub timeout: Duration,
    pub table: Option<IncludeObject>,
    pub bookmark_interval: Duration,
}

/// One watch event on the wire: `{"type": ..., "object": ...}`.
#[derive(serde::Serialize)]
struct WatchLine<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    object: &'a Value,
}

struct Encoder {
    resource: &'static ResourceInfo,
    table: Option<IncludeObject>,
    columns_sent: bool,
}

impl Encoder {
    fn line(&mut self, kind: &str, object: Value) -> Bytes {
        let object = match (self.table, kind) {
            (Some(include), "ADDED" | "MODIFIED" | "DELETED") => {
                let rv = object
                    .pointer("/metadata/resourceVersion")
                    .cloned()
                    .unwrap_or(Value::Null);
                let t = table::table(
                    self.resource,
                    std::slice::from_ref(&object),
                    json!({"resourceVersion": rv}),
                    include,
                    jiff::Timestamp::now(),
                    !self.columns_sent,
                );
                self.columns_sent = true;
                t
            }
            _ => object,
        };
        // Serialized in place: `json!` would first deep-copy the object through `to_value`, once
        // per event and watcher.
        let mut buf = serde_json::to_vec(&WatchLine {
            kind,
            object: &object,
        })
        .unwrap_or_default();
        buf.push(b'\n');
        Bytes::from(buf)
    }

    /// A line around an object already encoded as JSON (the no-decode fast path).
    fn raw_line(&mut self, kind: &str, object: &[u8]) -> Bytes {
        let mut buf = Vec::with_capacity(object.len() + kind.len() + 22);
        buf.extend_from_slice(b"{\"type\":\"");
        buf.extend_from_slice(kind.as_bytes());
        buf.extend_from_slice(b"\",\"object\":");
        buf.extend_from_slice(object);
        buf.extend_from_slice(b"}\n");
        Bytes::from(buf)
    }

    fn bookmark(&mut self, rv: Revision, initial_events_end: bool) -> Bytes {
        let mut meta = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        let obj = json!({"kind": self.resource.kind, "apiVersion": self.resource.api_version(), "metadata": meta});
        let mut buf =
            serde_json::to_vec(&json!({"type": "BOOKMARK", "object": obj})).unwrap_or_default();
        buf.push(b'\n');
        Bytes::from(buf)
    }

    fn error(&mut self, e: &StatusError) -> Bytes {
        let mut buf = serde_json::to_vec(&json!({"type": "ERROR", "object": e.to_status()}))
            .unwrap_or_default();
        buf.push(b'\n');
        Bytes::from(buf)
    }
}

/// The synthetic ADDED events a watch without a resourceVersion starts with.
enum Initial {
    /// Encoded JSON objects (no table was asked for).
    Raw(Vec<Vec<u8>>),
    Decoded(Vec<Value>),
}

/// Start a watch; returns the channel the encoded events arrive on. Errors that happen before the
/// stream starts (a malformed resourceVersion) are returned directly.
pub async fn start(
    registry: Arc<Registry>,
    resource: &'static ResourceInfo,
    namespace: Option<String>,
    params: WatchParams,
) -> Result<mpsc::Receiver<Bytes>, StatusError> {
    let rv =
        match params.resource_version.as_deref() {
            None | Some("") | Some("0") => None,
            Some(s) => Some(s.parse::<Revision>().map_err(|_| {
                StatusError::bad_request(format!("invalid resource version: {s:?}"))
            })?),
        };
    // The initial state, when the client has none.
    let (initial, start_rev) = match rv {
        None => {
            let all = ListParams {
                limit: None,
                continue_token: None,
                exact_revision: None,
                ..params.list.clone()
            };
            if params.table.is_none() {
                let (items, rev, _, _) = registry
                    .list_raw(resource, namespace.as_deref(), &all)
                    .await?;
                (Initial::Raw(items), rev)
            } else {
                let (items, rev, _, _) =
                    registry.list(resource, namespace.as_deref(), &all).await?;
                (Initial::Decoded(items), rev)
            }
        }
        Some(rev) => (Initial::Decoded(Vec::new()), rev),
    };
    let prefix = resource.namespace_prefix(namespace.as_deref());
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let mut enc = Encoder {
        resource,
        table: params.table,
        columns_sent: false,
    };
    let watch = registry.store.watch(&prefix, start_rev).await;
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + params.timeout;
        let mut stream = match watch {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(enc.error(&store_error(e))).await;
                return;
            }
        };
        match initial {
            Initial::Raw(items) => {
                for raw in items {
                    if tx.send(enc.raw_line("ADDED", &raw)).await.is_err() {
                        return;
                    }
                }
            }
            Initial::Decoded(items) => {
                for obj in items {
                    if tx.send(enc.line("ADDED", obj)).await.is_err() {
                        return;
                    }
                }
            }
        }
        let mut last = start_rev;
        if params.send_initial_events
            && params.allow_bookmarks
            && tx.send(enc.bookmark(last, true)).await.is_err()
        {
            return;
        }
        let mut ticker = tokio::time::interval(params.bookmark_interval);
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = ticker.tick(), if params.allow_bookmarks => {
                    if tx.send(enc.bookmark(last, false)).await.is_err() {
                        return;
                    }
                }
                next = stream.next() => {
                    let event = match next {
                        Some(Ok(ev)) => ev,
                        Some(Err(StoreError::WatcherTooSlow(n))) => {
                            tracing::debug!(behind = n, resource = resource.plural, "watcher too slow; ending watch");
                            return;
                        }
                        Some(Err(e)) => {
                            let _ = tx.send(enc.error(&store_error(e))).await;
                            return;
                        }
                        None => return,
                    };
                    last = event.revision();
                    let everything = params.list.label_selector.is_none() && params.list.field_selector.is_none();
                    if everything && enc.table.is_none() {
                        // Nothing to look inside: splice the resourceVersion into the stored
                        // bytes instead of decoding and re-encoding per watcher.
                        let raw = match &event {
                            Event::Put { kv, prev } => crate::registry::raw_with_rv(kv)
                                .map(|b| (if prev.is_some() { "MODIFIED" } else { "ADDED" }, b)),
                            Event::Delete { prev, revision } => switchyard_api::object::splice_resource_version(&prev.value, *revision)
                                .map(|b| ("DELETED", b)),
                        };
                        if let Some((kind, bytes)) = raw {
                            if tx.send(enc.raw_line(kind, &bytes)).await.is_err() {
                                return;
                            }
                            continue;
                        }
                    }
                    if let Some((kind, obj)) = translate(resource, &event, &params.list) {
                        if tx.send(enc.line(kind, obj)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    Ok(rx)
}

/// Turn a store event into a watch event for a client with these selectors, if it should see it.
fn translate(
    r: &ResourceInfo,
    event: &Event,
    params: &ListParams,
) -> Option<(&'static str, Value)> {
    match event {
        Event::Put { kv, prev } => {
            let new = from_kv(kv).ok()?;
            if params.label_selector.is_none() && params.field_selector.is_none() {
                // Everything matches: no need to decode the previous state.
                return Some((if prev.is_some() { "MODIFIED" } else { "ADDED" }, new));
            }
            let new_match = selected(r, &new, params);
            let old_match = prev
                .as_ref()
                .and_then(|p| from_kv(p).ok())
                .map(|o| selected(r, &o, params));
            match (old_match, new_match) {
                (None | Some(false), true) => Some(("ADDED", new)),
                (Some(true), true) => Some(("MODIFIED", new)),
                (Some(true), false) => Some(("DELETED", new)),
                _ => None,
            }
        }
        Event::Delete { prev, revision } => {
            let mut old = from_kv(prev).ok()?;
            if !selected(r, &old, params) {
                return None;
            }
            switchyard_api::object::metadata_mut(&mut old).insert(
                "resourceVersion".into(),
                Value::String(revision.to_string()),
            );
            Some(("DELETED", old))
        }
    }
}
