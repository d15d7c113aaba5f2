//! Detection rules and silence alarms, run over the events the spool has
//! stored (`[detection]`, `[[silence]]`).
//!
//! One task reads every durable event once, in seq order, as a sink would,
//! and feeds it to the [`Detector`] and the [`SilenceWatch`]. What they
//! report becomes an `auditrail.alert`, `auditrail.silence` or
//! `auditrail.silence.recovered` event in the spool (chained, proved and
//! delivered like any other), a metric, and a POST to the alert webhook.
//!
//! It keeps no cursor of its own: at start it reads back over the stored
//! events of the last two windows, which rebuilds every window exactly for
//! the last one, and it writes the alerts of that last window again. Their
//! ids are functions of the rule, the key and the event that made the rule
//! fire, so an alert stored before the restart is not stored twice (the
//! spool's dedup), and only a newly stored one is posted.

use std::sync::Arc;
use std::time::Duration;

use auditrail_detect::{Alert, Detector, Rule, Silence, SilenceChange, SilenceWatch};
use auditrail_model::internal::{self, InternalEvent, ALERT, INTERNAL_TENANT};
use auditrail_model::{AuditEvent, Outcome};
use auditrail_spool::{Spool, SpoolError};

use crate::operator::now_unix_nano;

/// Events read per pass.
const READ_BATCH: usize = 1000;
/// How often silences are checked when no event arrives.
const TICK: Duration = Duration::from_millis(500);

/// Where alerts are POSTed (`[detection] webhook_url`).
#[derive(Clone)]
pub struct Webhook {
    pub url: String,
    pub token: Option<String>,
    pub client: reqwest::Client,
}

/// What the watch runs with.
pub struct WatchConfig {
    pub rules: Vec<Rule>,
    pub silences: Vec<Silence>,
    pub webhook: Option<Webhook>,
}

impl WatchConfig {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.silences.is_empty()
    }

    /// The longest rule window: how far back a restart reads.
    fn longest_window(&self) -> Duration {
        self.rules
            .iter()
            .map(|r| r.spec().window)
            .max()
            .unwrap_or_default()
    }
}

/// Runs the watch until `stop`.
pub async fn run(
    spool: Arc<Spool>,
    config: WatchConfig,
    stop: impl std::future::Future<Output = ()>,
) {
    let window = config.longest_window();
    let mut watch = Watch {
        detector: Detector::new(config.rules),
        silence: SilenceWatch::new(&config.silences, now_unix_nano()),
        watch_started: now_unix_nano(),
        webhook: config.webhook,
        spool,
        emit_from: 0,
    };
    for s in &config.silences {
        metrics::gauge!("auditrail_service_silent", "service" => s.service.clone()).set(0.0);
    }
    let mut after = match watch.resume_point(window).await {
        Ok(after) => after,
        Err(e) => {
            tracing::error!(error = %e, "detection: cannot find where to resume; starting at the newest event");
            watch.spool.durable_seq()
        }
    };
    let mut durable = watch.spool.subscribe_durable();
    let mut tick = tokio::time::interval(TICK);
    tokio::pin!(stop);
    loop {
        // Read everything durable before waiting again.
        loop {
            let spool = watch.spool.clone();
            let read = tokio::task::spawn_blocking(move || spool.read(after, READ_BATCH)).await;
            let events = match read {
                Ok(Ok(events)) => events,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "detection: reading the spool failed; retrying");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "detection: the read task failed; retrying");
                    break;
                }
            };
            let Some(last) = events.last() else { break };
            after = last.seq;
            for event in &events {
                watch.observe(event).await;
            }
        }
        watch.tick(now_unix_nano()).await;
        tokio::select! {
            _ = &mut stop => return,
            _ = durable.changed() => {}
            _ = tick.tick() => {}
        }
    }
}

struct Watch {
    spool: Arc<Spool>,
    detector: Detector,
    silence: SilenceWatch,
    watch_started: u64,
    webhook: Option<Webhook>,
    /// Alerts of events received before this (ns) were written before a
    /// restart, or rebuilt from too short a history: not written again.
    emit_from: u64,
}

