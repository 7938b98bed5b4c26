//! The store: a revisioned key-value map with etcd v3 semantics, the single source of truth of a
//! Switchyard cluster.
//!
//! Every successful write (a [`Txn`] whose compares hold) bumps one global revision; every key
//! remembers the revision that created it and the revision that last modified it. Lists read a
//! consistent snapshot at a revision; watches deliver every change after a revision, in revision
//! order, exactly once. Compaction forgets history below a revision; reading it afterwards fails
//! with [`StoreError::Compacted`], which the API server turns into `410 Expired`.
//!
//! The store knows nothing about Kubernetes objects: keys are strings, values are bytes. Callers
//! (the API server) use only the [`Store`] trait, so backends (SQLite, memory, and etcd later) can
//! be swapped without touching them.
//!
//! This crate must never block a writer on a slow watcher: watch streams are bounded, and a
//! watcher that falls too far behind is ended with [`StoreError::WatcherTooSlow`] (the client
//! re-watches from its last revision, as etcd clients do).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;

mod hub;
pub mod memory;
pub mod sqlite;

/// A revision of the store. Revisions start at 1 (the empty store is at revision 1, as etcd) and
/// grow by exactly one per successful write transaction.
pub type Revision = i64;

/// One key and its current value, as etcd's `mvccpb.KeyValue`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyValue {
    pub key: String,
    pub value: Bytes,
    /// Revision of the transaction that created this key (since it last did not exist).
    pub create_revision: Revision,
    /// Revision of the transaction that last changed this key.
    pub mod_revision: Revision,
}

/// A condition a transaction checks before writing, compared atomically with the writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Compare {
    /// The key does not exist.
    Absent(String),
    /// The key exists and was last modified at exactly this revision.
    ModRevision(String, Revision),
}

/// One write of a transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Create or replace the key's value.
    Put(String, Bytes),
    /// Remove the key. Deleting an absent key is not an error and produces no event.
    Delete(String),
}

/// An atomic compare-and-write: if every compare holds, all ops are applied under one new
/// revision; otherwise nothing is written. A transaction with no ops never bumps the revision,
/// nor does one whose ops change nothing (deletes of absent keys only), as etcd does.
///
/// Ops apply in order: a key written twice in one transaction ends with the last value, and each
/// write produces its own event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub ops: Vec<Op>,
}

impl Txn {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn when(mut self, compare: Compare) -> Self {
        self.compares.push(compare);
        self
    }
    pub fn put(mut self, key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        self.ops.push(Op::Put(key.into(), value.into()));
        self
    }
    pub fn delete(mut self, key: impl Into<String>) -> Self {
        self.ops.push(Op::Delete(key.into()));
        self
    }
}

/// What a transaction did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TxnOutcome {
    /// All compares held; the ops were applied at this revision (the store's revision after the
    /// transaction; unchanged if the transaction had no ops).
    Applied(Revision),
    /// The compare at this index failed; nothing was written. Carries the store revision at which
    /// the compare was evaluated.
    Failed { index: usize, revision: Revision },
}

/// Options of a range read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Read the snapshot at this revision; `None` (or 0) means the current revision. A revision
    /// above the current one fails with [`StoreError::FutureRevision`], one below the compacted
    /// revision with [`StoreError::Compacted`].
    pub revision: Option<Revision>,
    /// At most this many keys; `None` or 0 means no limit.
    pub limit: Option<usize>,
    /// Start strictly after this key (for continuing a chunked list).
    pub start_after: Option<String>,
}

/// The result of a range read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListResult {
    /// Keys in lexical (byte) order.
    pub kvs: Vec<KeyValue>,
    /// The revision the snapshot was read at.
    pub revision: Revision,
    /// How many keys under the prefix remain after the last one returned (0 when complete).
    pub remaining: usize,
}

/// A change observed by a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The key was created or modified. `prev` is the value before, if the key existed.
    Put {
        kv: KeyValue,
        prev: Option<KeyValue>,
    },
    /// The key was deleted at `revision`. `prev` is the last value it had.
    Delete { prev: KeyValue, revision: Revision },
}

