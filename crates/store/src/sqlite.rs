//! The SQLite backend: the default, embedded, durable store.
//!
//! Layout: an append-only log table `kv` with one row per change (a put or a tombstone), several
//! rows sharing a revision when one transaction writes several keys; a `current` table holding
//! the live value of every key, maintained in the same SQLite transaction as the log so that
//! current-state reads never scan history; and a `meta` table holding the current and compacted
//! revisions. Keys are stored as blobs so that SQLite orders them bytewise and a prefix is a
//! plain key range. Every log row points (`prev_id`) at the live version it replaced, so events
//! replayed from the log carry previous values like live ones.
//!
//! Writes go through one writer thread that owns the only write connection. It group-commits:
//! it takes every pending transaction, evaluates and applies each in turn (each seeing the writes
//! of those before it) under its own revision, commits them in one SQLite transaction (WAL,
//! `synchronous=FULL`, so an acknowledged write survives a crash or a power loss), then answers
//! every caller and publishes the events to the watch hub. Reads use a small pool of separate
//! read connections on blocking threads, so they never wait for the writer and never block the
//! async runtime. A watch from the recent past is served from the hub's ring of events; older
//! history is replayed from the log, chunk by chunk, each chunk in a read transaction that
//! re-checks compaction.
//!
//! One process owns a database file: the writer checks at every commit that the stored revision
//! is the one it last wrote, and refuses to write if another writer moved it.
//!
//! This module must never block the writer on a watcher (the hub only `try_send`s), nor run
//! SQLite calls on an async worker thread.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::{self, StreamExt};
use rusqlite::types::Value;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension, TransactionBehavior};
use tokio::sync::oneshot;

use crate::hub::{Backlog, Hub};
use crate::{
    Compare, Event, KeyValue, ListOptions, ListResult, Op, Result, Revision, Store, StoreError,
    StoreOptions, Txn, TxnOutcome, WatchStream,
};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT OR IGNORE INTO meta (name, value) VALUES ('schema', 1), ('revision', 1), ('compacted', 0);
CREATE TABLE IF NOT EXISTS kv (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    revision        INTEGER NOT NULL,
    key             BLOB NOT NULL,
    value           BLOB,
    create_revision INTEGER NOT NULL,
    prev_id         INTEGER,
    deleted         INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_key ON kv (key);
CREATE INDEX IF NOT EXISTS kv_revision ON kv (revision);
CREATE TABLE IF NOT EXISTS current (
    key             BLOB PRIMARY KEY,
    value           BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision    INTEGER NOT NULL,
    id              INTEGER NOT NULL
);
";

/// The last log row at or before a revision (index-only, unlike `MAX(id)`).
const MAX_ID_AT_REVISION: &str = "SELECT COALESCE(
    (SELECT id FROM kv WHERE revision <= ?1 ORDER BY revision DESC, id DESC LIMIT 1), 0)";

/// How many revisions one watch-replay query covers.
const REPLAY_CHUNK_REVISIONS: Revision = 512;

/// A durable store in one SQLite database file; see the module docs.
pub struct SqliteStore {
    shared: Arc<Shared>,
    readers: Arc<ReadPool>,
    writer: Option<Writer>,
}

/// State shared by the store handle and its writer thread.
struct Shared {
    hub: Hub,
    /// The last committed revision.
    revision: AtomicI64,
    /// The compacted revision.
    compacted: AtomicI64,
}

struct Writer {
    requests: mpsc::Sender<Request>,
    thread: JoinHandle<()>,
}

enum Request {
    Txn(Txn, oneshot::Sender<Result<TxnOutcome>>),
    Compact(Revision, oneshot::Sender<Result<()>>),
}

fn backend(err: rusqlite::Error) -> StoreError {
    StoreError::Backend(err.to_string())
}

/// Maps SQLite errors into [`StoreError::Backend`] with `?`.
trait Db<T> {
    fn db(self) -> Result<T>;
}

impl<T> Db<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T> {
        self.map_err(backend)
    }
}

