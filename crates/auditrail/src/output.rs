//! How events leave auditrail for a person or a script: the `/v1/events`
//! answer (a page, or a stream in the same layout) and the `table` / `json`
//! / `csv` output of `query` and `tail`.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;
use std::time::{Duration, UNIX_EPOCH};

use auditrail_model::AuditEvent;
use auditrail_spool::{QueryEnd, Stop};

use crate::csv_export;
use serde::{Deserialize, Serialize};

/// One event with its trace link.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventView {
    #[serde(flatten)]
    pub event: AuditEvent,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_url: Option<String>,
}

impl EventView {
    pub fn new(event: AuditEvent, trace_url: Option<&str>) -> Self {
        EventView {
            trace_url: trace_link(trace_url, &event.trace_id),
            event,
        }
    }
}

/// The answer of `GET /v1/events`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EventsPage {
    pub events: Vec<EventView>,
    #[serde(flatten)]
    pub end: PageEnd,
}

/// What follows the events of an answer: where it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageEnd {
    /// The highest seq the spool held when the query started.
    pub last_seq: u64,
    /// Pass as `after_seq` to get what comes after this answer in seq order
    /// without missing or repeating anything (what `tail` does).
    pub next_after_seq: u64,
    /// False when the answer stopped early (see `stopped_by`): fewer events
    /// than asked for then do not mean there are no more; continue from
    /// `next_after_seq`.
    #[serde(default = "complete_by_default")]
    pub complete: bool,
    /// Why it stopped early: `max_scan_events` or `query_timeout` (continue
    /// from `next_after_seq`), or `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped_by: Option<String>,
    /// What went wrong, when `stopped_by` is `error` (or the server says more).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn complete_by_default() -> bool {
    true
}

/// `stopped_by` of an answer that ran out of scan budget.
pub const STOPPED_BY_BUDGET: &str = "max_scan_events";
/// `stopped_by` of an answer that ran out of time.
pub const STOPPED_BY_TIMEOUT: &str = "query_timeout";
/// `stopped_by` of an answer that failed.
pub const STOPPED_BY_ERROR: &str = "error";

impl PageEnd {
    /// How a query that ended as `end` ends its answer.
    pub fn of(end: &QueryEnd) -> PageEnd {
        let stopped_by = match end.stop {
            Stop::End | Stop::Limit => None,
            Stop::Budget => Some(STOPPED_BY_BUDGET),
            Stop::Deadline => Some(STOPPED_BY_TIMEOUT),
            Stop::Cancelled => Some(STOPPED_BY_ERROR),
        };
        PageEnd {
            last_seq: end.last_seq,
            next_after_seq: end.next_after_seq,
            complete: end.complete(),
            stopped_by: stopped_by.map(str::to_owned),
            error: None,
        }
    }

    /// Whether the server stopped at one of its limits, so that asking again
    /// from `next_after_seq` goes on (as opposed to an error, or the end).
    pub fn can_continue(&self) -> bool {
        !self.complete
            && matches!(
                self.stopped_by.as_deref(),
                Some(STOPPED_BY_BUDGET | STOPPED_BY_TIMEOUT)
            )
    }
}

impl EventsPage {
    pub fn new(events: Vec<AuditEvent>, end: &QueryEnd, trace_url: Option<&str>) -> Self {
        EventsPage {
            events: events
                .into_iter()
                .map(|event| EventView::new(event, trace_url))
                .collect(),
            end: PageEnd::of(end),
        }
    }

    /// The page as the admin API sends it: see [`PageLines`].
    pub fn to_lines(&self) -> Vec<u8> {
        let mut lines = PageLines::default();
        let mut out = PageLines::HEAD.to_vec();
        for event in &self.events {
            lines.event(&event_json(event), &mut out);
        }
        lines.end(&self.end, &mut out);
        out
    }
}

/// An event as `query --format json` prints it: the admin API's fields,
/// with `attributes` and `resource_attributes` as JSON objects instead of
/// the canonical text they are stored (and hashed) as, so that a filter
/// such as `jq '.attributes["user.id"]'` needs no `fromjson`.
fn with_attribute_objects(e: &EventView) -> serde_json::Value {
    let mut value = serde_json::to_value(e).expect("an event always serializes");
    for key in ["attributes", "resource_attributes"] {
        let parsed = value
            .get(key)
            .and_then(serde_json::Value::as_str)
            .and_then(|text| serde_json::from_str::<serde_json::Value>(text).ok());
        if let Some(object) = parsed {
            value[key] = object;
        }
    }
    value
}

