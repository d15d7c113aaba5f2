//! The subject template: `audit.{tenant}.{service_name}` and the like.
//!
//! A NATS subject is tokens separated by `.`; `*` and `>` are wildcards and
//! whitespace ends the subject. A placeholder's value therefore has those
//! characters replaced by `_`, and an empty value becomes `_`, so one value
//! is always exactly one token and no event can publish to a subject the
//! template did not mean.

use auditrail_model::AuditEvent;

use crate::encoding::line_safe::must_escape;
pub use crate::template::ParseError;
use crate::template::{EventTemplate, Part};

/// A parsed subject template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectTemplate {
    template: EventTemplate,
}

/// Why a template is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error(transparent)]
    Parse(#[from] ParseError),
    #[error(
        "{0:?} is not a subject: it is empty, or has an empty token, a wildcard or whitespace"
    )]
    NotASubject(String),
    #[error("a placeholder must be a whole token (between dots) in {0:?}")]
    PartToken(String),
}

impl SubjectTemplate {
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        let parsed = SubjectTemplate {
            template: EventTemplate::parse(template)?,
        };
        // A placeholder must be a token of its own, so that the wildcard
        // form (one `*` per placeholder) captures every rendered subject.
        let parts = parsed.template.parts();
        for (i, part) in parts.iter().enumerate() {
            if let Part::Value(_) = part {
                let before_ok =
                    i == 0 || matches!(&parts[i - 1], Part::Text(t) if t.ends_with('.'));
                let after_ok = i + 1 == parts.len()
                    || matches!(&parts[i + 1], Part::Text(t) if t.starts_with('.'));
                if !before_ok || !after_ok {
                    return Err(TemplateError::PartToken(template.to_owned()));
                }
            }
        }
        if !is_subject(&parsed.template.with_each_value_as("x")) {
            return Err(TemplateError::NotASubject(template.to_owned()));
        }
        Ok(parsed)
    }

    /// The subject for `event`.
    pub fn render(&self, event: &AuditEvent) -> String {
        self.template.render(event, push_token)
    }

    /// The subjects every rendering falls under: each placeholder a `*`.
    pub fn wildcard(&self) -> String {
        self.template.with_each_value_as("*")
    }
}

fn push_token(out: &mut String, value: &str) {
    if value.is_empty() {
        out.push('_');
        return;
    }
    out.extend(value.chars().map(|c| match c {
        '.' | '*' | '>' => '_',
        // Bidi controls and the line separators too: a subject shows in
        // `nats` tools and logs, where they would reorder what follows.
        c if c.is_whitespace() || must_escape(c) => '_',
        c => c,
    }));
}

fn is_subject(subject: &str) -> bool {
    !subject.is_empty()
        && subject.split('.').all(|token| {
            !token.is_empty()
                && token != "*"
                && token != ">"
                && !token.chars().any(|c| c.is_whitespace() || must_escape(c))
        })
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
    fn placeholders_become_single_tokens() {
        let t = SubjectTemplate::parse("audit.{tenant}.{service_name}.{event_name}").unwrap();
        assert_eq!(
            t.render(&event("acme", "web ui")),
            "audit.acme.web_ui.image_generate"
        );
        assert_eq!(
            t.render(&event("", "a.b>c*")),
            "audit._.a_b_c_.image_generate"
        );
        assert_eq!(t.wildcard(), "audit.*.*.*");
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(matches!(
            SubjectTemplate::parse("audit.{user}"),
            Err(TemplateError::Parse(ParseError::Unknown(_)))
        ));
        assert!(matches!(
            SubjectTemplate::parse("audit.{tenant"),
            Err(TemplateError::Parse(ParseError::Unclosed(_)))
        ));
        assert!(matches!(
            SubjectTemplate::parse("audit.x{tenant}"),
            Err(TemplateError::PartToken(_))
        ));
        assert!(matches!(
            SubjectTemplate::parse("audit..x"),
            Err(TemplateError::NotASubject(_))
        ));
        assert!(matches!(
            SubjectTemplate::parse("audit.>"),
            Err(TemplateError::NotASubject(_))
        ));
        assert!(SubjectTemplate::parse("{node}").is_ok());
    }

    proptest! {
        #[test]
        fn any_value_renders_a_subject_the_wildcard_captures(
            tenant in any::<String>(),
            service in any::<String>(),
        ) {
            let t = SubjectTemplate::parse("audit.{tenant}.{service_name}").unwrap();
            let subject = t.render(&event(&tenant, &service));
            prop_assert!(is_subject(&subject), "{subject:?}");
            prop_assert_eq!(subject.split('.').count(), 3);
        }
    }
}