impl SqliteStore {
    /// Open (creating if needed) the database at `path` with default options.
    pub fn open(path: &Path) -> Result<Self> {
        Self::open_with(path, StoreOptions::default())
    }

    /// Open (creating if needed) the database at `path`.
    pub fn open_with(path: &Path, options: StoreOptions) -> Result<Self> {
        let conn = Connection::open(path).db()?;
        conn.busy_timeout(Duration::from_secs(10)).db()?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .db()?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Backend(format!(
                "{}: cannot enable write-ahead logging (journal mode {mode})",
                path.display()
            )));
        }
        conn.pragma_update(None, "synchronous", "FULL").db()?;
        conn.execute_batch(SCHEMA).db()?;
        let revision = meta(&conn, "revision")?;
        let compacted = meta(&conn, "compacted")?;
        tracing::info!(path = %path.display(), revision, compacted, "opened SQLite store");

        let shared = Arc::new(Shared {
            hub: Hub::new(
                options.watch_channel_capacity,
                Some(options.event_ring_capacity),
                revision,
                revision,
            ),
            revision: AtomicI64::new(revision),
            compacted: AtomicI64::new(compacted),
        });
        let readers = Arc::new(ReadPool {
            path: path.to_owned(),
            idle: Mutex::new(Vec::new()),
            max_idle: options.read_connections.max(1),
        });
        let (requests, inbox) = mpsc::channel();
        let writer_shared = shared.clone();
        let max_batch = options.max_group_commit.max(1);
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || run_writer(conn, writer_shared, inbox, max_batch))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Self {
            shared,
            readers,
            writer: Some(Writer { requests, thread }),
        })
    }

    fn send(&self, request: Request) -> Result<()> {
        self.writer
            .as_ref()
            .ok_or(StoreError::Closed)?
            .requests
            .send(request)
            .map_err(|_| StoreError::Closed)
    }
}

/// Dropping the store stops the writer thread after the transactions it holds, and waits for it
/// (briefly blocking the dropping thread); watch streams then end with [`StoreError::Closed`].
impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Some(Writer { requests, thread }) = self.writer.take() {
            // Closing the queue lets the writer finish what it holds and stop.
            drop(requests);
            if thread.join().is_err() {
                tracing::error!("the store writer thread panicked");
            }
        }
    }
}

fn meta(conn: &Connection, name: &str) -> Result<Revision> {
    conn.prepare_cached("SELECT value FROM meta WHERE name = ?1")
        .and_then(|mut stmt| stmt.query_row([name], |row| row.get(0)))
        .db()
}

// ---------------------------------------------------------------------------------------------
// The writer.

fn run_writer(
    mut conn: Connection,
    shared: Arc<Shared>,
    inbox: mpsc::Receiver<Request>,
    max_batch: usize,
) {
    let mut revision = shared.revision.load(Ordering::Acquire);
    while let Ok(first) = inbox.recv() {
        let mut pending = vec![first];
        while pending.len() < max_batch {
            match inbox.try_recv() {
                Ok(request) => pending.push(request),
                Err(_) => break,
            }
        }
        let mut group = Vec::new();
        for request in pending {
            match request {
                Request::Txn(txn, reply) => group.push((txn, reply)),
                Request::Compact(target, reply) => {
                    // Keep the order callers asked in: commit what came before first.
                    commit_group(
                        &mut conn,
                        &shared,
                        &mut revision,
                        std::mem::take(&mut group),
                    );
                    let _ = reply.send(compact(&mut conn, &shared, target, revision));
                }
            }
        }
        commit_group(&mut conn, &shared, &mut revision, group);
    }
    tracing::debug!(revision, "store writer stopped");
}

type Reply = oneshot::Sender<Result<TxnOutcome>>;