/// An event as one line of JSON (serde_json escapes every control
/// character inside strings, so it holds no newline).
pub fn event_json(event: &EventView) -> Vec<u8> {
    serde_json::to_vec(event).expect("an event always serializes")
}

/// The layout of every `/v1/events` answer, page or stream: one JSON
/// document, written a line at a time so that a client can read it as it
/// comes:
///
/// ```text
/// {"events":[
/// {"node":"a","seq":1,...},
/// {"node":"a","seq":2,...}
/// ],"last_seq":2,"next_after_seq":2,"complete":true}
/// ```
///
/// The first line is `{"events":[`, then one event per line, each followed
/// by `,` except the last, then a line starting with `],` that holds the
/// [`PageEnd`] fields.
#[derive(Debug, Default)]
pub struct PageLines {
    events: u64,
}

impl PageLines {
    pub const HEAD: &'static [u8] = b"{\"events\":[\n";

    /// Appends one event (its JSON, from [`event_json`]) to `out`. Its line
    /// is ended by the next event or by the end.
    pub fn event(&mut self, json: &[u8], out: &mut Vec<u8>) {
        if self.events > 0 {
            out.extend_from_slice(b",\n");
        }
        out.extend_from_slice(json);
        self.events += 1;
    }

    /// Appends the last line.
    pub fn end(&self, end: &PageEnd, out: &mut Vec<u8>) {
        if self.events > 0 {
            out.push(b'\n');
        }
        let fields = serde_json::to_vec(end).expect("a page end always serializes");
        out.extend_from_slice(b"],");
        // `{"last_seq":...}` without its opening brace.
        out.extend_from_slice(&fields[1..]);
        out.push(b'\n');
    }
}

/// One line of a `/v1/events` answer.
#[derive(Debug)]
pub enum PageLine {
    Head,
    Event(Box<EventView>),
    End(PageEnd),
}

impl PageLine {
    pub fn parse(line: &str) -> Result<PageLine, String> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.as_bytes() == &PageLines::HEAD[..PageLines::HEAD.len() - 1] {
            return Ok(PageLine::Head);
        }
        if let Some(fields) = line.strip_prefix("],") {
            return serde_json::from_str(&format!("{{{fields}"))
                .map(PageLine::End)
                .map_err(|e| format!("the end of the answer does not parse ({e}): {line}"));
        }
        let json = line.strip_suffix(',').unwrap_or(line);
        serde_json::from_str(json)
            .map(|e| PageLine::Event(Box::new(e)))
            .map_err(|e| format!("an event line does not parse ({e}): {line}"))
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
    /// For spreadsheets (see [`crate::csv_export`]).
    Csv,
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

    /// The header, if not printed yet (nothing for JSON). A CSV export
    /// has its header row even when nothing matched.
    pub fn header(&mut self, out: &mut impl Write) -> std::io::Result<()> {
        if self.header_done {
            return Ok(());
        }
        match self.format {
            Format::Json => {}
            Format::Table => writeln!(
                out,
                "{:<30} {:<8} {:<18} {:<14} {:<8} {:<14} {:<34} BODY",
                "TIME", "SEQ", "EVENT", "ACTOR", "OUTCOME", "SERVICE", "TRACE"
            )?,
            Format::Csv => csv_export::write_row(out, csv_export::EVENT_COLUMNS)?,
        }
        self.header_done = true;
        Ok(())
    }

    /// Prints one event (without flushing).
    pub fn event(&mut self, out: &mut impl Write, e: &EventView) -> std::io::Result<()> {
        match self.format {
            Format::Json => {
                serde_json::to_writer(&mut *out, &with_attribute_objects(e))?;
                writeln!(out)
            }
            Format::Table => {
                self.header(out)?;
                out.write_all(table_row(e).as_bytes())
            }
            Format::Csv => {
                self.header(out)?;
                csv_export::write_row(out, csv_export::event_cells(e).iter().map(|c| c.as_ref()))
            }
        }
    }

    pub fn print(&mut self, out: &mut impl Write, events: &[EventView]) -> std::io::Result<()> {
        self.header(out)?;
        for e in events {
            self.event(out, e)?;
        }
        out.flush()
    }
}

