//! How a source record's fields become an audit event: which field holds
//! the time, the actor, the outcome, and which attribute each other field
//! becomes. Built from a preset (`--preset`), a mapping file (`--mapping`)
//! and `--map` / `--set` flags, each overriding the one before.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context};
use auditrail_model::AuditEvent;
use jiff::tz::TimeZone;
use serde::Deserialize;
use serde_json::{Map, Value};

use super::time::unix_nanos;

/// Where a record puts what it imports: the canonical fields (and the
/// OTLP attributes the receiver reads them from), or any attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Time,
    EventName,
    /// A level name (`INFO`, `warning`) or an OTLP severity number.
    Severity,
    Body,
    ServiceName,
    TraceId,
    SpanId,
    /// `outcome`: the text is read as success, failure or unknown (an HTTP
    /// status: below 400 is success).
    Outcome,
    /// The canonical fields the receiver reads from one attribute
    /// (`actor_id` from `user.id`, ...), and `attributes.<key>`.
    Attribute(String),
    ResourceAttribute(String),
}

impl Target {
    /// A canonical field name, `attributes.<key>` or
    /// `resource_attributes.<key>`: the names the SQL sinks' `[sinks.columns]`
    /// take too.
    pub fn parse(name: &str) -> Result<Target, String> {
        Ok(match name {
            "time" => Target::Time,
            "event_name" => Target::EventName,
            "severity" | "severity_text" | "severity_number" => Target::Severity,
            "body" => Target::Body,
            "service_name" => Target::ServiceName,
            "trace_id" => Target::TraceId,
            "span_id" => Target::SpanId,
            "outcome" => Target::Outcome,
            "actor_id" => Target::Attribute("user.id".into()),
            "actor_name" => Target::Attribute("user.name".into()),
            "client_address" => Target::Attribute("client.address".into()),
            "target" => Target::Attribute("audit.target".into()),
            _ => match (
                name.strip_prefix("attributes."),
                name.strip_prefix("resource_attributes."),
            ) {
                (Some(key), _) if !key.is_empty() => Target::Attribute(key.into()),
                (_, Some(key)) if !key.is_empty() => Target::ResourceAttribute(key.into()),
                _ => {
                    return Err(format!(
                        "{name:?} is not a field to import into: time, event_name, severity, body, \
                         service_name, actor_id, actor_name, client_address, outcome, target, \
                         trace_id, span_id, attributes.<key> or resource_attributes.<key>"
                    ))
                }
            },
        })
    }
}

/// What fills a target: a field of the source record, or a constant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fill {
    /// A field: a top-level key, or a dotted path into nested objects.
    Field(String),
    Constant(String),
}

/// The presets: the shapes of the seeds' existing logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// A Dify-style app's JSON lines on stdout:
    /// `{"level","time","message","method","path","status","user_id","app_id"}`.
    Dify,
    /// A row of the seed uploader's table `nano_banana_user_use_log` (its
    /// MySQL columns, or its NDJSON queue's keys, which are the same).
    SeedTable,
}

impl Preset {
    pub fn name(self) -> &'static str {
        match self {
            Preset::Dify => "dify",
            Preset::SeedTable => "seed-table",
        }
    }

    /// `(target, source field)` pairs, then `(target, constant)` pairs.
    fn entries(self) -> (&'static [Pair], &'static [Pair]) {
        match self {
            Preset::Dify => (
                &[
                    ("time", "time"),
                    ("severity", "level"),
                    ("body", "message"),
                    ("attributes.http.request.method", "method"),
                    ("attributes.url.path", "path"),
                    ("attributes.http.response.status_code", "status"),
                    ("outcome", "status"),
                    ("actor_id", "user_id"),
                    ("attributes.dify.app_id", "app_id"),
                ],
                &[("event_name", "api.request"), ("service_name", "dify")],
            ),
            // As docs/sinks.md maps these columns for the mysql sink's
            // `[sinks.columns]`, so the legacy table and auditrail agree.
            Preset::SeedTable => (
                &[
                    ("time", "created_at"),
                    ("actor_name", "user_name"),
                    ("attributes.device.name", "device_name"),
                    ("body", "prompt"),
                    ("target", "result_path"),
                    ("outcome", "status"),
                    ("attributes.error.message", "error_message"),
                    ("attributes.gen_ai.request.model", "model"),
                    ("attributes.duration_ms", "duration_ms"),
                    ("attributes.gen_ai.response.finish_reasons", "finish_reason"),
                ],
                &[
                    ("event_name", "image.generate"),
                    ("service_name", "nano-banana"),
                ],
            ),
        }
    }
}

