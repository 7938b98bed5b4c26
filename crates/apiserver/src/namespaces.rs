//! Namespace deletion, as kube-controller-manager's namespace controller does it: a deleted
//! namespace is marked Terminating; this loop deletes everything in it and, once it is empty,
//! removes the `kubernetes` finalizer so the namespace itself goes away.
//!
//! It runs in every API server and is idempotent (every step is a delete or a guarded write), so
//! several servers may run it at once. It watches namespaces, so a restart resumes unfinished
//! deletions.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use switchyard_api::object;
use switchyard_api::resources::{self, RESOURCES};
use switchyard_store::{Compare, Event, ListOptions, Txn, TxnOutcome};

use crate::registry::{DeleteOpts, FieldValidation, ListParams, Registry, WriteCtx};

/// How often a namespace whose content is still going away (pods terminating) is checked again.
const RECHECK: Duration = Duration::from_secs(1);

fn ctx() -> WriteCtx {
    WriteCtx {
        now: jiff::Timestamp::now(),
        dry_run: false,
        field_manager: "switchyard-namespace-controller".into(),
        field_validation: FieldValidation::Ignore,
        user: crate::registry::SYSTEM_USER.into(),
    }
}

/// Delete the namespace's content; true when nothing is left.
async fn empty(registry: &Registry, ns: &str) -> bool {
    let mut left = 0;
    for r in RESOURCES.iter().filter(|r| r.namespaced) {
        let Ok((items, _, _, _)) = registry.list(r, Some(ns), &ListParams::default()).await else {
            left += 1;
            continue;
        };
        for item in items {
            left += 1;
            if object::is_deleting(&item) && r.kind != "Pod" {
                continue;
            }
            let name = object::name(&item).to_string();
            if let Err(e) = registry
                .delete(r, Some(ns), &name, &DeleteOpts::default(), &ctx())
                .await
            {
                if e.code != 404 {
                    tracing::warn!(namespace = ns, resource = r.plural, name, error = %e, "deleting namespace content");
                }
            }
        }
    }
    left == 0
}

/// Remove the `kubernetes` finalizer; the namespace is deleted if no other finalizer remains.
async fn finalize(registry: &Registry, name: &str) {
    let r = resources::find("", "v1", "namespaces").expect("namespaces are served");
    let key = r.key(None, name);
    let Ok(Some(kv)) = registry.store.get(&key).await else {
        return;
    };
    let Ok(mut ns) = serde_json::from_slice::<Value>(&kv.value) else {
        return;
    };
    if let Some(spec) = ns.get_mut("spec").and_then(Value::as_object_mut) {
        spec.remove("finalizers");
    }
    let txn = if object::finalizers(&ns).is_empty() {
        Txn::new()
            .when(Compare::ModRevision(key.clone(), kv.mod_revision))
            .delete(key.clone())
    } else {
        let bytes = serde_json::to_vec(&ns).unwrap_or_default();
        Txn::new()
            .when(Compare::ModRevision(key.clone(), kv.mod_revision))
            .put(key.clone(), bytes)
    };
    match registry.store.txn(txn).await {
        Ok(TxnOutcome::Applied(_)) => tracing::info!(namespace = name, "namespace finalized"),
        Ok(TxnOutcome::Failed { .. }) => {}
        Err(e) => tracing::warn!(namespace = name, error = %e, "finalizing namespace"),
    }
}

async fn terminate(registry: Arc<Registry>, name: String) {
    loop {
        if empty(&registry, &name).await {
            finalize(&registry, &name).await;
            return;
        }
        tokio::time::sleep(RECHECK).await;
        // Stop if the namespace is gone meanwhile (another server finalized it).
        let r = resources::find("", "v1", "namespaces").expect("namespaces are served");
        if !matches!(registry.store.get(&r.key(None, &name)).await, Ok(Some(_))) {
            return;
        }
    }
}

/// Run the namespace finalizer until the task is dropped.
pub async fn run(registry: Arc<Registry>) {
    let r = resources::find("", "v1", "namespaces").expect("namespaces are served");
    let in_progress = Arc::new(std::sync::Mutex::new(
        std::collections::HashSet::<String>::new(),
    ));
    let start = |name: String| {
        let mut set = in_progress.lock().unwrap_or_else(|p| p.into_inner());
        if set.insert(name.clone()) {
            let registry = registry.clone();
            let in_progress = in_progress.clone();
            tokio::spawn(async move {
                terminate(registry, name.clone()).await;
                in_progress
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&name);
            });
        }
    };
    loop {
        let Ok(list) = registry
            .store
            .list(&r.key_prefix(), ListOptions::default())
            .await
        else {
            tokio::time::sleep(RECHECK).await;
            continue;
        };
        for kv in &list.kvs {
            if let Ok(ns) = serde_json::from_slice::<Value>(&kv.value) {
                if object::is_deleting(&ns) {
                    start(object::name(&ns).to_string());
                }
            }
        }
        let Ok(mut events) = registry.store.watch(&r.key_prefix(), list.revision).await else {
            continue;
        };
        while let Some(Ok(ev)) = events.next().await {
            if let Event::Put { kv, .. } = ev {
                if let Ok(ns) = serde_json::from_slice::<Value>(&kv.value) {
                    if object::is_deleting(&ns) {
                        start(object::name(&ns).to_string());
                    }
                }
            }
        }
    }
}
