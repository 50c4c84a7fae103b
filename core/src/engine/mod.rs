//! The sans-IO client engine.
//!
//! The engine owns every behaviour of a Tidings client — connection state, reconnection, heartbeats, cursors
//! and replay, dedup, batching, acks — and performs no I/O. A driver feeds it inputs (`connect`, `handle_*`,
//! `subscribe`, `ingest_push`, …), each stamped with the current [`Instant`], and drains its outputs with one
//! function, [`Engine::poll_output`], until it returns [`Output::Timeout`]:
//!
//! - [`Output::Transmit`]: a text frame to write to the current WebSocket;
//! - [`Output::Action`]: something only the driver can do — fetch a token, open or close a socket, persist
//!   state;
//! - [`Output::Event`]: what the application sees;
//! - [`Output::Timeout`]: when to call [`Engine::handle_timeout`] next.
//!
//! The order is the engine's: frames queued before an action go out first (a close follows the acks it
//! flushed), events after the frames and actions of the same turn. Every socket the engine asks for carries a
//! [`ConnId`]; inputs about a socket the engine has already given up on are ignored, so a late close or frame
//! from a torn-down connection can never disturb the current one.
//!
//! The engine is split by concern: `link` (connection phases, transport inputs, heartbeats, network and
//! lifecycle), `token`, `streams` (subscriptions, cursors, replay and continuity), `delivery` (dedup and
//! batching), `push` (push payloads and the device's push address), `acks`, `persist` (snapshots), and
//! `timers`, the one table holding every deadline; `inbox`, the inbox and history requests with their answers
//! ([`Output::Reply`]).

mod acks;
mod backoff;
mod batch;
mod dedup;
mod delivery;
mod inbox;
mod link;
mod map;
mod persist;
mod push;
mod snapshot;
mod streams;
mod timers;
mod token;
mod types;

use std::collections::VecDeque;

pub use backoff::BackoffConfig;
pub use batch::{BatchConfig, BatchOutput, Digest, PendingBatch};
pub use dedup::DedupWindow;
pub use inbox::{InboxChange, Reply, RequestError, RequestId};
pub use map::StreamMap;
pub use push::{complete_push_fetch_without_client, ingest_push_without_client};
pub use snapshot::{Cursor, PushRegistration, QueuedChange, Snapshot, SnapshotScope};
pub use types::{
    Action, Config, ConnId, ConnectionState, Continuity, EngineError, Event, FailureReason, Lifecycle, NetworkEvent,
    Output, PushOutcome, Reconnects, Rtt, Stats, SuspendReason, TokenError, TransportFailure,
};

pub use crate::protocol::PushPlatform;
use crate::time::Instant;
use batch::Batcher;
use link::Phase;
use timers::{Timer, TimerTable};
use token::TokenState;

