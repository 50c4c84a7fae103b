//! [`MemoryStore`]: every concern in process memory. Nothing survives the process: after a restart every stream
//! is in a new epoch. For tests and benchmarks, and for deployments that accept that.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use super::memory_push::PushTables;
use super::{AckStore, Append, BoxFuture, DeviceStore, StoreError, StreamStore, ready};
use crate::id_ring::IdRing;
use crate::model::{
    AckRecord, AppendOutcome, Committed, Delivery, EncodedFrame, HistoryEntry, HistoryRead, IdFloor, Position,
    PushRecord, StreamState,
};
use crate::planner::RowKey;
use crate::util::{new_epoch, now_ms};

/// Number of independently locked shards of the stream table.
const SHARDS: usize = 32;

/// Bounds of a store: how much history, how many idempotency keys and acks it keeps.
#[derive(Clone, Debug)]
pub struct StoreLimits {
    /// Most notifications replayable per stream.
    pub replay_max_items: usize,
    /// Oldest notification replayable per stream.
    pub replay_max_age: Duration,
    /// How long an idempotency key is remembered.
    pub idempotency_window: Duration,
    /// Most idempotency keys remembered (the oldest are forgotten first).
    pub idempotency_max_keys: usize,
    /// Most notification ids with recorded acks (the oldest are forgotten first).
    pub acks_max_ids: usize,
    /// Most acks kept per notification id.
    pub acks_max_per_id: usize,
    /// How long a durable store keeps `persistent` notifications (`bufferable` ones are kept within the replay
    /// limits). The memory store keeps both within the replay limits.
    pub persistent_retention: Duration,
    /// How long a durable store keeps acks. The memory store bounds them by count instead.
    pub ack_retention: Duration,
    /// How long inbox items are kept (from when they were added).
    pub inbox_retention: Duration,
    /// Most items one user's inbox holds (archived ones included); beyond it the oldest are removed.
    pub inbox_max_items: usize,
    /// How long the op id of an inbox change is remembered (a change resent with it later is applied again).
    pub inbox_op_window: Duration,
}

impl StoreLimits {
    /// The limits configured in `config`.
    pub fn from_config(config: &crate::ServerConfig) -> Self {
        StoreLimits {
            replay_max_items: config.replay_max_items,
            replay_max_age: config.replay_max_age,
            idempotency_window: config.idempotency_window,
            idempotency_max_keys: config.idempotency_max_keys,
            acks_max_ids: config.acks_max_ids,
            acks_max_per_id: config.acks_max_per_id,
            persistent_retention: config.persistent_retention,
            ack_retention: config.ack_retention,
            inbox_retention: config.inbox_retention,
            inbox_max_items: config.inbox_max_items,
            inbox_op_window: INBOX_OP_WINDOW,
        }
    }
}

/// How long the op id of an inbox change is remembered: a week, longer than a device usually stays offline with
/// changes queued.
pub const INBOX_OP_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;
type StreamShard = Mutex<HashMap<Box<str>, StreamLog>>;

/// Stream logs, idempotency keys, acks and push addresses in process memory. All streams share the store's
/// epoch, drawn when the store is created: a new store (a restart) is a new epoch everywhere.
pub struct MemoryStore {
    pub(super) limits: StoreLimits,
    clock: Clock,
    epoch: Arc<str>,
    hasher: RandomState,
    streams: Box<[StreamShard]>,
    acks: Mutex<AckTable>,
    push: Mutex<HashMap<String, Vec<PushRecord>>>,
    ids: Mutex<IdTable>,
    /// Settings, pending pushes, digest windows, the deliveries log (`memory_push`).
    push_tables: Mutex<PushTables>,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore").field("limits", &self.limits).field("epoch", &self.epoch).finish_non_exhaustive()
    }
}

/// One locked shard of the stream logs.
type ShardGuard<'a> = MutexGuard<'a, HashMap<Box<str>, StreamLog>>;

struct StreamLog {
    head: u64,
    /// Frames with offsets `head + 1 - entries.len() ..= head`, and when each was created.
    entries: VecDeque<(u64, EncodedFrame)>,
    /// The greatest server-generated id appended (see [`IdFloor`]).
    last_id: IdFloor,
}

