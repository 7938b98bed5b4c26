//! The watch hub: fans committed events out to watchers, shared by every backend.
//!
//! The hub owns the list of registered watchers (each with a bounded channel and a key prefix),
//! and a ring of recent events so that a watch from the recent past is served from memory. A
//! backend publishes the events of each committed transaction, in revision order, after they are
//! durable. Registration happens under the same lock as publication, so a new watcher gets every
//! event exactly once: those up to the registration point from the ring (or, when the ring no
//! longer reaches back far enough, from the backend's log), and those after it live.
//!
//! The hub must never block or await while publishing: a watcher whose channel is full is
//! dropped on the spot, and its stream ends with [`StoreError::WatcherTooSlow`] once it has
//! drained what was buffered.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::stream::{BoxStream, StreamExt};
use tokio::sync::mpsc;

use crate::{Event, Result, Revision, StoreError};

/// Fans events out to watchers; see the module docs.
pub(crate) struct Hub {
    inner: Mutex<Inner>,
    channel_capacity: usize,
}

struct Inner {
    /// Recent events in publication order (revision order, op order within a revision).
    ring: VecDeque<Event>,
    /// `None`: keep every event until [`Hub::compact`].
    ring_capacity: Option<usize>,
    /// Every event with a revision above `floor` is in the ring.
    floor: Revision,
    /// The revision of the last event published.
    last_published: Revision,
    watchers: Vec<Watcher>,
}

struct Watcher {
    prefix: String,
    tx: mpsc::Sender<Event>,
    fate: Arc<Fate>,
}

/// Why a watcher's live channel was closed by the hub.
#[derive(Default)]
struct Fate {
    /// Non-zero: the watcher was dropped for being this many events behind.
    too_slow: AtomicUsize,
}

/// A new watcher: its backlog, then its live events.
pub(crate) struct Subscription {
    pub backlog: Backlog,
    pub live: Live,
}

/// The events a new watcher must see before its live events.
pub(crate) enum Backlog {
    /// Every matching event after the requested revision up to the registration point.
    Ready(Vec<Event>),
    /// The ring does not reach back far enough: the backend must read the matching events with
    /// revision in `(after, upto]` from its log.
    FromLog { upto: Revision },
}

/// The live part of a watch: every matching event published after registration.
pub(crate) struct Live {
    rx: mpsc::Receiver<Event>,
    fate: Arc<Fate>,
    after: Revision,
}

