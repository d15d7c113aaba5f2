//! The topic template: `audit.{tenant}`, `audit.{service_name}` and the like.
//!
//! Kafka allows topic names of at most 249 characters from `[A-Za-z0-9._-]`
//! (and not `.` or `..`). A placeholder's value therefore has every other
//! character replaced by `_`, and an empty value becomes `_`, so any event
//! renders a legal name made only of the template's text and its own
//! values. A name still too long (a 300-character service name) is the
//! event's fault, not the config's: the sink dead-letters that event.

use auditrail_model::AuditEvent;

pub use crate::template::ParseError;
use crate::template::{EventTemplate, Part};

/// The longest topic name Kafka accepts.
pub const MAX_TOPIC_LEN: usize = 249;

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    template: EventTemplate,
}

/// Why a template is refused at start-up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error("{0:?} is not a Kafka topic name: empty, over 249 characters, or with characters outside [A-Za-z0-9._-]")]
    NotATopic(String),
}

/// Why one event has no topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the topic rendered for this event, {0:?}, is not a legal Kafka topic name (over {MAX_TOPIC_LEN} characters, or `.`/`..`)")]
pub struct BadTopic(pub String);

impl TopicTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let parsed = TopicTemplate {
            template: EventTemplate::parse(template)?,
        };
        // The shortest rendering (each value one `_`) must be a topic: the
        // template's own text is legal and leaves room for values.
        if !is_topic(&parsed.template.with_each_value_as("_")) {
            return Err(TemplateError::NotATopic(template.to_owned()));
        }
        Ok(parsed)
    }

    /// The one topic of a template without placeholders.
    pub fn fixed(&self) -> Option<&str> {
        match self.template.parts() {
            [Part::Text(text)] => Some(text),
            _ => None,
        }
    }

    /// The topic for `event`.
    pub fn render(&self, event: &AuditEvent) -> Result<String, BadTopic> {
        let out = self.template.render(event, push_value);
        if is_topic(&out) {
            Ok(out)
        } else {
            Err(BadTopic(out))
        }
    }
}

fn legal(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn push_value(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push('_');
        return;
    }
    out.extend(value.chars().map(|c| if legal(c) { c } else { '_' }));
}

fn is_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_LEN
        && name != "."
        && name != ".."
        && name.chars().all(legal)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn event(tenant: &str, service: &str) -> AuditEvent {
        AuditEvent {
            tenant: tenant.into(),
            service_name: service.into(),
            event_name: "image.generate".into(),
            node: "n1".into(),
            ..AuditEvent::default()
        }
    }

    #[test]
    fn values_are_made_legal() {
        let t = TopicTemplate::parse("audit.{tenant}.{service_name}-{event_name}").unwrap();
        assert_eq!(
            t.render(&event("acme", "web ui/ü")).unwrap(),
            "audit.acme.web_ui__-image.generate"
        );
        assert_eq!(
            t.render(&event("", "")).unwrap(),
            "audit._._-image.generate"
        );
        assert_eq!(t.fixed(), None);
        assert_eq!(
            TopicTemplate::parse("audit-events").unwrap().fixed(),
            Some("audit-events")
        );
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(matches!(
            TopicTemplate::parse("audit.{user}"),
            Err(TemplateError::Parse(ParseError::Unknown(_)))
        ));
        assert!(matches!(
            TopicTemplate::parse("audit.{tenant"),
            Err(TemplateError::Parse(ParseError::Unclosed(_)))
        ));
        assert!(matches!(
            TopicTemplate::parse("audit/{tenant}"),
            Err(TemplateError::NotATopic(_))
        ));
        assert!(matches!(
            TopicTemplate::parse(""),
            Err(TemplateError::NotATopic(_))
        ));
        assert!(matches!(
            TopicTemplate::parse(&"a".repeat(250)),
            Err(TemplateError::NotATopic(_))
        ));
        assert!(TopicTemplate::parse("{node}").is_ok());
    }

    #[test]
    fn a_name_too_long_is_the_events_fault() {
        let t = TopicTemplate::parse("audit.{service_name}").unwrap();
        assert!(t.render(&event("acme", &"s".repeat(300))).is_err());
        let t = TopicTemplate::parse("{tenant}").unwrap();
        assert!(t.render(&event("..", "x")).is_err());
    }

    proptest! {
        #[test]
        fn any_value_renders_a_legal_topic_or_an_error(
            tenant in any::<String>(),
            service in any::<String>(),
        ) {
            let t = TopicTemplate::parse("audit.{tenant}.{service_name}").unwrap();
            match t.render(&event(&tenant, &service)) {
                Ok(topic) => {
                    prop_assert!(is_topic(&topic), "{topic:?}");
                    prop_assert!(topic.starts_with("audit."));
                }
                Err(BadTopic(topic)) => prop_assert!(topic.len() > MAX_TOPIC_LEN),
            }
        }
    }
}
