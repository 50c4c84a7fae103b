//! The broker: appends publications to their streams' history and fans them out, reads history, and knows which
//! streams this process listens to. Publications come *back* to the process through a
//! [`BrokerEventHandler`] — also the ones this process published — so a networked broker (Redis, a later issue)
//! can fan out across processes without the rest of the server changing.
//!
//! [`LocalBroker`] is the single-process broker: a [`StreamStore`] for history, and the handler called in commit
//! order for each stream (the store's [`OnCommit`](crate::store::OnCommit)). It keeps no lock of its own.

use std::fmt;
use std::sync::{Arc, OnceLock, Weak};

use crate::model::{AppendOutcome, Committed, Delivery, EncodedFrame, HistoryRead, Position, Publication};
use crate::store::{Append, BoxFuture, StoreError, StoredPage, StreamStore};

/// Receives the publications of the streams this process listens to.
pub trait BrokerEventHandler: Send + Sync + 'static {
    /// A notification was committed to `committed.stream` (or, ephemeral, placed in it). For one stream, calls
    /// come in offset order.
    fn handle_publication(&self, committed: &Committed);

    /// Several committed notifications in the order they were committed (one stream's in offset order), as
    /// consecutive [`BrokerEventHandler::handle_publication`] calls; a broker hands on together what arrived
    /// together, so that the handler can take each connection's queue once for all of them.
    fn handle_publications(&self, batch: &[Committed]) {
        for committed in batch {
            self.handle_publication(committed);
        }
    }

    /// `user`'s inbox changed: `frame` is the encoded `inbox` frame (protocol §13.3) for this process's
    /// connections that watch the user's inbox.
    fn handle_inbox(&self, user: &str, frame: &EncodedFrame);
}

/// Publish/subscribe with history.
pub trait Broker: Send + Sync + 'static {
    /// Sets the handler publications come back through; called once, before anything is published.
    fn register_handler(&self, handler: Weak<dyn BrokerEventHandler>);

    /// Commits the publications of `batch` to their streams' history (ephemeral ones are not written) and hands
    /// each committed stream to the handler of every process listening to it. Completes, one result per
    /// publication in order, once they are committed and handed to this process's handler.
    fn publish<'a>(&'a self, batch: Vec<Arc<Publication>>) -> BoxFuture<'a, Vec<Result<AppendOutcome, StoreError>>>;

    /// Reads a stream's state and replayable notifications (see [`StreamStore::read`]).
    fn history<'a>(
        &'a self,
        stream: &'a str,
        since: Option<Position<'a>>,
    ) -> BoxFuture<'a, Result<HistoryRead, StoreError>>;

    /// A page of what `stream` stores (see [`StreamStore::page`]).
    fn page<'a>(
        &'a self,
        stream: &'a str,
        after: Option<Position<'a>>,
        limit: usize,
    ) -> BoxFuture<'a, Result<StoredPage, StoreError>>;

    /// This process has a subscriber of `stream`: called for every local subscribe (before its history read), and
    /// completes once the broker listens to the stream. Idempotent.
    fn subscribe<'a>(&'a self, stream: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;

    /// This process has no subscriber of `stream` any more.
    fn unsubscribe(&self, stream: &str);

    /// Hands a change of `user`'s inbox (its encoded `inbox` frame) to the handler of every process, which passes
    /// it to the connections watching that inbox. Inbox frames carry versions, so processes may receive them in
    /// any order.
    fn publish_inbox(&self, user: &str, frame: EncodedFrame);
}

/// Publishes `batch` in its own order, for a broker on `store`: runs of stored publications (buffered, or with an
/// idempotency key) are committed together, each with the [`OnCommit`](crate::store::OnCommit) `on_commit` makes
/// for it; an ephemeral one without a key is placed by `place` once everything before it is committed. So a batch
/// reaches subscribers in its own order.
pub(crate) async fn publish_in_order<'a>(
    store: &'a dyn StreamStore,
    batch: Vec<Arc<Publication>>,
    mut on_commit: impl FnMut(&Arc<Publication>) -> crate::store::OnCommit,
    mut place: impl FnMut(Arc<Publication>) -> BoxFuture<'a, Result<AppendOutcome, StoreError>>,
) -> Vec<Result<AppendOutcome, StoreError>> {
    let mut results = Vec::with_capacity(batch.len());
    let mut run = Vec::new();
    for publication in batch {
        if publication.is_buffered() || publication.idempotent {
            let on_commit = on_commit(&publication);
            run.push(Append { publication, on_commit });
            continue;
        }
        if !run.is_empty() {
            results.extend(store.append(std::mem::take(&mut run)).await);
        }
        results.push(place(publication).await);
    }
    if !run.is_empty() {
        results.extend(store.append(run).await);
    }
    results
}

/// The broker of a single process: every publication is handled here, in commit order.
pub struct LocalBroker {
    store: Arc<dyn StreamStore>,
    handler: OnceLock<Weak<dyn BrokerEventHandler>>,
}

impl fmt::Debug for LocalBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBroker").finish_non_exhaustive()
    }
}

impl LocalBroker {
    /// A broker keeping history in `store`.
    pub fn new(store: Arc<dyn StreamStore>) -> Self {
        LocalBroker { store, handler: OnceLock::new() }
    }

    fn handler(&self) -> Weak<dyn BrokerEventHandler> {
        self.handler.get().cloned().unwrap_or_else(|| Weak::<NoHandler>::new())
    }

