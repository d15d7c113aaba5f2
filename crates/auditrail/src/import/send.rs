//! Sends imported records to a running auditrail's OTLP receiver, through
//! the `otlp` sink's client, and reads its answer record by record: a batch
//! counts as imported only once the receiver acknowledged it (after its
//! fsync), and each record it refused is named with the reason it gave.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::bail;
use auditrail_exporters::sinks::otlp::{OtlpConfig, OtlpSink, Protocol};
use auditrail_exporters::{ErrorClass, ExportError, SinkContext};
use auditrail_model::id::RECORD_UID_ATTRIBUTE;
use auditrail_model::to_otlp::events_to_request;
use auditrail_model::{described_rejections, AuditEvent};
use opentelemetry_proto::tonic::common::v1::any_value::Value;

/// The most records the receiver names in one `partial_success` message
/// (auditrail-receiver's `ingest.rs`): rejections past it are found by
/// sending the rest again in batches this small.
const NAMED_PER_ANSWER: usize = 20;

/// How long one export may take before it counts as a failure to retry.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Sender {
    sink: OtlpSink,
    endpoint: String,
    retry_for: Duration,
    with_token: bool,
}

/// What the receiver made of one request.
enum Answer {
    /// Stored, but for these (index in the request's batch, reason), and
    /// `unnamed` more it refused without naming them.
    Stored {
        rejected: Vec<(usize, String)>,
        unnamed: usize,
    },
    /// Refused whole for what it holds.
    Refused(ExportError),
}

impl Sender {
    pub fn new(
        endpoint: &str,
        protocol: Protocol,
        token: Option<String>,
        retry_for: Duration,
    ) -> anyhow::Result<Sender> {
        let config = OtlpConfig {
            url: endpoint.to_owned(),
            protocol,
        };
        let context = SinkContext {
            name: "import".into(),
            retention: Duration::ZERO,
        };
        let mut sink =
            OtlpSink::new(&config, &context).map_err(|e| anyhow::anyhow!("--endpoint: {e}"))?;
        if let Some(token) = &token {
            sink = sink
                .with_bearer_token(token)
                .map_err(|e| anyhow::anyhow!("--token-env: {e}"))?;
        }
        Ok(Sender {
            sink,
            endpoint: endpoint.to_owned(),
            retry_for,
            with_token: token.is_some(),
        })
    }