/// `(target, source field or constant)`.
type Pair = (&'static str, &'static str);

/// A `--mapping` file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MappingFile {
    /// A preset to start from.
    preset: Option<String>,
    /// target = "source field"
    #[serde(default)]
    map: toml::Table,
    /// target = "constant"
    #[serde(default)]
    set: toml::Table,
}

/// The whole mapping of one import.
#[derive(Debug, Clone, Default)]
pub struct Mapping {
    entries: Vec<(Target, Fill)>,
}

impl Mapping {
    /// `preset`, then the file, then the flags (`--map target=field`,
    /// `--set target=value`); a later entry for the same target replaces
    /// an earlier one. `time` must be mapped in the end.
    pub fn build(
        preset: Option<Preset>,
        file: Option<&Path>,
        map: &[String],
        set: &[String],
    ) -> anyhow::Result<Mapping> {
        let mut mapping = Mapping::default();
        if let Some(preset) = preset {
            mapping.add_preset(preset);
        }
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--mapping: reading {}", path.display()))?;
            let parsed: MappingFile =
                toml::from_str(&text).with_context(|| format!("--mapping {}", path.display()))?;
            if let Some(name) = &parsed.preset {
                let preset = <Preset as clap::ValueEnum>::from_str(name, false).map_err(|_| {
                    anyhow::anyhow!(
                        "--mapping {}: no preset {name:?} (dify, seed-table)",
                        path.display()
                    )
                })?;
                mapping.add_preset(preset);
            }
            for (table, constant) in [(&parsed.map, false), (&parsed.set, true)] {
                for (target, value) in table {
                    let Some(value) = value.as_str() else {
                        bail!("--mapping {}: {target} must be a string", path.display());
                    };
                    mapping
                        .add(target, value, constant)
                        .with_context(|| format!("--mapping {}", path.display()))?;
                }
            }
        }
        for (flag, pairs, constant) in [("--map", map, false), ("--set", set, true)] {
            for pair in pairs {
                let Some((target, value)) = pair.split_once('=') else {
                    bail!("{flag} {pair:?}: expected TARGET=VALUE");
                };
                mapping
                    .add(target.trim(), value.trim(), constant)
                    .with_context(|| format!("{flag} {pair:?}"))?;
            }
        }
        if !mapping.entries.iter().any(|(t, _)| *t == Target::Time) {
            bail!(
                "no field holds the time: use --preset, or --map time=FIELD (times are kept, \
                 so a record without one cannot be imported)"
            );
        }
        Ok(mapping)
    }

    fn add_preset(&mut self, preset: Preset) {
        let (fields, constants) = preset.entries();
        for (target, field) in fields {
            self.add(target, field, false).expect("presets are valid");
        }
        for (target, value) in constants {
            self.add(target, value, true).expect("presets are valid");
        }
    }

    fn add(&mut self, target: &str, value: &str, constant: bool) -> anyhow::Result<()> {
        let target = Target::parse(target).map_err(anyhow::Error::msg)?;
        if !constant && value.is_empty() {
            bail!("the source field is empty");
        }
        let fill = if constant {
            Fill::Constant(value.to_owned())
        } else {
            Fill::Field(value.to_owned())
        };
        self.entries.retain(|(t, _)| *t != target);
        self.entries.push((target, fill));
        Ok(())
    }

    /// `record` as an event (without its id): every mapped field in its
    /// place, every other field of the record kept as an attribute of its
    /// own name. The error names what is missing or wrong.
    pub fn apply(
        &self,
        record: &Map<String, Value>,
        zone: &TimeZone,
    ) -> Result<AuditEvent, String> {
        let mut event = AuditEvent::default();
        let mut attributes = Map::new();
        let mut resource = Map::new();
        let mut used = BTreeSet::new();
        let mut time = None;
        for (target, fill) in &self.entries {
            let value = match fill {
                Fill::Constant(text) => Value::String(text.clone()),
                Fill::Field(name) => {
                    used.insert(top_level(record, name));
                    match lookup(record, name) {
                        Some(value) if !value.is_null() => value.clone(),
                        _ if *target == Target::Time => {
                            return Err(format!("no time: the record has no field {name:?}"))
                        }
                        _ => continue,
                    }
                }
            };
            match target {
                Target::Time => {
                    time = Some(unix_nanos(&value, zone).map_err(|e| format!("time: {e}"))?)
                }
                Target::EventName => event.event_name = text(&value),
                Target::Severity => match value.as_i64() {
                    Some(n @ 1..=24) => event.severity_number = n as i32,
                    _ => {
                        event.severity_text = text(&value);
                        event.severity_number = severity_number(&event.severity_text);
                    }
                },
                Target::Body => event.body = text(&value),
                Target::ServiceName => {
                    resource.insert("service.name".into(), Value::String(text(&value)));
                }
                Target::TraceId => event.trace_id = hex_id(&value, 16, "trace_id")?,
                Target::SpanId => event.span_id = hex_id(&value, 8, "span_id")?,
                Target::Outcome => {
                    let original = text(&value);
                    let outcome = outcome(&value);
                    if outcome == "unknown" && !original.is_empty() && original != "unknown" {
                        attributes.insert("audit.outcome.original".into(), value.clone());
                    }
                    attributes.insert("audit.outcome".into(), Value::String(outcome.into()));
                }
                Target::Attribute(key) => {
                    attributes.insert(key.clone(), value);
                }
                Target::ResourceAttribute(key) => {
                    resource.insert(key.clone(), value);
                }
            }
        }
        for (key, value) in record {
            if !used.contains(key.as_str()) && !value.is_null() && !attributes.contains_key(key) {
                attributes.insert(key.clone(), value.clone());
            }
        }
        event.time_unix_nano = time.expect("build() requires a time mapping");
        event.service_name = resource
            .get("service.name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        event.attributes = Value::Object(attributes).to_string();
        event.resource_attributes = Value::Object(resource).to_string();
        Ok(event)
    }
}