impl Watch {
    /// The seq to read after: two longest windows before the newest stored
    /// event. Received times follow seqs (one clock), so a binary search
    /// over seqs finds it.
    async fn resume_point(&mut self, window: Duration) -> Result<u64, SpoolError> {
        let spool = self.spool.clone();
        let window_ns = u64::try_from(window.as_nanos()).unwrap_or(u64::MAX);
        let (after, newest) = tokio::task::spawn_blocking(move || -> Result<_, SpoolError> {
            let durable = spool.durable_seq();
            let first = spool.stats().first_seq.max(1);
            if durable < first {
                return Ok((durable, 0));
            }
            let received = |after: u64| -> Result<Option<u64>, SpoolError> {
                Ok(spool
                    .read(after, 1)?
                    .first()
                    .map(|e| e.received_time_unix_nano))
            };
            let Some(newest) = received(durable - 1)? else {
                return Ok((durable, 0));
            };
            if window_ns == 0 {
                return Ok((durable, newest));
            }
            let from = newest.saturating_sub(window_ns.saturating_mul(2));
            // The largest `after` whose next event was received before `from`.
            let (mut lo, mut hi) = (first - 1, durable);
            while lo < hi {
                let mid = lo + (hi - lo).div_ceil(2);
                match received(mid - 1)? {
                    Some(t) if t < from => lo = mid,
                    _ => hi = mid - 1,
                }
            }
            Ok((lo, newest))
        })
        .await
        .map_err(|e| SpoolError::Storage(format!("resume task: {e}")))??;
        self.emit_from = newest.saturating_sub(window_ns);
        if after < self.spool.durable_seq() {
            tracing::info!(
                after_seq = after,
                "detection: reading back over the stored events of the last two windows"
            );
        }
        Ok(after)
    }

    async fn observe(&mut self, event: &AuditEvent) {
        if let Some(change) = self
            .silence
            .observe(&event.service_name, event.received_time_unix_nano)
        {
            self.silence_changed(change, event.received_time_unix_nano)
                .await;
        }
        // An alert counted by a rule could make the rule fire again.
        if event.event_name == ALERT && internal::is_internal(event) {
            return;
        }
        for alert in self.detector.observe(event) {
            metrics::counter!("auditrail_alerts_fired_total", "rule" => alert.rule.clone())
                .increment(1);
            if alert.last_received_unix_nano >= self.emit_from {
                self.alert(alert, event.seq).await;
            }
        }
    }

    /// Writes (and posts) `alert`, which the event `firing_seq` made fire.
    async fn alert(&self, alert: Alert, firing_seq: u64) {
        let window = humantime::format_duration(alert.window).to_string();
        let body = format!(
            "rule {:?}: {} matching events for {} {:?} within {window} (threshold {})",
            alert.rule,
            alert.count,
            alert.group_by.label(),
            alert.key,
            alert.threshold
        );
        let event = InternalEvent::new(ALERT, &alert.tenant)
            .warning()
            .time(alert.last_received_unix_nano)
            .attr("auditrail.rule", alert.rule.as_str())
            .attr("auditrail.group_by", alert.group_by.label())
            .attr("auditrail.key", alert.key.as_str())
            .attr("auditrail.count", alert.count)
            .attr("auditrail.threshold", alert.threshold)
            .attr("auditrail.window", window)
            .attr(
                "auditrail.window_seconds",
                alert.window.as_secs_f64().ceil() as u64,
            )
            .attr(
                "auditrail.triggering_event_ids",
                alert
                    .triggering
                    .iter()
                    .map(|(_, id)| id.clone())
                    .collect::<Vec<_>>(),
            )
            .attr(
                "auditrail.triggering_seqs",
                alert
                    .triggering
                    .iter()
                    .map(|(seq, _)| *seq)
                    .collect::<Vec<_>>(),
            )
            .body(body)
            .id_from(&[&alert.rule, &alert.key, &firing_seq.to_string()])
            .build(now_unix_nano());
        tracing::warn!(rule = %alert.rule, key = %alert.key, count = alert.count, "detection rule fired");
        self.store_and_post(event).await;
    }

    async fn tick(&mut self, now: u64) {
        for change in self.silence.tick(now) {
            self.silence_changed(change, now).await;
        }
    }

