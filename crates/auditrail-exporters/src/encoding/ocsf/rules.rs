//! Which OCSF class and activity an event becomes: the classes and
//! activities auditrail writes (with their OCSF 1.5.0 ids and captions),
//! the default rules by event name, and a sink's own rules
//! (`[sinks.format.ocsf.events]`), checked when the config is read.
//!
//! The default rules look only at the event name, so one name always maps
//! the same way and the table in docs/sinks.md says all there is to know.
//! A sink's rules come first: an exact name, then the longest `prefix*`
//! pattern; then the defaults.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

/// An OCSF event class that auditrail writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OcsfClass {
    /// 3002, Identity & Access Management.
    Authentication,
    /// 6003, Application Activity.
    ApiActivity,
    /// 6005, Application Activity.
    DatastoreActivity,
    /// 6006, Application Activity.
    FileHostingActivity,
    /// 1008, System Activity.
    EventLogActivity,
}

/// `(activity_id, config name, OCSF caption)`.
type ActivityRow = (u8, &'static str, &'static str);

/// Every class has these two besides its own.
const UNKNOWN: ActivityRow = (0, "unknown", "Unknown");
const OTHER: ActivityRow = (99, "other", "Other");

const AUTHENTICATION: &[ActivityRow] = &[
    UNKNOWN,
    (1, "logon", "Logon"),
    (2, "logoff", "Logoff"),
    (3, "authentication_ticket", "Authentication Ticket"),
    (4, "service_ticket_request", "Service Ticket Request"),
    (5, "service_ticket_renew", "Service Ticket Renew"),
    (6, "preauth", "Preauth"),
    OTHER,
];

const API_ACTIVITY: &[ActivityRow] = &[
    UNKNOWN,
    (1, "create", "Create"),
    (2, "read", "Read"),
    (3, "update", "Update"),
    (4, "delete", "Delete"),
    OTHER,
];

const DATASTORE_ACTIVITY: &[ActivityRow] = &[
    UNKNOWN,
    (1, "read", "Read"),
    (2, "update", "Update"),
    (3, "connect", "Connect"),
    (4, "query", "Query"),
    (5, "write", "Write"),
    (6, "create", "Create"),
    (7, "delete", "Delete"),
    (8, "list", "List"),
    (9, "encrypt", "Encrypt"),
    (10, "decrypt", "Decrypt"),
    OTHER,
];

const FILE_HOSTING_ACTIVITY: &[ActivityRow] = &[
    UNKNOWN,
    (1, "upload", "Upload"),
    (2, "download", "Download"),
    (3, "update", "Update"),
    (4, "delete", "Delete"),
    (5, "rename", "Rename"),
    (6, "copy", "Copy"),
    (7, "move", "Move"),
    (8, "restore", "Restore"),
    (9, "preview", "Preview"),
    (10, "lock", "Lock"),
    (11, "unlock", "Unlock"),
    (12, "share", "Share"),
    (13, "unshare", "Unshare"),
    (14, "open", "Open"),
    (15, "sync", "Sync"),
    (16, "unsync", "Unsync"),
    (17, "access_check", "Access Check"),
    OTHER,
];

const EVENT_LOG_ACTIVITY: &[ActivityRow] = &[
    UNKNOWN,
    (1, "clear", "Clear"),
    (2, "delete", "Delete"),
    (3, "export", "Export"),
    (4, "archive", "Archive"),
    (5, "rotate", "Rotate"),
    (6, "start", "Start"),
    (7, "stop", "Stop"),
    (8, "restart", "Restart"),
    (9, "enable", "Enable"),
    (10, "disable", "Disable"),
    OTHER,
];

impl OcsfClass {
    pub const ALL: [OcsfClass; 5] = [
        OcsfClass::Authentication,
        OcsfClass::ApiActivity,
        OcsfClass::DatastoreActivity,
        OcsfClass::FileHostingActivity,
        OcsfClass::EventLogActivity,
    ];