/// Apply and commit a group of transactions, then answer their callers and publish events.
fn commit_group(
    conn: &mut Connection,
    shared: &Shared,
    revision: &mut Revision,
    group: Vec<(Txn, Reply)>,
) {
    if group.is_empty() {
        return;
    }
    let (txns, replies): (Vec<Txn>, Vec<Reply>) = group.into_iter().unzip();
    match apply_group(conn, *revision, &txns) {
        Ok(applied) => {
            tracing::trace!(
                txns = txns.len(),
                revision = applied.revision,
                "group committed"
            );
            *revision = applied.revision;
            shared.revision.store(applied.revision, Ordering::Release);
            shared.hub.publish(applied.events);
            for (reply, outcome) in replies.into_iter().zip(applied.outcomes) {
                let _ = reply.send(Ok(outcome));
            }
        }
        Err(err) => {
            tracing::error!(error = %err, txns = txns.len(), "group commit failed");
            let message = match err {
                StoreError::Backend(message) => message,
                other => other.to_string(),
            };
            for reply in replies {
                let _ = reply.send(Err(StoreError::Backend(message.clone())));
            }
        }
    }
}

struct Applied {
    outcomes: Vec<TxnOutcome>,
    events: Vec<Event>,
    revision: Revision,
}

fn apply_group(conn: &mut Connection, start: Revision, txns: &[Txn]) -> Result<Applied> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .db()?;
    // One process per database file: a revision moved behind the writer's back means another
    // writer exists, and going on would fork the history.
    let stored = meta(&tx, "revision")?;
    if stored != start {
        return Err(StoreError::Backend(format!(
            "the database revision moved from {start} to {stored} behind this store's writer: \
             is another process writing the same file?"
        )));
    }
    let mut revision = start;
    let mut outcomes = Vec::with_capacity(txns.len());
    let mut events = Vec::new();
    for txn in txns {
        outcomes.push(apply_txn(&tx, &mut revision, txn, &mut events)?);
    }
    if revision != start {
        tx.execute(
            "UPDATE meta SET value = ?1 WHERE name = 'revision'",
            [revision],
        )
        .db()?;
    }
    tx.commit().db()?;
    Ok(Applied {
        outcomes,
        events,
        revision,
    })
}

/// The live version of a key as the writer sees it (including uncommitted writes of its group).
struct Live {
    kv: KeyValue,
    id: i64,
}

fn live(conn: &Connection, key: &str) -> Result<Option<Live>> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT value, create_revision, mod_revision, id FROM current WHERE key = ?1",
        )
        .db()?;
    stmt.query_row([key.as_bytes()], |row| {
        Ok(Live {
            kv: KeyValue {
                key: key.to_owned(),
                value: Bytes::from(row.get::<_, Vec<u8>>(0)?),
                create_revision: row.get(1)?,
                mod_revision: row.get(2)?,
            },
            id: row.get(3)?,
        })
    })
    .optional()
    .db()
}

