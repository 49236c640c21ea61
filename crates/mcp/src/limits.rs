//! The per-client rate limit of the HTTP gateway: a token bucket per client
//! network, in bounded memory.
//!
//! Anyone who can connect gets a bucket, token or not, so the map must not
//! grow with every address an attacker can use: buckets that have refilled
//! are forgotten (a full bucket is the same as none), the map holds at
//! most a fixed number of them (when full, the least recently seen quarter
//! goes), and IPv6 clients share a bucket per /64 (one host usually holds
//! a whole /64).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Client networks tracked at most.
pub const MAX_CLIENTS: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Requests per client network: `per_minute` sustained, `burst` at once.
#[derive(Debug)]
pub(crate) struct ClientLimiter {
    per_sec: f64,
    burst: f64,
    cap: usize,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

/// The bucket key of a client: IPv4 (also when mapped into IPv6) as is,
/// IPv6 by its /64.
fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        },
    }
}

impl ClientLimiter {
    /// A limiter of `per_minute` requests with bursts of `burst`, tracking
    /// at most `cap` client networks.
    pub(crate) fn new(per_minute: u32, burst: u32, cap: usize) -> Self {
        ClientLimiter {
            per_sec: f64::from(per_minute.max(1)) / 60.0,
            burst: f64::from(burst.max(1)),
            cap: cap.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn buckets(&self) -> MutexGuard<'_, HashMap<IpAddr, Bucket>> {
        // A bucket map is never half-updated: a poisoned lock is still usable.
        self.buckets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes one request for `ip` at `now`, or says how long to wait.
    pub(crate) fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = client_key(ip);
        let mut map = self.buckets();
        if !map.contains_key(&key) && map.len() >= self.cap {
            self.evict(&mut map, now);
        }
        let b = map.entry(key).or_insert(Bucket {
            tokens: self.burst,
            last: now,
        });
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
        b.last = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - b.tokens) / self.per_sec))
        }
    }

    fn is_full(&self, b: &Bucket, now: Instant) -> bool {
        b.tokens + now.saturating_duration_since(b.last).as_secs_f64() * self.per_sec >= self.burst
    }

    /// Forgets the clients whose bucket has refilled since.
    pub(crate) fn forget_idle(&self, now: Instant) {
        let mut map = self.buckets();
        map.retain(|_, b| !self.is_full(b, now));
        if map.capacity() > 4 * map.len().max(1024) {
            map.shrink_to_fit();
        }
    }

    /// Makes room at the cap: the refilled buckets go, and if that is not
    /// enough, the least recently seen quarter.
    fn evict(&self, map: &mut HashMap<IpAddr, Bucket>, now: Instant) {
        map.retain(|_, b| !self.is_full(b, now));
        if map.len() < self.cap {
            return;
        }
        let mut seen: Vec<Instant> = map.values().map(|b| b.last).collect();
        let k = seen.len() / 4;
        let (_, cut, _) = seen.select_nth_unstable(k);
        let cut = *cut;
        map.retain(|_, b| b.last > cut);
    }

    /// Client networks tracked now.
    pub(crate) fn len(&self) -> usize {
        self.buckets().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(n: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(n))
    }

    #[test]
    fn a_bucket_limits_refills_and_is_forgotten_once_full() {
        let l = ClientLimiter::new(60, 3, 100); // one per second, bursts of 3
        let t0 = Instant::now();
        let ip = v4(1);
        assert!((0..3).all(|_| l.check(ip, t0).is_ok()));
        let wait = l.check(ip, t0).unwrap_err();
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(1));
        assert!(l.check(ip, t0 + Duration::from_secs(1)).is_ok());
        assert!(l.check(v4(2), t0).is_ok());
        // One second on, the second client's bucket is full again: forgotten.
        l.forget_idle(t0 + Duration::from_secs(1));
        assert_eq!(l.len(), 1);
        l.forget_idle(t0 + Duration::from_secs(10));
        assert_eq!(l.len(), 0);
    }

    #[test]
    fn memory_is_bounded_and_ipv6_counts_by_64() {
        let l = ClientLimiter::new(60, 2, 64);
        let t0 = Instant::now();
        for i in 0..10_000 {
            let _ = l.check(v4(i), t0 + Duration::from_millis(u64::from(i)));
            assert!(l.len() <= 64);
        }
        let l = ClientLimiter::new(60, 2, 64);
        let a: IpAddr = "2001:db8::1".parse().unwrap();
        let b: IpAddr = "2001:db8::ffff:2".parse().unwrap();
        let other: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert!(l.check(a, t0).is_ok() && l.check(b, t0).is_ok());
        assert!(l.check(a, t0).is_err(), "same /64, one bucket");
        assert!(l.check(other, t0).is_ok());
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_key(mapped), "10.0.0.1".parse::<IpAddr>().unwrap());
    }
}