    /// The name a config uses (the OCSF caption in snake case).
    pub fn config_name(self) -> &'static str {
        match self {
            OcsfClass::Authentication => "authentication",
            OcsfClass::ApiActivity => "api_activity",
            OcsfClass::DatastoreActivity => "datastore_activity",
            OcsfClass::FileHostingActivity => "file_hosting_activity",
            OcsfClass::EventLogActivity => "event_log_activity",
        }
    }

    /// A class by its config name; the OCSF schema's own names of the last
    /// two (`file_hosting`, `event_log`) are taken too.
    pub fn parse(name: &str) -> Option<OcsfClass> {
        match name {
            "file_hosting" => Some(OcsfClass::FileHostingActivity),
            "event_log" => Some(OcsfClass::EventLogActivity),
            _ => OcsfClass::ALL.into_iter().find(|c| c.config_name() == name),
        }
    }

    pub fn uid(self) -> u32 {
        match self {
            OcsfClass::Authentication => 3002,
            OcsfClass::ApiActivity => 6003,
            OcsfClass::DatastoreActivity => 6005,
            OcsfClass::FileHostingActivity => 6006,
            OcsfClass::EventLogActivity => 1008,
        }
    }

    pub fn caption(self) -> &'static str {
        match self {
            OcsfClass::Authentication => "Authentication",
            OcsfClass::ApiActivity => "API Activity",
            OcsfClass::DatastoreActivity => "Datastore Activity",
            OcsfClass::FileHostingActivity => "File Hosting Activity",
            OcsfClass::EventLogActivity => "Event Log Activity",
        }
    }

    /// OCSF's class uids are `category_uid * 1000 + n`.
    pub fn category_uid(self) -> u32 {
        self.uid() / 1000
    }

    pub fn category_name(self) -> &'static str {
        match self.category_uid() {
            1 => "System Activity",
            3 => "Identity & Access Management",
            _ => "Application Activity",
        }
    }

    fn activities(self) -> &'static [ActivityRow] {
        match self {
            OcsfClass::Authentication => AUTHENTICATION,
            OcsfClass::ApiActivity => API_ACTIVITY,
            OcsfClass::DatastoreActivity => DATASTORE_ACTIVITY,
            OcsfClass::FileHostingActivity => FILE_HOSTING_ACTIVITY,
            OcsfClass::EventLogActivity => EVENT_LOG_ACTIVITY,
        }
    }

    /// The config names of this class's activities, for error messages
    /// and docs.
    pub fn activity_names(self) -> Vec<&'static str> {
        self.activities().iter().map(|(_, name, _)| *name).collect()
    }

    /// The rule for `activity` (a config name) of this class.
    pub fn activity(self, activity: &str) -> Option<Rule> {
        self.activities()
            .iter()
            .position(|(_, name, _)| *name == activity)
            .map(|index| Rule {
                class: self,
                index: index as u8,
            })
    }
}

impl fmt::Display for OcsfClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.config_name())
    }
}

/// A class and one of its activities: what an event becomes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub class: OcsfClass,
    /// Into the class's activity table, so a rule can only name an
    /// activity the class has.
    index: u8,
}

impl Rule {
    fn row(self) -> ActivityRow {
        self.class.activities()[self.index as usize]
    }

    pub fn activity_id(self) -> u8 {
        self.row().0
    }

    /// The config name of the activity.
    pub fn activity_name(self) -> &'static str {
        self.row().1
    }

    /// The OCSF caption of the activity.
    pub fn activity_caption(self) -> &'static str {
        self.row().2
    }

    /// `type_uid`: OCSF defines it as `class_uid * 100 + activity_id`.
    pub fn type_uid(self) -> u32 {
        self.class.uid() * 100 + u32::from(self.activity_id())
    }

    /// `rule(class, activity)` for the tables below, which name only
    /// activities that exist (a test checks every one).
    fn of(class: OcsfClass, activity: &str) -> Rule {
        class
            .activity(activity)
            .unwrap_or_else(|| panic!("{class} has no activity {activity}"))
    }
}

/// A config rule that cannot be used, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MappingError {
    #[error(
        "format.ocsf.events.{key:?}: unknown class {class:?}; the classes are {}",
        known_classes()
    )]
    UnknownClass { key: String, class: String },
    #[error("format.ocsf.events.{key:?}: class {class} has no activity {activity:?}; its activities are {}", .class.activity_names().join(", "))]
    UnknownActivity {
        key: String,
        class: OcsfClass,
        activity: String,
    },
    #[error("format.ocsf.events.{key:?}: a key is an event name, or a prefix ending in one '*' (e.g. \"image.*\"), with no other '*'")]
    BadPattern { key: String },
}

fn known_classes() -> String {
    OcsfClass::ALL.map(OcsfClass::config_name).join(", ")
}

/// The `ocsf` table of a `format` (`[sinks.format.ocsf]`), as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OcsfTable {
    #[serde(default)]
    events: BTreeMap<String, RuleTable>,
}

/// One `"event.name" = { class = "...", activity = "..." }`. Strings, not
/// enums, so that an unknown one is reported with its key.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleTable {
    class: String,
    activity: String,
}