    /// An ephemeral publication without an idempotency key touches no store: it is placed in the streams'
    /// current epochs and handed on at once.
    async fn place_ephemeral(&self, p: Arc<Publication>) -> Result<AppendOutcome, StoreError> {
        let handler = self.handler().upgrade();
        let mut deliveries = Vec::with_capacity(p.streams.len());
        for stream in &p.streams {
            let epoch = self.store.epoch(stream).await?;
            if let Some(handler) = &handler {
                handler.handle_publication(&Committed {
                    id: p.id.clone(),
                    stream: Arc::from(stream.as_str()),
                    epoch: epoch.clone(),
                    offset: None,
                    frame: p.encode(stream, &epoch, None),
                });
            }
            deliveries.push(Delivery { stream: stream.clone(), epoch: epoch.to_string(), offset: None });
        }
        Ok(AppendOutcome::appended(deliveries))
    }
}

/// The handler of a broker nobody registered one with: publications go nowhere.
struct NoHandler;

impl BrokerEventHandler for NoHandler {
    fn handle_publication(&self, _committed: &Committed) {}

    fn handle_inbox(&self, _user: &str, _frame: &EncodedFrame) {}
}

impl Broker for LocalBroker {
    fn register_handler(&self, handler: Weak<dyn BrokerEventHandler>) {
        let _ = self.handler.set(handler);
    }

    fn publish<'a>(&'a self, batch: Vec<Arc<Publication>>) -> BoxFuture<'a, Vec<Result<AppendOutcome, StoreError>>> {
        let on_commit = |publication: &Arc<Publication>| -> crate::store::OnCommit {
            let handler = self.handler();
            let request_id = publication.request_id.clone();
            Box::new(move |committed: &Committed| {
                if let Some(handler) = handler.upgrade() {
                    // The fan-out runs after the commit, outside the request: its logs carry the request id.
                    let _span =
                        request_id.as_deref().map(|id| tracing::debug_span!("delivery", request_id = id).entered());
                    handler.handle_publication(committed);
                }
            })
        };
        Box::pin(publish_in_order(&*self.store, batch, on_commit, |p| Box::pin(self.place_ephemeral(p))))
    }

    fn history<'a>(
        &'a self,
        stream: &'a str,
        since: Option<Position<'a>>,
    ) -> BoxFuture<'a, Result<HistoryRead, StoreError>> {
        self.store.read(stream, since)
    }

    fn page<'a>(
        &'a self,
        stream: &'a str,
        after: Option<Position<'a>>,
        limit: usize,
    ) -> BoxFuture<'a, Result<StoredPage, StoreError>> {
        self.store.page(stream, after, limit)
    }

    fn subscribe<'a>(&'a self, _stream: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        // Every publication of this process is handled in this process: nothing to listen to.
        Box::pin(std::future::ready(Ok(())))
    }

    fn unsubscribe(&self, _stream: &str) {}

    fn publish_inbox(&self, user: &str, frame: EncodedFrame) {
        if let Some(handler) = self.handler().upgrade() {
            handler.handle_inbox(user, &frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tidings_core::protocol::Persistence;

    use super::*;
    use crate::store::contract::{limits, publication};
    use crate::store::{MemoryStore, StreamStore};

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(String, Option<u64>, String)>>);

    impl BrokerEventHandler for Recorder {
        fn handle_publication(&self, c: &Committed) {
            self.0.lock().unwrap().push((c.stream.to_string(), c.offset, c.frame.as_str().to_owned()));
        }

        fn handle_inbox(&self, user: &str, frame: &EncodedFrame) {
            self.0.lock().unwrap().push((format!("inbox:{user}"), None, frame.as_str().to_owned()));
        }
    }

    #[tokio::test]
    async fn publications_come_back_through_the_handler_in_order_ephemeral_ones_without_the_store() {
        let store: Arc<dyn StreamStore> = Arc::new(MemoryStore::new(limits(10)));
        let broker = LocalBroker::new(store.clone());
        let recorder = Arc::new(Recorder::default());
        let weak: Weak<dyn BrokerEventHandler> = Arc::downgrade(&(recorder.clone() as Arc<dyn BrokerEventHandler>));
        broker.register_handler(weak);
        let now = crate::util::now_ms();
        let results = broker
            .publish(vec![
                publication("a", &["user:u", "topic:t"], Persistence::Bufferable, now),
                publication("typing", &["user:u"], Persistence::Ephemeral, now),
                publication("b", &["user:u"], Persistence::Persistent, now),
            ])
            .await;
        assert!(results.iter().all(Result::is_ok));
        let seen: Vec<(String, Option<u64>)> =
            recorder.0.lock().unwrap().iter().map(|(s, o, _)| (s.clone(), *o)).collect();
        assert_eq!(
            seen,
            [
                ("user:u".into(), Some(1)),
                ("topic:t".into(), Some(1)),
                ("user:u".into(), None),
                ("user:u".into(), Some(2))
            ]
        );
        let epoch = store.epoch("user:u").await.unwrap();
        let read = broker.history("user:u", Some((&epoch, 0))).await.unwrap();
        assert_eq!(read.entries.iter().map(|e| e.offset).collect::<Vec<_>>(), [1, 2], "ephemeral ones are not kept");
    }

    #[tokio::test]
    async fn without_a_handler_publishing_still_commits() {
        let broker = LocalBroker::new(Arc::new(MemoryStore::new(limits(10))));
        let results = broker.publish(vec![publication("a", &["user:u"], Persistence::Bufferable, 1)]).await;
        assert!(matches!(&results[0], Ok(AppendOutcome::Appended { deliveries: d, .. }) if d[0].offset == Some(1)));
    }
}
