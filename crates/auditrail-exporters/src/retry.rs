//! Exponential backoff with jitter and a cap, stretched to the
//! destination's own `Retry-After` when it gives one.

use std::time::{Duration, SystemTime};

use rand::Rng;

use crate::ExportError;

/// The longest `Retry-After` honoured: a far-future HTTP date (a wrong
/// clock, a typo) must not park a sink for days without anyone noticing;
/// past this the sink is retried and shows as failing again.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// Delays between attempts: doubling from `initial` up to `max`, each one
/// drawn uniformly from its upper half so that sinks (and auditrail nodes)
/// that failed together do not retry in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            initial,
            max,
            attempt: 0,
        }
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .initial
            .saturating_mul(2u32.saturating_pow(self.attempt))
            .min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jittered =
            rand::rng().random_range(ceiling.as_secs_f64() / 2.0..=ceiling.as_secs_f64());
        Duration::from_secs_f64(jittered)
    }

    /// The wait before retrying after `error`: the next backoff delay, or
    /// the destination's `retry_after` hint (up to [`MAX_RETRY_AFTER`]) when
    /// that is longer. The backoff still advances, so a destination that
    /// keeps answering with short hints is not hammered.
    pub fn delay_after(&mut self, error: &ExportError) -> Duration {
        let own = self.next_delay();
        match error.retry_after {
            Some(hint) => own.max(hint.min(MAX_RETRY_AFTER)),
            None => own,
        }
    }
}

/// `Retry-After` (RFC 9110): delay-seconds or an HTTP date, as a wait from
/// `now`. A date in the past is no wait; anything else unreadable, `None`.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // More digits than a u64 holds: the longest wait there is.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_with_jitter_up_to_the_cap() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| backoff.next_delay()).collect();
        let ceilings = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (delay, ceiling) in delays.iter().zip(ceilings) {
            let ceiling = Duration::from_millis(ceiling);
            assert!(
                *delay <= ceiling && *delay >= ceiling / 2,
                "{delay:?} not within [{:?}, {ceiling:?}]",
                ceiling / 2
            );
        }
        assert!(
            delays[4..].windows(2).any(|w| w[0] != w[1]),
            "capped delays are still jittered: {delays:?}"
        );
    }

    #[test]
    fn a_retry_after_hint_is_a_floor_and_the_backoff_still_advances() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(60));
        let hinted =
            ExportError::retryable("throttled", "429").with_retry_after(Duration::from_secs(5));
        assert_eq!(backoff.delay_after(&hinted), Duration::from_secs(5));
        // Shorter than the backoff by now (ceiling 200ms, then 400ms...):
        // the backoff wins.
        let short =
            ExportError::retryable("throttled", "429").with_retry_after(Duration::from_millis(1));
        let delay = backoff.delay_after(&short);
        assert!(
            delay >= Duration::from_millis(100) && delay <= Duration::from_millis(200),
            "{delay:?}"
        );
        let plain = ExportError::retryable("connection", "refused");
        let delay = backoff.delay_after(&plain);
        assert!(
            delay >= Duration::from_millis(200) && delay <= Duration::from_millis(400),
            "{delay:?}"
        );
        let absurd = ExportError::retryable("throttled", "503")
            .with_retry_after(Duration::from_secs(86_400 * 365));
        assert_eq!(backoff.delay_after(&absurd), MAX_RETRY_AFTER);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // Wed, 21 Oct 2015 07:28:00 GMT
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past"
        );
        assert_eq!(
            parse_retry_after("99999999999999999999999", now),
            Some(Duration::from_secs(u64::MAX))
        );
        for bad in ["", "-5", "1.5", "soon", "Wed, 21 Oct 2015"] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }
}
