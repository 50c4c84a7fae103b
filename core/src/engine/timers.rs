//! Every deadline of the engine in one table (as quinn-proto's `TimerTable`): each timer is armed with an
//! absolute [`Instant`] or stopped, [`TimerTable::next`] is the engine's next wake-up, and
//! [`Engine::handle_timeout`](super::Engine::handle_timeout) asks the table which timers expired. A timer is armed
//! only while the state it belongs to exists (the link's timers while connected, the connect deadline while
//! opening or authenticating, …), so the next deadline is always one the engine acts on.

use crate::time::Instant;

/// The engine's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Timer {
    /// Opening the socket and completing `auth` must finish by then.
    Connect,
    /// The next connection attempt after a backoff.
    Backoff,
    /// The link is dead if nothing arrives by then (heartbeat interval + grace after the last frame received).
    Idle,
    /// Send a heartbeat if nothing else was sent by then.
    KeepAlive,
    /// A probe (`heartbeat` with `echo`) must be answered by then.
    Probe,
    /// The link counts as stable (the failure count resets).
    Stable,
    /// Fetch a fresh token for the live connection.
    TokenRefresh,
    /// Pending acks go out (while connected).
    Ack,
    /// The background grace period ends: the socket closes.
    Background,
    /// The oldest open batch is due.
    Batch,
    /// Persist the changed state.
    Persist,
    /// The oldest read request (inbox page, history page) times out.
    Request,
}

const COUNT: usize = 12;

impl Timer {
    const ALL: [Timer; COUNT] = [
        Timer::Connect,
        Timer::Backoff,
        Timer::Idle,
        Timer::KeepAlive,
        Timer::Probe,
        Timer::Stable,
        Timer::TokenRefresh,
        Timer::Ack,
        Timer::Background,
        Timer::Batch,
        Timer::Persist,
        Timer::Request,
    ];
}

/// When each timer fires, if it is armed.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct TimerTable {
    at: [Option<Instant>; COUNT],
}

impl TimerTable {
    /// Arms `timer` to fire at `time` (replacing an earlier setting).
    pub(crate) fn set(&mut self, timer: Timer, time: Instant) {
        self.at[timer as usize] = Some(time);
    }

    /// Arms `timer` at `time`, or stops it when `time` is `None`.
    pub(crate) fn set_opt(&mut self, timer: Timer, time: Option<Instant>) {
        self.at[timer as usize] = time;
    }

    /// When `timer` fires, if it is armed.
    pub(crate) fn get(&self, timer: Timer) -> Option<Instant> {
        self.at[timer as usize]
    }

    /// Stops `timer`.
    pub(crate) fn stop(&mut self, timer: Timer) {
        self.at[timer as usize] = None;
    }

    /// Whether `timer` is armed and due at `now`.
    pub(crate) fn is_expired(&self, timer: Timer, now: Instant) -> bool {
        self.get(timer).is_some_and(|t| t <= now)
    }

    /// The earliest armed timer, skipping those `skip` names.
    pub(crate) fn next(&self, skip: impl Fn(Timer) -> bool) -> Option<Instant> {
        Timer::ALL.iter().filter(|t| !skip(**t)).filter_map(|t| self.get(*t)).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_next_deadline_is_the_earliest_armed_timer() {
        let mut t = TimerTable::default();
        assert_eq!(t.next(|_| false), None);
        t.set(Timer::Persist, Instant::from_millis(50));
        t.set(Timer::Idle, Instant::from_millis(20));
        t.set_opt(Timer::Batch, Some(Instant::from_millis(30)));
        assert_eq!(t.next(|_| false), Some(Instant::from_millis(20)));
        assert_eq!(t.next(|timer| timer == Timer::Idle), Some(Instant::from_millis(30)));
        assert!(t.is_expired(Timer::Idle, Instant::from_millis(20)));
        assert!(!t.is_expired(Timer::Batch, Instant::from_millis(29)));
        t.stop(Timer::Idle);
        t.set_opt(Timer::Batch, None);
        assert_eq!(t.next(|_| false), Some(Instant::from_millis(50)));
    }
}
