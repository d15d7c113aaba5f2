//! Services that must keep sending audit events, and when they stop.

use std::collections::BTreeMap;
use std::time::Duration;

/// A declared expectation: `service` sends at least once per `max_silence`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Silence {
    pub service: String,
    pub max_silence: Duration,
}

/// A service went quiet, or spoke again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SilenceChange {
    Silent {
        service: String,
        /// When it last sent (receive time), `None` if never since start.
        last_seen_unix_nano: Option<u64>,
        max_silence: Duration,
    },
    Recovered {
        service: String,
        /// How long it was quiet.
        silent_for: Duration,
    },
}

#[derive(Debug)]
struct Watched {
    max_silence_ns: u64,
    /// Last receive time; the watch's start until it first sends.
    last_seen: u64,
    seen: bool,
    silent: bool,
}

/// When each declared service last sent, against "now" as its caller says.
#[derive(Debug)]
pub struct SilenceWatch {
    services: BTreeMap<String, Watched>,
}

impl SilenceWatch {
    /// Watches `expected` from `start` (unix ns): a service that never
    /// sends is silent `max_silence` after it.
    pub fn new(expected: &[Silence], start_unix_nano: u64) -> SilenceWatch {
        let services = expected
            .iter()
            .map(|s| {
                let watched = Watched {
                    max_silence_ns: u64::try_from(s.max_silence.as_nanos()).unwrap_or(u64::MAX),
                    last_seen: start_unix_nano,
                    seen: false,
                    silent: false,
                };
                (s.service.clone(), watched)
            })
            .collect();
        SilenceWatch { services }
    }

    /// A stored event of `service`, received at `received_unix_nano`.
    /// Returns the recovery, when the service had been silent.
    pub fn observe(&mut self, service: &str, received_unix_nano: u64) -> Option<SilenceChange> {
        let watched = self.services.get_mut(service)?;
        let was_silent = std::mem::replace(&mut watched.silent, false);
        let quiet = received_unix_nano.saturating_sub(watched.last_seen);
        watched.last_seen = watched.last_seen.max(received_unix_nano);
        watched.seen = true;
        was_silent.then(|| SilenceChange::Recovered {
            service: service.to_owned(),
            silent_for: Duration::from_nanos(quiet),
        })
    }

    /// The services that have just gone over their allowed silence at
    /// `now` (each once, until it sends again).
    pub fn tick(&mut self, now_unix_nano: u64) -> Vec<SilenceChange> {
        let mut changes = Vec::new();
        for (service, w) in &mut self.services {
            if !w.silent && now_unix_nano.saturating_sub(w.last_seen) > w.max_silence_ns {
                w.silent = true;
                changes.push(SilenceChange::Silent {
                    service: service.clone(),
                    last_seen_unix_nano: w.seen.then_some(w.last_seen),
                    max_silence: Duration::from_nanos(w.max_silence_ns),
                });
            }
        }
        changes
    }

    /// Each watched service and whether it is silent now: the gauge.
    pub fn states(&self) -> impl Iterator<Item = (&str, bool)> {
        self.services.iter().map(|(s, w)| (s.as_str(), w.silent))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: u64 = 60_000_000_000;

    fn watch() -> SilenceWatch {
        SilenceWatch::new(
            &[Silence {
                service: "imagegen-ui".into(),
                max_silence: Duration::from_secs(600),
            }],
            0,
        )
    }

    #[test]
    fn a_service_that_stops_is_silent_once_and_recovers_once() {
        let mut w = watch();
        assert!(w.observe("imagegen-ui", MIN).is_none());
        // Ten minutes after its last event: not yet over.
        assert!(w.tick(11 * MIN).is_empty());
        let silent = w.tick(11 * MIN + 1);
        assert_eq!(
            silent,
            [SilenceChange::Silent {
                service: "imagegen-ui".into(),
                last_seen_unix_nano: Some(MIN),
                max_silence: Duration::from_secs(600),
            }]
        );
        // Said once.
        assert!(w.tick(30 * MIN).is_empty());
        assert_eq!(w.states().collect::<Vec<_>>(), [("imagegen-ui", true)]);
        let back = w.observe("imagegen-ui", 40 * MIN).unwrap();
        assert_eq!(
            back,
            SilenceChange::Recovered {
                service: "imagegen-ui".into(),
                silent_for: Duration::from_secs(39 * 60),
            }
        );
        assert_eq!(w.states().collect::<Vec<_>>(), [("imagegen-ui", false)]);
    }

    #[test]
    fn a_service_that_never_sends_is_silent_after_the_allowance_from_start() {
        let mut w = watch();
        assert!(w.tick(10 * MIN).is_empty());
        let silent = w.tick(10 * MIN + 1);
        assert!(matches!(
            &silent[..],
            [SilenceChange::Silent {
                last_seen_unix_nano: None,
                ..
            }]
        ));
    }

    #[test]
    fn undeclared_services_are_not_watched() {
        let mut w = watch();
        assert!(w.observe("other", MIN).is_none());
        assert!(w.tick(5 * MIN).is_empty());
    }
}
