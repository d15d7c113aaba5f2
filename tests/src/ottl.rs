//! The routing connector of the OpenTelemetry Collector, for the one shape
//! `collector-config/gateway.yaml` uses: a `table` of `context: log` routes
//! whose OTTL `condition`s are evaluated per OTLP/JSON log record, the first
//! matching route winning, `default_pipelines` otherwise.
//!
//! No Collector binary can be installed here, so this is the smallest honest
//! evaluator of the OTTL those conditions use, with the Collector's
//! semantics (pkg/ottl: `IsMatch` of a missing value is false and is an
//! unanchored regexp search; a missing attribute is `nil`):
//!
//! - paths `event_name`, `severity_text`, `body`, `attributes["k"]`,
//!   `resource.attributes["k"]` (also with the `log.` prefix);
//! - string literals and `nil`; `==` and `!=`;
//! - `IsMatch(value, "regexp")`; `and`, `or`, `not`, parentheses.
//!
//! Anything else (another function, path, operator, literal or context, a
//! `statement` instead of a `condition`) panics naming it, so a config that
//! uses OTTL this cannot check fails its test instead of passing unchecked.

use serde_json::Value;

/// A parsed condition.
#[derive(Debug, Clone)]
pub enum Expr {
    Or(Box<Expr>, Box<Expr>),
    And(Box<Expr>, Box<Expr>),
    Not(Box<Expr>),
    Eq(Operand, Operand),
    Ne(Operand, Operand),
    IsMatch(Operand, regex::Regex),
}

/// What a comparison or `IsMatch` reads.
#[derive(Debug, Clone, PartialEq)]
pub enum Operand {
    Nil,
    Str(String),
    Path(Path),
}

/// The log-context paths this evaluator knows.
#[derive(Debug, Clone, PartialEq)]
pub enum Path {
    EventName,
    SeverityText,
    Body,
    Attribute(String),
    ResourceAttribute(String),
}

/// A value read from a record: OTTL's view of an AnyValue (strings, ints,
/// doubles and bools; maps and lists as their JSON text).
#[derive(Debug, Clone, PartialEq)]
enum Scalar {
    Str(String),
    Int(i64),
    Double(f64),
    Bool(bool),
    Other(String),
}

impl Scalar {
    /// `IsMatch`'s conversion of a non-string target.
    fn as_text(&self) -> String {
        match self {
            Scalar::Str(s) | Scalar::Other(s) => s.clone(),
            Scalar::Int(i) => i.to_string(),
            Scalar::Double(d) => d.to_string(),
            Scalar::Bool(b) => b.to_string(),
        }
    }
}

/// Parses a condition; panics on any OTTL outside the subset above.
pub fn parse(condition: &str) -> Expr {
    let tokens = tokenize(condition);
    let mut parser = Parser {
        tokens,
        pos: 0,
        source: condition,
    };
    let expr = parser.or();
    if parser.pos != parser.tokens.len() {
        panic!(
            "OTTL condition {condition:?}: unexpected {:?}",
            parser.tokens[parser.pos]
        );
    }
    expr
}

/// Whether `condition` holds for one OTLP/JSON log record of a resource.
pub fn matches(condition: &Expr, record: &Value, resource: &Value) -> bool {
    match condition {
        Expr::Or(a, b) => matches(a, record, resource) || matches(b, record, resource),
        Expr::And(a, b) => matches(a, record, resource) && matches(b, record, resource),
        Expr::Not(a) => !matches(a, record, resource),
        Expr::Eq(a, b) => read(a, record, resource) == read(b, record, resource),
        Expr::Ne(a, b) => read(a, record, resource) != read(b, record, resource),
        Expr::IsMatch(target, re) => {
            read(target, record, resource).is_some_and(|v| re.is_match(&v.as_text()))
        }
    }
}

/// The pipelines a routing connector (its config as JSON) sends `record` to.
pub fn route(connector: &Value, record: &Value, resource: &Value) -> Vec<String> {
    let table = connector["table"]
        .as_array()
        .unwrap_or_else(|| panic!("routing connector without a table: {connector}"));
    for entry in table {
        for key in entry
            .as_object()
            .expect("a routing table entry is a map")
            .keys()
        {
            if !["context", "condition", "pipelines"].contains(&key.as_str()) {
                panic!("routing table entry key {key:?} is not checked here: {entry}");
            }
        }
        // The connector's default context is `resource`: say `log` explicitly.
        if entry["context"] != "log" {
            panic!("only `context: log` routes are checked here: {entry}");
        }
        let condition = entry["condition"]
            .as_str()
            .unwrap_or_else(|| panic!("route without a condition: {entry}"));
        if matches(&parse(condition), record, resource) {
            return strings(&entry["pipelines"]);
        }
    }
    strings(&connector["default_pipelines"])
}

fn strings(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap_or_else(|| panic!("expected a list of pipelines, got {list}"))
        .iter()
        .map(|p| p.as_str().expect("a pipeline name").to_owned())
        .collect()
}

