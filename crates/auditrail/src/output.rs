//! How events leave auditrail for a person or a script: the `/v1/events`
//! page and the `table` / `json` output of `query` and `tail`.

use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use auditrail_model::AuditEvent;
use serde::{Deserialize, Serialize};

/// One event with its trace link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventView {
    #[serde(flatten)]
    pub event: AuditEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_url: Option<String>,
}

/// The answer of `GET /v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsPage {
    pub events: Vec<EventView>,
    /// The highest seq the spool held when the query started.
    pub last_seq: u64,
    /// Pass as `after_seq` to get what comes after this page without missing
    /// or repeating anything (what `tail` does).
    pub next_after_seq: u64,
}

impl EventsPage {
    pub fn new(
        events: Vec<AuditEvent>,
        last_seq: u64,
        limit: usize,
        trace_url: Option<&str>,
    ) -> Self {
        let last_returned = events.iter().map(|e| e.seq).max().unwrap_or(0);
        // A full page may have stopped short of last_seq; otherwise every
        // event up to last_seq was looked at.
        let next_after_seq = if limit > 0 && events.len() >= limit {
            last_returned
        } else {
            last_seq.max(last_returned)
        };
        EventsPage {
            events: events
                .into_iter()
                .map(|event| EventView {
                    trace_url: trace_link(trace_url, &event.trace_id),
                    event,
                })
                .collect(),
            last_seq,
            next_after_seq,
        }
    }
}

/// The template with `{trace_id}` filled in; none for events without a trace.
pub fn trace_link(template: Option<&str>, trace_id: &str) -> Option<String> {
    match template {
        Some(t) if !trace_id.is_empty() => Some(t.replace("{trace_id}", trace_id)),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// Prints events; the table header only once per `Printer`.
pub struct Printer {
    format: Format,
    header_done: bool,
}

impl Printer {
    pub fn new(format: Format) -> Self {
        Printer {
            format,
            header_done: false,
        }
    }

    pub fn print(&mut self, out: &mut impl Write, events: &[EventView]) -> std::io::Result<()> {
        match self.format {
            Format::Json => {
                for e in events {
                    serde_json::to_writer(&mut *out, e)?;
                    writeln!(out)?;
                }
            }
            Format::Table => {
                if !self.header_done {
                    writeln!(
                        out,
                        "{:<30} {:<8} {:<18} {:<14} {:<8} {:<14} {:<34} BODY",
                        "TIME", "SEQ", "EVENT", "ACTOR", "OUTCOME", "SERVICE", "TRACE"
                    )?;
                    self.header_done = true;
                }
                for e in events {
                    let ev = &e.event;
                    let trace = e.trace_url.clone().unwrap_or_else(|| ev.trace_id.clone());
                    writeln!(
                        out,
                        "{:<30} {:<8} {:<18} {:<14} {:<8} {:<14} {:<34} {}",
                        format_time(ev.time_unix_nano),
                        ev.seq,
                        ev.event_name,
                        ev.actor_id,
                        ev.outcome.as_str(),
                        ev.service_name,
                        trace,
                        one_line(&ev.body, 80)
                    )?;
                }
            }
        }
        out.flush()
    }
}

pub fn format_time(unix_nano: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(unix_nano)).to_string()
}

fn one_line(text: &str, max_chars: usize) -> String {
    let flat: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if flat.chars().count() > max_chars {
        flat.chars().take(max_chars - 1).collect::<String>() + "…"
    } else {
        flat
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_says_where_to_continue() {
        let ev = |seq| AuditEvent {
            seq,
            ..Default::default()
        };
        // A full page: continue after its last event.
        assert_eq!(
            EventsPage::new(vec![ev(3), ev(4)], 9, 2, None).next_after_seq,
            4
        );
        // A short page: everything up to last_seq was seen.
        assert_eq!(EventsPage::new(vec![ev(3)], 9, 2, None).next_after_seq, 9);
        assert_eq!(EventsPage::new(vec![], 9, 0, None).next_after_seq, 9);
    }

    #[test]
    fn trace_links_fill_the_template() {
        let t = Some("http://jaeger:16686/trace/{trace_id}");
        assert_eq!(
            trace_link(t, "ab12").as_deref(),
            Some("http://jaeger:16686/trace/ab12")
        );
        assert_eq!(trace_link(t, ""), None);
        assert_eq!(trace_link(None, "ab12"), None);
    }

    #[test]
    fn json_lines_use_canonical_names() {
        let page = EventsPage::new(
            vec![AuditEvent {
                event_id: "x".into(),
                trace_id: "ab".into(),
                ..Default::default()
            }],
            1,
            0,
            Some("T/{trace_id}"),
        );
        let mut out = Vec::new();
        Printer::new(Format::Json)
            .print(&mut out, &page.events)
            .unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        for key in [
            "node",
            "seq",
            "event_id",
            "time_unix_nano",
            "actor_id",
            "trace_id",
            "hash",
            "prev_hash",
        ] {
            assert!(line.get(key).is_some(), "missing {key}");
        }
        assert_eq!(line["trace_url"], "T/ab");
    }
}
