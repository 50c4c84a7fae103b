//! Abuse limits per client address, in bounded memory: failed authentications (client tokens and API keys) and
//! new connections.
//!
//! Each limiter is GCRA (the generic cell rate algorithm, a token bucket kept as one instant per address): `burst`
//! events at once, then one per `interval`. An address whose instant lies in the past is as good as unknown, so it
//! is dropped. A limiter tracks at most [`MAX_TRACKED`] addresses: when the table is full it first drops every
//! address that is back to a full bucket (at most once a second), then, if still full, forgets an arbitrary one —
//! memory stays bounded under a flood of addresses, at the price of forgetting some of them early. IPv6 addresses
//! are tracked by their /64 (one host usually has a whole /64), IPv4-mapped IPv6 addresses as IPv4.
//!
//! Hand-written rather than `governor`: its keyed limiters grow with every address seen until the caller prunes
//! them, and what is needed here — check without spending, spend on failure only, bounded table — is a few lines.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most addresses one limiter tracks (about 40 bytes each).
pub const MAX_TRACKED: usize = 65_536;

/// The key an address is tracked by.
pub(crate) fn address_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

/// A rate: `burst` events at once, then `per_minute` a minute. `per_minute == 0` disables the limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rate {
    /// Events allowed at once.
    pub burst: u32,
    /// Events allowed per minute after the burst.
    pub per_minute: u32,
}

impl Rate {
    /// No limit.
    pub const UNLIMITED: Rate = Rate { burst: 0, per_minute: 0 };

    fn enabled(self) -> bool {
        self.per_minute > 0 && self.burst > 0
    }

    fn interval(self) -> Duration {
        Duration::from_secs(60) / self.per_minute.max(1)
    }
}

/// A per-address limiter (see the module documentation).
#[derive(Debug)]
pub(crate) struct Limiter {
    rate: Rate,
    capacity: usize,
    table: Mutex<Table>,
}

#[derive(Debug)]
struct Table {
    /// The theoretical arrival time of each address's next event: `burst` events fit before it is `burst ·
    /// interval` in the future.
    tat: HashMap<IpAddr, Instant>,
    last_purge: Option<Instant>,
}

impl Limiter {
    pub(crate) fn new(rate: Rate) -> Self {
        Self::with_capacity(rate, MAX_TRACKED)
    }