fn read(operand: &Operand, record: &Value, resource: &Value) -> Option<Scalar> {
    match operand {
        Operand::Nil => None,
        Operand::Str(s) => Some(Scalar::Str(s.clone())),
        // A LogRecord field that is absent is its zero value, "" (not nil).
        Operand::Path(Path::EventName) => Some(Scalar::Str(
            record["eventName"].as_str().unwrap_or("").to_owned(),
        )),
        Operand::Path(Path::SeverityText) => Some(Scalar::Str(
            record["severityText"].as_str().unwrap_or("").to_owned(),
        )),
        Operand::Path(Path::Body) => match record.get("body") {
            None => None,
            Some(body) => any_value(body),
        },
        Operand::Path(Path::Attribute(key)) => attribute(&record["attributes"], key),
        Operand::Path(Path::ResourceAttribute(key)) => attribute(&resource["attributes"], key),
    }
}

fn attribute(attributes: &Value, key: &str) -> Option<Scalar> {
    attributes
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .and_then(|kv| any_value(&kv["value"]))
}

/// An OTLP/JSON AnyValue (ints arrive as strings, per the OTLP/JSON rules).
fn any_value(value: &Value) -> Option<Scalar> {
    let (kind, inner) = value.as_object()?.iter().next()?;
    Some(match kind.as_str() {
        "stringValue" => Scalar::Str(inner.as_str()?.to_owned()),
        "intValue" => Scalar::Int(match inner {
            Value::String(s) => s.parse().ok()?,
            other => other.as_i64()?,
        }),
        "doubleValue" => Scalar::Double(inner.as_f64()?),
        "boolValue" => Scalar::Bool(inner.as_bool()?),
        _ => Scalar::Other(inner.to_string()),
    })
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Ident(String),
    Str(String),
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    Dot,
    Eq,
    Ne,
}

fn tokenize(source: &str) -> Vec<Token> {
    let mut tokens = Vec::new();
    let mut chars = source.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            ' ' | '\t' | '\n' | '\r' => {
                chars.next();
            }
            '(' | ')' | '[' | ']' | ',' | '.' => {
                chars.next();
                tokens.push(match c {
                    '(' => Token::LParen,
                    ')' => Token::RParen,
                    '[' => Token::LBracket,
                    ']' => Token::RBracket,
                    ',' => Token::Comma,
                    _ => Token::Dot,
                });
            }
            '=' | '!' => {
                chars.next();
                if chars.next() != Some('=') {
                    panic!("OTTL condition {source:?}: only == and != are checked here");
                }
                tokens.push(if c == '=' { Token::Eq } else { Token::Ne });
            }
            '"' => {
                chars.next();
                let mut text = String::new();
                loop {
                    match chars.next() {
                        None => panic!("OTTL condition {source:?}: unterminated string"),
                        Some('"') => break,
                        // OTTL string literals unescape like Go's.
                        Some('\\') => match chars.next() {
                            Some('\\') => text.push('\\'),
                            Some('"') => text.push('"'),
                            Some('n') => text.push('\n'),
                            Some('t') => text.push('\t'),
                            other => panic!(
                                "OTTL condition {source:?}: escape \\{other:?} is not checked here"
                            ),
                        },
                        Some(ch) => text.push(ch),
                    }
                }
                tokens.push(Token::Str(text));
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let mut ident = String::new();
                while let Some(&ch) = chars.peek() {
                    if ch.is_ascii_alphanumeric() || ch == '_' {
                        ident.push(ch);
                        chars.next();
                    } else {
                        break;
                    }
                }
                tokens.push(Token::Ident(ident));
            }
            other => panic!("OTTL condition {source:?}: {other:?} is not checked here"),
        }
    }
    tokens
}

struct Parser<'a> {
    tokens: Vec<Token>,
    pos: usize,
    source: &'a str,
}

