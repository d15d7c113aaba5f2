//! Per-tenant rate limits, in events per second and bytes per second, so
//! that a tenant at its limit is told to slow down (429 /
//! RESOURCE_EXHAUSTED with a retry hint) before its requests take the
//! in-flight budget, the spool's writer or the disk that other tenants
//! share.
//!
//! Each tenant has its own GCRA buckets (governor): a request is admitted
//! whole or not at all, and a refused request costs its tenant nothing. The
//! events bucket is checked before the bytes bucket; when the first admits
//! a request that the second refuses, the events it took are not given
//! back, which errs on the side of the other tenants.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

/// One tenant's allowance; `None` is unlimited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rate {
    pub events_per_second: Option<u32>,
    pub bytes_per_second: Option<u64>,
}

/// The configured limits: a default for every tenant, exceptions by name,
/// and how much unused allowance a tenant may save up.
#[derive(Debug, Clone, Default)]
pub struct RateLimits {
    pub default: Rate,
    pub tenants: HashMap<String, Rate>,
    /// Allowance saved up while idle, as time at the tenant's rate.
    pub burst: Duration,
}

/// Why a request was over its tenant's rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RateRefused {
    /// Try again after `retry_after`.
    #[error("tenant {tenant:?} is over its rate of {limit} {unit}/s; retry in {retry_after:?}")]
    Later {
        tenant: String,
        unit: &'static str,
        limit: u64,
        retry_after: Duration,
    },
    /// Larger than the tenant may ever send at once: sending it again will
    /// not help.
    #[error("the request's {needed} {unit} are more than tenant {tenant:?} may send at once ({limit} {unit}/s for {burst:?}); send smaller batches")]
    Never {
        tenant: String,
        unit: &'static str,
        needed: u64,
        limit: u64,
        burst: Duration,
    },
}

/// Bytes are counted in KiB cells: a cell per byte would make the
/// replenish interval of a fast rate a few nanoseconds, which rounds badly.
const BYTES_PER_CELL: u64 = 1024;

/// A tenant's buckets.
struct Buckets {
    rate: Rate,
    events: Option<DefaultDirectRateLimiter>,
    kib: Option<DefaultDirectRateLimiter>,
}

/// The limiters of every tenant seen so far.
pub struct TenantRateLimiter {
    limits: RateLimits,
    /// Whether any tenant is limited at all (else `admit` takes no lock).
    active: bool,
    tenants: Mutex<HashMap<String, Arc<Buckets>>>,
    clock: DefaultClock,
}

impl TenantRateLimiter {
    pub fn new(limits: RateLimits) -> TenantRateLimiter {
        let limited = |r: &Rate| r.events_per_second.is_some() || r.bytes_per_second.is_some();
        TenantRateLimiter {
            active: limited(&limits.default) || limits.tenants.values().any(limited),
            limits,
            tenants: Mutex::new(HashMap::new()),
            clock: DefaultClock::default(),
        }
    }

    /// Takes `events` and `bytes` from `tenant`'s allowance, or says when to
    /// come back.
    pub fn admit(&self, tenant: &str, events: u64, bytes: u64) -> Result<(), RateRefused> {
        if !self.active {
            return Ok(());
        }
        let buckets = self.buckets(tenant);
        if let (Some(limiter), Some(limit)) = (&buckets.events, buckets.rate.events_per_second) {
            self.take(limiter, tenant, "events", events, events, u64::from(limit))?;
        }
        if let (Some(limiter), Some(limit)) = (&buckets.kib, buckets.rate.bytes_per_second) {
            self.take(
                limiter,
                tenant,
                "bytes",
                bytes.div_ceil(BYTES_PER_CELL),
                bytes,
                limit,
            )?;
        }
        Ok(())
    }

