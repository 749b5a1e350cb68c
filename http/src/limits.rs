//! Rate limits: how many requests one key (a user, an address, an account
//! name) may make, as a sustained rate and a burst, and the answer past
//! them: 429 `rate_limited` with `Retry-After` and the `RateLimit` headers
//! (draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy` names the
//! quota and its window, `RateLimit` what is left of it and when it is whole
//! again).
//!
//! A limit is written `<count>/<s|min|h>[,<burst>]` (`10/s,50`: ten a
//! second sustained, fifty at once), or `off`.

use std::fmt;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use actix_web::http::header::{HeaderName, HeaderValue, RETRY_AFTER};
use actix_web::http::StatusCode;
use actix_web::HttpResponse;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use uuid::Uuid;

use crate::codes::Code;
use crate::problem::Problem;

pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");

/// Keys a limiter holds before it forgets the ones back at a full burst;
/// it forgets them at most once a second, so memory stays bounded by the
/// keys seen in about one window.
const KEYS_BEFORE_SWEEP: usize = 10_000;

/// Every limit of a process; `None` where one is off.
#[derive(Default)]
pub struct Limits {
    pub user_writes: Option<Limiter>,
    pub ip_writes: Option<Limiter>,
    pub ip_logins: Option<Limiter>,
    pub account_logins: Option<Limiter>,
    pub ip_connects: Option<Limiter>,
}

/// A rate as configured: `count` per `per`, and at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
    pub burst: NonZeroU32,
}

/// A configured limit: a [`Rate`], or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec(pub Option<Rate>);

impl FromStr for LimitSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.eq_ignore_ascii_case("off") {
            return Ok(LimitSpec(None));
        }
        let bad = || format!("{s:?}: expected `<count>/<s|min|h>[,<burst>]` or `off`");
        let (rate, burst) = match s.split_once(',') {
            Some((rate, burst)) => (rate, Some(burst.trim())),
            None => (s, None),
        };
        let (count, unit) = rate.split_once('/').ok_or_else(bad)?;
        let count: NonZeroU32 = count.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "min" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        let burst = match burst {
            Some(burst) => burst.parse().map_err(|_| bad())?,
            None => count,
        };
        Ok(LimitSpec(Some(Rate { count, per, burst })))
    }
}

impl fmt::Display for LimitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(rate) = self.0 else {
            return f.write_str("off");
        };
        let unit = match rate.per.as_secs() {
            1 => "s",
            60 => "min",
            _ => "h",
        };
        write!(f, "{}/{unit},{}", rate.count, rate.burst)
    }
}

/// Whom a limit counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    /// A client address; IPv6 by its /64, which one host usually holds whole.
    Ip(IpAddr),
    User(Uuid),
    /// An account as named at login (lowercased).
    Name(String),
}

impl Key {
    pub fn ip(addr: IpAddr) -> Key {
        let addr = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(bits.into())
                }
            },
            v4 => v4,
        };
        Key::Ip(addr)
    }
}

/// What a limiter says of one request.
#[derive(Debug, Clone, Copy)]
pub enum Verdict {
    /// Let through; `remaining` more may follow at once, and the burst is
    /// whole again after `reset`.
    Allowed { remaining: u32, reset: Duration },
    /// Refused: not before `retry_after`.
    Refused { retry_after: Duration },
}

type Keyed =
    RateLimiter<Key, DefaultKeyedStateStore<Key>, DefaultClock, StateInformationMiddleware>;

/// One limit over many keys.
pub struct Limiter {
    /// The policy's name in the `RateLimit` headers.
    name: &'static str,
    rate: Rate,
    keyed: Keyed,
    swept: Mutex<Instant>,
}

impl Limiter {
    /// The limiter of `spec`, or none when it is `off`.
    pub fn new(name: &'static str, spec: LimitSpec) -> Option<Limiter> {
        let rate = spec.0?;
        let quota = Quota::with_period(rate.per / rate.count.get())
            .expect("a rate's period is not zero")
            .allow_burst(rate.burst);
        Some(Limiter {
            name,
            rate,
            keyed: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            swept: Mutex::new(Instant::now()),
        })
    }

    /// Counts one request of `key`.
    pub fn check(&self, key: Key) -> Verdict {
        self.sweep();
        let period = self.rate.per / self.rate.count.get();
        match self.keyed.check_key(&key) {
            Ok(state) => {
                let remaining = state.remaining_burst_capacity();
                let used = self.rate.burst.get().saturating_sub(remaining);
                Verdict::Allowed {
                    remaining,
                    reset: period * used,
                }
            }
            Err(not_until) => Verdict::Refused {
                retry_after: not_until.wait_time_from(DefaultClock::default().now()),
            },
        }
    }