impl StreamLog {
    fn new() -> Self {
        StreamLog { head: 0, entries: VecDeque::new(), last_id: IdFloor::default() }
    }

    fn oldest(&self) -> u64 {
        self.head + 1 - self.entries.len() as u64
    }

    fn evict(&mut self, limits: &StoreLimits, now_ms: u64) {
        while self.entries.len() > limits.replay_max_items {
            self.entries.pop_front();
        }
        let max_age_ms = limits.replay_max_age.as_millis() as u64;
        while let Some((created, _)) = self.entries.front() {
            if now_ms.saturating_sub(*created) < max_age_ms {
                break;
            }
            self.entries.pop_front();
        }
        if self.entries.is_empty() && self.entries.capacity() > 64 {
            self.entries = VecDeque::new();
        }
    }
}

#[derive(Default)]
struct AckTable {
    /// By id, in the order they were first acked (the oldest are evicted first). foldhash, seeded per process: a
    /// broadcast is looked up here once per subscriber's ack, and SipHash was 5 % of a server's CPU in S6.
    by_id: IdRing<String, AckEntry>,
    /// Records held across all ids.
    records: usize,
    /// The `(user, device)` pairs that records refer to.
    devices: AckDevices,
}

/// The acks of one notification: which devices (indexes into [`AckDevices`]) acked it, and when. A broadcast is
/// acked by every subscriber, so membership is checked with [`Members`] once there are more than a few records (a
/// linear scan made acks quadratic per broadcast). Records hold a 4-byte device index instead of two `Arc`s:
/// the two atomic reference-count increments per ack were half the cost of recording it (a locked instruction
/// waits for the stores before it), about 10 % of the server's CPU in S2.
#[derive(Default)]
struct AckEntry {
    records: Vec<(u32, u64)>,
    members: Option<Members>,
}

/// Which devices acked one notification, once it has more than a few records.
enum Members {
    /// Bit `i` set: device index `i` acked. Device indexes are dense (freed ones are reused), so a broadcast's
    /// acks fit in one bit per device: a test and a set per ack, no hashing and no regrowing by doubling (a hash
    /// set was about 5 % of a server's CPU in S6, a third of it rehashing).
    Bits(Vec<u64>),
    /// For acks from a few devices with large indexes, where the bits would cost more memory than the records.
    Set(HashSet<u32, BuildHasherDefault<IndexHasher>>),
}

impl Members {
    /// Members holding `records` (none repeated); bits unless they would outweigh the records.
    fn of(records: &[(u32, u64)]) -> Members {
        let mut members = Members::Bits(Vec::new());
        for &(who, _) in records {
            members.insert(who, records.len());
        }
        members
    }

    /// Adds `who` to a set of `len` members; returns whether it was new.
    fn insert(&mut self, who: u32, len: usize) -> bool {
        match self {
            Members::Bits(words) => {
                let word = (who / 64) as usize;
                if word >= words.len() {
                    // At most about as many bytes of bits as the records hold (16 bytes each).
                    if word > 2 * len + 16 {
                        let mut set: HashSet<u32, BuildHasherDefault<IndexHasher>> =
                            HashSet::with_capacity_and_hasher(len + 1, BuildHasherDefault::default());
                        for (i, &w) in words.iter().enumerate() {
                            let mut bits = w;
                            while bits != 0 {
                                set.insert(i as u32 * 64 + bits.trailing_zeros());
                                bits &= bits - 1;
                            }
                        }
                        let added = set.insert(who);
                        *self = Members::Set(set);
                        return added;
                    }
                    words.resize(word + 1, 0);
                }
                let bit = 1u64 << (who % 64);
                let added = words[word] & bit == 0;
                words[word] |= bit;
                added
            }
            Members::Set(set) => set.insert(who),
        }
    }
}

/// Hashes small integers (device indexes) with one multiplication: the table takes the high bits as the tag
/// and the low bits as the bucket, so consecutive indexes must not map to consecutive hashes.
#[derive(Default)]
struct IndexHasher(u64);