impl Hub {
    /// A hub whose ring keeps `ring_capacity` events (`None`: all until compaction), with every
    /// event above `floor` already known to be in the (empty) ring and `last_published` the
    /// backend's current revision.
    pub(crate) fn new(
        channel_capacity: usize,
        ring_capacity: Option<usize>,
        floor: Revision,
        last_published: Revision,
    ) -> Self {
        Self {
            inner: Mutex::new(Inner {
                ring: VecDeque::new(),
                ring_capacity,
                floor,
                last_published,
                watchers: Vec::new(),
            }),
            channel_capacity: channel_capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The hub's state stays consistent even if a holder panicked: every mutation is a single
        // push, pop or retain.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Deliver committed events, in revision order, to every matching watcher. Never blocks.
    pub(crate) fn publish(&self, events: impl IntoIterator<Item = Event>) {
        let capacity = self.channel_capacity;
        let mut inner = self.lock();
        for event in events {
            let revision = event.revision();
            inner.watchers.retain(|w| {
                if !event.key().starts_with(w.prefix.as_str()) {
                    return true;
                }
                match w.tx.try_send(event.clone()) {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(
                            prefix = %w.prefix,
                            revision,
                            behind = capacity,
                            "disconnecting a watcher that fell too far behind"
                        );
                        w.fate.too_slow.store(capacity, Ordering::Release);
                        false
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => false,
                }
            });
            inner.last_published = revision;
            inner.push_ring(event);
        }
    }

    /// Register a watcher of keys starting with `prefix`, for events with revision > `after`.
    pub(crate) fn subscribe(&self, prefix: &str, after: Revision) -> Subscription {
        let (tx, rx) = mpsc::channel(self.channel_capacity);
        let fate = Arc::new(Fate::default());
        let mut inner = self.lock();
        inner.watchers.retain(|w| !w.tx.is_closed());
        inner.watchers.push(Watcher {
            prefix: prefix.to_owned(),
            tx,
            fate: fate.clone(),
        });
        let backlog = if after >= inner.floor {
            let start = inner.ring.partition_point(|e| e.revision() <= after);
            Backlog::Ready(
                inner
                    .ring
                    .range(start..)
                    .filter(|e| e.key().starts_with(prefix))
                    .cloned()
                    .collect(),
            )
        } else {
            Backlog::FromLog {
                upto: inner.last_published,
            }
        };
        Subscription {
            backlog,
            live: Live { rx, fate, after },
        }
    }

    /// Forget ring events at or below `revision` (no watch may start below it any more).
    pub(crate) fn compact(&self, revision: Revision) {
        let mut inner = self.lock();
        while inner.ring.front().is_some_and(|e| e.revision() <= revision) {
            inner.ring.pop_front();
        }
        inner.floor = inner.floor.max(revision);
    }

    /// How many watchers are registered (including ones whose stream was dropped but not yet
    /// noticed).
    #[cfg(test)]
    pub(crate) fn watcher_count(&self) -> usize {
        self.lock().watchers.len()
    }
}

impl Inner {
    fn push_ring(&mut self, event: Event) {
        let Some(capacity) = self.ring_capacity else {
            self.ring.push_back(event);
            return;
        };
        if capacity == 0 {
            self.floor = event.revision();
            return;
        }
        self.ring.push_back(event);
        while self.ring.len() > capacity {
            let Some(evicted) = self.ring.pop_front() else {
                break;
            };
            // Evict whole revisions so that `floor` stays exact.
            self.floor = evicted.revision();
            while self
                .ring
                .front()
                .is_some_and(|e| e.revision() == self.floor)
            {
                self.ring.pop_front();
            }
        }
    }
}

impl Live {
    /// The live events as a stream; it ends with [`StoreError::WatcherTooSlow`] if the hub
    /// dropped the watcher, or [`StoreError::Closed`] if the store went away.
    pub(crate) fn into_stream(self) -> BoxStream<'static, Result<Event>> {
        let after = self.after;
        futures::stream::unfold(Some(self), move |state| async move {
            let mut live = state?;
            loop {
                match live.rx.recv().await {
                    Some(event) if event.revision() <= after => continue,
                    Some(event) => return Some((Ok(event), Some(live))),
                    None => {
                        let err = match live.fate.too_slow.load(Ordering::Acquire) {
                            0 => StoreError::Closed,
                            behind => StoreError::WatcherTooSlow(behind),
                        };
                        return Some((Err(err), None));
                    }
                }
            }
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::KeyValue;

    fn put(key: &str, revision: Revision) -> Event {
        Event::Put {
            kv: KeyValue {
                key: key.to_owned(),
                value: Bytes::from_static(b"v"),
                create_revision: revision,
                mod_revision: revision,
            },
            prev: None,
        }
    }

    fn ready(sub: &Subscription) -> Vec<Revision> {
        match &sub.backlog {
            Backlog::Ready(events) => events.iter().map(Event::revision).collect(),
            Backlog::FromLog { upto } => panic!("expected a ready backlog, got FromLog({upto})"),
        }
    }

    #[test]
    fn ring_evicts_whole_revisions_and_reports_the_floor() {
        let hub = Hub::new(8, Some(2), 1, 1);
        hub.publish([put("/a", 2), put("/b", 2), put("/c", 3), put("/d", 4)]);
        assert_eq!(ready(&hub.subscribe("/", 2)), vec![3, 4]);
        match hub.subscribe("/", 1).backlog {
            Backlog::FromLog { upto } => assert_eq!(upto, 4),
            Backlog::Ready(_) => panic!("revision 2 was evicted from the ring"),
        }
    }

    #[test]
    fn closed_watchers_are_forgotten() {
        let hub = Hub::new(8, None, 0, 1);
        let sub = hub.subscribe("/a", 1);
        drop(sub);
        hub.publish([put("/a", 2)]);
        assert_eq!(hub.watcher_count(), 0);
    }

    #[test]
    fn full_watcher_is_dropped_without_blocking() {
        let hub = Hub::new(2, None, 0, 1);
        let _sub = hub.subscribe("/", 1);
        hub.publish((2..10).map(|r| put("/a", r)));
        assert_eq!(hub.watcher_count(), 0);
    }
}