impl Event {
    /// The revision of the transaction that produced this event.
    pub fn revision(&self) -> Revision {
        match self {
            Event::Put { kv, .. } => kv.mod_revision,
            Event::Delete { revision, .. } => *revision,
        }
    }
    pub fn key(&self) -> &str {
        match self {
            Event::Put { kv, .. } => &kv.key,
            Event::Delete { prev, .. } => &prev.key,
        }
    }
    /// The key's value before this event, if it existed.
    pub fn prev(&self) -> Option<&KeyValue> {
        match self {
            Event::Put { prev, .. } => prev.as_ref(),
            Event::Delete { prev, .. } => Some(prev),
        }
    }
    /// Whether this event deleted its key.
    pub fn is_delete(&self) -> bool {
        matches!(self, Event::Delete { .. })
    }
}

/// Tuning knobs shared by the backends. [`Default`] gives sensible production values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreOptions {
    /// Events buffered per watcher. A watcher that falls this many events behind is disconnected
    /// with [`StoreError::WatcherTooSlow`].
    pub watch_channel_capacity: usize,
    /// Recent events kept in memory to serve watches from the recent past without reading the
    /// backend (SQLite; the memory backend keeps all events until compaction).
    pub event_ring_capacity: usize,
    /// Idle read connections kept open (SQLite).
    pub read_connections: usize,
    /// At most this many transactions are committed together by one group commit (SQLite).
    pub max_group_commit: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            watch_channel_capacity: 1024,
            event_ring_capacity: 10_000,
            read_connections: 4,
            max_group_commit: 1024,
        }
    }
}

/// A stream of watch events, ending with an error if the watcher falls behind or the store
/// closes.
pub type WatchStream = BoxStream<'static, Result<Event, StoreError>>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The requested revision has been compacted away. Not retryable at that revision: the caller
    /// must re-list (Kubernetes: 410 Expired).
    #[error("required revision {requested} has been compacted (compacted revision {compacted})")]
    Compacted {
        requested: Revision,
        compacted: Revision,
    },
    /// The requested revision is newer than the store's current revision.
    #[error("required revision {requested} is a future revision (current revision {current})")]
    FutureRevision {
        requested: Revision,
        current: Revision,
    },
    /// The watcher could not keep up and was disconnected. Retryable: watch again from the last
    /// revision received.
    #[error("watcher too slow: disconnected after falling {0} events behind")]
    WatcherTooSlow(usize),
    /// The backend failed (disk, database). Retryable at the caller's discretion.
    #[error("storage backend error: {0}")]
    Backend(String),
    /// The store has been closed.
    #[error("store closed")]
    Closed,
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The store interface every backend implements and every caller uses.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The current revision.
    async fn current_revision(&self) -> Result<Revision>;
    /// The value of one key at the current revision.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>>;
    /// The keys starting with `prefix`, in key order, at a revision.
    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult>;
    /// How many keys start with `prefix` at the current revision.
    async fn count(&self, prefix: &str) -> Result<usize>;
    /// Apply a transaction atomically. Once this returns `Applied`, the write is durable.
    async fn txn(&self, txn: Txn) -> Result<TxnOutcome>;
    /// Every event on keys starting with `prefix` with revision > `after`, in revision order
    /// (events of one transaction in op order), exactly once, then live events as they happen.
    ///
    /// Fails with [`StoreError::Compacted`] if `after` is below the compacted revision. A watch
    /// from beyond the current revision is accepted and delivers its events once they happen
    /// (it never fails with [`StoreError::FutureRevision`]). The stream ends after its first
    /// error: [`StoreError::WatcherTooSlow`] once the buffered events have been delivered,
    /// [`StoreError::Closed`] when the store is dropped.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream>;
    /// Forget history below `revision`: values overwritten or deleted before it are dropped.
    /// The snapshot at `revision` itself stays readable, and watches from `revision` on keep
    /// working. Compacting at or below the compacted revision does nothing; beyond the current
    /// revision fails with [`StoreError::FutureRevision`].
    async fn compact(&self, revision: Revision) -> Result<()>;
    /// The compacted revision (0 if never compacted).
    async fn compacted_revision(&self) -> Result<Revision>;
}

/// A shared handle to a store.
pub type SharedStore = Arc<dyn Store>;