impl Hasher for IndexHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u32(&mut self, v: u32) {
        self.0 = (self.0 ^ u64::from(v)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(32);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Interned `(user, device)` pairs, each counted by the records that refer to it; a pair no record refers to
/// any more is dropped and its index reused.
#[derive(Default)]
struct AckDevices {
    slots: Vec<Option<AckDevice>>,
    /// `ack_member(user, device)` → index into `slots`.
    index: HashMap<u128, u32, BuildHasherDefault<FoldHasher>>,
    free: Vec<u32>,
}

struct AckDevice {
    user: Arc<str>,
    device: Arc<str>,
    member: u128,
    /// References: records, plus ack frames being recorded.
    records: usize,
}

impl AckDevices {
    /// The index of `(user, device)`, interning it if needed.
    fn intern(&mut self, user: &Arc<str>, device: &Arc<str>) -> u32 {
        let member = ack_member(user, device);
        if let Some(&i) = self.index.get(&member) {
            return i;
        }
        let slot = Some(AckDevice { user: user.clone(), device: device.clone(), member, records: 0 });
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i
            }
            None => {
                self.slots.push(slot);
                (self.slots.len() - 1) as u32
            }
        };
        self.index.insert(member, i);
        i
    }

    fn get(&self, i: u32) -> &AckDevice {
        self.slots[i as usize].as_ref().expect("records refer to live devices")
    }

    /// Takes a reference to pair `i` (a record, or an ack frame being recorded).
    fn hold(&mut self, i: u32) {
        self.slots[i as usize].as_mut().expect("held pairs are live").records += 1;
    }

    /// Drops a reference to pair `i`; the pair is forgotten with its last one.
    fn release(&mut self, i: u32) {
        let d = self.slots[i as usize].as_mut().expect("held pairs are live");
        d.records -= 1;
        if d.records == 0 {
            self.index.remove(&d.member);
            self.slots[i as usize] = None;
            self.free.push(i);
        }
    }
}

/// The key of `(user, device)` in [`AckDevices::index`]: the 128-bit xxh3 hash of the pair, computed once per
/// ack frame (two different devices collide with a chance of about 2⁻¹²⁸ per pair).
fn ack_member(user: &str, device: &str) -> u128 {
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    h.update(user.as_bytes());
    h.update(&[0xff]); // not valid UTF-8: separates the two strings unambiguously
    h.update(device.as_bytes());
    h.digest128()
}

/// Hashes keys that are already hashes by folding their halves.
#[derive(Default)]
struct FoldHasher(u64);