/// A sink's rules on top of the defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "OcsfTable")]
pub struct OcsfMapping {
    exact: BTreeMap<String, Rule>,
    /// Longest prefix first, so the first match is the most specific.
    prefixes: Vec<(String, Rule)>,
}

impl TryFrom<OcsfTable> for OcsfMapping {
    type Error = MappingError;

    fn try_from(table: OcsfTable) -> Result<Self, MappingError> {
        let mut mapping = OcsfMapping::default();
        for (key, spec) in table.events {
            mapping.insert(&key, &spec.class, &spec.activity)?;
        }
        Ok(mapping)
    }
}

impl OcsfMapping {
    /// Adds the rule `key` → `class`/`activity` (config names).
    pub fn insert(&mut self, key: &str, class: &str, activity: &str) -> Result<(), MappingError> {
        let parsed = OcsfClass::parse(class).ok_or_else(|| MappingError::UnknownClass {
            key: key.to_owned(),
            class: class.to_owned(),
        })?;
        let rule = parsed
            .activity(activity)
            .ok_or_else(|| MappingError::UnknownActivity {
                key: key.to_owned(),
                class: parsed,
                activity: activity.to_owned(),
            })?;
        let (body, is_prefix) = match key.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (key, false),
        };
        if key.is_empty() || body.contains('*') {
            return Err(MappingError::BadPattern {
                key: key.to_owned(),
            });
        }
        if is_prefix {
            self.prefixes.retain(|(p, _)| p != body);
            self.prefixes.push((body.to_owned(), rule));
            self.prefixes
                .sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        } else {
            self.exact.insert(key.to_owned(), rule);
        }
        Ok(())
    }

    /// What `event_name` becomes: this sink's rules, then the defaults.
    pub fn rule_for(&self, event_name: &str) -> Rule {
        if let Some(rule) = self.exact.get(event_name) {
            return *rule;
        }
        self.prefixes
            .iter()
            .find(|(prefix, _)| event_name.starts_with(prefix.as_str()))
            .map_or_else(|| default_rule(event_name), |(_, rule)| *rule)
    }
}

/// Event names under this prefix are auditrail's own (tombstones, and the
/// accounting of issue 10): Event Log Activity.
pub const OWN_PREFIX: &str = "auditrail.";

/// Nouns (any segment but the last) that make an event Datastore Activity.
pub const DATA_NOUNS: &[&str] = &[
    "data",
    "database",
    "dataset",
    "datasets",
    "db",
    "knowledge_base",
    "record",
    "records",
    "table",
];

/// Nouns that make an event File Hosting Activity.
pub const FILE_NOUNS: &[&str] = &[
    "attachment",
    "document",
    "documents",
    "file",
    "files",
    "folder",
];

/// `(verb, activity)`: the last segment of the name (or its last `_`
/// word) is looked up here, in the table of the event's class.
type VerbRow = (&'static str, &'static str);

pub const AUTHENTICATION_VERBS: &[VerbRow] = &[
    ("login", "logon"),
    ("logon", "logon"),
    ("sign_in", "logon"),
    ("signin", "logon"),
    ("authenticate", "logon"),
    ("logout", "logoff"),
    ("logoff", "logoff"),
    ("sign_out", "logoff"),
    ("signout", "logoff"),
];

pub const API_VERBS: &[VerbRow] = &[
    ("create", "create"),
    ("generate", "create"),
    ("add", "create"),
    ("new", "create"),
    ("insert", "create"),
    ("register", "create"),
    ("submit", "create"),
    ("upload", "create"),
    ("read", "read"),
    ("get", "read"),
    ("view", "read"),
    ("list", "read"),
    ("query", "read"),
    ("search", "read"),
    ("export", "read"),
    ("download", "read"),
    ("update", "update"),
    ("change", "update"),
    ("set", "update"),
    ("edit", "update"),
    ("modify", "update"),
    ("patch", "update"),
    ("rename", "update"),
    ("enable", "update"),
    ("disable", "update"),
    ("configure", "update"),
    ("delete", "delete"),
    ("remove", "delete"),
    ("clear", "delete"),
    ("purge", "delete"),
    ("destroy", "delete"),
    ("revoke", "delete"),
    ("erase", "delete"),
];

