//! The configs the docs tell users to copy: every ```toml block of
//! `docs/sinks.md`, `docs/config.md`, `docs/security.md`, `docs/integrity.md`, `docs/detection.md`,
//! `docs/redaction.md`, `docs/tracing.md`, `docs/concepts.md`, `docs/ui.md`, `docs/scaling.md` and the README
//! passes `auditrail check-config` (with
//! each variable it names from the environment set, and each `[integrity]
//! key_file` written by `auditrail keygen`), and every sink type
//! auditrail has is shown in `docs/sinks.md` with a config to copy.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Stdio};

use auditrail_tests::binary;
use auditrail_tests::tls::TestPki;

/// Every sink `type` auditrail builds (`SinkKind`, default features).
const SINK_TYPES: &[&str] = &[
    "mysql",
    "clickhouse",
    "nats",
    "otlp",
    "syslog",
    "file",
    "webhook",
    "splunk_hec",
    "elasticsearch",
    "kafka",
];

/// The ```toml blocks of a markdown file, with the line each starts on.
fn toml_blocks(markdown: &str) -> Vec<(usize, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (n, line) in markdown.lines().enumerate() {
        match &mut current {
            None if line.trim_start().starts_with("```toml") => {
                current = Some((n + 1, String::new()))
            }
            None => {}
            Some(_) if line.trim_start().starts_with("```") => blocks.push(current.take().unwrap()),
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    blocks
}

/// The environment variables a block names: `*_env = "VAR"` keys and
/// `${VAR}` in values.
fn variables(block: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    for line in block.lines() {
        let code = line.split('#').next().unwrap_or("");
        if let Some((key, value)) = code.split_once('=') {
            if key.trim().ends_with("_env") {
                vars.insert(value.trim().trim_matches('"').to_owned());
            }
        }
        let mut rest = code;
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start + 2..].find('}') else {
                break;
            };
            vars.insert(rest[start + 2..start + 2 + len].to_owned());
            rest = &rest[start + 2 + len..];
        }
    }
    vars
}

/// The block with each `[integrity] key_file = "PATH"` pointing at a key
/// `auditrail keygen` just wrote, as the docs tell users to make it, and
/// each sink's `tls_ca_file`, `tls_cert_file` and `tls_key_file` at a test
/// CA's and client's PEM files (check-config builds the sinks, which read
/// them).
fn with_keys(block: &str, dir: &Path) -> String {
    let mut pki = None;
    let mut out = String::new();
    let mut table = String::new();
    for line in block.lines() {
        let code = line.split('#').next().unwrap_or("");
        if code.trim_start().starts_with('[') {
            table = code.trim().to_owned();
        }
        match code.split_once('=') {
            Some((key, _)) if key.trim() == "key_file" && table == "[integrity]" => {
                let key = dir.join(format!("key-{}", rand_suffix()));
                let status = Command::new(binary())
                    .args(["keygen", "--out"])
                    .arg(&key)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("running auditrail keygen");
                assert!(status.success(), "auditrail keygen failed");
                out.push_str(&format!("key_file = \"{}\"\n", key.display()));
            }
            Some((key, _)) if key.trim().starts_with("tls_") && key.trim().ends_with("_file") => {
                let (pki, client) = pki.get_or_insert_with(|| {
                    let pki = TestPki::generate(dir);
                    let client = pki.client("docs-client", "auditrail", &[]);
                    (pki, client)
                });
                let file = match key.trim() {
                    "tls_ca_file" => &pki.ca,
                    "tls_cert_file" => &client.cert,
                    "tls_key_file" => &client.key,
                    other => panic!("{other}: no test file for this key"),
                };
                out.push_str(&format!("{} = \"{}\"\n", key.trim(), file.display()));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    out
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

fn check_config(block: &str, dir: &Path) -> Result<(), String> {
    let path = dir.join("auditrail.toml");
    std::fs::write(&path, with_keys(block, dir)).unwrap();
    auditrail_tests::check_config(&path, variables(block))
}

#[test]
fn every_config_in_the_docs_passes_check_config_and_every_sink_type_has_one() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut types_shown = BTreeSet::new();
    for doc in [
        "docs/sinks.md",
        "docs/config.md",
        "docs/security.md",
        "docs/integrity.md",
        "docs/redaction.md",
        "docs/detection.md",
        "docs/tracing.md",
        "docs/concepts.md",
        "docs/ui.md",
        "docs/scaling.md",
        "README.md",
    ] {
        let text = std::fs::read_to_string(repo.join(doc)).unwrap();
        for (line, block) in toml_blocks(&text) {
            if let Err(error) = check_config(&block, dir.path()) {
                failures.push(format!("{doc}:{line}: {error}"));
            }
            if doc == "docs/sinks.md" {
                for l in block.lines() {
                    if let Some(("type", value)) = l
                        .split('#')
                        .next()
                        .unwrap()
                        .split_once('=')
                        .map(|(k, v)| (k.trim(), v))
                    {
                        types_shown.insert(value.trim().trim_matches('"').to_owned());
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "configs in the docs that check-config refuses:\n{}",
        failures.join("\n")
    );
    let missing: Vec<&&str> = SINK_TYPES
        .iter()
        .filter(|t| !types_shown.contains(**t))
        .collect();
    assert!(
        missing.is_empty(),
        "sink types with no config to copy in docs/sinks.md: {missing:?}"
    );
}

#[test]
fn the_block_reader_finds_blocks_and_their_variables() {
    let md = "text\n```toml\na = 1\nsecret_env = \"S\"  # the key\nurl = \"x://${U}@h/${V}\"\n```\n```sh\nnot = 2\n```\n";
    let blocks = toml_blocks(md);
    assert_eq!(blocks.len(), 1);
    assert_eq!(blocks[0].0, 2);
    assert_eq!(
        variables(&blocks[0].1),
        BTreeSet::from(["S".to_owned(), "U".to_owned(), "V".to_owned()])
    );
}