impl Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word)).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
        }
    }

    fn write_u128(&mut self, v: u128) {
        self.0 ^= (v as u64) ^ ((v >> 64) as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// Above this many records an entry keeps its [`Members`].
const ACK_SET_FROM: usize = 8;
/// Most ack records kept in all (the oldest notifications' acks are forgotten first).
const MAX_ACK_RECORDS: usize = 1_000_000;

impl AckEntry {
    /// An entry with room for as many records as `previous` holds, at most `max`: consecutive notifications (a
    /// broadcast after a broadcast) are acked by about as many devices; growing the records by doubling showed in
    /// S6's server profile.
    fn sized_like(previous: Option<&AckEntry>, max: usize) -> AckEntry {
        let records = previous.map_or(0, |p| p.records.len()).min(max);
        AckEntry { records: Vec::with_capacity(records), members: None }
    }

    /// Records the first ack of device `who`; returns whether a record was added.
    fn record(&mut self, who: u32, at: u64, max: usize) -> bool {
        if self.records.len() >= max {
            return false;
        }
        let added = match &mut self.members {
            Some(members) => members.insert(who, self.records.len()),
            None => !self.records.iter().any(|&(w, _)| w == who),
        };
        if !added {
            return false;
        }
        self.records.push((who, at));
        if self.members.is_none() && self.records.len() > ACK_SET_FROM {
            self.members = Some(Members::of(&self.records));
        }
        true
    }
}

#[derive(Default)]
struct IdTable {
    by_id: HashMap<Arc<str>, IdEntry>,
    /// `(id, claimed_at)` in claim order, for expiry. Entries whose time no longer matches the table are stale.
    order: VecDeque<(Arc<str>, u64)>,
}

struct IdEntry {
    claimed_at: u64,
    deliveries: Vec<Delivery>,
}

impl IdTable {
    /// Forgets expired keys (and keys beyond the cap), oldest first; then the deliveries of `id` if it is known.
    fn lookup(&mut self, id: &str, now: u64, limits: &StoreLimits) -> Option<Vec<Delivery>> {
        let window_ms = limits.idempotency_window.as_millis() as u64;
        while let Some((oldest, claimed_at)) = self.order.front() {
            let expired = now.saturating_sub(*claimed_at) >= window_ms;
            if !expired && self.by_id.len() < limits.idempotency_max_keys.max(1) {
                break;
            }
            if self.by_id.get(oldest).is_some_and(|e| e.claimed_at == *claimed_at) {
                self.by_id.remove(oldest);
            }
            self.order.pop_front();
        }
        match self.by_id.get(id) {
            Some(entry) if now.saturating_sub(entry.claimed_at) < window_ms => Some(entry.deliveries.clone()),
            _ => None,
        }
    }

    fn insert(&mut self, id: &Arc<str>, now: u64, deliveries: Vec<Delivery>) {
        self.by_id.insert(id.clone(), IdEntry { claimed_at: now, deliveries });
        self.order.push_back((id.clone(), now));
    }
}

impl MemoryStore {
    /// The store's limits.
    pub fn limits(&self) -> &StoreLimits {
        &self.limits
    }

    /// The clock the store reads the time from.
    pub(crate) fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// An empty store with these limits.
    pub fn new(limits: StoreLimits) -> Self {
        Self::with_clock(limits, Arc::new(now_ms))
    }

    /// An empty store that reads the time (ms since the Unix epoch) from `clock`; for tests of age limits.
    pub fn with_clock(limits: StoreLimits, clock: Arc<dyn Fn() -> u64 + Send + Sync>) -> Self {
        MemoryStore {
            limits,
            clock,
            epoch: Arc::from(new_epoch()),
            hasher: RandomState::new(),
            streams: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            acks: Mutex::new(AckTable::default()),
            push: Mutex::new(HashMap::new()),
            ids: Mutex::new(IdTable::default()),
            push_tables: Mutex::new(PushTables::default()),
        }
    }

    pub(super) fn push_tables(&self) -> MutexGuard<'_, PushTables> {
        lock(&self.push_tables)
    }

    fn shard(&self, stream: &str) -> ShardGuard<'_> {
        lock(&self.streams[self.shard_index(stream)])
    }

    fn shard_index(&self, stream: &str) -> usize {
        self.hasher.hash_one(stream) as usize % SHARDS
    }

    /// Appends one publication. Idempotent publications hold the key table for the whole append, so that two
    /// publishes with one key cannot both pass. A buffered one holds the shards of all its streams (taken in shard
    /// order) while its id is checked against theirs ([`IdFloor`]), its offsets are assigned and `on_commit` runs,
    /// so one stream's commits reach `on_commit` in offset order, with server-generated ids in the same order.
    fn append_one(&self, append: Append) -> AppendOutcome {
        let Append { publication: p, mut on_commit } = append;
        let now = (self.clock)();
        let mut keys = p.idempotent.then(|| lock(&self.ids));
        if let Some(table) = keys.as_mut()
            && let Some(deliveries) = table.lookup(&p.id, now, &self.limits)
        {
            return AppendOutcome::Duplicate(deliveries);
        }
        let mut deliveries = Vec::with_capacity(p.streams.len());
        let mut reissued = None;
        if p.is_buffered() {
            let mut indexes: Vec<usize> = p.streams.iter().map(|s| self.shard_index(s)).collect();
            indexes.sort_unstable();
            indexes.dedup();
            let mut shards: Vec<(usize, ShardGuard<'_>)> =
                indexes.into_iter().map(|i| (i, lock(&self.streams[i]))).collect();
            let mut floor = IdFloor::default();
            for stream in &p.streams {
                let i = self.shard_index(stream);
                if let Some((_, shard)) = shards.iter().find(|(at, _)| *at == i)
                    && let Some(log) = shard.get(stream.as_str())
                {
                    floor.join(&log.last_id);
                }
            }
            let p = match floor.reissue(&p) {
                Some(id) => {
                    let renamed = Arc::new(p.with_id(&id));
                    reissued = Some(renamed.id.clone());
                    renamed
                }
                None => p.clone(),
            };
            for stream in &p.streams {
                let i = self.shard_index(stream);
                let shard = &mut shards.iter_mut().find(|(at, _)| *at == i).expect("locked above").1;
                let log = match shard.get_mut(stream.as_str()) {
                    Some(log) => log,
                    None => shard.entry(Box::from(stream.as_str())).or_insert_with(StreamLog::new),
                };
                let offset = log.head + 1;
                let frame = p.encode(stream, &self.epoch, Some(offset));
                log.head = offset;
                if !p.idempotent {
                    log.last_id.raise(&p.id);
                }
                log.entries.push_back((p.created_at(), frame.clone()));
                log.evict(&self.limits, p.created_at().max(now));
                on_commit(&Committed {
                    id: p.id.clone(),
                    stream: Arc::from(stream.as_str()),
                    epoch: self.epoch.clone(),
                    offset: Some(offset),
                    frame,
                });
                deliveries.push(Delivery {
                    stream: stream.clone(),
                    epoch: self.epoch.to_string(),
                    offset: Some(offset),
                });
            }
        } else {
            for stream in &p.streams {
                let frame = p.encode(stream, &self.epoch, None);
                on_commit(&Committed {
                    id: p.id.clone(),
                    stream: Arc::from(stream.as_str()),
                    epoch: self.epoch.clone(),
                    offset: None,
                    frame,
                });
                deliveries.push(Delivery { stream: stream.clone(), epoch: self.epoch.to_string(), offset: None });
            }
        }
        if let Some(mut table) = keys {
            table.insert(&p.id, now, deliveries.clone());
        }
        AppendOutcome::Appended { deliveries, reissued }
    }

    fn read_now(&self, stream: &str, since: Option<Position<'_>>) -> HistoryRead {
        let now = (self.clock)();
        let mut shard = self.shard(stream);
        let Some(log) = shard.get_mut(stream) else {
            return HistoryRead {
                state: StreamState { epoch: self.epoch.clone(), head: 0, oldest: 1 },
                entries: Vec::new(),
            };
        };
        log.evict(&self.limits, now);
        let state = StreamState { epoch: self.epoch.clone(), head: log.head, oldest: log.oldest() };
        let entries = match since {
            None => Vec::new(),
            Some((epoch, offset)) => {
                let after = if *self.epoch == *epoch && offset <= log.head { offset } else { 0 };
                let skip = (after + 1).saturating_sub(state.oldest) as usize;
                (state.oldest.max(after + 1)..)
                    .zip(log.entries.iter().skip(skip))
                    .map(|(offset, (_, frame))| HistoryEntry { offset, frame: frame.clone() })
                    .collect()
            }
        };
        HistoryRead { state, entries }
    }

    pub(crate) fn record_acks_now(&self, user: &Arc<str>, device: &Arc<str>, ids: &[String], at_ms: u64) {
        let mut table = lock(&self.acks);
        let AckTable { by_id, records, devices } = &mut *table;
        let max = self.limits.acks_max_per_id;
        let who = devices.intern(user, device);
        // Held while the frame is recorded, so evicting this device's older records cannot free its slot.
        devices.hold(who);
        let mut hint = None;
        for id in ids {
            let found = by_id.find_next(id, &mut hint);
            let added = match found.and_then(|seq| by_id.get_mut(seq)) {
                Some(entry) => entry.record(who, at_ms, max),
                None => {
                    let mut entry = AckEntry::sized_like(by_id.back(), max);
                    let added = entry.record(who, at_ms, max);
                    hint = Some(by_id.push_back(id.clone(), entry));
                    added
                }
            };
            if added {
                *records += 1;
                devices.hold(who);
            }
            while by_id.len() > self.limits.acks_max_ids || *records > MAX_ACK_RECORDS {
                let Some((_, gone)) = by_id.pop_front() else { break };
                *records -= gone.records.len();
                for (w, _) in gone.records {
                    devices.release(w);
                }
            }
        }
        devices.release(who);
    }

    pub(crate) fn acks_now(&self, id: &str) -> Vec<AckRecord> {
        let table = lock(&self.acks);
        let Some(entry) = table.by_id.value(id) else { return Vec::new() };
        entry
            .records
            .iter()
            .map(|&(w, at)| {
                let d = table.devices.get(w);
                AckRecord { user: d.user.clone(), device: d.device.clone(), at }
            })
            .collect()
    }
}

/// Locks a mutex, ignoring poisoning: every critical section here leaves the data consistent at each step.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl StreamStore for MemoryStore {
    fn append<'a>(&'a self, batch: Vec<Append>) -> BoxFuture<'a, Vec<Result<AppendOutcome, StoreError>>> {
        ready(batch.into_iter().map(|append| Ok(self.append_one(append))).collect())
    }

    fn epoch<'a>(&'a self, _stream: &'a str) -> BoxFuture<'a, Result<Arc<str>, StoreError>> {
        ready(Ok(self.epoch.clone()))
    }

    fn read<'a>(
        &'a self,
        stream: &'a str,
        since: Option<Position<'a>>,
    ) -> BoxFuture<'a, Result<HistoryRead, StoreError>> {
        ready(Ok(self.read_now(stream, since)))
    }
}