fn apply_txn(
    conn: &Connection,
    revision: &mut Revision,
    txn: &Txn,
    events: &mut Vec<Event>,
) -> Result<TxnOutcome> {
    for (index, compare) in txn.compares.iter().enumerate() {
        let holds = match compare {
            Compare::Absent(key) => live(conn, key)?.is_none(),
            Compare::ModRevision(key, expected) => {
                live(conn, key)?.map(|l| l.kv.mod_revision) == Some(*expected)
            }
        };
        if !holds {
            return Ok(TxnOutcome::Failed {
                index,
                revision: *revision,
            });
        }
    }
    let new_revision = *revision + 1;
    let first_event = events.len();
    let mut insert = conn
        .prepare_cached(
            "INSERT INTO kv (revision, key, value, create_revision, prev_id, deleted)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        )
        .db()?;
    for op in &txn.ops {
        match op {
            Op::Put(key, value) => {
                let prev = live(conn, key)?;
                let create_revision = prev.as_ref().map_or(new_revision, |p| p.kv.create_revision);
                insert
                    .execute(params![
                        new_revision,
                        key.as_bytes(),
                        value.as_ref(),
                        create_revision,
                        prev.as_ref().map(|p| p.id),
                        false
                    ])
                    .db()?;
                let id = conn.last_insert_rowid();
                conn.prepare_cached(
                    "INSERT INTO current (key, value, create_revision, mod_revision, id)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT (key) DO UPDATE SET
                         value = excluded.value,
                         mod_revision = excluded.mod_revision,
                         id = excluded.id",
                )
                .and_then(|mut stmt| {
                    stmt.execute(params![
                        key.as_bytes(),
                        value.as_ref(),
                        create_revision,
                        new_revision,
                        id
                    ])
                })
                .db()?;
                events.push(Event::Put {
                    kv: KeyValue {
                        key: key.clone(),
                        value: value.clone(),
                        create_revision,
                        mod_revision: new_revision,
                    },
                    prev: prev.map(|p| p.kv),
                });
            }
            Op::Delete(key) => {
                let Some(prev) = live(conn, key)? else {
                    continue;
                };
                insert
                    .execute(params![
                        new_revision,
                        key.as_bytes(),
                        None::<&[u8]>,
                        prev.kv.create_revision,
                        prev.id,
                        true
                    ])
                    .db()?;
                conn.prepare_cached("DELETE FROM current WHERE key = ?1")
                    .and_then(|mut stmt| stmt.execute([key.as_bytes()]))
                    .db()?;
                events.push(Event::Delete {
                    prev: prev.kv,
                    revision: new_revision,
                });
            }
        }
    }
    if events.len() > first_event {
        *revision = new_revision;
    }
    Ok(TxnOutcome::Applied(*revision))
}

/// Drop history below `target`, keeping for every key the version visible at `target`.
fn compact(
    conn: &mut Connection,
    shared: &Shared,
    target: Revision,
    current: Revision,
) -> Result<()> {
    if target > current {
        return Err(StoreError::FutureRevision {
            requested: target,
            current,
        });
    }
    if target <= shared.compacted.load(Ordering::Acquire) {
        return Ok(());
    }
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .db()?;
    let bound: i64 = tx
        .query_row(MAX_ID_AT_REVISION, [target], |row| row.get(0))
        .db()?;
    // Versions overwritten or deleted at or before the target...
    let superseded = tx
        .execute(
            "DELETE FROM kv WHERE revision < ?1 AND id < (
                 SELECT MAX(newer.id) FROM kv AS newer
                 WHERE newer.key = kv.key AND newer.id <= ?2)",
            [target, bound],
        )
        .db()?;
    // ...then the tombstones left standing alone before it.
    let tombstones = tx
        .execute(
            "DELETE FROM kv WHERE revision < ?1 AND deleted = 1",
            [target],
        )
        .db()?;
    tx.execute(
        "UPDATE meta SET value = ?1 WHERE name = 'compacted'",
        [target],
    )
    .db()?;
    tx.commit().db()?;
    shared.compacted.store(target, Ordering::Release);
    shared.hub.compact(target);
    tracing::info!(
        revision = target,
        superseded,
        tombstones,
        "compacted SQLite store"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Reads.

/// Idle read connections, opened on demand.
struct ReadPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl ReadPool {
    fn take(&self) -> Result<Connection> {
        let idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .pop();
        match idle {
            Some(conn) => Ok(conn),
            None => {
                let conn = Connection::open(&self.path).db()?;
                conn.busy_timeout(Duration::from_secs(10)).db()?;
                conn.pragma_update(None, "query_only", true).db()?;
                Ok(conn)
            }
        }
    }

    fn give_back(&self, conn: Connection) {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if idle.len() < self.max_idle {
            idle.push(conn);
        }
    }

    /// Run `f` with a read connection on a blocking thread.
    async fn read<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.take()?;
            let out = f(&mut conn);
            if !matches!(out, Err(StoreError::Backend(_))) {
                pool.give_back(conn);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }
}

/// The keys `[lower, upper)` in byte order; `upper: None` is unbounded.
struct KeyRange {
    lower: Vec<u8>,
    upper: Option<Vec<u8>>,
}

impl KeyRange {
    /// The keys starting with `prefix` (and after `start_after`, if given).
    fn new(prefix: &str, start_after: Option<&str>) -> Self {
        let mut lower = prefix.as_bytes().to_vec();
        if let Some(after) = start_after {
            // The least key greater than `after` is `after` followed by a zero byte.
            let mut successor = after.as_bytes().to_vec();
            successor.push(0);
            lower = lower.max(successor);
        }
        let mut upper = prefix.as_bytes().to_vec();
        while upper.last() == Some(&0xff) {
            upper.pop();
        }
        let upper = match upper.last_mut() {
            Some(last) => {
                *last += 1;
                Some(upper)
            }
            None => None,
        };
        Self { lower, upper }
    }

    /// The SQL condition on `column`, pushing its parameters (anonymous `?`) onto `params`.
    fn condition(&self, column: &str, params: &mut Vec<Value>) -> String {
        params.push(Value::Blob(self.lower.clone()));
        match &self.upper {
            Some(upper) => {
                params.push(Value::Blob(upper.clone()));
                format!("{column} >= ? AND {column} < ?")
            }
            None => format!("{column} >= ?"),
        }
    }
}

fn decode_key(raw: Vec<u8>) -> rusqlite::Result<String> {
    String::from_utf8(raw).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e))
    })
}

