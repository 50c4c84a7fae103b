//! The PostgreSQL store: the shared contracts, and what only a store shared by several processes does.

use super::*;
use crate::store::Stores;
use crate::store::contract::{Clock, Guard};

/// A store on a fresh database; `None` when PostgreSQL is not provisioned and the tests run by hand.
fn open_fresh(limits: StoreLimits, clock: Clock) -> Option<(PostgresStore, String)> {
    let url = testing::fresh_database_blocking("the PostgreSQL store tests")?;
    let store = tokio::task::block_in_place(|| {
        Handle::current().block_on(PostgresStore::open(&url, limits, clock)).expect("the store opens")
    });
    Some((store, url))
}

use tokio::runtime::Handle;

fn make(limits: StoreLimits, clock: Clock) -> (Stores, Guard) {
    match open_fresh(limits.clone(), clock.clone()) {
        Some((store, _)) => (Stores::postgres(store), Box::new(())),
        // Skipped (a note was printed): the memory store stands in, so the contract still runs.
        None => (Stores::memory(crate::store::MemoryStore::with_clock(limits, clock)), Box::new(())),
    }
}

mod shared {
    use super::*;

    crate::store::contract::stream_store_tests!(make);
    crate::store::inbox_contract::inbox_store_tests!(make);
}