pub const DATASTORE_VERBS: &[VerbRow] = &[
    ("read", "read"),
    ("get", "read"),
    ("view", "read"),
    ("fetch", "read"),
    ("export", "read"),
    ("query", "query"),
    ("search", "query"),
    ("list", "list"),
    ("write", "write"),
    ("insert", "write"),
    ("import", "write"),
    ("append", "write"),
    ("update", "update"),
    ("modify", "update"),
    ("edit", "update"),
    ("patch", "update"),
    ("create", "create"),
    ("add", "create"),
    ("delete", "delete"),
    ("remove", "delete"),
    ("clear", "delete"),
    ("purge", "delete"),
    ("drop", "delete"),
    ("truncate", "delete"),
    ("connect", "connect"),
    ("encrypt", "encrypt"),
    ("decrypt", "decrypt"),
];

pub const FILE_HOSTING_VERBS: &[VerbRow] = &[
    ("upload", "upload"),
    ("create", "upload"),
    ("add", "upload"),
    ("import", "upload"),
    ("download", "download"),
    ("export", "download"),
    ("update", "update"),
    ("edit", "update"),
    ("modify", "update"),
    ("write", "update"),
    ("delete", "delete"),
    ("remove", "delete"),
    ("purge", "delete"),
    ("rename", "rename"),
    ("copy", "copy"),
    ("move", "move"),
    ("restore", "restore"),
    ("preview", "preview"),
    ("view", "preview"),
    ("lock", "lock"),
    ("unlock", "unlock"),
    ("share", "share"),
    ("unshare", "unshare"),
    ("open", "open"),
    ("read", "open"),
    ("get", "open"),
    ("sync", "sync"),
    ("unsync", "unsync"),
];

pub const EVENT_LOG_VERBS: &[VerbRow] = &[
    ("clear", "clear"),
    ("delete", "delete"),
    ("erase", "delete"),
    ("purge", "delete"),
    ("expire", "delete"),
    ("export", "export"),
    ("archive", "archive"),
    ("rotate", "rotate"),
    ("start", "start"),
    ("stop", "stop"),
    ("restart", "restart"),
    ("enable", "enable"),
    ("disable", "disable"),
];

/// The default rule for `event_name`, in this order: auditrail's own
/// events; a log-on or log-off verb; a data noun; a file noun; otherwise
/// API Activity. Within the class, the verb picks the activity, else
/// `other`.
pub fn default_rule(event_name: &str) -> Rule {
    let name = event_name.to_ascii_lowercase();
    let (nouns, verb) = match name.rsplit_once('.') {
        Some((nouns, verb)) => (nouns, verb),
        None => ("", name.as_str()),
    };
    let activity = |class: OcsfClass, verbs: &[VerbRow]| -> Rule {
        lookup(verbs, verb).map_or_else(|| Rule::of(class, "other"), |a| Rule::of(class, a))
    };
    if name.starts_with(OWN_PREFIX) {
        return activity(OcsfClass::EventLogActivity, EVENT_LOG_VERBS);
    }
    if let Some(logon) = lookup(AUTHENTICATION_VERBS, verb) {
        return Rule::of(OcsfClass::Authentication, logon);
    }
    let has_noun = |list: &[&str]| nouns.split('.').any(|n| list.contains(&n));
    if has_noun(DATA_NOUNS) {
        return activity(OcsfClass::DatastoreActivity, DATASTORE_VERBS);
    }
    if has_noun(FILE_NOUNS) {
        return activity(OcsfClass::FileHostingActivity, FILE_HOSTING_VERBS);
    }
    activity(OcsfClass::ApiActivity, API_VERBS)
}