/// The current and compacted revisions, read in the caller's transaction.
fn revisions(conn: &Connection) -> Result<(Revision, Revision)> {
    Ok((meta(conn, "revision")?, meta(conn, "compacted")?))
}

fn resolve_revision(
    requested: Option<Revision>,
    current: Revision,
    compacted: Revision,
) -> Result<Revision> {
    match requested {
        None => Ok(current),
        Some(r) if r <= 0 => Ok(current),
        Some(r) if r > current => Err(StoreError::FutureRevision {
            requested: r,
            current,
        }),
        Some(r) if r < compacted => Err(StoreError::Compacted {
            requested: r,
            compacted,
        }),
        Some(r) => Ok(r),
    }
}

fn list_in(conn: &mut Connection, prefix: &str, opts: &ListOptions) -> Result<ListResult> {
    let tx = conn.transaction().db()?;
    let (current, compacted) = revisions(&tx)?;
    let revision = resolve_revision(opts.revision, current, compacted)?;
    let range = KeyRange::new(prefix, opts.start_after.as_deref());
    let limit = opts.limit.filter(|l| *l > 0);

    // The rows visible at `revision`: the current table, or the latest log row of each key.
    let mut params = Vec::new();
    let source = if revision == current {
        format!(
            "SELECT key, value, create_revision, mod_revision FROM current WHERE {}",
            range.condition("key", &mut params)
        )
    } else {
        let bound: i64 = tx
            .query_row(MAX_ID_AT_REVISION, [revision], |row| row.get(0))
            .db()?;
        let condition = range.condition("key", &mut params);
        params.push(Value::Integer(bound));
        format!(
            "SELECT k.key AS key, k.value AS value, k.create_revision AS create_revision,
                    k.revision AS mod_revision
             FROM (SELECT MAX(id) AS id FROM kv WHERE {condition} AND id <= ? GROUP BY key)
                  AS latest
             JOIN kv AS k ON k.id = latest.id
             WHERE k.deleted = 0"
        )
    };
    let kvs = {
        let mut select_params = params.clone();
        select_params.push(Value::Integer(
            limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX)),
        ));
        let mut stmt = tx
            .prepare_cached(&format!("{source} ORDER BY key LIMIT ?"))
            .db()?;
        let rows = stmt
            .query_map(params_from_iter(select_params), |row| {
                Ok(KeyValue {
                    key: decode_key(row.get(0)?)?,
                    value: Bytes::from(row.get::<_, Vec<u8>>(1)?),
                    create_revision: row.get(2)?,
                    mod_revision: row.get(3)?,
                })
            })
            .db()?;
        rows.collect::<rusqlite::Result<Vec<_>>>().db()?
    };
    // Count the rest only when the page is full.
    let remaining = if limit == Some(kvs.len()) {
        let total: i64 = tx
            .prepare_cached(&format!("SELECT COUNT(*) FROM ({source})"))
            .and_then(|mut stmt| stmt.query_row(params_from_iter(params), |row| row.get(0)))
            .db()?;
        usize::try_from(total)
            .unwrap_or(0)
            .saturating_sub(kvs.len())
    } else {
        0
    };
    Ok(ListResult {
        kvs,
        revision,
        remaining,
    })
}