    /// Forgets keys back at a full burst once there are many of them.
    fn sweep(&self) {
        if self.keyed.len() < KEYS_BEFORE_SWEEP {
            return;
        }
        let Ok(mut swept) = self.swept.try_lock() else {
            return;
        };
        if swept.elapsed() >= Duration::from_secs(1) {
            self.keyed.retain_recent();
            self.keyed.shrink_to_fit();
            *swept = Instant::now();
        }
    }

    /// `RateLimit-Policy`: the burst, and the window in which it comes back.
    pub fn policy(&self) -> String {
        let window = (self.rate.per / self.rate.count.get()) * self.rate.burst.get();
        format!(
            "\"{}\";q={};w={}",
            self.name,
            self.rate.burst,
            ceil_secs(window)
        )
    }

    /// The headers of a request let through with `remaining` and `reset`.
    pub fn headers(&self, remaining: u32, reset: Duration) -> [(HeaderName, HeaderValue); 2] {
        let value = |s: String| HeaderValue::from_str(&s).expect("ASCII");
        [
            (RATELIMIT_POLICY, value(self.policy())),
            (
                RATELIMIT,
                value(format!(
                    "\"{}\";r={remaining};t={}",
                    self.name,
                    ceil_secs(reset)
                )),
            ),
        ]
    }

    /// 429 `rate_limited`, with `Retry-After` and the `RateLimit` headers.
    pub fn refusal(&self, retry_after: Duration) -> HttpResponse {
        let seconds = ceil_secs(retry_after).max(1);
        let mut response = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            Code::RateLimited.as_str(),
            format!(
                "more requests than the {} limit allows; retry after {seconds} s",
                self.name
            ),
        )
        .response(None);
        metrics::counter!("tidings_rate_limited_total", "limit" => self.name).increment(1);
        // Empty: the next request fits after `retry_after`, the whole burst
        // one period per request after that.
        let period = self.rate.per / self.rate.count.get();
        let whole = retry_after + period * (self.rate.burst.get() - 1);
        let headers = response.headers_mut();
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
        for (name, value) in self.headers(0, whole) {
            headers.insert(name, value);
        }
        response
    }
}

fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_read_as_written() {
        let spec: LimitSpec = "10/s,50".parse().unwrap();
        assert_eq!(spec.to_string(), "10/s,50");
        assert_eq!("5/min".parse::<LimitSpec>().unwrap().to_string(), "5/min,5");
        assert_eq!("off".parse::<LimitSpec>().unwrap(), LimitSpec(None));
        for bad in ["", "10", "0/s", "10/day", "10/s,0", "-1/s", "10/s,x"] {
            assert!(bad.parse::<LimitSpec>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_burst_goes_through_then_the_rate_holds() {
        let limiter = Limiter::new("test", "1/min,3".parse().unwrap()).unwrap();
        let key = || Key::User(Uuid::nil());
        for left in [2, 1, 0] {
            match limiter.check(key()) {
                Verdict::Allowed { remaining, .. } => assert_eq!(remaining, left),
                Verdict::Refused { .. } => panic!("refused within the burst"),
            }
        }
        match limiter.check(key()) {
            Verdict::Refused { retry_after } => {
                assert!(retry_after > Duration::from_secs(50), "{retry_after:?}")
            }
            Verdict::Allowed { .. } => panic!("let through past the burst"),
        }
        // Another key has its own burst.
        assert!(matches!(
            limiter.check(Key::User(Uuid::from_u128(1))),
            Verdict::Allowed { remaining: 2, .. }
        ));
        assert_eq!(
            limiter.policy(),
            "\"test\";q=3;w=180",
            "the burst comes back in three minutes"
        );
        // Refused, the quota is whole again once the next request fits and
        // two more periods have passed.
        let refused = limiter.refusal(Duration::from_secs(30));
        assert_eq!(refused.status(), 429);
        let header = |name: &str| refused.headers().get(name).unwrap().to_str().unwrap();
        assert_eq!(header("retry-after"), "30");
        assert_eq!(header("ratelimit"), "\"test\";r=0;t=150");
    }

    #[test]
    fn an_ipv6_host_counts_as_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Key::ip(a), Key::ip(b));
        assert_ne!(Key::ip(a), Key::ip(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(Key::ip(mapped), Key::Ip("192.0.2.7".parse().unwrap()));
    }
}