    fn take(
        &self,
        limiter: &DefaultDirectRateLimiter,
        tenant: &str,
        unit: &'static str,
        cells: u64,
        needed: u64,
        limit: u64,
    ) -> Result<(), RateRefused> {
        let Some(n) = NonZeroU32::new(u32::try_from(cells).unwrap_or(u32::MAX)) else {
            return Ok(());
        };
        let never = || RateRefused::Never {
            tenant: tenant.to_owned(),
            unit,
            needed,
            limit,
            burst: self.limits.burst,
        };
        match limiter.check_n(n) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(RateRefused::Later {
                tenant: tenant.to_owned(),
                unit,
                limit,
                retry_after: not_until.wait_time_from(self.clock.now()),
            }),
            Err(_insufficient_capacity) => Err(never()),
        }
    }

    fn buckets(&self, tenant: &str) -> Arc<Buckets> {
        let mut tenants = self.tenants.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(b) = tenants.get(tenant) {
            return b.clone();
        }
        let rate = self
            .limits
            .tenants
            .get(tenant)
            .copied()
            .unwrap_or(self.limits.default);
        let burst = self.limits.burst.max(Duration::from_millis(1));
        let bucket = |per_second: u64| {
            // The burst is `burst` worth of the rate, refilled over `burst`.
            let cells = (per_second as f64 * burst.as_secs_f64()).ceil().max(1.0);
            let cells = NonZeroU32::new(cells.min(f64::from(u32::MAX)) as u32).expect("at least 1");
            Quota::with_period(burst / cells.get())
                .map(|q| RateLimiter::direct(q.allow_burst(cells)))
        };
        let buckets = Arc::new(Buckets {
            rate,
            events: rate.events_per_second.and_then(|r| bucket(u64::from(r))),
            kib: rate
                .bytes_per_second
                .and_then(|r| bucket(r.div_ceil(BYTES_PER_CELL))),
        });
        tenants.insert(tenant.to_owned(), buckets.clone());
        buckets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(default: Rate, tenants: &[(&str, Rate)]) -> TenantRateLimiter {
        TenantRateLimiter::new(RateLimits {
            default,
            tenants: tenants.iter().map(|(t, r)| (t.to_string(), *r)).collect(),
            burst: Duration::from_secs(1),
        })
    }

    const HUNDRED_EVENTS: Rate = Rate {
        events_per_second: Some(100),
        bytes_per_second: None,
    };

    #[test]
    fn a_tenant_gets_its_burst_then_waits() {
        let l = limiter(HUNDRED_EVENTS, &[]);
        l.admit("a", 60, 0).unwrap();
        l.admit("a", 40, 0).unwrap();
        match l.admit("a", 10, 0) {
            Err(RateRefused::Later {
                retry_after,
                unit: "events",
                ..
            }) => {
                assert!(
                    retry_after > Duration::ZERO && retry_after <= Duration::from_millis(200),
                    "{retry_after:?}"
                )
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tenants_do_not_share_an_allowance() {
        let l = limiter(HUNDRED_EVENTS, &[]);
        l.admit("a", 100, 0).unwrap();
        assert!(l.admit("a", 1, 0).is_err());
        l.admit("b", 100, 0).expect("b has its own bucket");
    }

    #[test]
    fn a_tenant_may_have_its_own_rate() {
        let l = limiter(
            HUNDRED_EVENTS,
            &[(
                "big",
                Rate {
                    events_per_second: Some(1000),
                    bytes_per_second: None,
                },
            )],
        );
        l.admit("big", 900, 0).unwrap();
        assert!(l.admit("small", 900, 0).is_err());
    }

    #[test]
    fn bytes_are_limited_too_and_oversized_requests_never_pass() {
        let l = limiter(
            Rate {
                events_per_second: None,
                bytes_per_second: Some(64 << 10),
            },
            &[],
        );
        l.admit("a", 1, 60 << 10).unwrap();
        assert!(matches!(
            l.admit("a", 1, 8 << 10),
            Err(RateRefused::Later { unit: "bytes", .. })
        ));
        assert!(matches!(
            l.admit("b", 1, 1 << 20),
            Err(RateRefused::Never { unit: "bytes", .. })
        ));
    }

    #[test]
    fn no_limits_admit_everything() {
        let l = limiter(Rate::default(), &[]);
        assert!(!l.active);
        l.admit("a", u64::MAX, u64::MAX).unwrap();
    }
}