/// The matching events with revision in `(cursor, upto]`, read in chunks until at least one is
/// found; returns them with the revision read up to.
fn replay_chunk(
    conn: &mut Connection,
    range: &KeyRange,
    cursor: Revision,
    upto: Revision,
) -> Result<(VecDeque<Event>, Revision)> {
    let tx = conn.transaction().db()?;
    let compacted = meta(&tx, "compacted")?;
    if compacted > cursor {
        // Rows this watcher still needs may be gone.
        return Err(StoreError::Compacted {
            requested: cursor,
            compacted,
        });
    }
    let mut params = vec![Value::Null, Value::Null];
    let mut stmt = tx
        .prepare_cached(&format!(
            "SELECT k.revision, k.key, k.value, k.create_revision, k.deleted,
                    p.value, p.create_revision, p.revision
             FROM kv AS k LEFT JOIN kv AS p ON p.id = k.prev_id
             WHERE k.revision > ? AND k.revision <= ? AND {}
             ORDER BY k.revision, k.id",
            range.condition("k.key", &mut params)
        ))
        .db()?;
    let mut cursor = cursor;
    let mut events = VecDeque::new();
    while events.is_empty() && cursor < upto {
        let until = upto.min(cursor.saturating_add(REPLAY_CHUNK_REVISIONS));
        params[0] = Value::Integer(cursor);
        params[1] = Value::Integer(until);
        let rows = stmt
            .query_map(params_from_iter(params.iter()), |row| {
                let revision: Revision = row.get(0)?;
                let key = decode_key(row.get(1)?)?;
                let prev = match row.get::<_, Option<Revision>>(7)? {
                    Some(mod_revision) => Some(KeyValue {
                        key: key.clone(),
                        value: Bytes::from(row.get::<_, Vec<u8>>(5)?),
                        create_revision: row.get(6)?,
                        mod_revision,
                    }),
                    None => None,
                };
                if row.get::<_, bool>(4)? {
                    Ok(prev.map(|prev| Event::Delete { prev, revision }))
                } else {
                    Ok(Some(Event::Put {
                        kv: KeyValue {
                            key,
                            value: Bytes::from(row.get::<_, Vec<u8>>(2)?),
                            create_revision: row.get(3)?,
                            mod_revision: revision,
                        },
                        prev,
                    }))
                }
            })
            .db()?;
        for row in rows {
            let event = row.db()?.ok_or_else(|| {
                StoreError::Backend("a tombstone in the log lost its previous version".into())
            })?;
            events.push_back(event);
        }
        cursor = until;
    }
    Ok((events, cursor))
}

/// The events with revision in `(after, upto]` read from the log, lazily, chunk by chunk.
fn replay_from_log(
    readers: Arc<ReadPool>,
    prefix: &str,
    after: Revision,
    upto: Revision,
) -> WatchStream {
    struct Replay {
        readers: Arc<ReadPool>,
        range: Arc<KeyRange>,
        cursor: Revision,
        upto: Revision,
        buffer: VecDeque<Event>,
    }
    let replay = Replay {
        readers,
        range: Arc::new(KeyRange::new(prefix, None)),
        cursor: after,
        upto,
        buffer: VecDeque::new(),
    };
    stream::unfold(Some(replay), |state| async move {
        let mut replay = state?;
        loop {
            if let Some(event) = replay.buffer.pop_front() {
                return Some((Ok(event), Some(replay)));
            }
            if replay.cursor >= replay.upto {
                return None;
            }
            let range = replay.range.clone();
            let (cursor, upto) = (replay.cursor, replay.upto);
            match replay
                .readers
                .read(move |conn| replay_chunk(conn, &range, cursor, upto))
                .await
            {
                Ok((events, cursor)) => {
                    replay.buffer = events;
                    replay.cursor = cursor;
                }
                Err(err) => return Some((Err(err), None)),
            }
        }
    })
    .boxed()
}

