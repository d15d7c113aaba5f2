//! The reference docs hold exactly what the code has.
//!
//! * `docs/config-reference.md` documents every config key, and no key
//!   that does not exist. The truth comes from the real deserializer, not
//!   from a list kept by hand: every table denies unknown keys, and serde's
//!   error for an unknown key lists the keys the table has. So for each
//!   table the reference documents, the test feeds that table a key that
//!   does not exist (through `Config::parse`, as `serve` and
//!   `check-config` do) and compares the keys the error lists with the
//!   documented ones. A key added to a config struct without a line in the
//!   reference fails here; so does a documented key that was removed.
//!   Sub-tables are found the same way (a key that is itself a table of
//!   strict keys must have a section of its own), every sink `type` must
//!   have a section, and every value an enum key takes must be named in its
//!   row.
//! * `docs/sinks.md` mentions every key of every sink type in that type's
//!   section.
//! * `docs/operations.md` lists every metric the code exports, and lists no
//!   metric the code does not export.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use auditrail::config::Config;

/// A key no table has.
const PROBE: &str = "zz_probe";

/// The sink type used to reach sub-tables that every sink type shares
/// (`[sinks.delivery]`, `[sinks.format.ocsf]`), with its required keys.
const SHARED_SINK_PROBE: &str = "type = \"file\"\npath = \"probe\"\n";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_doc(name: &str) -> String {
    let path = repo().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// One `## \`[table]\`` section of the reference and the keys of its table.
#[derive(Debug, Clone)]
struct Section {
    /// As written: `[receiver.tls]`, `[[receiver.tokens]]`.
    header: String,
    /// `receiver.tls` as parts; `<name>` parts stand for any key of a map.
    path: Vec<String>,
    /// `[[...]]`: an array of tables.
    array: bool,
    /// `type = "mysql"` in the heading: the section belongs to that sink type.
    sink_type: Option<String>,
    line: usize,
    rows: Vec<Row>,
}

#[derive(Debug, Clone)]
struct Row {
    key: String,
    /// The whole table row, where enum values must be named.
    text: String,
    line: usize,
}

/// The text between backticks, in order.
fn code_spans(text: &str) -> Vec<&str> {
    text.split('`').skip(1).step_by(2).collect()
}

/// Sections are headings whose first code span is a TOML table header;
/// other headings end the current section. A section's keys are the table
/// rows whose first cell starts with a code span.
fn sections(markdown: &str) -> Vec<Section> {
    let mut sections = Vec::new();
    let mut current: Option<Section> = None;
    for (n, line) in markdown.lines().enumerate() {
        if line.starts_with('#') {
            sections.extend(current.take());
            let spans = code_spans(line);
            let Some(header) = spans.first().filter(|s| s.starts_with('[')) else {
                continue;
            };
            let array = header.starts_with("[[");
            let inner = header.trim_matches(|c| c == '[' || c == ']');
            let sink_type = spans.iter().find_map(|s| {
                let value = s.strip_prefix("type = ")?;
                Some(value.trim_matches('"').to_owned())
            });
            current = Some(Section {
                header: header.to_string(),
                path: inner.split('.').map(str::to_owned).collect(),
                array,
                sink_type,
                line: n + 1,
                rows: Vec::new(),
            });
        } else if let Some(section) = &mut current {
            if let Some(rest) = line.strip_prefix("| `") {
                let key = rest.split('`').next().unwrap_or("").to_owned();
                section.rows.push(Row {
                    key,
                    text: line.to_owned(),
                    line: n + 1,
                });
            }
        }
    }
    sections.extend(current);
    sections
}

/// A TOML path part: `<tenant>` (any key of a map) becomes a real key.
fn part(p: &str) -> &str {
    if p.starts_with('<') {
        "probe"
    } else {
        p
    }
}

impl Section {
    fn is_sink(&self) -> bool {
        self.path[0] == "sinks"
    }

    /// `[[sinks]]` without a type: `name`, `type` and `delivery`, which
    /// `SinkConfig`'s own deserializer takes out by hand (no strict struct
    /// to probe).
    fn is_shared_sink_keys(&self) -> bool {
        self.is_sink() && self.path.len() == 1 && self.sink_type.is_none()
    }

    fn dotted(&self) -> String {
        self.path
            .iter()
            .map(|p| part(p))
            .collect::<Vec<_>>()
            .join(".")
    }

    /// A config that opens this section's table, ready for keys.
    fn opening(&self) -> String {
        if self.is_sink() {
            let mut text = String::from("[[sinks]]\nname = \"probe\"\n");
            match &self.sink_type {
                Some(t) => text.push_str(&format!("type = \"{t}\"\n")),
                None => text.push_str(SHARED_SINK_PROBE),
            }
            if self.path.len() > 1 {
                text.push_str(&format!("[{}]\n", self.dotted()));
            }
            text
        } else if self.array {
            format!("[[{}]]\n", self.dotted())
        } else {
            format!("[{}]\n", self.dotted())
        }
    }

    /// The header of the section that documents `key` of this table as a
    /// table (`[a.key]`), an array of tables (`[[a.key]]`) or a map of
    /// tables (the start of `[a.key.<name>]`).
    fn child_header(&self, key: &str, shape: Shape) -> String {
        let inner = format!("{}.{key}", self.path.join("."));
        match shape {
            Shape::Table => format!("[{inner}]"),
            Shape::Array => format!("[[{inner}]]"),
            Shape::Map => format!("[{inner}.<"),
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Shape {
    Table,
    Array,
    Map,
}

fn parse(text: &str) -> Result<Config, String> {
    // Every `${VAR}` and `*_env` resolves; a probe never names one anyway.
    Config::parse(text, Path::new("probe.toml"), |_| Some("x".into())).map_err(|e| e.to_string())
}

/// The names serde lists after "expected" (`a`, `b` or "a", "b").
fn expected_names(error: &str) -> BTreeSet<String> {
    let Some((_, list)) = error.split_once("expected") else {
        return BTreeSet::new();
    };
    let list = list.lines().next().unwrap_or("");
    let quote = if list.contains('`') { '`' } else { '"' };
    list.split(quote)
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// The keys the code gives the table `opening` opens, by feeding it a key
/// it does not have. `Err` when the probe did not reach a strict table.
fn keys_of(opening: &str) -> Result<BTreeSet<String>, String> {
    let text = format!("{opening}{PROBE} = 1\n");
    match parse(&text) {
        Ok(_) => Err(format!("an unknown key was accepted:\n{text}")),
        Err(e) if e.contains(&format!("unknown field `{PROBE}`")) => {
            if e.contains("there are no fields") {
                Ok(BTreeSet::new())
            } else {
                Ok(expected_names(&e))
            }
        }
        Err(e) => Err(format!("the probe did not reach the table: {e}")),
    }
}

/// The sections of `docs/config-reference.md` (too few means the reader
/// no longer understands the page).
fn reference() -> Vec<Section> {
    let found = sections(&read_doc("docs/config-reference.md"));
    assert!(
        found.len() > 20,
        "docs/config-reference.md: found only {} sections",
        found.len()
    );
    found
}

#[test]
fn every_config_key_is_in_the_reference_and_every_documented_key_exists() {
    let sections = reference();
    let mut failures = Vec::new();
    let at = |s: &Section| {
        let of_type = s
            .sink_type
            .as_ref()
            .map(|t| format!(" type = \"{t}\""))
            .unwrap_or_default();
        format!("docs/config-reference.md:{} {}{of_type}", s.line, s.header)
    };
    for section in &sections {
        if section.is_shared_sink_keys() {
            continue; // the keys every sink has: checked below
        }
        let documented: BTreeSet<String> = section.rows.iter().map(|r| r.key.clone()).collect();
        if documented.len() != section.rows.len() {
            failures.push(format!("{}: a key is documented twice", at(section)));
        }
        match keys_of(&section.opening()) {
            Err(e) => failures.push(format!("{}: {e}", at(section))),
            Ok(actual) => {
                for key in actual.difference(&documented) {
                    failures.push(format!(
                        "{}: key `{key}` exists in the code but is not documented",
                        at(section)
                    ));
                }
                for key in documented.difference(&actual) {
                    failures.push(format!(
                        "{}: key `{key}` is documented but the code has no such key",
                        at(section)
                    ));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "the config reference and the code disagree:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_top_level_table_and_sub_table_has_a_section() {
    let sections = reference();
    let headers: BTreeSet<String> = sections
        .iter()
        .map(|s| match &s.sink_type {
            Some(t) => format!("{} {t}", s.header),
            None => s.header.clone(),
        })
        .collect();
    let has = |header: &str, sink_type: &Option<String>| {
        headers.iter().any(|h| {
            let (h_header, h_type) = h.split_once(' ').unwrap_or((h, ""));
            let type_ok = match sink_type {
                Some(t) => h_type == t || h_type.is_empty(),
                None => true,
            };
            type_ok
                && (h_header == header || (header.ends_with('<') && h_header.starts_with(header)))
        })
    };
    let mut failures = Vec::new();
    let root = keys_of("").expect("the root table lists its keys");
    for table in &root {
        if !has(&format!("[{table}]"), &None) && !has(&format!("[[{table}]]"), &None) {
            failures.push(format!("top-level table `{table}` has no section"));
        }
    }
    for section in &sections {
        if section.path.len() == 1 && !root.contains(&section.path[0]) {
            failures.push(format!(
                "line {}: {} is not a top-level table",
                section.line, section.header
            ));
        }
        if section.is_shared_sink_keys() {
            continue;
        }
        // A key whose value is a table of strict keys (or an array or map
        // of them) answers an unknown key inside it with the list of its
        // own keys: it needs a section.
        for row in &section.rows {
            let opening = section.opening();
            let inner = section.dotted();
            for (shape, probe) in [
                (Shape::Table, format!("{opening}[{inner}.{}]\n", row.key)),
                (Shape::Array, format!("{opening}[[{inner}.{}]]\n", row.key)),
                (
                    Shape::Map,
                    format!("{opening}[{inner}.{}.probe]\n", row.key),
                ),
            ] {
                if keys_of(&probe).is_ok() {
                    let child = section.child_header(&row.key, shape);
                    if !has(&child, &section.sink_type) {
                        failures.push(format!(
                            "line {}: `{}` of {} is a table of its own keys: document them in a section `{}`",
                            row.line,
                            row.key,
                            section.header,
                            match shape {
                                Shape::Map => format!("{child}name>]"),
                                _ => child,
                            }
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "tables without a section in docs/config-reference.md:\n{}",
        failures.join("\n")
    );
}

/// The sink types the code has, from the error for a type it does not have.
fn sink_types() -> BTreeSet<String> {
    let error = parse(&format!(
        "[[sinks]]\nname = \"probe\"\ntype = \"{PROBE}\"\n"
    ))
    .expect_err("an unknown sink type is refused");
    let types = expected_names(&error);
    assert!(types.len() > 5, "no sink types in: {error}");
    types
}

#[test]
fn every_sink_type_has_a_section_and_the_shared_sink_keys_are_documented() {
    let sections = reference();
    let types = sink_types();
    let documented: BTreeSet<String> = sections
        .iter()
        .filter(|s| s.header == "[[sinks]]")
        .filter_map(|s| s.sink_type.clone())
        .collect();
    assert_eq!(
        types, documented,
        "sink types in the code (left) and with a `[[sinks]]` `type = \"...\"` section in docs/config-reference.md (right)"
    );
    let shared = sections
        .iter()
        .find(|s| s.is_shared_sink_keys())
        .expect("a `[[sinks]]` section for the keys every sink has");
    // `SinkConfig`'s own deserializer takes these out by hand before the
    // type's strict struct sees the rest, so they cannot be probed: a key
    // added there must be added here too.
    let keys: BTreeSet<&str> = shared.rows.iter().map(|r| r.key.as_str()).collect();
    assert_eq!(keys, BTreeSet::from(["name", "type", "delivery"]));
    let type_row = shared.rows.iter().find(|r| r.key == "type").unwrap();
    for t in &types {
        assert!(
            type_row.text.contains(&format!("`{t}`")),
            "line {}: the `type` row does not name `{t}`",
            type_row.line
        );
    }
}

#[test]
fn every_value_of_an_enum_key_is_named_in_its_row() {
    let mut failures = Vec::new();
    let mut enums = 0;
    for section in reference() {
        if section.is_shared_sink_keys() {
            continue;
        }
        for row in &section.rows {
            let text = format!("{}{} = \"{PROBE}\"\n", section.opening(), row.key);
            let Err(error) = parse(&text) else { continue };
            let Some(tail) = error
                .split_once(&format!("unknown variant `{PROBE}`"))
                .or_else(|| error.split_once(&format!("unknown format \"{PROBE}\"")))
                .map(|(_, tail)| tail)
            else {
                continue;
            };
            enums += 1;
            for value in expected_names(tail) {
                if !row.text.contains(&format!("`{value}`"))
                    && !row.text.contains(&format!("`\"{value}\"`"))
                {
                    failures.push(format!(
                        "docs/config-reference.md:{}: `{}` of {} takes `{value}`, which its row does not name",
                        row.line, row.key, section.header
                    ));
                }
            }
        }
    }
    assert!(
        enums > 10,
        "found only {enums} enum keys; is the probe broken?"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `docs/sinks.md`'s section of each sink type: from its heading (which
/// names `type = "..."`) to the next `## ` heading.
fn sinks_md_sections() -> BTreeMap<String, String> {
    let text = read_doc("docs/sinks.md");
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("## ") {
            current = code_spans(line).iter().find_map(|s| {
                s.strip_prefix("type = ")
                    .map(|t| t.trim_matches('"').to_owned())
            });
        }
        if let Some(t) = &current {
            let body = out.entry(t.clone()).or_default();
            body.push_str(line);
            body.push('\n');
        }
    }
    out
}

#[test]
fn docs_sinks_md_mentions_every_key_of_every_sink_type() {
    let by_type = sinks_md_sections();
    let mut failures = Vec::new();
    for section in reference() {
        let Some(t) = &section.sink_type else {
            continue;
        };
        let Some(text) = by_type.get(t) else {
            failures.push(format!("docs/sinks.md has no section for type = \"{t}\""));
            continue;
        };
        for row in &section.rows {
            let key = &row.key;
            // In a TOML example (`key = ...`, commented out or not), or in the text.
            let mentioned = text.contains(&format!("`{key}`"))
                || text.lines().any(|l| {
                    let l = l.trim_start().trim_start_matches('#').trim_start();
                    l.strip_prefix(key.as_str())
                        .is_some_and(|rest| rest.trim_start().starts_with('='))
                })
                || text.contains(&format!("[{}.{key}", section.dotted()));
            if !mentioned {
                failures.push(format!(
                    "docs/sinks.md, type = \"{t}\": key `{key}` ({}) is not mentioned",
                    section.header
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Every metric name the code registers: the string literal that opens a
/// `counter!`, `gauge!` or `histogram!` call in a crate's `src/`.
fn metrics_in_code() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for macro_call in ["counter!(", "gauge!(", "histogram!("] {
                    for (at, _) in text.match_indices(macro_call) {
                        let rest = text[at + macro_call.len()..].trim_start();
                        let name = rest.strip_prefix('"').and_then(|r| r.split('"').next());
                        if let Some(name) = name.filter(|n| {
                            n.chars()
                                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                        }) {
                            out.insert(name.to_owned());
                        }
                    }
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    for krate in std::fs::read_dir(repo().join("crates")).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            walk(&src, &mut names);
        }
    }
    names
}

#[test]
fn docs_operations_md_lists_every_metric_and_only_real_ones() {
    let code = metrics_in_code();
    assert!(
        code.len() > 40,
        "found only {} metrics in crates/",
        code.len()
    );
    let text = read_doc("docs/operations.md");
    // The metric tables: rows whose first cell is a metric name.
    let documented: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("| `auditrail_"))
        .map(|rest| format!("auditrail_{}", rest.split(['`', '{']).next().unwrap()))
        .collect();
    let undocumented: Vec<_> = code.difference(&documented).collect();
    let unknown: Vec<_> = documented.difference(&code).collect();
    assert!(
        undocumented.is_empty() && unknown.is_empty(),
        "metrics the code exports that docs/operations.md does not list: {undocumented:?}\n\
         metrics docs/operations.md lists that the code does not export: {unknown:?}"
    );
}

#[test]
fn the_reference_reader_finds_sections_rows_and_names() {
    let md = "# Title\n\n## `[receiver]`\n\n| key | type |\n|---|---|\n| `grpc_addr` | address |\n\
              | `tls` | table: `[receiver.tls]` |\n\n## Prose\n\n| `not_a_key` | x |\n\n\
              ### `[[sinks]]` with `type = \"mysql\"`\n\n| `url` | string |\n";
    let found = sections(md);
    assert_eq!(found.len(), 2);
    assert_eq!(found[0].path, ["receiver"]);
    assert_eq!(
        found[0]
            .rows
            .iter()
            .map(|r| r.key.as_str())
            .collect::<Vec<_>>(),
        ["grpc_addr", "tls"]
    );
    assert!(found[1].array && found[1].sink_type.as_deref() == Some("mysql"));
    assert_eq!(
        found[1].opening(),
        "[[sinks]]\nname = \"probe\"\ntype = \"mysql\"\n"
    );
    assert_eq!(
        expected_names("unknown field `x`, expected one of `a`, `b`, `c`"),
        BTreeSet::from(["a".into(), "b".into(), "c".into()])
    );
    assert_eq!(
        expected_names("unknown format \"x\"; expected \"json\" or \"ocsf\""),
        BTreeSet::from(["json".into(), "ocsf".into()])
    );
    // The probe itself: a table's keys come back from the real parser.
    assert_eq!(
        keys_of("[node]\n").unwrap(),
        BTreeSet::from(["id".to_owned()])
    );
    assert!(
        keys_of("[node]\n[node.id]\n").is_err(),
        "`id` is a string, not a table"
    );
}