/// The top-level key a field name reads: itself when the record has it,
/// else the first part of the dotted path.
fn top_level<'a>(record: &Map<String, Value>, name: &'a str) -> &'a str {
    if record.contains_key(name) {
        name
    } else {
        name.split('.').next().unwrap_or(name)
    }
}

/// A field by its exact key, else by a dotted path into nested objects.
fn lookup<'a>(record: &'a Map<String, Value>, name: &str) -> Option<&'a Value> {
    if let Some(value) = record.get(name) {
        return Some(value);
    }
    let mut parts = name.split('.');
    let mut value = record.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// A value as text: strings as they are, anything else as its JSON.
fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// An OTLP severity number for a level name (the OTel log data model's
/// ranges: TRACE 1, DEBUG 5, INFO 9, WARN 13, ERROR 17, FATAL 21).
fn severity_number(level: &str) -> i32 {
    match level.trim().to_ascii_lowercase().as_str() {
        "trace" => 1,
        "debug" => 5,
        "info" | "information" | "notice" => 9,
        "warn" | "warning" => 13,
        "error" | "err" => 17,
        "fatal" | "critical" | "crit" | "alert" | "emergency" | "emerg" => 21,
        _ => 0,
    }
}

/// success, failure or unknown: an HTTP status (a number 100-599) below
/// 400 is a success, the others failures; words mean what they say.
fn outcome(value: &Value) -> &'static str {
    let text = text(value);
    let text = text.trim();
    if let Ok(status @ 100..=599) = text.parse::<u16>() {
        return if status < 400 { "success" } else { "failure" };
    }
    match text.to_ascii_lowercase().as_str() {
        "success" | "succeeded" | "successful" | "ok" | "done" | "completed" | "true" => "success",
        "failure" | "failed" | "fail" | "error" | "errored" | "denied" | "rejected" | "false" => {
            "failure"
        }
        _ => "unknown",
    }
}

