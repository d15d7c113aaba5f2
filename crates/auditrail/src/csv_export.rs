//! `--format csv`: events (and dead letters) as a sheet an auditor opens in
//! a spreadsheet.
//!
//! One header row, then one row per event with every canonical field under
//! its canonical name, plus `time` (RFC 3339, what a person reads) first and
//! `trace_url` last. Quoting follows RFC 4180 (the `csv` crate), so a body
//! with commas, quotes or newlines stays one cell.
//!
//! Event text comes from clients. A cell that a spreadsheet would run as a
//! formula (it starts with `=`, `+`, `-`, `@`, a tab or a carriage return)
//! gets a leading `'`, as OWASP's "CSV injection" advice says, so opening
//! the export cannot run what an attacker put in an event. `--format json`
//! keeps every value exactly.

use std::borrow::Cow;
use std::io::Write;

use crate::output::{format_time, EventView};

/// The columns of an event row, in order.
pub const EVENT_COLUMNS: [&str; 27] = [
    "time",
    "node",
    "seq",
    "event_id",
    "time_unix_nano",
    "observed_time_unix_nano",
    "received_time_unix_nano",
    "tenant",
    "service_name",
    "event_name",
    "severity_number",
    "severity_text",
    "actor_id",
    "actor_name",
    "client_address",
    "outcome",
    "target",
    "trace_id",
    "span_id",
    "trace_flags",
    "body",
    "attributes",
    "resource_attributes",
    "scope_name",
    "prev_hash",
    "hash",
    "trace_url",
];

/// The cells of one event, in [`EVENT_COLUMNS`] order.
pub fn event_cells(view: &EventView) -> [Cow<'_, str>; EVENT_COLUMNS.len()] {
    let e = &view.event;
    [
        format_time(e.time_unix_nano).into(),
        e.node.as_str().into(),
        e.seq.to_string().into(),
        e.event_id.as_str().into(),
        e.time_unix_nano.to_string().into(),
        e.observed_time_unix_nano.to_string().into(),
        e.received_time_unix_nano.to_string().into(),
        e.tenant.as_str().into(),
        e.service_name.as_str().into(),
        e.event_name.as_str().into(),
        e.severity_number.to_string().into(),
        e.severity_text.as_str().into(),
        e.actor_id.as_str().into(),
        e.actor_name.as_str().into(),
        e.client_address.as_str().into(),
        e.outcome.as_str().into(),
        e.target.as_str().into(),
        e.trace_id.as_str().into(),
        e.span_id.as_str().into(),
        e.trace_flags.to_string().into(),
        e.body.as_str().into(),
        e.attributes.as_str().into(),
        e.resource_attributes.as_str().into(),
        e.scope_name.as_str().into(),
        hex::encode(e.prev_hash).into(),
        hex::encode(e.hash).into(),
        view.trace_url.as_deref().unwrap_or_default().into(),
    ]
}

/// Writes one CSV row (newline included), each cell made safe to open.
pub fn write_row<'a>(
    out: &mut impl Write,
    cells: impl IntoIterator<Item = &'a str>,
) -> std::io::Result<()> {
    let mut writer = csv::WriterBuilder::new()
        .terminator(csv::Terminator::CRLF)
        .from_writer(out);
    for cell in cells {
        writer.write_field(spreadsheet_safe(cell).as_bytes())?;
    }
    writer.write_record(None::<&[u8]>)?;
    writer.flush()
}

/// The cell as a spreadsheet shows it, never as a formula it runs.
fn spreadsheet_safe(cell: &str) -> Cow<'_, str> {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}").into()
    } else {
        cell.into()
    }
}

#[cfg(test)]
mod tests {
    use auditrail_model::AuditEvent;

    use super::*;

    fn view(body: &str) -> EventView {
        let event = AuditEvent {
            seq: 7,
            event_name: "image.generate".into(),
            actor_id: "alice".into(),
            target: "outputs/a.png".into(),
            body: body.into(),
            attributes: r#"{"gen_ai.request.model":"m1"}"#.into(),
            ..AuditEvent::default()
        };
        EventView::new(event, Some("http://tempo/{trace_id}"))
    }

    fn read_back(bytes: &[u8]) -> Vec<Vec<String>> {
        csv::ReaderBuilder::new()
            .has_headers(false)
            .from_reader(bytes)
            .records()
            .map(|r| r.unwrap().iter().map(str::to_owned).collect())
            .collect()
    }

    #[test]
    fn one_row_per_event_whatever_its_body_holds() {
        let body = "a cat, \"sitting\"\non two lines";
        let mut out = Vec::new();
        write_row(&mut out, EVENT_COLUMNS).unwrap();
        write_row(
            &mut out,
            event_cells(&view(body)).iter().map(|c| c.as_ref()),
        )
        .unwrap();
        let rows = read_back(&out);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0], EVENT_COLUMNS);
        let cell = |name: &str| {
            let i = EVENT_COLUMNS.iter().position(|c| *c == name).unwrap();
            rows[1][i].clone()
        };
        assert_eq!(cell("body"), body);
        assert_eq!(cell("seq"), "7");
        assert_eq!(cell("target"), "outputs/a.png");
        assert_eq!(cell("attributes"), r#"{"gen_ai.request.model":"m1"}"#);
        assert_eq!(cell("time"), "1970-01-01T00:00:00.000000000Z");
    }

    #[test]
    fn formulas_are_shown_not_run() {
        for hostile in [
            "=HYPERLINK(\"http://x\")",
            "+1",
            "-2+3",
            "@SUM(A1)",
            "\tx",
            "\r=1",
        ] {
            let mut out = Vec::new();
            write_row(
                &mut out,
                event_cells(&view(hostile)).iter().map(|c| c.as_ref()),
            )
            .unwrap();
            let row = &read_back(&out)[0];
            let body = &row[EVENT_COLUMNS.iter().position(|c| *c == "body").unwrap()];
            assert_eq!(body, &format!("'{hostile}"));
        }
        assert_eq!(spreadsheet_safe("a=1"), "a=1");
    }
}