    pub(crate) fn with_capacity(rate: Rate, capacity: usize) -> Self {
        Limiter { rate, capacity: capacity.max(1), table: Mutex::new(Table { tat: HashMap::new(), last_purge: None }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How far ahead of `now` an address's instant may be while it still has an event left.
    fn window(&self) -> Duration {
        self.rate.interval() * self.rate.burst.saturating_sub(1)
    }

    /// `None` when `ip` may have another event now, else how long until it may.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if !self.rate.enabled() {
            return None;
        }
        let table = self.lock();
        let tat = *table.tat.get(&address_key(ip))?;
        let allowed_from = tat.checked_sub(self.window()).unwrap_or(now);
        (allowed_from > now).then(|| allowed_from - now)
    }

    /// Spends one event of `ip`: `None` when it was within the limit, else how long until the next one would be
    /// (nothing is spent then).
    pub(crate) fn spend(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if !self.rate.enabled() {
            return None;
        }
        let key = address_key(ip);
        let mut table = self.lock();
        let tat = table.tat.get(&key).copied().unwrap_or(now).max(now);
        let allowed_from = tat.checked_sub(self.window()).unwrap_or(now);
        if allowed_from > now {
            return Some(allowed_from - now);
        }
        if !table.tat.contains_key(&key) && table.tat.len() >= self.capacity {
            self.make_room(&mut table, now);
        }
        table.tat.insert(key, tat + self.rate.interval());
        None
    }

    fn make_room(&self, table: &mut Table, now: Instant) {
        if table.last_purge.is_none_or(|at| now.saturating_duration_since(at) >= Duration::from_secs(1)) {
            table.tat.retain(|_, tat| *tat > now);
            table.last_purge = Some(now);
        }
        if table.tat.len() >= self.capacity
            && let Some(victim) = table.tat.keys().next().copied()
        {
            table.tat.remove(&victim);
        }
    }

    /// Addresses tracked now.
    pub(crate) fn tracked(&self) -> usize {
        self.lock().tat.len()
    }
}

/// Where a request comes from: the peer, or — when the peer is a trusted proxy — the last address in
/// `X-Forwarded-For` that is not a trusted proxy.
pub(crate) fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    if !trusted.iter().any(|net| net.contains(peer)) {
        return peer;
    }
    let Some(header) = forwarded_for else { return peer };
    let mut client = peer;
    for hop in header.rsplit(',') {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted.iter().any(|net| net.contains(ip)) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

/// An address or a CIDR block (`10.0.0.0/8`, `::1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parses `a.b.c.d`, `a.b.c.d/n`, an IPv6 address or an IPv6 block.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: the prefix length must be 0 to {max}"))?,
        };
        Ok(IpNet { addr, prefix })
    }

    /// Whether `ip` is in the block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) if self.addr.is_ipv4() => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => return false,
            },
            other => other,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_burst_then_one_per_interval() {
        let limiter = Limiter::new(Rate { burst: 3, per_minute: 60 });
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert_eq!(limiter.check(a, t0), None);
            assert_eq!(limiter.spend(a, t0), None);
        }
        assert_eq!(limiter.check(a, t0), Some(Duration::from_secs(1)));
        assert_eq!(limiter.spend(a, t0), Some(Duration::from_secs(1)), "refused, nothing spent");
        assert_eq!(limiter.spend(a, t0 + Duration::from_millis(999)), Some(Duration::from_millis(1)));
        assert_eq!(limiter.spend(a, t0 + Duration::from_secs(1)), None, "one more a second later");
        assert!(limiter.check(a, t0 + Duration::from_secs(1)).is_some());
        // Another address is not affected; after a quiet while the bucket is full again.
        assert_eq!(limiter.check(ip("192.0.2.2"), t0), None);
        let later = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            assert_eq!(limiter.spend(a, later), None);
        }
        assert!(limiter.spend(a, later).is_some());
    }

    #[test]
    fn memory_stays_bounded_under_a_flood_of_addresses() {
        let limiter = Limiter::with_capacity(Rate { burst: 2, per_minute: 1 }, 1000);
        let t0 = Instant::now();
        for i in 0..100_000u32 {
            let _ = limiter.spend(IpAddr::V4(i.into()), t0 + Duration::from_micros(u64::from(i)));
            assert!(limiter.tracked() <= 1000);
        }
        assert_eq!(limiter.tracked(), 1000);
        // Addresses back to a full bucket are dropped first.
        let much_later = t0 + Duration::from_secs(3600);
        let _ = limiter.spend(ip("198.51.100.7"), much_later);
        assert_eq!(limiter.tracked(), 1);
    }

    #[test]
    fn ipv6_hosts_are_tracked_by_their_64() {
        let limiter = Limiter::new(Rate { burst: 1, per_minute: 1 });
        let t0 = Instant::now();
        assert_eq!(limiter.spend(ip("2001:db8:1:2::1"), t0), None);
        assert!(limiter.check(ip("2001:db8:1:2:ffff::9"), t0).is_some(), "same /64");
        assert_eq!(limiter.check(ip("2001:db8:1:3::1"), t0), None, "another /64");
        assert_eq!(address_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn disabled_limits_allow_everything() {
        let limiter = Limiter::new(Rate::UNLIMITED);
        for _ in 0..100 {
            assert_eq!(limiter.spend(ip("192.0.2.1"), Instant::now()), None);
        }
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn the_client_behind_trusted_proxies_is_the_last_untrusted_hop() {
        let trusted = [IpNet::parse("127.0.0.1").unwrap(), IpNet::parse("10.0.0.0/8").unwrap()];
        let xff = Some("203.0.113.9, 198.51.100.4, 10.1.2.3");
        assert_eq!(client_address(ip("127.0.0.1"), xff, &trusted), ip("198.51.100.4"));
        assert_eq!(client_address(ip("192.0.2.1"), xff, &trusted), ip("192.0.2.1"), "untrusted peer: its own address");
        assert_eq!(client_address(ip("127.0.0.1"), None, &trusted), ip("127.0.0.1"));
        assert_eq!(client_address(ip("127.0.0.1"), Some("garbage"), &trusted), ip("127.0.0.1"));
        assert_eq!(client_address(ip("::ffff:127.0.0.1"), Some("192.0.2.5"), &trusted), ip("192.0.2.5"));
        assert!(IpNet::parse("10.0.0.0/33").is_err());
        assert!(IpNet::parse("::1/128").unwrap().contains(ip("::1")));
        assert!(IpNet::parse("0.0.0.0/0").unwrap().contains(ip("203.0.113.1")));
    }
}
