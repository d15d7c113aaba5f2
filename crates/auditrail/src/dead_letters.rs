//! `auditrail dead-letter list|replay`: the events sinks permanently
//! rejected, and re-queueing them once the cause is fixed.

use std::io::Write;

use anyhow::Context;
use auditrail_spool::DeadLetter;

use crate::client::Location;
use crate::csv_export;
use crate::output::{format_time, terminal_safe, EventView, Format};

#[derive(Debug, clap::Subcommand)]
pub enum DeadLetterCommand {
    /// Show dead letters: sink, seq, when, why, and the event.
    List {
        #[command(flatten)]
        at: Location,
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
        /// Only those of this tenant's events.
        #[arg(long)]
        tenant: Option<String>,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Re-queue dead letters for delivery (after fixing what rejected them).
    /// A running server delivers them within seconds; with --data-dir, the
    /// server delivers them when it next starts.
    Replay {
        #[command(flatten)]
        at: Location,
        /// Only this sink's.
        #[arg(long)]
        sink: Option<String>,
    },
}

pub async fn run(command: DeadLetterCommand) -> anyhow::Result<()> {
    match command {
        DeadLetterCommand::List {
            at,
            sink,
            tenant,
            format,
        } => {
            let letters = list(&at, sink.as_deref(), tenant.as_deref()).await?;
            print(&mut std::io::stdout().lock(), &letters, format)?;
        }
        DeadLetterCommand::Replay { at, sink } => {
            let marked = match at.open_spool()? {
                Some(spool) => {
                    let marked = spool.request_replay(sink.as_deref())?;
                    println!("marked {marked} dead letter(s) for replay; they are delivered when `auditrail serve` next starts");
                    marked
                }
                None => {
                    let mut request = at.client()?.post(at.url("/v1/dead-letters/replay"));
                    if let Some(sink) = &sink {
                        request = request.query(&[("sink", sink)]);
                    }
                    let answer = at.call(request).await?;
                    let marked = answer["marked"].as_u64().unwrap_or(0);
                    println!("marked {marked} dead letter(s) for replay; their sinks deliver them within seconds");
                    marked as usize
                }
            };
            tracing::debug!(marked, "replay requested");
        }
    }
    Ok(())
}

async fn list(
    at: &Location,
    sink: Option<&str>,
    tenant: Option<&str>,
) -> anyhow::Result<Vec<DeadLetter>> {
    if let Some(spool) = at.open_spool()? {
        return Ok(spool.dead_letters(sink, tenant)?);
    }
    let mut request = at.client()?.get(at.url("/v1/dead-letters"));
    if let Some(sink) = sink {
        request = request.query(&[("sink", sink)]);
    }
    if let Some(tenant) = tenant {
        request = request.query(&[("tenant", tenant)]);
    }
    let mut answer = at.call(request).await?;
    serde_json::from_value(answer["dead_letters"].take())
        .context("the admin API's answer is not a dead-letter list")
}

fn print(out: &mut impl Write, letters: &[DeadLetter], format: Format) -> std::io::Result<()> {
    match format {
        Format::Json => {
            for letter in letters {
                serde_json::to_writer(&mut *out, letter)?;
                writeln!(out)?;
            }
        }
        Format::Csv => {
            // The letter's own columns, then its event's.
            let letter_columns = ["sink", "dead_lettered", "replay", "reason"];
            csv_export::write_row(
                out,
                letter_columns.into_iter().chain(csv_export::EVENT_COLUMNS),
            )?;
            for l in letters {
                let view = EventView::new(l.event.clone(), None);
                let dead_lettered = format_time(l.dead_lettered_unix_nano);
                let letter_cells = [
                    l.sink.as_str(),
                    dead_lettered.as_str(),
                    if l.replay { "queued" } else { "" },
                    l.reason.as_str(),
                ];
                let event_cells = csv_export::event_cells(&view);
                csv_export::write_row(
                    out,
                    letter_cells
                        .into_iter()
                        .chain(event_cells.iter().map(|c| c.as_ref())),
                )?;
            }
        }
        Format::Table => {
            if letters.is_empty() {
                return writeln!(out, "no dead letters");
            }
            writeln!(
                out,
                "{:<12} {:>8} {:<30} {:<6} {:<20} {:<32} REASON",
                "SINK", "SEQ", "DEAD-LETTERED", "REPLAY", "EVENT", "EVENT_ID"
            )?;
            // Every field made safe for a terminal: a reason comes from the
            // far side of a sink, and the event from a client.
            for l in letters {
                writeln!(
                    out,
                    "{:<12} {:>8} {:<30} {:<6} {:<20} {:<32} {}",
                    terminal_safe(&l.sink),
                    l.seq,
                    format_time(l.dead_lettered_unix_nano),
                    if l.replay { "queued" } else { "-" },
                    terminal_safe(&l.event.event_name),
                    terminal_safe(&l.event.event_id),
                    terminal_safe(&l.reason)
                )?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use auditrail_model::AuditEvent;

    use super::*;

    #[test]
    fn one_dead_letter_is_one_table_line() {
        let hostile = "a\r\nb\0c\x1b[31md\u{202e}e\u{2028}f\x7f";
        let letter = DeadLetter {
            sink: hostile.into(),
            seq: 7,
            reason: hostile.into(),
            dead_lettered_unix_nano: 1,
            replay: false,
            event: AuditEvent {
                event_name: hostile.into(),
                event_id: hostile.into(),
                ..Default::default()
            },
        };
        let mut out = Vec::new();
        print(&mut out, &[letter.clone(), letter], Format::Table).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
        for line in text.lines() {
            assert!(
                !line
                    .chars()
                    .any(|c| c.is_control() || matches!(c, '\u{202e}' | '\u{2028}')),
                "{line:?}"
            );
        }
        assert!(
            text.contains("a\\r\\nb\\0c\\u{1b}[31md\\u{202e}e\\u{2028}f\\u{7f}"),
            "{text}"
        );
    }
}
