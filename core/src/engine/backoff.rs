//! Full-jitter exponential backoff (AWS "Exponential Backoff and Jitter"): before attempt `n` wait a uniform
//! random time in `[0, min(cap, base * 2^(n-1))]`.
//!
//! This is a few lines of math on purpose rather than the `backon` crate: the engine needs only the delay
//! (the retry loop *is* the engine's state machine, with auth-aware stops, retry-after floors and reset after
//! stable uptime), and it must take its randomness from a seed the driver supplies — `backon`'s jitter draws
//! from `fastrand`'s global generator, which on `wasm32-unknown-unknown` starts from a constant seed, so every
//! browser tab would back off in lock-step. (`backoff` itself is unmaintained: RUSTSEC-2025-0012.)

use std::time::Duration;

/// Backoff parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Upper bound of the first delay.
    pub base: Duration,
    /// Upper bound of any delay.
    pub cap: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig { base: Duration::from_millis(500), cap: Duration::from_secs(20) }
    }
}

impl BackoffConfig {
    /// The ceiling of the delay before attempt `n` (n ≥ 1): `min(cap, base * 2^(n-1))`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(30);
        self.base.saturating_mul(1u32 << exp).min(self.cap)
    }

    /// A full-jitter delay before attempt `n`, drawn from `rng`.
    pub fn delay(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = u64::try_from(self.ceiling(attempt).as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rng.u64(0..=ceiling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_cap() {
        let b = BackoffConfig { base: Duration::from_millis(500), cap: Duration::from_secs(5) };
        let ceilings: Vec<u128> = (1..=6).map(|n| b.ceiling(n).as_millis()).collect();
        assert_eq!(ceilings, [500, 1000, 2000, 4000, 5000, 5000]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(5));
    }

    #[test]
    fn delays_stay_within_the_ceiling_and_spread_out() {
        let b = BackoffConfig::default();
        let mut rng = fastrand::Rng::with_seed(7);
        let delays: Vec<Duration> = (0..1000).map(|_| b.delay(3, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(2)));
        let low = delays.iter().filter(|d| **d < Duration::from_secs(1)).count();
        // Uniform on [0, 2 s]: about half below 1 s.
        assert!((400..600).contains(&low), "{low}");
    }

    #[test]
    fn different_seeds_give_different_schedules() {
        let b = BackoffConfig::default();
        let a: Vec<Duration> = {
            let mut r = fastrand::Rng::with_seed(1);
            (1..8).map(|n| b.delay(n, &mut r)).collect()
        };
        let c: Vec<Duration> = {
            let mut r = fastrand::Rng::with_seed(2);
            (1..8).map(|n| b.delay(n, &mut r)).collect()
        };
        assert_ne!(a, c);
    }
}