/// One event as one line of the table, newline included. Every field goes
/// through [`terminal_safe`]: whatever an event holds, it is one line that
/// cannot move the cursor, recolour the terminal or reorder what follows.
pub fn table_row(e: &EventView) -> String {
    let ev = &e.event;
    let trace = e.trace_url.as_deref().unwrap_or(&ev.trace_id);
    format!(
        "{:<30} {:<8} {:<18} {:<14} {:<8} {:<14} {:<34} {}\n",
        format_time(ev.time_unix_nano),
        ev.seq,
        terminal_safe(&ev.event_name),
        terminal_safe(&ev.actor_id),
        ev.outcome.as_str(),
        terminal_safe(&ev.service_name),
        terminal_safe(trace),
        one_line(&ev.body, 80)
    )
}

pub fn format_time(unix_nano: u64) -> String {
    humantime::format_rfc3339_nanos(UNIX_EPOCH + Duration::from_nanos(unix_nano)).to_string()
}

/// Whether a character is shown as an escape on a terminal: the backslash
/// (so that an escape cannot be faked), C0 and C1 controls (CR, LF, NUL,
/// ESC, ...) and DEL, the Unicode line and paragraph separators, and the
/// bidi controls that reorder how the rest of a line is shown.
fn is_unsafe(c: char) -> bool {
    // The same set every text output of the sinks escapes.
    c == '\\' || auditrail_exporters::encoding::line_safe::must_escape(c)
}