impl AckStore for MemoryStore {
    fn record<'a>(
        &'a self,
        user: &'a Arc<str>,
        device: &'a Arc<str>,
        ids: &'a [String],
        at_ms: u64,
    ) -> BoxFuture<'a, Result<Vec<RowKey>, StoreError>> {
        // The push tables are held across both, so that no claim sees the ack without the cancellation.
        let mut pending = self.push_tables();
        self.record_acks_now(user, device, ids, at_ms);
        ready(Ok(pending.cancel(user, ids, at_ms, self.limits.acks_max_ids)))
    }

    fn acks<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Vec<AckRecord>, StoreError>> {
        ready(Ok(self.acks_now(id)))
    }
}

impl DeviceStore for MemoryStore {
    fn register_push<'a>(&'a self, user: &'a str, record: PushRecord) -> BoxFuture<'a, Result<(), StoreError>> {
        let mut table = lock(&self.push);
        let devices = table.entry(user.to_string()).or_default();
        devices.retain(|r| r.device != record.device && r.token != record.token);
        devices.push(record);
        ready(Ok(()))
    }

    fn push_addresses<'a>(&'a self, user: &'a str) -> BoxFuture<'a, Result<Vec<PushRecord>, StoreError>> {
        ready(Ok(lock(&self.push).get(user).cloned().unwrap_or_default()))
    }