/// Ends a stream right after its first error.
fn until_first_error(stream: WatchStream) -> WatchStream {
    stream
        .scan(false, |failed, item| {
            if *failed {
                return futures::future::ready(None);
            }
            *failed = item.is_err();
            futures::future::ready(Some(item))
        })
        .boxed()
}

#[async_trait]
impl Store for SqliteStore {
    async fn current_revision(&self) -> Result<Revision> {
        Ok(self.shared.revision.load(Ordering::Acquire))
    }

    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        let key = key.to_owned();
        self.readers
            .read(move |conn| {
                conn.prepare_cached(
                    "SELECT value, create_revision, mod_revision FROM current WHERE key = ?1",
                )
                .and_then(|mut stmt| {
                    stmt.query_row([key.as_bytes()], |row| {
                        Ok(KeyValue {
                            key: key.clone(),
                            value: Bytes::from(row.get::<_, Vec<u8>>(0)?),
                            create_revision: row.get(1)?,
                            mod_revision: row.get(2)?,
                        })
                    })
                    .optional()
                })
                .db()
            })
            .await
    }

    async fn list(&self, prefix: &str, opts: ListOptions) -> Result<ListResult> {
        let prefix = prefix.to_owned();
        self.readers
            .read(move |conn| list_in(conn, &prefix, &opts))
            .await
    }

    async fn count(&self, prefix: &str) -> Result<usize> {
        let range = KeyRange::new(prefix, None);
        self.readers
            .read(move |conn| {
                let mut params = Vec::new();
                let sql = format!(
                    "SELECT COUNT(*) FROM current WHERE {}",
                    range.condition("key", &mut params)
                );
                let count: i64 = conn
                    .prepare_cached(&sql)
                    .and_then(|mut stmt| stmt.query_row(params_from_iter(params), |row| row.get(0)))
                    .db()?;
                Ok(usize::try_from(count).unwrap_or(0))
            })
            .await
    }

    async fn txn(&self, txn: Txn) -> Result<TxnOutcome> {
        let (reply, outcome) = oneshot::channel();
        self.send(Request::Txn(txn, reply))?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    /// Events after `after`; a watch from a future revision is accepted and delivers its events
    /// once they happen.
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let compacted = self.shared.compacted.load(Ordering::Acquire);
        if after < compacted {
            return Err(StoreError::Compacted {
                requested: after,
                compacted,
            });
        }
        let subscription = self.shared.hub.subscribe(prefix, after);
        let live = subscription.live.into_stream();
        let stream = match subscription.backlog {
            Backlog::Ready(events) => stream::iter(events.into_iter().map(Ok)).chain(live).boxed(),
            Backlog::FromLog { upto } => replay_from_log(self.readers.clone(), prefix, after, upto)
                .chain(live)
                .boxed(),
        };
        Ok(until_first_error(stream))
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        let (reply, done) = oneshot::channel();
        self.send(Request::Compact(revision, reply))?;
        done.await.map_err(|_| StoreError::Closed)?
    }

    async fn compacted_revision(&self) -> Result<Revision> {
        Ok(self.shared.compacted.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_range_of_a_prefix_is_its_byte_successor() {
        let range = KeyRange::new("/registry/pods/", None);
        assert_eq!(range.lower, b"/registry/pods/");
        assert_eq!(range.upper.as_deref(), Some(&b"/registry/pods0"[..]));
        assert_eq!(KeyRange::new("", None).upper, None);
    }

    #[test]
    fn key_range_starts_strictly_after_start_after() {
        let range = KeyRange::new("/a/", Some("/a/x"));
        assert_eq!(range.lower, b"/a/x\0");
        // A start key before the prefix does not widen the range.
        let range = KeyRange::new("/b/", Some("/a/x"));
        assert_eq!(range.lower, b"/b/");
    }
}
