//! Templates that name where an event goes from its own fields, such as
//! the NATS subject `audit.{tenant}.{service_name}` or a Kafka topic.
//! Parsing and rendering are shared here; what makes a legal name, and how
//! a value is made to fit one, is each sink's (`sinks/nats/subject.rs`,
//! `sinks/kafka/topic.rs`).

use auditrail_model::AuditEvent;

/// What a placeholder stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholder {
    Tenant,
    ServiceName,
    EventName,
    Node,
}

impl Placeholder {
    fn parse(name: &str) -> Option<Placeholder> {
        Some(match name {
            "tenant" => Placeholder::Tenant,
            "service_name" => Placeholder::ServiceName,
            "event_name" => Placeholder::EventName,
            "node" => Placeholder::Node,
            _ => return None,
        })
    }

    /// The event's value for this placeholder.
    pub fn value(self, event: &AuditEvent) -> &str {
        match self {
            Placeholder::Tenant => &event.tenant,
            Placeholder::ServiceName => &event.service_name,
            Placeholder::EventName => &event.event_name,
            Placeholder::Node => &event.node,
        }
    }
}

/// A piece of a template: its own text, or a placeholder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Text(String),
    Value(Placeholder),
}

/// A parsed template: text and `{placeholder}`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTemplate {
    parts: Vec<Part>,
}

/// Why a template does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error(
        "unknown placeholder {{{0}}}: use {{tenant}}, {{service_name}}, {{event_name}} or {{node}}"
    )]
    Unknown(String),
    #[error("an unclosed {{ in {0:?}")]
    Unclosed(String),
}

impl EventTemplate {
    pub fn parse(template: &str) -> Result<Self, ParseError> {
        let mut parts = Vec::new();
        let mut rest = template;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| ParseError::Unclosed(template.to_owned()))?;
            let name = &rest[open + 1..open + close];
            let placeholder =
                Placeholder::parse(name).ok_or_else(|| ParseError::Unknown(name.to_owned()))?;
            parts.push(Part::Value(placeholder));
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(EventTemplate { parts })
    }

    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The name for `event`: the template's text, and each value as
    /// `push_value` writes it (made to fit the sink's rules).
    pub fn render(&self, event: &AuditEvent, push_value: impl Fn(&mut String, &str)) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Value(p) => push_value(&mut out, p.value(event)),
            }
        }
        out
    }

    /// The template with every placeholder as `stand_in` (a NATS wildcard,
    /// the shortest value).
    pub fn with_each_value_as(&self, stand_in: &str) -> String {
        self.parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.as_str(),
                Part::Value(_) => stand_in,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_placeholders_parse_and_render() {
        let t = EventTemplate::parse("audit.{tenant}-{node}").unwrap();
        assert_eq!(
            t.parts(),
            [
                Part::Text("audit.".into()),
                Part::Value(Placeholder::Tenant),
                Part::Text("-".into()),
                Part::Value(Placeholder::Node),
            ]
        );
        let event = AuditEvent {
            tenant: "acme".into(),
            node: "n1".into(),
            ..AuditEvent::default()
        };
        assert_eq!(t.render(&event, |out, v| out.push_str(v)), "audit.acme-n1");
        assert_eq!(t.with_each_value_as("*"), "audit.*-*");
        assert_eq!(
            EventTemplate::parse("a.{user}"),
            Err(ParseError::Unknown("user".into()))
        );
        assert!(matches!(
            EventTemplate::parse("a.{tenant"),
            Err(ParseError::Unclosed(_))
        ));
    }
}