/// A trace or span id in hex: `len` bytes, lower-cased (all zeros: none).
fn hex_id(value: &Value, len: usize, field: &str) -> Result<String, String> {
    let text = text(value).trim().to_ascii_lowercase();
    match hex::decode(&text) {
        Ok(bytes) if bytes.len() == len => Ok(if bytes.iter().all(|&b| b == 0) {
            String::new()
        } else {
            text
        }),
        _ if text.is_empty() => Ok(String::new()),
        _ => Err(format!("{field}: {text:?} is not {} hex digits", len * 2)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        value.as_object().unwrap().clone()
    }

    fn attributes(event: &AuditEvent) -> Value {
        serde_json::from_str(&event.attributes).unwrap()
    }

    #[test]
    fn the_dify_preset_maps_every_field() {
        let mapping = Mapping::build(Some(Preset::Dify), None, &[], &[]).unwrap();
        let line = json!({"level": "WARNING", "time": "2024-05-01T12:00:00Z", "message": "chat",
            "method": "POST", "path": "/v1/chat-messages", "status": 403, "user_id": "u-1",
            "app_id": "app-9", "request_id": "r-7"});
        let event = mapping.apply(&object(line), &TimeZone::UTC).unwrap();
        assert_eq!(event.time_unix_nano, 1_714_564_800_000_000_000);
        assert_eq!(
            (event.severity_text.as_str(), event.severity_number),
            ("WARNING", 13)
        );
        assert_eq!(event.body, "chat");
        assert_eq!(event.event_name, "api.request");
        assert_eq!(event.resource_attributes, r#"{"service.name":"dify"}"#);
        assert_eq!(
            attributes(&event),
            json!({"audit.outcome": "failure", "dify.app_id": "app-9",
                "http.request.method": "POST", "http.response.status_code": 403,
                "request_id": "r-7", "url.path": "/v1/chat-messages", "user.id": "u-1"})
        );
    }

    #[test]
    fn flags_override_the_preset_and_constants_fill_fields() {
        let mapping = Mapping::build(
            Some(Preset::Dify),
            None,
            &["actor_name=who.name".into(), "time=ts".into()],
            &["service_name=chatbot".into()],
        )
        .unwrap();
        let line = json!({"ts": 1714564800, "who": {"name": "alice"}, "time": "ignored"});
        let event = mapping.apply(&object(line), &TimeZone::UTC).unwrap();
        assert_eq!(event.time_unix_nano, 1_714_564_800_000_000_000);
        assert_eq!(event.resource_attributes, r#"{"service.name":"chatbot"}"#);
        let attrs = attributes(&event);
        assert_eq!(attrs["user.name"], "alice");
        // `time` is no longer mapped, so it is kept as an attribute.
        assert_eq!(attrs["time"], "ignored");
        assert!(attrs.get("who").is_none());
    }

    #[test]
    fn an_unknown_outcome_keeps_the_original() {
        let mapping = Mapping::build(Some(Preset::SeedTable), None, &[], &[]).unwrap();
        let row = |status: &str| {
            object(
                json!({"created_at": "2024-05-01 12:00:00", "status": status, "user_name": "bob"}),
            )
        };
        let failed = mapping.apply(&row("failed"), &TimeZone::UTC).unwrap();
        assert_eq!(attributes(&failed)["audit.outcome"], "failure");
        assert!(attributes(&failed).get("audit.outcome.original").is_none());
        let queued = mapping.apply(&row("queued"), &TimeZone::UTC).unwrap();
        assert_eq!(attributes(&queued)["audit.outcome"], "unknown");
        assert_eq!(attributes(&queued)["audit.outcome.original"], "queued");
    }

    #[test]
    fn a_record_without_its_time_is_refused_by_name() {
        let mapping = Mapping::build(Some(Preset::Dify), None, &[], &[]).unwrap();
        let error = mapping
            .apply(&object(json!({"message": "x"})), &TimeZone::UTC)
            .unwrap_err();
        assert_eq!(error, "no time: the record has no field \"time\"");
        let error = mapping
            .apply(&object(json!({"time": "soon"})), &TimeZone::UTC)
            .unwrap_err();
        assert!(error.starts_with("time: \"soon\" is not a time"), "{error}");
    }

    #[test]
    fn mistakes_in_the_mapping_are_named() {
        let e = Mapping::build(None, None, &["actor=user".into()], &[]).unwrap_err();
        assert!(
            format!("{e:#}").contains("\"actor\" is not a field"),
            "{e:#}"
        );
        let e = Mapping::build(None, None, &["body=message".into()], &[]).unwrap_err();
        assert!(
            format!("{e:#}").contains("no field holds the time"),
            "{e:#}"
        );
        let e = Mapping::build(None, None, &["time".into()], &[]).unwrap_err();
        assert!(format!("{e:#}").contains("expected TARGET=VALUE"), "{e:#}");
    }

    #[test]
    fn a_mapping_file_starts_from_its_preset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("map.toml");
        std::fs::write(
            &path,
            "preset = \"dify\"\n[map]\n\"attributes.tenant.app\" = \"app_id\"\n[set]\nevent_name = \"dify.api\"\n",
        )
        .unwrap();
        let mapping = Mapping::build(None, Some(&path), &[], &[]).unwrap();
        let line = json!({"time": 1714564800, "app_id": "a"});
        let event = mapping.apply(&object(line), &TimeZone::UTC).unwrap();
        assert_eq!(event.event_name, "dify.api");
        assert_eq!(attributes(&event)["tenant.app"], "a");
        std::fs::write(&path, "[mapp]\n").unwrap();
        assert!(Mapping::build(None, Some(&path), &[], &[]).is_err());
    }
}
