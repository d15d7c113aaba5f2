//! `auditrail keygen`, `prove` and `verify`: the commands around the signed
//! Merkle tree (see `auditrail-integrity`), and the admin API's
//! `GET /v1/proof`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use auditrail_integrity::{Proof, SignerKey, VerifierKey};
use auditrail_model::AuditEvent;
use auditrail_spool::{
    Budget, ChainStart, Filter, ProblemKind, ReadOnlySpool, Spool, SpoolError, VerifyReport,
};
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};

use crate::admin::{error_response, AdminState};
use crate::client::Location;
use crate::scope::{ReadScope, Tenants};

/// `auditrail keygen`: writes the signer key to `out` (mode 0600, never
/// over an existing file) and the verifier key to `out.pub`; prints the
/// verifier key, which is what auditors get.
pub fn keygen(name: &str, out: &Path) -> anyhow::Result<()> {
    let key = SignerKey::generate(name).context("keygen --name")?;
    let public = out.with_extension("pub");
    for path in [out, public.as_path()] {
        if path.exists() {
            bail!(
                "{} exists already; keygen never overwrites a key",
                path.display()
            );
        }
    }
    write_new(out, &format!("{}\n", key.to_text()), 0o600)?;
    write_new(&public, &format!("{}\n", key.verifier()), 0o644)?;
    println!("{}", key.verifier());
    eprintln!(
        "signer key (keep it secret; [integrity] key_file names it): {}\n\
         verifier key (give it to auditors; `verify --pubkey` takes it): {}",
        out.display(),
        public.display()
    );
    Ok(())
}

fn write_new(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

/// Reads a signer key file, as `[integrity] key_file` names it.
pub fn read_signer(path: &Path) -> Result<SignerKey, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("integrity.key_file {}: {e}", path.display()))?;
    SignerKey::parse(&text).map_err(|e| {
        format!(
            "integrity.key_file {}: {e} (write one with `auditrail keygen`)",
            path.display()
        )
    })
}

/// `--pubkey`: the verifier key itself, or a file holding it.
pub fn read_verifier(arg: &str) -> anyhow::Result<VerifierKey> {
    let text = match std::fs::read_to_string(arg) {
        Ok(text) => text,
        Err(_) if arg.contains('+') => arg.to_owned(),
        Err(e) => bail!("--pubkey {arg}: not a key, and cannot be read as a file: {e}"),
    };
    VerifierKey::parse(&text).with_context(|| format!("--pubkey {arg}"))
}

/// What `auditrail prove` proves.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ProveParams {
    /// The event, by seq...
    pub seq: Option<u64>,
    /// ...or by event id.
    pub event_id: Option<String>,
    /// A consistency proof from the checkpoint of this tree size.
    pub from_size: Option<u64>,
    /// Against the checkpoint of this tree size (default: the newest).
    pub size: Option<u64>,
}

