//! The memory backend: a multi-version map held in process memory, for tests and throwaway
//! clusters.
//!
//! Every key keeps the list of its versions (value or tombstone, with the revision that wrote
//! it) since the last compaction, so lists at past revisions and watches from the past work as in
//! the durable backends; the watch hub keeps every event since the last compaction as the event
//! log. Nothing is ever written to disk: dropping the store loses everything. Writes apply and
//! publish under one lock, so this backend must never await (or block on a watcher) while holding
//! it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, StreamExt};

use crate::hub::{Backlog, Hub};
use crate::{
    Compare, Event, KeyValue, ListOptions, ListResult, Op, Result, Revision, Store, StoreError,
    StoreOptions, Txn, TxnOutcome, WatchStream,
};

/// An in-memory store with etcd v3 semantics; see the module docs.
pub struct MemoryStore {
    state: Mutex<State>,
    hub: Hub,
}

struct State {
    revision: Revision,
    compacted: Revision,
    /// Per key, its versions in write order (several may share a revision when one transaction
    /// writes a key twice; the last one wins).
    keys: BTreeMap<String, Vec<Version>>,
}

struct Version {
    revision: Revision,
    create_revision: Revision,
    /// `None` is a tombstone: the key was deleted at `revision`.
    value: Option<Bytes>,
}

impl Version {
    fn to_kv(&self, key: &str) -> Option<KeyValue> {
        self.value.as_ref().map(|value| KeyValue {
            key: key.to_owned(),
            value: value.clone(),
            create_revision: self.create_revision,
            mod_revision: self.revision,
        })
    }
}

impl State {
    /// The live value of `key` at the current revision.
    fn current(&self, key: &str) -> Option<KeyValue> {
        self.keys.get(key)?.last()?.to_kv(key)
    }

    /// The live value of `key` at `revision`.
    fn at(key: &str, versions: &[Version], revision: Revision) -> Option<KeyValue> {
        versions
            .iter()
            .rev()
            .find(|v| v.revision <= revision)?
            .to_kv(key)
    }

    /// The revision a read asked for, checked against the retained history.
    fn read_revision(&self, requested: Option<Revision>) -> Result<Revision> {
        match requested {
            None => Ok(self.revision),
            Some(r) if r <= 0 => Ok(self.revision),
            Some(r) if r > self.revision => Err(StoreError::FutureRevision {
                requested: r,
                current: self.revision,
            }),
            Some(r) if r < self.compacted => Err(StoreError::Compacted {
                requested: r,
                compacted: self.compacted,
            }),
            Some(r) => Ok(r),
        }
    }

    /// The keys under `prefix` (after `start_after`) live at `revision`, in key order.
    fn snapshot<'a>(
        &'a self,
        prefix: &'a str,
        start_after: Option<&'a str>,
        revision: Revision,
    ) -> impl Iterator<Item = KeyValue> + 'a {
        let lower = match start_after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        self.keys
            .range::<str, _>((lower, Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .filter_map(move |(key, versions)| Self::at(key, versions, revision))
    }

    fn compact(&mut self, revision: Revision) {
        self.keys.retain(|_, versions| {
            // The version visible at `revision`; everything before it is superseded.
            let visible = versions.iter().rposition(|v| v.revision <= revision);
            if let Some(visible) = visible {
                versions.drain(..visible);
                if versions[0].value.is_none() && versions[0].revision < revision {
                    versions.remove(0);
                }
            }
            !versions.is_empty()
        });
        self.compacted = revision;
    }
}

impl MemoryStore {
    /// An empty store at revision 1 with default options.
    pub fn new() -> Self {
        Self::with_options(StoreOptions::default())
    }

    /// An empty store at revision 1. Only `watch_channel_capacity` applies: this backend keeps
    /// every event until compaction.
    pub fn with_options(options: StoreOptions) -> Self {
        Self {
            state: Mutex::new(State {
                revision: 1,
                compacted: 0,
                keys: BTreeMap::new(),
            }),
            hub: Hub::new(options.watch_channel_capacity, None, 0, 1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .expect("memory store lock poisoned: a writer panicked mid-transaction")
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.lock().revision)
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        Ok(self.lock().current(key))
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let state = self.lock();
        let revision = state.read_revision(opts.revision)?;
        let mut kvs: Vec<KeyValue> = state
            .snapshot(prefix, opts.start_after.as_deref(), revision)
            .collect();
        let mut remaining = 0;
        if let Some(limit) = opts.limit.filter(|l| *l > 0) {
            if kvs.len() > limit {
                remaining = kvs.len() - limit;
                kvs.truncate(limit);
            }
        }
        Ok(ListResult {
            kvs,
            revision,
            remaining,
        })
    }

    async fn count(&self, prefix: &str) -> Result<usize> {
        let state = self.lock();
        Ok(state.snapshot(prefix, None, state.revision).count())
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        let mut state = self.lock();
        for (index, compare) in txn.compares.iter().enumerate() {
            let holds = match compare {
                Compare::Absent(key) => state.current(key).is_none(),
                Compare::ModRevision(key, revision) => {
                    state.current(key).map(|kv| kv.mod_revision) == Some(*revision)
                }
            };
            if !holds {
                return Ok(TxnOutcome::Failed {
                    index,
                    revision: state.revision,
                });
            }
        }
        let revision = state.revision + 1;
        let mut events = Vec::with_capacity(txn.ops.len());
        for op in txn.ops {
            match op {
                Op::Put(key, value) => {
                    let prev = state.current(&key);
                    let create_revision = prev.as_ref().map_or(revision, |p| p.create_revision);
                    state.keys.entry(key.clone()).or_default().push(Version {
                        revision,
                        create_revision,
                        value: Some(value.clone()),
                    });
                    events.push(Event::Put {
                        kv: KeyValue {
                            key,
                            value,
                            create_revision,
                            mod_revision: revision,
                        },
                        prev,
                    });
                }
                Op::Delete(key) => {
                    let Some(prev) = state.current(&key) else {
                        continue;
                    };
                    state.keys.entry(key).or_default().push(Version {
                        revision,
                        create_revision: prev.create_revision,
                        value: None,
                    });
                    events.push(Event::Delete { prev, revision });
                }
            }
        }
        if events.is_empty() {
            return Ok(TxnOutcome::Applied(state.revision));
        }
        state.revision = revision;
        self.hub.publish(events);
        Ok(TxnOutcome::Applied(revision))
    }

    /// Events after `after`; a watch from a future revision is accepted and delivers its events
    /// once they happen.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let state = self.lock();
        if after < state.compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted: state.compacted,
            });
        }
        let subscription = self.hub.subscribe(prefix, after);
        drop(state);
        match subscription.backlog {
            Backlog::Ready(events) => Ok(stream::iter(events.into_iter().map(Ok))
                .chain(subscription.live.into_stream())
                .boxed()),
            Backlog::FromLog { upto } => Err(StoreError::Backend(format!(
                "memory event log lost events in ({after}, {upto}] without compaction"
            ))),
        }
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let mut state = self.lock();
        if revision > state.revision {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current: state.revision,
            });
        }
        if revision <= state.compacted {
            return Ok(());
        }
        state.compact(revision);
        self.hub.compact(revision);
        tracing::debug!(revision, "memory store compacted");
        Ok(())
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.lock().compacted)
    }
}