    async fn silence_changed(&self, change: SilenceChange, at: u64) {
        self.publish_silence(&change);
        let event = match &change {
            SilenceChange::Silent {
                service,
                last_seen_unix_nano,
                max_silence,
            } => {
                let since = last_seen_unix_nano.unwrap_or(self.watch_started);
                tracing::warn!(service, max_silence = ?max_silence, "a declared service went silent");
                let mut event = InternalEvent::new(internal::SILENCE, INTERNAL_TENANT)
                    .warning()
                    .outcome(Outcome::Failure)
                    .attr("audit.target", service.as_str())
                    .attr("auditrail.service", service.as_str())
                    .attr(
                        "auditrail.max_silence",
                        humantime::format_duration(*max_silence).to_string(),
                    )
                    .body(match last_seen_unix_nano {
                        Some(_) => format!(
                            "service {service:?} sent no audit event for longer than {}",
                            humantime::format_duration(*max_silence)
                        ),
                        None => format!(
                            "service {service:?} sent no audit event since auditrail started, {} ago",
                            humantime::format_duration(*max_silence)
                        ),
                    })
                    .id_from(&[service, &since.to_string()]);
                if let Some(seen) = last_seen_unix_nano {
                    event = event.attr("auditrail.last_seen_unix_nano", *seen);
                }
                event.build(at)
            }
            SilenceChange::Recovered {
                service,
                silent_for,
            } => {
                tracing::info!(service, silent_for = ?silent_for, "a silent service sends again");
                InternalEvent::new(internal::SILENCE_RECOVERED, INTERNAL_TENANT)
                    .outcome(Outcome::Success)
                    .attr("audit.target", service.as_str())
                    .attr("auditrail.service", service.as_str())
                    .attr(
                        "auditrail.silent_seconds",
                        silent_for.as_secs_f64().round() as u64,
                    )
                    .body(format!(
                        "service {service:?} sends audit events again after {} of silence",
                        humantime::format_duration(Duration::from_secs(silent_for.as_secs()))
                    ))
                    .id_from(&[service, &at.to_string()])
                    .build(at)
            }
        };
        self.store_and_post(event).await;
    }

    fn publish_silence(&self, change: &SilenceChange) {
        let (service, silent) = match change {
            SilenceChange::Silent { service, .. } => (service, 1.0),
            SilenceChange::Recovered { service, .. } => (service, 0.0),
        };
        metrics::gauge!("auditrail_service_silent", "service" => service.clone()).set(silent);
        if silent > 0.0 {
            metrics::counter!("auditrail_silences_total", "service" => service.clone())
                .increment(1);
        }
    }

    /// Stores `event`; posts it when it is new (not stored before a restart).
    async fn store_and_post(&self, event: AuditEvent) {
        match self.spool.record(event).await {
            Ok(Some(stored)) => {
                if let Some(webhook) = self.webhook.clone() {
                    tokio::spawn(post(webhook, stored));
                }
            }
            Ok(None) => tracing::debug!("stored before a restart; not posted again"),
            // Counted and logged by `record`.
            Err(_) => {}
        }
    }
}

/// How often one POST is tried.
const WEBHOOK_ATTEMPTS: u32 = 5;

/// POSTs `event` as JSON, retrying a failure a few times: the event is in
/// the spool already, the webhook is the notice.
async fn post(webhook: Webhook, event: AuditEvent) {
    let body = webhook_body(&event);
    let mut backoff = Duration::from_millis(500);
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let mut request = webhook.client.post(&webhook.url).json(&body);
        if let Some(token) = &webhook.token {
            request = request.bearer_auth(token);
        }
        let failure = match request.send().await {
            Ok(response) if response.status().is_success() => {
                metrics::counter!("auditrail_alert_webhook_posts_total", "result" => "ok")
                    .increment(1);
                return;
            }
            Ok(response) => format!("HTTP {}", response.status()),
            Err(e) => e.to_string(),
        };
        tracing::warn!(url = %webhook.url, attempt, error = %failure, event = %event.event_name, "alert webhook POST failed");
        if attempt < WEBHOOK_ATTEMPTS {
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
    metrics::counter!("auditrail_alert_webhook_posts_total", "result" => "failed").increment(1);
    tracing::error!(url = %webhook.url, event_id = %event.event_id, "alert webhook gave up; the event is in the spool");
}

/// What the webhook receives: the stored event, its attributes as an object.
fn webhook_body(event: &AuditEvent) -> serde_json::Value {
    let attributes: serde_json::Value =
        serde_json::from_str(&event.attributes).unwrap_or(serde_json::Value::Null);
    serde_json::json!({
        "event_name": event.event_name,
        "node": event.node,
        "seq": event.seq,
        "event_id": event.event_id,
        "tenant": event.tenant,
        "time_unix_nano": event.time_unix_nano,
        "severity_text": event.severity_text,
        "outcome": event.outcome.as_str(),
        "body": event.body,
        "attributes": attributes,
    })
}