/// The activity of `verb`: the whole last segment (`sign_in`), else its
/// last `_` or `-` word (`bulk_delete` → `delete`).
fn lookup(verbs: &[VerbRow], verb: &str) -> Option<&'static str> {
    let find = |v: &str| verbs.iter().find(|(k, _)| *k == v).map(|(_, a)| *a);
    find(verb).or_else(|| {
        verb.rsplit_once(['_', '-'])
            .and_then(|(_, last)| find(last))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(class: OcsfClass, activity: &str) -> Rule {
        class.activity(activity).unwrap()
    }

    #[test]
    fn every_verb_table_names_activities_its_class_has() {
        for (class, verbs) in [
            (OcsfClass::Authentication, AUTHENTICATION_VERBS),
            (OcsfClass::ApiActivity, API_VERBS),
            (OcsfClass::DatastoreActivity, DATASTORE_VERBS),
            (OcsfClass::FileHostingActivity, FILE_HOSTING_VERBS),
            (OcsfClass::EventLogActivity, EVENT_LOG_VERBS),
        ] {
            for (verb, activity) in verbs {
                assert!(
                    class.activity(activity).is_some(),
                    "{class}: {verb} -> {activity}"
                );
            }
        }
    }

    #[test]
    fn the_design_cards_event_names_map_as_documented() {
        use OcsfClass::*;
        for (name, class, activity) in [
            ("user.login", Authentication, "logon"),
            ("user.logout", Authentication, "logoff"),
            ("admin.sign_in", Authentication, "logon"),
            ("image.generate", ApiActivity, "create"),
            ("image.delete", ApiActivity, "delete"),
            ("history.clear", ApiActivity, "delete"),
            ("model_config.update", ApiActivity, "update"),
            ("api.request", ApiActivity, "other"),
            ("dataset.read", DatastoreActivity, "read"),
            ("dify.dataset.bulk_delete", DatastoreActivity, "delete"),
            ("file.upload", FileHostingActivity, "upload"),
            ("document.read", FileHostingActivity, "open"),
            ("auditrail.tombstone", EventLogActivity, "other"),
            ("auditrail.retention.expire", EventLogActivity, "delete"),
            ("Image.Generate", ApiActivity, "create"),
            ("", ApiActivity, "other"),
            ("logout", Authentication, "logoff"),
        ] {
            assert_eq!(default_rule(name), rule(class, activity), "{name:?}");
        }
    }

    #[test]
    fn ids_and_type_uid_follow_ocsf() {
        let logon = rule(OcsfClass::Authentication, "logon");
        assert_eq!((logon.class.uid(), logon.activity_id()), (3002, 1));
        assert_eq!(logon.type_uid(), 300201);
        assert_eq!(logon.class.category_uid(), 3);
        let other = rule(OcsfClass::EventLogActivity, "other");
        assert_eq!((other.type_uid(), other.class.category_uid()), (100899, 1));
        for class in OcsfClass::ALL {
            assert_eq!(OcsfClass::parse(class.config_name()), Some(class));
            for name in class.activity_names() {
                let r = rule(class, name);
                assert_eq!(r.type_uid(), class.uid() * 100 + u32::from(r.activity_id()));
            }
        }
    }

    fn mapping(toml_text: &str) -> Result<OcsfMapping, String> {
        toml::from_str::<OcsfMapping>(toml_text).map_err(|e| e.message().to_owned())
    }

    #[test]
    fn config_rules_win_exact_then_longest_prefix() {
        let m = mapping(
            r#"[events]
"user.login" = { class = "api_activity", activity = "create" }
"image.*" = { class = "file_hosting_activity", activity = "upload" }
"image.edit.*" = { class = "datastore_activity", activity = "write" }
"*" = { class = "event_log", activity = "other" }
"#,
        )
        .unwrap();
        assert_eq!(
            m.rule_for("user.login"),
            rule(OcsfClass::ApiActivity, "create")
        );
        assert_eq!(
            m.rule_for("image.generate"),
            rule(OcsfClass::FileHostingActivity, "upload")
        );
        assert_eq!(
            m.rule_for("image.edit.crop"),
            rule(OcsfClass::DatastoreActivity, "write")
        );
        assert_eq!(m.rule_for("x"), rule(OcsfClass::EventLogActivity, "other"));
        // Without rules, the defaults.
        let none = OcsfMapping::default();
        assert_eq!(
            none.rule_for("user.login"),
            rule(OcsfClass::Authentication, "logon")
        );
    }

    #[test]
    fn an_unknown_class_or_activity_is_an_error_naming_the_key() {
        let e = mapping("[events]\n\"a.b\" = { class = \"api\", activity = \"create\" }\n")
            .unwrap_err();
        assert!(
            e.contains(r#"format.ocsf.events."a.b": unknown class "api""#)
                && e.contains("api_activity, datastore_activity"),
            "{e}"
        );
        let e = mapping(
            "[events]\n\"user.login\" = { class = \"authentication\", activity = \"create\" }\n",
        )
        .unwrap_err();
        assert!(
            e.contains(r#""user.login": class authentication has no activity "create""#)
                && e.contains("logon, logoff"),
            "{e}"
        );
        let e = mapping("[events]\n\"a*b\" = { class = \"api_activity\", activity = \"read\" }\n")
            .unwrap_err();
        assert!(e.contains(r#""a*b": a key is an event name"#), "{e}");
        let e = mapping("[events]\n\"a\" = { class = \"api_activity\" }\n").unwrap_err();
        assert!(e.contains("missing field `activity`"), "{e}");
        let e = mapping("[event]\n").unwrap_err();
        assert!(e.contains("unknown field `event`"), "{e}");
    }
}