    /// An empty export: checks that the receiver is there, speaks this
    /// protocol and takes the token, before anything is read.
    pub async fn check(&self) -> anyhow::Result<()> {
        match tokio::time::timeout(EXPORT_TIMEOUT, self.sink.send(&[])).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) if e.class == ErrorClass::Retryable => bail!(
                "cannot reach auditrail's OTLP receiver at {} (is `auditrail serve` running? \
                 for OTLP/HTTP use --protocol http): {e}",
                self.endpoint
            ),
            Ok(Err(e)) => Err(self.fatal(e)),
            Err(_) => bail!("{}: no answer within {EXPORT_TIMEOUT:?}", self.endpoint),
        }
    }

    /// Sends `events` until the receiver has stored all it accepts; returns
    /// the ones it refused (index into `events`, reason). An error means
    /// the receiver could not be reached for `--retry-for`, or refuses this
    /// client (auth, wrong endpoint): what it had not acknowledged is not
    /// imported.
    pub async fn send(&self, events: &[AuditEvent]) -> anyhow::Result<Vec<(usize, String)>> {
        let mut refused = Vec::new();
        if events.is_empty() {
            return Ok(refused);
        }
        let mut pending: Vec<Vec<usize>> = vec![(0..events.len()).collect()];
        while let Some(indexes) = pending.pop() {
            let batch: Vec<AuditEvent> = indexes.iter().map(|&i| events[i].clone()).collect();
            match self.export(&batch).await? {
                Answer::Stored { rejected, unnamed } => {
                    let named: Vec<usize> = rejected.iter().map(|(at, _)| *at).collect();
                    refused.extend(rejected.into_iter().map(|(at, why)| (indexes[at], why)));
                    if unnamed == 0 {
                        continue;
                    }
                    // Which ones it did not say: sent again in batches small
                    // enough to be named. The ones it stored are stored
                    // once whatever is sent again (their ids are kept).
                    let rest: Vec<usize> = (0..indexes.len())
                        .filter(|at| !named.contains(at))
                        .map(|at| indexes[at])
                        .collect();
                    if indexes.len() <= NAMED_PER_ANSWER {
                        refused.extend(
                            rest.into_iter().map(|i| {
                                (i, "refused without a reason (partial_success)".to_owned())
                            }),
                        );
                    } else {
                        pending.extend(rest.chunks(NAMED_PER_ANSWER).map(<[usize]>::to_vec));
                    }
                }
                // One record spoils the request (too large, say): halves
                // until the one to blame is alone, as the sinks' delivery
                // loop does.
                Answer::Refused(e) if indexes.len() == 1 => {
                    refused.push((indexes[0], e.message));
                }
                Answer::Refused(_) => {
                    let (a, b) = indexes.split_at(indexes.len() / 2);
                    pending.push(b.to_vec());
                    pending.push(a.to_vec());
                }
            }
        }
        refused.sort();
        Ok(refused)
    }

    /// One request, sent again while the receiver is away or busy, for up
    /// to `--retry-for`.
    async fn export(&self, batch: &[AuditEvent]) -> anyhow::Result<Answer> {
        let started = Instant::now();
        let mut backoff = Duration::from_millis(200);
        loop {
            let error = match tokio::time::timeout(EXPORT_TIMEOUT, self.sink.send(batch)).await {
                Ok(Ok(response)) => {
                    let Some(partial) = response
                        .partial_success
                        .filter(|p| p.rejected_log_records > 0)
                    else {
                        return Ok(Answer::Stored {
                            rejected: Vec::new(),
                            unnamed: 0,
                        });
                    };
                    let rejected = locate(batch, &partial.error_message);
                    let unnamed =
                        (partial.rejected_log_records as usize).saturating_sub(rejected.len());
                    return Ok(Answer::Stored { rejected, unnamed });
                }
                Ok(Err(e)) => e,
                Err(_) => ExportError::retryable(
                    "timeout",
                    format!("no answer within {EXPORT_TIMEOUT:?}"),
                ),
            };
            match error.class {
                ErrorClass::Retryable if started.elapsed() < self.retry_for => {
                    let wait = backoff.max(error.retry_after.unwrap_or_default());
                    tracing::warn!("{}: {error}; sending again in {wait:?}", self.endpoint);
                    tokio::time::sleep(wait).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                ErrorClass::Retryable => bail!(
                    "{}: {error} (still failing after --retry-for {:?})",
                    self.endpoint,
                    self.retry_for
                ),
                ErrorClass::Permanent | ErrorClass::Partial => return Ok(Answer::Refused(error)),
                ErrorClass::Misconfigured => return Err(self.fatal(error)),
            }
        }
    }

    fn fatal(&self, error: ExportError) -> anyhow::Error {
        let hint = if error.kind == "auth" && !self.with_token {
            " (the receiver wants a writer token: put it in an environment variable and pass --token-env VAR)"
        } else {
            ""
        };
        anyhow::anyhow!("{}: {error}{hint}", self.endpoint)
    }
}

/// The records of `batch` that a `partial_success` message names, by their
/// place in the request [`events_to_request`] made of the batch.
fn locate(batch: &[AuditEvent], message: &str) -> Vec<(usize, String)> {
    let by_id: HashMap<&str, usize> = batch
        .iter()
        .enumerate()
        .map(|(at, e)| (e.event_id.as_str(), at))
        .collect();
    let request = events_to_request(batch);
    described_rejections(message)
        .into_iter()
        .filter_map(|(resource, scope, record, why)| {
            let record = request
                .resource_logs
                .get(resource)?
                .scope_logs
                .get(scope)?
                .log_records
                .get(record)?;
            let uid = record
                .attributes
                .iter()
                .find(|kv| kv.key == RECORD_UID_ATTRIBUTE)?;
            match uid.value.as_ref()?.value.as_ref()? {
                Value::StringValue(uid) => Some((*by_id.get(uid.as_str())?, why)),
                _ => None,
            }
        })
        .collect()
}