    fn delete_push<'a>(
        &'a self,
        user: &'a str,
        device: &'a str,
        token: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        let mut table = lock(&self.push);
        let Some(devices) = table.get_mut(user) else { return ready(Ok(false)) };
        let before = devices.len();
        devices.retain(|r| !(&*r.device == device && r.token == token));
        let deleted = devices.len() < before;
        if devices.is_empty() {
            table.remove(user);
        }
        ready(Ok(deleted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(items: usize) -> StoreLimits {
        StoreLimits {
            replay_max_items: items,
            replay_max_age: Duration::from_secs(60),
            idempotency_window: Duration::from_secs(600),
            idempotency_max_keys: 1000,
            acks_max_ids: 3,
            acks_max_per_id: 2,
            persistent_retention: Duration::from_secs(3600),
            ack_retention: Duration::from_secs(3600),
            inbox_retention: Duration::from_secs(3600),
            inbox_max_items: 100,
            inbox_op_window: Duration::from_secs(3600),
        }
    }

    /// A store whose clock stands at 100 ms, so that items created at small instants are fresh.
    fn store(items: usize) -> MemoryStore {
        MemoryStore::with_clock(limits(items), Arc::new(|| 100))
    }

    /// The stream-store contract (`store/contract.rs`), on this store.
    mod contract {
        use super::*;
        use crate::store::contract::{Clock, Guard};

        fn make(limits: StoreLimits, clock: Clock) -> (crate::store::Stores, Guard) {
            (crate::store::Stores::memory(MemoryStore::with_clock(limits, clock)), Box::new(()))
        }

        crate::store::contract::stream_store_tests!(make);
        crate::store::inbox_contract::inbox_store_tests!(make);

        proptest::proptest! {
            #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
            /// Any interleaving of changes from several devices (and resent ones) leaves the counts equal to a
            /// recount of the items.
            #[test]
            fn counts_match_a_recount(steps in proptest::collection::vec(crate::store::inbox_contract::step(), 1..60)) {
                let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
                let (clock, _) = crate::store::contract::clock(1_000);
                let (stores, _guard) = make(crate::store::contract::limits(10), clock);
                runtime.block_on(crate::store::inbox_contract::counts_match_a_recount(stores.inbox, steps));
            }
        }
    }

    #[test]
    fn a_new_store_is_a_new_epoch() {
        let first = store(10).epoch.clone();
        let second = store(10).epoch.clone();
        assert_ne!(first, second);
        assert_eq!(first.len(), 8);
    }

    #[test]
    fn acks_are_deduplicated_per_device_and_bounded() {
        let s = store(10);
        let (alice, bob, carol) = (Arc::from("alice"), Arc::from("bob"), Arc::from("carol"));
        let d1: Arc<str> = Arc::from("d1");
        s.record_acks_now(&alice, &d1, &["n1".into(), "n2".into()], 10);
        s.record_acks_now(&alice, &d1, &["n1".into()], 20);
        s.record_acks_now(&bob, &d1, &["n1".into()], 30);
        s.record_acks_now(&carol, &d1, &["n1".into()], 40);
        let acks = s.acks_now("n1");
        assert_eq!(acks.len(), 2, "per-id cap of 2; the repeated ack of alice keeps its first time");
        assert_eq!((&*acks[0].user, acks[0].at), ("alice", 10));
        assert_eq!(&*acks[1].user, "bob");
        s.record_acks_now(&alice, &d1, &["n3".into(), "n4".into()], 50);
        assert!(s.acks_now("n1").is_empty(), "at most 3 ids: the oldest is forgotten");
        assert_eq!(s.acks_now("n4").len(), 1);
        assert!(s.acks_now("unknown").is_empty());
    }

    #[test]
    fn a_device_whose_acks_were_all_forgotten_is_forgotten_and_its_slot_reused_correctly() {
        let s = store(10); // at most 3 ids, 2 records each
        let (alice, bob): (Arc<str>, Arc<str>) = (Arc::from("alice"), Arc::from("bob"));
        let (d1, d2): (Arc<str>, Arc<str>) = (Arc::from("d1"), Arc::from("d2"));
        s.record_acks_now(&alice, &d1, &["n1".into()], 10);
        // One frame longer than the table: alice's own older record (n1) is evicted while the frame is recorded.
        s.record_acks_now(&alice, &d1, &["n2".into(), "n3".into(), "n4".into(), "n5".into()], 20);
        assert!(s.acks_now("n1").is_empty() && s.acks_now("n2").is_empty());
        assert_eq!(
            s.acks_now("n5").iter().map(|a| (&*a.user, &*a.device, a.at)).collect::<Vec<_>>(),
            [("alice", "d1", 20)]
        );
        // bob's acks push every alice record out: her pair is dropped, and bob's second device reuses the slot.
        s.record_acks_now(&bob, &d1, &["m1".into(), "m2".into(), "m3".into()], 30);
        assert!(s.acks_now("n5").is_empty());
        assert_eq!(lock(&s.acks).devices.index.len(), 1, "only bob/d1 is still referred to");
        s.record_acks_now(&bob, &d2, &["m3".into()], 40);
        let m3: Vec<_> = s.acks_now("m3").iter().map(|a| (a.user.to_string(), a.device.to_string(), a.at)).collect();
        assert_eq!(m3, [("bob".into(), "d1".into(), 30), ("bob".into(), "d2".into(), 40)]);
        let table = lock(&s.acks);
        assert_eq!(table.devices.slots.iter().flatten().count(), 2);
        assert!(table.devices.slots.len() <= 2, "freed slots are reused");
    }

    #[test]
    fn an_ack_frame_into_a_table_of_one_id_keeps_the_last_id() {
        let s = MemoryStore::with_clock(StoreLimits { acks_max_ids: 1, ..limits(10) }, Arc::new(|| 100));
        let (u, d): (Arc<str>, Arc<str>) = (Arc::from("u"), Arc::from("d"));
        s.record_acks_now(&u, &d, &["a".into(), "b".into(), "c".into()], 5);
        assert!(s.acks_now("a").is_empty() && s.acks_now("b").is_empty());
        assert_eq!(s.acks_now("c").len(), 1);
        s.record_acks_now(&u, &d, &["c".into()], 6);
        assert_eq!(s.acks_now("c")[0].at, 5, "a repeated ack keeps the first time");
    }

    #[test]
    fn many_devices_acking_one_broadcast_are_each_recorded_once() {
        let store = MemoryStore::new(StoreLimits::from_config(&crate::ServerConfig::for_tests()));
        let user: Arc<str> = Arc::from("u");
        let devices: Vec<Arc<str>> = (0..50).map(|i| Arc::from(format!("d{i}"))).collect();
        for round in 0..2 {
            for d in &devices {
                // Fresh Arcs on the second round: equality must not depend on pointer identity.
                let d: Arc<str> = if round == 0 { d.clone() } else { Arc::from(&**d) };
                store.record_acks_now(&user, &d, &["n1".to_string()], 1);
            }
        }
        let acks = store.acks_now("n1");
        assert_eq!(acks.len(), 50);
        assert_eq!(acks.iter().map(|a| &*a.device).collect::<HashSet<_>>().len(), 50);
    }

    #[test]
    fn members_keep_each_device_once_in_bits_and_turn_into_a_set_for_a_sparse_large_index() {
        let mut m = Members::Bits(Vec::new());
        // Dense indexes, out of order, each twice: new the first time only.
        let order: Vec<u32> = (0..300).map(|i| (i * 7) % 300).collect();
        for (n, &who) in order.iter().enumerate() {
            assert!(m.insert(who, n), "{who} is new");
        }
        for &who in &order {
            assert!(!m.insert(who, 300), "{who} again");
        }
        assert!(matches!(&m, Members::Bits(words) if words.len() == 5), "300 devices fit in 5 words of bits");
        // An index far past what the records justify: the members move to a set, all of them kept.
        assert!(m.insert(5_000_000, 300));
        let Members::Set(set) = &m else { panic!("a set after a sparse index") };
        assert_eq!(set.len(), 301);
        for who in (0..300).chain([5_000_000]) {
            assert!(!m.insert(who, 301), "{who} kept through the move");
        }
        assert!(m.insert(300, 301));
        // Members built from records start as bits when the indexes are dense, as a set when they are not.
        let records: Vec<(u32, u64)> = (0..9).map(|i| (i, 1)).collect();
        assert!(matches!(Members::of(&records), Members::Bits(_)));
        let sparse: Vec<(u32, u64)> = (0..9).map(|i| (i * 100_000, 1)).collect();
        let mut set = Members::of(&sparse);
        assert!(matches!(set, Members::Set(_)));
        assert!(!set.insert(800_000, 9) && set.insert(1, 9));
    }

    #[test]
    fn the_next_notification_s_acks_get_room_for_as_many_devices_as_the_last_one_had() {
        let mut limits = StoreLimits::from_config(&crate::ServerConfig::for_tests());
        limits.acks_max_per_id = 40;
        let store = MemoryStore::new(limits);
        let user: Arc<str> = Arc::from("u");
        let devices: Vec<Arc<str>> = (0..30).map(|i| Arc::from(format!("d{i}"))).collect();
        for d in &devices {
            store.record_acks_now(&user, d, &["n1".to_string()], 1);
        }
        store.record_acks_now(&user, &devices[0], &["n2".to_string()], 2);
        let capacity = |id: &str| lock(&store.acks).by_id.value(id).expect("acked").records.capacity();
        assert!(capacity("n2") >= 30, "room for n1's 30 devices: {}", capacity("n2"));
        // Every device's ack of n2 lands once, in the room made for them; bounded by acks_max_per_id.
        for d in devices.iter().chain(&devices) {
            store.record_acks_now(&user, d, &["n2".to_string()], 3);
        }
        assert_eq!(store.acks_now("n2").len(), 30);
        let more: Vec<Arc<str>> = (0..60).map(|i| Arc::from(format!("e{i}"))).collect();
        for d in &more {
            store.record_acks_now(&user, d, &["n3".to_string()], 4);
        }
        assert_eq!(store.acks_now("n3").len(), 40, "at most acks_max_per_id");
        store.record_acks_now(&user, &devices[0], &["n4".to_string()], 5);
        assert!(capacity("n4") >= 40, "sized like n3: {}", capacity("n4"));
    }
}