impl Parser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.pos)
    }

    fn next(&mut self) -> Token {
        let token = self
            .tokens
            .get(self.pos)
            .cloned()
            .unwrap_or_else(|| panic!("OTTL condition {:?} ends too early", self.source));
        self.pos += 1;
        token
    }

    fn expect(&mut self, token: Token) {
        let got = self.next();
        if got != token {
            panic!(
                "OTTL condition {:?}: expected {token:?}, got {got:?}",
                self.source
            );
        }
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Ident(w)) if w == word)
    }

    fn or(&mut self) -> Expr {
        let mut left = self.and();
        while self.keyword("or") {
            self.pos += 1;
            left = Expr::Or(Box::new(left), Box::new(self.and()));
        }
        left
    }

    fn and(&mut self) -> Expr {
        let mut left = self.not();
        while self.keyword("and") {
            self.pos += 1;
            left = Expr::And(Box::new(left), Box::new(self.not()));
        }
        left
    }

    fn not(&mut self) -> Expr {
        if self.keyword("not") {
            self.pos += 1;
            return Expr::Not(Box::new(self.not()));
        }
        self.primary()
    }

    fn primary(&mut self) -> Expr {
        if self.peek() == Some(&Token::LParen) {
            self.pos += 1;
            let inner = self.or();
            self.expect(Token::RParen);
            return inner;
        }
        if self.keyword("IsMatch") {
            self.pos += 1;
            self.expect(Token::LParen);
            let target = self.operand();
            self.expect(Token::Comma);
            let Token::Str(pattern) = self.next() else {
                panic!(
                    "OTTL condition {:?}: IsMatch's pattern must be a string literal here",
                    self.source
                );
            };
            self.expect(Token::RParen);
            let re = regex::Regex::new(&pattern)
                .unwrap_or_else(|e| panic!("OTTL condition {:?}: bad regexp: {e}", self.source));
            return Expr::IsMatch(target, re);
        }
        let left = self.operand();
        match self.next() {
            Token::Eq => Expr::Eq(left, self.operand()),
            Token::Ne => Expr::Ne(left, self.operand()),
            other => panic!(
                "OTTL condition {:?}: {other:?} is not checked here (only ==, != and IsMatch)",
                self.source
            ),
        }
    }

    fn operand(&mut self) -> Operand {
        match self.next() {
            Token::Str(s) => Operand::Str(s),
            Token::Ident(word) if word == "nil" => Operand::Nil,
            Token::Ident(word) => {
                let mut segments = vec![word];
                while self.peek() == Some(&Token::Dot) {
                    self.pos += 1;
                    match self.next() {
                        Token::Ident(w) => segments.push(w),
                        other => panic!("OTTL condition {:?}: path segment {other:?}", self.source),
                    }
                }
                if segments.first().is_some_and(|s| s == "log") && segments.len() > 1 {
                    segments.remove(0);
                }
                let key = if self.peek() == Some(&Token::LBracket) {
                    self.pos += 1;
                    let Token::Str(key) = self.next() else {
                        panic!("OTTL condition {:?}: keys must be strings", self.source);
                    };
                    self.expect(Token::RBracket);
                    if self.peek() == Some(&Token::LBracket) {
                        panic!(
                            "OTTL condition {:?}: nested keys are not checked here",
                            self.source
                        );
                    }
                    Some(key)
                } else {
                    None
                };
                let path = match (segments.join(".").as_str(), key) {
                    ("event_name", None) => Path::EventName,
                    ("severity_text", None) => Path::SeverityText,
                    ("body", None) => Path::Body,
                    ("attributes", Some(k)) => Path::Attribute(k),
                    ("resource.attributes", Some(k)) => Path::ResourceAttribute(k),
                    (other, key) => panic!(
                        "OTTL condition {:?}: path {other}{} is not checked here",
                        self.source,
                        key.map(|k| format!("[{k:?}]")).unwrap_or_default()
                    ),
                };
                Operand::Path(path)
            }
            other => panic!(
                "OTTL condition {:?}: {other:?} is not a value checked here",
                self.source
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record() -> Value {
        json!({
            "eventName": "image.generate",
            "attributes": [
                {"key": "audit.outcome", "value": {"stringValue": "success"}},
                {"key": "http.status_code", "value": {"intValue": "200"}}
            ]
        })
    }

    fn check(condition: &str) -> bool {
        matches(&parse(condition), &record(), &json!({}))
    }

    #[test]
    fn evaluates_the_subset_like_the_collector() {
        assert!(check(r#"IsMatch(event_name, "^image\\.")"#));
        assert!(!check(r#"IsMatch(event_name, "^user\\.")"#));
        assert!(
            check(r#"IsMatch(log.event_name, "generate")"#),
            "unanchored"
        );
        assert!(
            !check(r#"IsMatch(attributes["event.name"], ".*")"#),
            "nil never matches"
        );
        assert!(
            check(r#"IsMatch(attributes["http.status_code"], "^2")"#),
            "ints as text"
        );
        assert!(check(r#"attributes["audit.outcome"] != nil"#));
        assert!(check(r#"attributes["audit.target"] == nil"#));
        assert!(check(r#"event_name != """#));
        assert!(check(
            r#"attributes["audit.target"] != nil or event_name == "image.generate""#
        ));
        assert!(!check(
            r#"attributes["audit.target"] != nil and event_name == "image.generate""#
        ));
        assert!(check(r#"not (attributes["audit.target"] != nil)"#));
    }

    #[test]
    #[should_panic(expected = "is not checked here")]
    fn refuses_a_function_it_does_not_know() {
        check(r#"HasPrefix(event_name, "image.")"#);
    }

    #[test]
    #[should_panic(expected = "is not checked here")]
    fn refuses_an_operator_it_does_not_know() {
        check("severity_number < 9");
    }

    #[test]
    #[should_panic(expected = "path span_id")]
    fn refuses_a_path_it_does_not_know() {
        check(r#"span_id != nil"#);
    }
}