/// Appends `c`, escaped if it is unsafe: `\\`, `\n`, `\r`, `\t`, `\0`, else
/// `\u{1b}` (the code point in hex), as Rust writes them.
fn push_safe(out: &mut String, c: char) {
    match c {
        '\\' => out.push_str("\\\\"),
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        '\0' => out.push_str("\\0"),
        c if is_unsafe(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// `text` as it may be printed on a terminal: every character that could
/// end a line, move the cursor, recolour the terminal or reorder the
/// characters after it is shown as a visible escape instead (see
/// [`is_unsafe`]). The escapes are unambiguous: the text can be read back
/// exactly.
pub fn terminal_safe(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        push_safe(&mut out, c);
    }
    Cow::Owned(out)
}

/// [`terminal_safe`], cut to about `max_chars` shown characters (an escape
/// is never cut in two) with `…` when something was left out.
fn one_line(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    let mut piece = String::new();
    let mut shown = 0;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        piece.clear();
        push_safe(&mut piece, c);
        let width = piece.chars().count();
        let room = if chars.peek().is_some() {
            max_chars.saturating_sub(1)
        } else {
            max_chars
        };
        if shown + width > room {
            out.push('…');
            return out;
        }
        out.push_str(&piece);
        shown += width;
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn end(stop: Stop, next_after_seq: u64) -> QueryEnd {
        QueryEnd {
            stop,
            events_examined: 7,
            last_seq: 9,
            next_after_seq,
        }
    }

    /// A page and a stream share one layout: valid JSON, whose lines a
    /// client reads one at a time: the head, one event a line, the end.
    #[test]
    fn pages_are_json_a_line_at_a_time() {
        let ev = |seq| AuditEvent {
            seq,
            body: "two\nlines \u{2028} and \u{1b}[31m".into(),
            ..Default::default()
        };
        for (events, stop) in [
            (vec![], Stop::End),
            (vec![ev(3)], Stop::Limit),
            (vec![ev(3), ev(4), ev(5)], Stop::Budget),
        ] {
            let page = EventsPage::new(events.clone(), &end(stop, 5), Some("T/{trace_id}"));
            let bytes = page.to_lines();
            let parsed: EventsPage = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(parsed.events.len(), events.len());
            assert_eq!(parsed.end, page.end);
            let text = String::from_utf8(bytes).unwrap();
            let lines: Vec<PageLine> = text.lines().map(|l| PageLine::parse(l).unwrap()).collect();
            assert_eq!(lines.len(), events.len() + 2, "{text}");
            assert!(matches!(lines[0], PageLine::Head));
            for (line, want) in lines[1..=events.len()].iter().zip(&events) {
                assert!(
                    matches!(line, PageLine::Event(e) if e.event.seq == want.seq && e.event.body == want.body)
                );
            }
            let PageLine::End(last) = lines.last().unwrap() else {
                panic!("no end line in {text}");
            };
            assert_eq!(*last, page.end);
            assert_eq!(last.complete, stop != Stop::Budget);
            assert_eq!(last.can_continue(), stop == Stop::Budget);
            assert_eq!(
                last.stopped_by.as_deref(),
                (stop == Stop::Budget).then_some(STOPPED_BY_BUDGET)
            );
        }
        // Pages of a server from before `complete` read as complete.
        let old: EventsPage =
            serde_json::from_str(r#"{"events":[],"last_seq":3,"next_after_seq":3}"#).unwrap();
        assert!(old.end.complete && !old.end.can_continue());
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
            &end(Stop::End, 1),
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

    #[test]
    fn json_lines_hold_attributes_as_objects() {
        let event = AuditEvent {
            attributes: r#"{"n":3,"user.id":"alice"}"#.into(),
            resource_attributes: r#"{"service.name":"imagegen"}"#.into(),
            ..Default::default()
        };
        let mut out = Vec::new();
        Printer::new(Format::Json)
            .print(&mut out, &[EventView::new(event, None)])
            .unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(line["attributes"]["user.id"], "alice");
        assert_eq!(line["attributes"]["n"], 3);
        assert_eq!(line["resource_attributes"]["service.name"], "imagegen");
    }

    /// Characters that must never reach a terminal raw.
    fn forbidden(c: char) -> bool {
        c.is_control()
            || matches!(
                c,
                '\u{2028}'
                    | '\u{2029}'
                    | '\u{061C}'
                    | '\u{200E}'
                    | '\u{200F}'
                    | '\u{202A}'..='\u{202E}'
                    | '\u{2066}'..='\u{2069}'
            )
    }

    /// Reads [`terminal_safe`]'s escapes back.
    fn unescape(text: &str) -> String {
        let mut out = String::new();
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            if c != '\\' {
                out.push(c);
                continue;
            }
            match chars.next().unwrap() {
                '\\' => out.push('\\'),
                'n' => out.push('\n'),
                'r' => out.push('\r'),
                't' => out.push('\t'),
                '0' => out.push('\0'),
                'u' => {
                    assert_eq!(chars.next(), Some('{'));
                    let hex: String = chars.by_ref().take_while(|&c| c != '}').collect();
                    out.push(char::from_u32(u32::from_str_radix(&hex, 16).unwrap()).unwrap());
                }
                other => panic!("unknown escape \\{other} in {text:?}"),
            }
        }
        out
    }

    /// Text with many of the characters that matter.
    fn hostile_text() -> impl Strategy<Value = String> {
        let special = prop::sample::select(vec![
            '\n', '\r', '\0', '\x1b', '\t', '\x07', '\x08', '\x7f', '\u{85}', '\u{9b}', '\u{2028}',
            '\u{2029}', '\u{61c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202e}', '\u{2066}',
            '\u{2069}', '\\', '[', 'u', '{', '}', 'a', 'é', '漢',
        ]);
        prop::collection::vec(prop_oneof![any::<char>(), special], 0..40)
            .prop_map(|chars| chars.into_iter().collect())
    }

    proptest! {
        #[test]
        fn terminal_safe_text_holds_no_control_and_reads_back(text in hostile_text()) {
            let safe = terminal_safe(&text);
            prop_assert!(!safe.chars().any(forbidden), "{:?} -> {:?}", text, safe);
            prop_assert_eq!(unescape(&safe), text.clone());
            if !text.chars().any(is_unsafe) {
                prop_assert_eq!(&*safe, text.as_str(), "plain text is shown as it is");
            }
        }

        #[test]
        fn one_event_is_one_table_line(
            name in hostile_text(),
            actor in hostile_text(),
            service in hostile_text(),
            body in hostile_text(),
            url in hostile_text(),
        ) {
            let view = EventView {
                event: AuditEvent {
                    event_name: name,
                    actor_id: actor,
                    service_name: service,
                    body,
                    trace_id: "ab".into(),
                    ..Default::default()
                },
                trace_url: Some(url),
            };
            let row = table_row(&view);
            prop_assert!(row.ends_with('\n'));
            let line = &row[..row.len() - 1];
            prop_assert!(!line.chars().any(forbidden), "{:?}", row);
            let mut out = Vec::new();
            Printer::new(Format::Table).print(&mut out, &[view.clone(), view]).unwrap();
            let text = String::from_utf8(out).unwrap();
            prop_assert_eq!(text.lines().count(), 3, "a header and one line per event: {:?}", text);
        }
    }

    #[test]
    fn long_bodies_are_cut_between_escapes() {
        let cut = one_line(&"\u{1b}".repeat(40), 80);
        assert_eq!(cut, format!("{}…", "\\u{1b}".repeat(13)));
        assert_eq!(one_line("short", 80), "short");
        assert_eq!(one_line(&"x".repeat(80), 80), "x".repeat(80));
        assert_eq!(
            one_line(&"x".repeat(81), 80),
            format!("{}…", "x".repeat(79))
        );
    }
}