/// The engine. See the module documentation.
#[derive(Debug)]
pub struct Engine {
    config: Config,
    rng: fastrand::Rng,
    /// The time of the latest input (the engine's clock never goes back).
    now: Instant,
    /// Every deadline.
    timers: TimerTable,
    stats: Stats,
    // link
    /// Where the connection stands; the link's per-connection state lives in `Phase::Connected`.
    phase: Phase,
    /// The state last reported to the application: always `phase.state()` between inputs.
    state: ConnectionState,
    next_conn: u64,
    failures: u32,
    online: bool,
    foreground: bool,
    // token
    token: TokenState,
    // streams
    user: Option<String>,
    desired: StreamMap<()>,
    cursors: StreamMap<Cursor>,
    /// Streams with replay in progress: (notifications still expected, total announced). Cleared when the link
    /// that announced them goes away.
    replaying: StreamMap<(u64, u64)>,
    /// Streams whose gap is followed by what the server held: notifications still expected (for
    /// [`Stats::duplicates_replay`]). Cleared with `replaying`.
    gap_tail: StreamMap<u64>,
    /// When the pending round-trip measurement started (`auth`, or a `heartbeat` with `echo`).
    rtt_probe: Option<Instant>,
    /// Inputs relayed from another engine are being handled (no acks: the other engine acks).
    relaying: bool,
    // delivery
    dedup: DedupWindow,
    batcher: Batcher,
    // inbox
    inbox: inbox::InboxState,
    replies: inbox::Replies,
    // push
    device_id: Option<String>,
    push: Option<PushRegistration>,
    // acks
    pending_acks: acks::PendingAcks,
    /// When the last `ack` frame was queued.
    last_ack_flush: Option<Instant>,
    // persistence
    /// Cursors, open batches and the push address were taken from a snapshot: later restores only add seen ids.
    adopted: bool,
    dirty: bool,
    last_persist: Option<Instant>,
    // outputs
    transmits: VecDeque<String>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Engine {
    /// A new engine. `seed` must come from the platform's entropy source so that clients' backoff schedules
    /// (and generated device ids) differ; tests pass a fixed seed for determinism.
    pub fn new(config: Config, seed: u64) -> Self {
        let dedup = DedupWindow::new(config.dedup_capacity);
        let batcher = Batcher::new(config.batch);
        let device_id = config.device_id.clone();
        Engine {
            rng: fastrand::Rng::with_seed(seed),
            now: Instant::ZERO,
            timers: TimerTable::default(),
            stats: Stats::default(),
            phase: Phase::Idle,
            state: ConnectionState::Idle,
            next_conn: 0,
            failures: 0,
            online: true,
            foreground: true,
            token: TokenState::default(),
            user: None,
            desired: StreamMap::new(),
            cursors: StreamMap::new(),
            replaying: StreamMap::new(),
            gap_tail: StreamMap::new(),
            rtt_probe: None,
            relaying: false,
            dedup,
            batcher,
            inbox: inbox::InboxState::default(),
            replies: inbox::Replies::new(),
            device_id,
            push: None,
            pending_acks: acks::PendingAcks::default(),
            last_ack_flush: None,
            adopted: false,
            dirty: false,
            last_persist: None,
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
            config,
        }
    }

    // ----------------------------------------------------------------------------------------------------
    // Observers

    /// The current connection state.
    pub fn state(&self) -> &ConnectionState {
        &self.state
    }

    /// Counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    // ----------------------------------------------------------------------------------------------------
    // Outputs

    /// The next output, in the order drivers must handle them: frames, then actions, then events; then
    /// [`Output::Timeout`] once there is nothing more (the same as [`Engine::poll_timeout`]). Drivers call it until
    /// it returns `Timeout`, handling each output as it comes.
    pub fn poll_output(&mut self) -> Output {
        debug_assert_eq!(self.phase.state(), self.state, "the reported state follows the phase");
        if let Some(frame) = self.poll_transmit() {
            return Output::Transmit(frame);
        }
        if let Some(action) = self.poll_action() {
            return Output::Action(action);
        }
        if let Some(reply) = self.reply_output() {
            return reply;
        }
        if let Some(event) = self.poll_event() {
            return Output::Event(event);
        }
        Output::Timeout(self.poll_timeout())
    }

    /// The next frame to write to the current socket (one kind of [`Engine::poll_output`]; for tests and tools).
    pub fn poll_transmit(&mut self) -> Option<String> {
        if self.transmits.is_empty() && self.is_connected() && self.acks_due() {
            self.flush_acks();
        }
        self.transmits.pop_front()
    }

    /// The next thing the driver must do (one kind of [`Engine::poll_output`]; for tests and tools).
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event for the application (one kind of [`Engine::poll_output`]; for tests and tools).
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Engine::handle_timeout`] must be called next, if ever: the earliest timer that is armed and counts
    /// now (pending acks wait while disconnected; a token refresh waits while a token request is on its way).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let connected = self.is_connected();
        let in_flight = self.token.in_flight;
        self.timers.next(|t| match t {
            Timer::Ack => !connected || self.pending_acks.is_empty(),
            Timer::TokenRefresh => in_flight,
            _ => false,
        })
    }

    /// Time passed: runs every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.tick(now);
        if self.timers.is_expired(Timer::Background, now) {
            self.timers.stop(Timer::Background);
            self.background_expired(now);
        }
        self.link_timers(now);
        self.inbox_timers(now);
        if self.timers.is_expired(Timer::Batch, now) {
            for out in self.batcher.take_due(now) {
                self.emit_batch(out);
            }
            self.sync_batch_timer();
        }
        if self.timers.is_expired(Timer::Persist, now) {
            self.persist(now);
        }
    }

    /// Records the time of the input being handled (inputs may arrive with equal or, from sloppy drivers,
    /// slightly older timestamps; the engine's clock never goes back).
    fn tick(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }
}