/// Why a proof was not made: the caller's mistake or the spool's.
#[derive(Debug, thiserror::Error)]
pub enum ProveError {
    #[error("say what to prove: seq, event_id or from_size")]
    NothingAsked,
    #[error("no event with id {0:?} is retained")]
    NoSuchEvent(String),
    #[error(transparent)]
    Spool(#[from] SpoolError),
}

impl ProveError {
    fn status(&self) -> StatusCode {
        match self {
            ProveError::NothingAsked => StatusCode::BAD_REQUEST,
            ProveError::NoSuchEvent(_) => StatusCode::NOT_FOUND,
            ProveError::Spool(
                SpoolError::NoCheckpoint { .. }
                | SpoolError::NotCovered { .. }
                | SpoolError::NotRetained(_)
                | SpoolError::ProofPastRetention { .. },
            ) => StatusCode::NOT_FOUND,
            // An event id looked up past the query budget, as /v1/events.
            ProveError::Spool(
                SpoolError::ScanBudgetExceeded { .. } | SpoolError::QueryTimedOut { .. },
            ) => StatusCode::UNPROCESSABLE_ENTITY,
            ProveError::Spool(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Makes the proof `params` asks for. An inclusion proof is made only of
/// an event `tenants` may see; any other answers as if it did not exist.
/// Finding the event (an event id has no index: a scan) spends `budget`.
pub fn prove(
    spool: &Spool,
    params: &ProveParams,
    tenants: &Tenants,
    budget: &Budget,
) -> Result<Proof, ProveError> {
    if let Some(from) = params.from_size {
        // Hashes and signed roots only: nothing of any tenant's events.
        return Ok(Proof::Consistency(
            spool.prove_consistency(from, params.size)?,
        ));
    }
    let filter = match (&params.event_id, params.seq) {
        (Some(id), _) => Filter {
            event_id: Some(id.clone()),
            limit: 1,
            ..Filter::default()
        },
        (None, Some(seq)) => Filter {
            after_seq: Some(seq.saturating_sub(1)),
            limit: 1,
            ..Filter::default()
        },
        (None, None) => return Err(ProveError::NothingAsked),
    };
    let (events, _) = spool.query_within(&filter, budget)?;
    let visible = |e: &AuditEvent| match tenants {
        Tenants::All => true,
        Tenants::Only(own) => &e.tenant == own,
        Tenants::Nothing => false,
    };
    let event = events
        .into_iter()
        .find(|e| params.seq.is_none_or(|seq| e.seq == seq) && visible(e));
    match (event, &params.event_id, params.seq) {
        (Some(event), _, _) => Ok(Proof::Inclusion(
            spool.prove_inclusion(event.seq, params.size)?,
        )),
        (None, Some(id), _) => Err(ProveError::NoSuchEvent(id.clone())),
        (None, None, Some(seq)) => Err(ProveError::Spool(SpoolError::NotRetained(seq))),
        (None, None, None) => Err(ProveError::NothingAsked),
    }
}

/// `GET /v1/proof?seq=N|event_id=ID|from_size=M[&size=S]`: a proof file.
/// A tenant proves only its own events.
pub async fn proof_handler(
    State(state): State<AdminState>,
    scope: Option<Extension<ReadScope>>,
    params: Result<Query<ProveParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(params)) => params,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e.body_text()),
    };
    // A tenant reader's scope is its own tenant; the operator's, all.
    let tenants = ReadScope::of(scope).restrict(None);
    let spool = state.spool.clone();
    // The admin API's query limits hold for the lookup too.
    let limits = state.queries.limits();
    let budget = Budget {
        max_examined: Some(limits.max_scan_events),
        deadline: Some(std::time::Instant::now() + limits.query_timeout),
        cancel: None,
    };
    let proved =
        tokio::task::spawn_blocking(move || prove(&spool, &params, &tenants, &budget)).await;
    match proved {
        Ok(Ok(proof)) => Json(proof).into_response(),
        Ok(Err(e)) => error_response(e.status(), e.to_string()),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `POST /v1/verify[?pubkey=KEY]`: what `verify --data-dir` does, on the
/// running node's spool (operator only: it reads every event). Checked
/// against `pubkey`, else the node's own verifier key. Each run is recorded
/// in the trail as `auditrail.verify`, with its verdict and who asked.
pub async fn verify_handler(
    State(state): State<AdminState>,
    caller: Option<Extension<crate::admin_auth::Caller>>,
    params: Result<Query<VerifyParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(params)) => params,
        Err(e) => return error_response(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let subject = caller.map_or(crate::admin_auth::ANONYMOUS.to_owned(), |c| c.0.subject);
    match verify_recorded(&state, params.pubkey.as_deref(), &subject).await {
        Ok(verified) => Json(serde_json::json!({
            "intact": verified.intact,
            "report": verified.text,
        }))
        .into_response(),
        Err(e) => error_response(e.status(), e.to_string()),
    }
}

/// A verify run of the live spool, as `POST /v1/verify` and the gRPC API's
/// `Verify` answer it.
pub struct Verified {
    pub intact: bool,
    pub report: VerifyReport,
    /// The report as `auditrail verify` prints it.
    pub text: String,
    /// Its last line.
    pub summary: String,
}

/// Why a verify run of the live spool did not happen.
#[derive(Debug, thiserror::Error)]
pub enum VerifyFailed {
    #[error("pubkey: {0}")]
    BadKey(String),
    /// The spool could not be read through.
    #[error("{0}")]
    Unavailable(String),
    #[error("verify task: {0}")]
    Task(String),
}

impl VerifyFailed {
    fn status(&self) -> StatusCode {
        match self {
            VerifyFailed::BadKey(_) => StatusCode::BAD_REQUEST,
            VerifyFailed::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            VerifyFailed::Task(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// Verifies the node's spool with `pubkey` (else the node's own verifier
/// key) and records the run in the trail as `auditrail.verify`, by
/// `subject`.
pub async fn verify_recorded(
    state: &AdminState,
    pubkey: Option<&str>,
    subject: &str,
) -> Result<Verified, VerifyFailed> {
    let key = match pubkey.map(VerifierKey::parse).transpose() {
        Ok(Some(key)) => Some(Arc::new(key)),
        Ok(None) => state.verifier.clone(),
        Err(e) => return Err(VerifyFailed::BadKey(e.to_string())),
    };
    let spool = state.spool.clone();
    let checked_key = key.clone();
    let run = tokio::task::spawn_blocking(move || -> anyhow::Result<(VerifyReport, String)> {
        let report = spool.verify(checked_key.as_deref())?;
        let mut text = Vec::new();
        print_report(&mut text, &report, "the spool", checked_key.as_deref())?;
        Ok((report, String::from_utf8_lossy(&text).into_owned()))
    })
    .await;
    let (report, text) = match run {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => return Err(VerifyFailed::Unavailable(format!("{e:#}"))),
        Err(e) => return Err(VerifyFailed::Task(e.to_string())),
    };
    let intact = report.is_intact();
    let summary = text.lines().last().unwrap_or("").to_owned();
    let mut event = auditrail_model::internal::InternalEvent::new(
        VERIFY_EVENT,
        auditrail_model::internal::INTERNAL_TENANT,
    )
    .actor(subject)
    .outcome(if intact {
        auditrail_model::Outcome::Success
    } else {
        auditrail_model::Outcome::Failure
    })
    .attr("audit.target", "spool")
    .attr(
        "auditrail.verify.intact",
        if intact { "true" } else { "false" },
    )
    .attr("auditrail.verify.summary", summary.as_str())
    .body(format!("verify of the spool by {subject}: {summary}"));
    if let Some(key) = &key {
        event = event.attr("auditrail.verify.pubkey", key.to_string());
    }
    if !intact {
        event = event.warning();
    }
    // Counted and logged by `record` when it fails.
    let _ = state
        .spool
        .record(event.build(crate::operator::now_unix_nano()))
        .await;
    Ok(Verified {
        intact,
        report,
        text,
        summary,
    })
}

/// The name of the event a `POST /v1/verify` run leaves.
pub const VERIFY_EVENT: &str = "auditrail.verify";

#[derive(Debug, serde::Deserialize)]
pub struct VerifyParams {
    pub pubkey: Option<String>,
}

/// `auditrail verify --admin URL`: a running node verifies its own spool
/// (`POST /v1/verify`); prints its report. `Ok(false)` when it found
/// tampering.
pub async fn verify_live(at: Location, key: Option<&VerifierKey>) -> anyhow::Result<bool> {
    let client = at.client()?;
    let mut request = client.post(at.url("/v1/verify"));
    if let Some(key) = key {
        request = request.query(&[("pubkey", key.to_string())]);
    }
    let answer = at.call(request).await?;
    let report = answer["report"].as_str().unwrap_or_default();
    print!("{report}");
    answer["intact"]
        .as_bool()
        .context("the admin API's verify answer has no `intact`")
}

/// `GET /v1/checkpoints`: every signed checkpoint, oldest first, as
/// `{"checkpoints": [{"size": N, "note": "<signed note>"}]}`. Roots and
/// signatures only, so any reader may have them: auditors keep copies (as
/// witnesses do), which a rewrite of the spool cannot reach.
pub async fn checkpoints_handler(State(state): State<AdminState>) -> Response {
    let spool = state.spool.clone();
    match tokio::task::spawn_blocking(move || spool.checkpoints()).await {
        Ok(Ok(list)) => {
            let list: Vec<_> = list
                .into_iter()
                .map(|c| serde_json::json!({ "size": c.size, "note": c.note }))
                .collect();
            Json(serde_json::json!({ "checkpoints": list })).into_response()
        }
        Ok(Err(e)) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        Err(e) => error_response(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `auditrail prove`: from a running server's admin API, or a stopped
/// server's spool; the proof file goes to `out` or stdout.
pub async fn prove_command(
    at: Location,
    params: ProveParams,
    out: Option<PathBuf>,
) -> anyhow::Result<()> {
    let proof: Proof = match at.open_spool()? {
        Some(spool) => tokio::task::spawn_blocking(move || {
            prove(&spool, &params, &Tenants::All, &Budget::default())
        })
        .await?
        .map_err(anyhow::Error::from)?,
        None => {
            let client = at.client()?;
            let mut query: Vec<(&str, String)> = Vec::new();
            if let Some(seq) = params.seq {
                query.push(("seq", seq.to_string()));
            }
            if let Some(id) = &params.event_id {
                query.push(("event_id", id.clone()));
            }
            if let Some(from) = params.from_size {
                query.push(("from_size", from.to_string()));
            }
            if let Some(size) = params.size {
                query.push(("size", size.to_string()));
            }
            let answer = at
                .call(client.get(at.url("/v1/proof")).query(&query))
                .await?;
            serde_json::from_value(answer).context("the admin API's proof is not a proof file")?
        }
    };
    let json = serde_json::to_string_pretty(&proof)? + "\n";
    match out {
        Some(path) => {
            std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?
        }
        None => std::io::stdout().write_all(json.as_bytes())?,
    }
    Ok(())
}

/// Reads a proof file.
pub fn read_proof(file: &Path) -> anyhow::Result<Proof> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    serde_json::from_str(&text)
        .with_context(|| format!("{} is not an auditrail proof file", file.display()))
}

/// An inclusion proof with its event replaced by the row the sink holds
/// now for the same node and seq: `verify --proof FILE --config C --sink S`
/// checks that row, not the copy the proof carries.
pub async fn with_row_from_sink(
    proof: Proof,
    config: &crate::config::Config,
    name: &str,
) -> anyhow::Result<Proof> {
    use base64::Engine;
    let Proof::Inclusion(mut inclusion) = proof else {
        bail!("--sink checks an event's row: give an inclusion proof");
    };
    let claimed = auditrail_integrity::Checkpoint::parse_unverified(&inclusion.checkpoint)?;
    let node = claimed
        .origin
        .split('/')
        .nth(1)
        .unwrap_or_default()
        .to_owned();
    let exporter = sink_exporter(config, name)?;
    let store = exporter
        .read_back()
        .with_context(|| format!("sink {name} cannot be read back"))?;
    let rows = store
        .events(&node, inclusion.seq - 1, 1)
        .await
        .with_context(|| format!("reading sink {name}'s row"))?;
    let row = rows
        .into_iter()
        .find(|r| r.seq == inclusion.seq)
        .with_context(|| {
            format!(
                "sink {name} holds no row of node {node}, seq {}",
                inclusion.seq
            )
        })?;
    inclusion.event = base64::engine::general_purpose::STANDARD.encode(row.canonical_bytes());
    Ok(Proof::Inclusion(inclusion))
}

/// The exporter of the sink `name` of `config`, built but not connected.
fn sink_exporter(
    config: &crate::config::Config,
    name: &str,
) -> anyhow::Result<Arc<dyn auditrail_exporters::Exporter>> {
    let sink = config
        .sinks
        .iter()
        .find(|s| s.name == name)
        .with_context(|| format!("--sink {name}: no sink of that name in the config"))?;
    config
        .build_sink(sink)
        .with_context(|| format!("sink {name}"))
}

/// `auditrail verify --proof FILE --pubkey KEY`: offline, with nothing but
/// the proof and the key. `Ok(false)` when the proof does not hold.
pub fn verify_proof(proof: Proof, key: &VerifierKey) -> anyhow::Result<bool> {
    let mut out = std::io::stdout().lock();
    match proof {
        Proof::Inclusion(proof) => match proof.verify(key) {
            Ok(checkpoint) => {
                let event = proof
                    .event_bytes()
                    .ok()
                    .and_then(|b| AuditEvent::from_canonical_bytes(&b).ok());
                if let Some(event) = &event {
                    if event.seq != proof.seq {
                        writeln!(
                            out,
                            "INVALID: the event inside says seq {}, the proof seq {}",
                            event.seq, proof.seq
                        )?;
                        return Ok(false);
                    }
                }
                writeln!(
                    out,
                    "valid: seq {} is leaf {} of {}'s tree of {} events, signed by {} at {}",
                    proof.seq,
                    proof.leaf_index,
                    checkpoint.origin,
                    checkpoint.size,
                    key.name(),
                    time_text(checkpoint.time_unix_nano)
                )?;
                if let Some(event) = event {
                    writeln!(
                        out,
                        "event {}: {} by {} ({}), tenant {}, at {}",
                        event.event_id,
                        event.event_name,
                        event.actor_id,
                        event.outcome.as_str(),
                        event.tenant,
                        time_text(event.time_unix_nano)
                    )?;
                }
                Ok(true)
            }
            Err(e) => {
                writeln!(out, "INVALID: {e}")?;
                Ok(false)
            }
        },
        Proof::Consistency(proof) => match proof.verify(key) {
            Ok((old, new)) => {
                writeln!(
                    out,
                    "valid: {}'s tree of {} events extends its tree of {}: history up to \
                     seq {} was only appended to",
                    new.origin,
                    new.size,
                    old.size,
                    old.last_seq()
                )?;
                Ok(true)
            }
            Err(e) => {
                writeln!(out, "INVALID: {e}")?;
                Ok(false)
            }
        },
    }
}

fn time_text(unix_nano: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(unix_nano);
    humantime::format_rfc3339_seconds(time).to_string()
}

/// `auditrail verify --data-dir`: walks the chain and the Merkle tree of a
/// stopped server's spool, read-only. `Ok(false)` when it found tampering.
pub fn verify_spool(data_dir: &Path, key: Option<&VerifierKey>) -> anyhow::Result<bool> {
    let spool = ReadOnlySpool::open(data_dir)
        .with_context(|| format!("opening spool {} read-only", data_dir.display()))?;
    let report = spool.verify(key)?;
    let mut out = std::io::stdout().lock();
    print_report(&mut out, &report, &data_dir.display().to_string(), key)?;
    Ok(report.is_intact())
}

/// `auditrail verify --config FILE --sink NAME`: reads the sink's rows and
/// checkpoints back and walks them as the spool's are walked, one report
/// per node (and per spool of that node, when it was wiped and restarted).
/// `Ok(false)` when it found tampering.
pub async fn verify_sink(
    config: &crate::config::Config,
    name: &str,
    only_node: Option<&str>,
    key: Option<&VerifierKey>,
) -> anyhow::Result<bool> {
    let exporter = sink_exporter(config, name)?;
    let Some(store) = exporter.read_back() else {
        bail!(
            "sink {name} cannot be read back; verify --sink supports the canonical tables of the \
             mysql and clickhouse sinks, and the file sink"
        );
    };
    verify_store(store, &format!("sink {name}"), only_node, key).await
}

/// `auditrail verify --file PATH...`: the segment files of a file sink
/// (directories: the segments in them), read directly, no config needed.
/// `Ok(false)` when it found tampering.
pub async fn verify_files(
    paths: &[PathBuf],
    only_node: Option<&str>,
    key: Option<&VerifierKey>,
) -> anyhow::Result<bool> {
    let files = auditrail_exporters::sinks::file::SegmentFiles::of_paths(paths)?;
    let what = match paths {
        [one] => one.display().to_string(),
        _ => format!("{} files", paths.len()),
    };
    if files.is_empty() {
        bail!("no segment files in {what} (auditrail-<node>-<first seq>.ndjson[.zst|.gz])");
    }
    verify_store(&files, &what, only_node, key).await
}

/// One spool's part of a node's records in a store: the seqs after
/// `after`, checked against the checkpoints of `tree` (none: the chain
/// alone).
struct Part {
    after: u64,
    tree_first: Option<u64>,
    label: String,
    audit: auditrail_integrity::audit::Audit,
    started: bool,
    stopped: bool,
    last_seq: u64,
}

/// Walks every node of `store` (or `only_node`) in the store's own order,
/// against the checkpoints it holds, and prints a report per node and
/// spool. `Ok(false)` when it found tampering.
async fn verify_store(
    store: &dyn auditrail_exporters::ReadBack,
    what: &str,
    only_node: Option<&str>,
    key: Option<&VerifierKey>,
) -> anyhow::Result<bool> {
    use auditrail_exporters::Stored;
    use auditrail_integrity::audit::{Audit, NoNodes, ProblemKind, StoredNote, TreeStart};
    use auditrail_integrity::Checkpoint;

    let nodes = match only_node {
        Some(node) => vec![node.to_owned()],
        None => store
            .nodes()
            .await
            .with_context(|| format!("reading {what}"))?,
    };
    let mut out = std::io::stdout().lock();
    let mut intact = true;
    if nodes.is_empty() {
        writeln!(out, "{what} holds no events")?;
    }
    for node in nodes {
        let notes = store
            .checkpoints(&node)
            .await
            .with_context(|| format!("reading {what}'s checkpoints"))?;
        // One tree per spool of the node: a wiped spool starts a new one,
        // with a new origin, after the seqs the store already held.
        let mut trees: Vec<(u64, String, Vec<StoredNote>)> = Vec::new();
        let mut unreadable_notes = Vec::new();
        for note in notes {
            let claimed = match Checkpoint::parse_unverified(&note) {
                Ok(claimed) => claimed,
                Err(e) => {
                    unreadable_notes.push(e.to_string());
                    continue;
                }
            };
            let stored = StoredNote {
                size: claimed.size,
                note,
            };
            match trees
                .iter_mut()
                .find(|(_, origin, _)| *origin == claimed.origin)
            {
                Some((_, _, list)) => list.push(stored),
                None => trees.push((claimed.first_seq, claimed.origin, vec![stored])),
            }
        }
        trees.sort_by_key(|(first, _, _)| *first);
        // Records before the first tree are checked by their chain alone.
        let part = |after: u64, tree: Option<TreeStart>, label: String| Part {
            after,
            tree_first: tree.as_ref().map(|t| t.first_seq),
            label,
            audit: Audit::new(key, tree),
            started: false,
            stopped: false,
            last_seq: after,
        };
        let mut parts: Vec<Part> = Vec::new();
        if trees.first().is_none_or(|(first, _, _)| *first > 1) {
            parts.push(part(0, None, "before any checkpoint".to_owned()));
        }
        for (first, origin, checkpoints) in trees {
            let tree = TreeStart {
                first_seq: first,
                checkpoints,
                spool_id: None,
                nodes_kept: false,
            };
            parts.push(part(first.saturating_sub(1), Some(tree), origin));
        }
        for why in unreadable_notes {
            parts[0].audit.problem(
                0,
                ProblemKind::BadCheckpoint,
                format!("a stored checkpoint cannot be read: {why}"),
            );
        }
        // Each record goes to the part of its seq, in store order.
        let part_of =
            |parts: &[Part], seq: u64| parts.iter().rposition(|p| seq > p.after).unwrap_or(0);
        let mut walk = store
            .walk(&node)
            .await
            .with_context(|| format!("reading {what}"))?;
        let mut current = 0;
        loop {
            let page = walk
                .next_page()
                .await
                .with_context(|| format!("reading {what}"))?;
            if page.is_empty() {
                break;
            }
            for record in page {
                match record {
                    Stored::Event(row) => {
                        current = part_of(&parts, row.seq);
                        let part = &mut parts[current];
                        if part.stopped {
                            continue;
                        }
                        if !part.started {
                            part.started = true;
                            start_of_rows(&mut part.audit, &row, part.tree_first);
                        }
                        part.last_seq = part.last_seq.max(row.seq);
                        let canonical = row.canonical_bytes();
                        part.stopped = part.audit.event(
                            row.seq,
                            row.prev_hash,
                            &canonical,
                            row.hash,
                            &NoNodes,
                        );
                    }
                    Stored::Unreadable { seq, detail } => {
                        if let Some(seq) = seq {
                            current = part_of(&parts, seq);
                        }
                        let part = &mut parts[current];
                        if !part.stopped {
                            let seq = seq.unwrap_or(part.last_seq + 1);
                            part.stopped = part.audit.unreadable(seq, detail);
                        }
                    }
                }
            }
        }
        for part in parts {
            let report = part.audit.finish();
            if report.events == 0 && report.checkpoints.total == 0 && report.is_intact() {
                continue;
            }
            print_report(
                &mut out,
                &report,
                &format!("{what}, node {node} ({})", part.label),
                key,
            )?;
            intact &= report.is_intact();
        }
    }
    Ok(intact)
}

/// Where a sink's rows start: at the tree's first seq the chain starts from
/// genesis; later, the rows before were removed from the sink (its own
/// retention, or someone) and the first row's `prev_hash` is taken as given.
fn start_of_rows(
    audit: &mut auditrail_integrity::audit::Audit,
    row: &AuditEvent,
    tree_first: Option<u64>,
) {
    use auditrail_integrity::audit::ChainStart;
    match tree_first {
        Some(first) if row.seq == first => audit.start(
            ChainStart::Genesis,
            Some(auditrail_model::GENESIS_HASH),
            Some(first),
        ),
        Some(first) if row.seq > first => {
            audit.start(
                ChainStart::Unanchored {
                    prev_hash: row.prev_hash,
                },
                None,
                None,
            );
            audit.missing_before(
                first,
                row.seq - 1,
                format!(
                    "seq {first}..{} absent from the sink, though the tree starts at seq \
                     {first} (deleted, or dropped by the sink's own partition retention)",
                    row.seq - 1
                ),
            );
        }
        _ if row.prev_hash == auditrail_model::GENESIS_HASH => {
            audit.start(ChainStart::Genesis, None, Some(row.seq))
        }
        _ => audit.start(
            ChainStart::Unanchored {
                prev_hash: row.prev_hash,
            },
            None,
            None,
        ),
    }
}

/// Prints a report: where the chain starts, each problem, then the summary
/// line (`2000 events: 1998 valid, 1 modified, 1 missing; checkpoints 12/12
/// valid`).
pub fn print_report(
    out: &mut impl Write,
    report: &VerifyReport,
    store: &str,
    key: Option<&VerifierKey>,
) -> std::io::Result<()> {
    match (report.first_seq, report.last_seq) {
        (Some(first), Some(last)) => writeln!(
            out,
            "checked {} events, seq {first}..{last}, in {store}",
            report.events
        )?,
        _ => writeln!(out, "no events in {store}")?,
    }
    let start = match report.start {
        ChainStart::Empty => "nothing to check".to_owned(),
        ChainStart::Genesis => "the chain starts at genesis: no hash taken on trust".to_owned(),
        ChainStart::RemovedTail {
            last_removed_seq,
            hash,
        } => format!(
            "retention removed seq ..{last_removed_seq} (not tampering: retention records what it \
             removes); trusted start: their last hash {} as recorded then",
            hex::encode(hash)
        ),
        ChainStart::Unanchored { prev_hash } => format!(
            "trusted start: the first event's prev_hash {} (nothing records what came before)",
            hex::encode(prev_hash)
        ),
    };
    writeln!(out, "{start}")?;
    for problem in &report.problems {
        writeln!(out, "BROKEN: {problem}")?;
    }
    if report.truncated {
        writeln!(
            out,
            "too many problems; stopped after {}",
            report.problems.len()
        )?;
    }
    let c = &report.checkpoints;
    match key {
        Some(key) => writeln!(
            out,
            "checkpoint signatures checked with {}+{:08x}",
            key.name(),
            key.id()
        )?,
        None if c.total > 0 => writeln!(
            out,
            "checkpoint signatures NOT checked: give the auditor's public key with --pubkey"
        )?,
        None => {}
    }
    if c.unsigned_tail > 0 {
        writeln!(
            out,
            "note: the newest {} events are not covered by a checkpoint yet (signed every \
             [integrity] checkpoint_every events or checkpoint_interval, and at shutdown)",
            c.unsigned_tail
        )?;
    }
    if report.is_intact() {
        writeln!(out, "chain intact")?;
    }
    writeln!(out, "{}", summary(report))
}

/// `2000 events: 1998 valid, 1 modified, 1 missing; checkpoints 12/12 valid`.
pub fn summary(report: &VerifyReport) -> String {
    let mut bad_seqs = std::collections::BTreeSet::new();
    let mut counts: Vec<(&str, u64)> = Vec::new();
    for problem in &report.problems {
        let label = problem.kind.label();
        let n = match problem.kind {
            ProblemKind::Missing => problem.count,
            ProblemKind::BadCheckpoint => 0,
            // Not one of the events counted (it could not be read as one).
            ProblemKind::Unreadable => problem.count,
            _ => {
                bad_seqs.insert(problem.seq);
                problem.count
            }
        };
        if n == 0 {
            continue;
        }
        match counts.iter_mut().find(|(l, _)| *l == label) {
            Some((_, c)) => *c += n,
            None => counts.push((label, n)),
        }
    }
    let valid = report.events.saturating_sub(bad_seqs.len() as u64);
    let mut line = format!("{} events: {valid} valid", report.events);
    for (label, n) in counts {
        line.push_str(&format!(", {n} {label}"));
    }
    let c = &report.checkpoints;
    line.push_str(&format!("; checkpoints {}/{} valid", c.valid, c.total));
    line
}

/// The `[integrity]` key, for a spool: `None` when no key is configured.
pub fn signing(config: &crate::config::Config) -> anyhow::Result<Option<auditrail_spool::Signing>> {
    let section = &config.integrity;
    let Some(path) = &section.key_file else {
        return Ok(None);
    };
    let key = read_signer(path).map_err(anyhow::Error::msg)?;
    Ok(Some(auditrail_spool::Signing {
        key: Arc::new(key),
        every_events: section.checkpoint_every,
        interval: section.checkpoint_interval,
    }))
}
