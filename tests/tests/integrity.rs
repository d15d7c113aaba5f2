//! Signed checkpoints end to end, as an auditor would use them: `keygen`
//! writes the key pair, a server configured with it signs checkpoints of
//! events the real Rust OTel SDK sent, `prove` prints proofs that `verify
//! --proof` checks offline with the public key alone (and refuses once the
//! event or the key is not the one signed), and `verify --data-dir` checks
//! the stopped server's spool against every checkpoint.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use auditrail_tests::{cli, eventually, Server, Setup};
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _};
use opentelemetry_sdk::logs::SdkLoggerProvider;

/// Emits `n` events through the real Rust OTel SDK over gRPC, with
/// `log.record.uid` `ev-1` .. `ev-n`.
fn emit(grpc_url: String, n: usize) {
    let exporter = auditrail_tests::sinks::grpc_log_exporter(grpc_url);
    let logs = SdkLoggerProvider::builder()
        .with_simple_exporter(exporter)
        .build();
    let logger = logs.logger("audit");
    for i in 1..=n {
        let mut record = logger.create_log_record();
        record.set_event_name("image.delete");
        record.set_body(AnyValue::from(format!("deleted picture {i}")));
        record.add_attribute("log.record.uid", format!("ev-{i}"));
        record.add_attribute("user.id", "alice");
        // A number, and a string that reads as one: a ClickHouse Map
        // stores both as "3" / "200" (read back by the stored hash).
        record.add_attribute("image.count", 3_i64);
        record.add_attribute("http.status", "200");
        logger.emit(record);
    }
    logs.force_flush().expect("flushing logs");
    logs.shutdown().expect("shutting down the logger provider");
}

fn run(args: &[&str]) -> (i32, String, String) {
    let out = cli(args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn checkpoints_prove_events_offline_and_verify_the_spool() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("checkpoint.key");
    let public = keys.path().join("checkpoint.pub");
    let (code, stdout, stderr) = run(&["keygen", "--out", path(&key), "--name", "auditrail-test"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("auditrail-test+"), "{stdout}");
    assert_eq!(
        std::fs::read_to_string(&public).unwrap().trim(),
        stdout.trim()
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the signer key is private");
    let (code, _, stderr) = run(&["keygen", "--out", path(&key)]);
    assert_ne!(code, 0);
    assert!(stderr.contains("never overwrites"), "{stderr}");

    let tables = format!(
        "[integrity]\nkey_file = \"{}\"\ncheckpoint_every = 25\ncheckpoint_interval = \"1s\"\n",
        key.display()
    );
    let mut server = Server::start_setup(Setup {
        tables: &tables,
        ..Setup::default()
    });
    let url = server.grpc_url();
    tokio::task::spawn_blocking(move || emit(url, 60))
        .await
        .unwrap();
    let admin = server.admin_url();
    // The last events are signed within the interval.
    eventually("a checkpoint covering seq 60", || {
        let admin = admin.clone();
        async move { run(&["prove", "--seq", "60", "--admin", &admin]).0 == 0 }
    })
    .await;

    let proofs = tempfile::tempdir().unwrap();
    let proof = proofs.path().join("seq7.json");
    let (code, _, stderr) = run(&["prove", "--seq", "7", "--admin", &admin, "-o", path(&proof)]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, _) = run(&["verify", "--proof", path(&proof), "--pubkey", path(&public)]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.starts_with("valid: seq 7 is leaf 6 of auditrail/"),
        "{stdout}"
    );
    assert!(stdout.contains("image.delete by alice"), "{stdout}");

    // By event id, and the key given as text rather than a file.
    let by_id = proofs.path().join("ev12.json");
    let (code, _, stderr) = run(&[
        "prove",
        "--event-id",
        "ev-12",
        "--admin",
        &admin,
        "-o",
        path(&by_id),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let key_text = std::fs::read_to_string(&public).unwrap();
    let (code, stdout, _) = run(&[
        "verify",
        "--proof",
        path(&by_id),
        "--pubkey",
        key_text.trim(),
    ]);
    assert_eq!(code, 0, "{stdout}");
    assert!(stdout.starts_with("valid: seq 12 "), "{stdout}");

    // The event changed after the proof was made: the proof fails.
    let mut file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&proof).unwrap()).unwrap();
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut event = b64.decode(file["event"].as_str().unwrap()).unwrap();
    let at = event.windows(9).position(|w| w == b"picture 7").unwrap();
    event[at + 8] = b'8';
    file["event"] = b64.encode(&event).into();
    let changed = proofs.path().join("changed.json");
    std::fs::write(&changed, file.to_string()).unwrap();
    let (code, stdout, _) = run(&[
        "verify",
        "--proof",
        path(&changed),
        "--pubkey",
        path(&public),
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.starts_with("INVALID: "), "{stdout}");

    // Another key (an attacker's, of the same name) does not verify it.
    let other = keys.path().join("other.key");
    run(&["keygen", "--out", path(&other), "--name", "auditrail-test"]);
    let (code, stdout, _) = run(&[
        "verify",
        "--proof",
        path(&proof),
        "--pubkey",
        path(&keys.path().join("other.pub")),
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("no signature by key"), "{stdout}");

    // History only appended to: the first checkpoint against the newest.
    // The list shows the checkpoint that covered seq 60 above.
    let listed_sizes = || async {
        let (status, listed) = server.admin_get("/v1/checkpoints", None).await;
        assert_eq!(status, 200, "{listed}");
        listed["checkpoints"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["size"].as_u64().unwrap())
            .collect::<Vec<u64>>()
    };
    eventually(
        "/v1/checkpoints lists a checkpoint of all 60 events",
        || async { listed_sizes().await.last() == Some(&60) },
    )
    .await;
    let sizes = listed_sizes().await;
    assert!(sizes[0] >= 25, "{sizes:?}");
    let first = sizes[0].to_string();
    let consistency = proofs.path().join("consistency.json");
    let (code, _, stderr) = run(&[
        "prove",
        "--from-size",
        &first,
        "--admin",
        &admin,
        "-o",
        path(&consistency),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let (code, stdout, _) = run(&[
        "verify",
        "--proof",
        path(&consistency),
        "--pubkey",
        path(&public),
    ]);
    assert_eq!(code, 0, "{stdout}");
    assert!(
        stdout.contains(&format!("extends its tree of {first}")),
        "{stdout}"
    );

    // A seq nobody stored: a clear error, exit 1.
    let (code, _, stderr) = run(&["prove", "--seq", "999", "--admin", &admin]);
    assert_eq!(code, 1);
    assert!(stderr.contains("seq 999 is not in the spool"), "{stderr}");

    // The stopped server's spool, against every checkpoint.
    assert!(server.terminate().success());
    let spool = server.spool_dir();
    let (code, stdout, _) = run(&[
        "verify",
        "--data-dir",
        path(&spool),
        "--pubkey",
        path(&public),
    ]);
    assert_eq!(code, 0, "{stdout}");
    let summary = stdout.lines().last().unwrap();
    assert!(
        summary.starts_with("60 events: 60 valid; checkpoints "),
        "{stdout}"
    );
    let (valid, total) = summary
        .rsplit_once("checkpoints ")
        .unwrap()
        .1
        .trim_end_matches(" valid")
        .split_once('/')
        .unwrap();
    assert_eq!(valid, total, "{stdout}");
    assert!(total.parse::<usize>().unwrap() >= sizes.len(), "{stdout}");
    // With the wrong key every checkpoint is bad: exit 1.
    let (code, stdout, _) = run(&[
        "verify",
        "--data-dir",
        path(&spool),
        "--pubkey",
        path(&keys.path().join("other.pub")),
    ]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("bad checkpoint"), "{stdout}");
    // A proof from the stopped spool, without any server.
    let (code, stdout, stderr) = run(&["prove", "--seq", "60", "--data-dir", path(&spool)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("\"type\": \"inclusion\""), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_key_file_is_a_config_error_that_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("broken.key");
    std::fs::write(&key, "not a key\n").unwrap();
    let config = dir.path().join("auditrail.toml");
    std::fs::write(
        &config,
        format!("[integrity]\nkey_file = \"{}\"\n", key.display()),
    )
    .unwrap();
    let (code, _, stderr) = run(&["check-config", path(&config)]);
    assert_ne!(code, 0);
    assert!(stderr.contains("integrity.key_file"), "{stderr}");
    assert!(stderr.contains("auditrail keygen"), "{stderr}");
}

/// Runs `auditrail verify --config CONFIG --sink warehouse --pubkey KEY`.
fn verify_sink(config: &Path, public: &Path) -> (i32, String) {
    verify_sink_named(config, "warehouse", public)
}

/// Runs `auditrail verify --config CONFIG --sink NAME --pubkey KEY`.
fn verify_sink_named(config: &Path, name: &str, public: &Path) -> (i32, String) {
    let (code, stdout, stderr) = run(&[
        "verify",
        "--config",
        path(config),
        "--sink",
        name,
        "--pubkey",
        path(public),
    ]);
    (code, format!("{stdout}{stderr}"))
}

/// The `BROKEN: seq N: KIND` pairs of a verify output.
fn broken(out: &str) -> Vec<(u64, String)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("BROKEN: seq "))
        .map(|l| {
            let (seq, rest) = l.split_once(": ").unwrap();
            let kind = rest.split(':').next().unwrap();
            (seq.parse().unwrap(), kind.to_owned())
        })
        .collect()
}

/// An inclusion proof of seq 7 from the stopped `server`'s spool: its
/// directory (keep it) and the file.
fn prove_seq_7(server: &Server) -> (tempfile::TempDir, std::path::PathBuf) {
    let proofs = tempfile::tempdir().unwrap();
    let proof = proofs.path().join("seq7.json");
    let spool = server.spool_dir();
    let (code, _, stderr) = run(&[
        "prove",
        "--seq",
        "7",
        "--data-dir",
        path(&spool),
        "-o",
        path(&proof),
    ]);
    assert_eq!(code, 0, "{stderr}");
    (proofs, proof)
}

/// After `forge_checkpoint` (a checkpoint's note changed) the `warehouse`
/// sink's check finds a bad checkpoint; `proof` (of seq 7, made before any
/// tampering) holds for the sink's row of seq 7 until `change_row_7`, and
/// offline even after it.
async fn forged_checkpoint_fails_and_the_proof_checks_the_row(
    config: &Path,
    public: &Path,
    proof: &Path,
    forge_checkpoint: impl std::future::Future<Output = ()>,
    change_row_7: impl std::future::Future<Output = ()>,
) {
    forge_checkpoint.await;
    let (code, out) = verify_sink(config, public);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bad checkpoint"), "{out}");

    let check_row = || {
        run(&[
            "verify",
            "--proof",
            path(proof),
            "--pubkey",
            path(public),
            "--config",
            path(config),
            "--sink",
            "warehouse",
        ])
    };
    let (code, stdout, stderr) = check_row();
    assert_eq!(code, 0, "{stdout}{stderr}");
    change_row_7.await;
    let (code, stdout, stderr) = check_row();
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.starts_with("INVALID: "), "{stdout}");
    // The proof alone, offline, still holds: it carries the event as signed.
    let (code, stdout, _) = run(&["verify", "--proof", path(proof), "--pubkey", path(public)]);
    assert_eq!(code, 0, "{stdout}");
}

/// `out` names each of `want` (seq, kind), and blames nothing else on an
/// intact event.
fn assert_found_exactly(out: &str, want: &[(u64, &str)]) {
    let found = broken(out);
    for want in want {
        assert!(
            found.iter().any(|(s, k)| (*s, k.as_str()) == *want),
            "{want:?} not found:\n{out}"
        );
    }
    for (seq, kind) in &found {
        assert!(
            want.iter().any(|(s, _)| s == seq),
            "seq {seq} ({kind}) was not changed:\n{out}"
        );
    }
}

/// A key pair from `auditrail keygen` in a temporary directory: (dir,
/// signer key file, public key file).
fn keypair() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("checkpoint.key");
    let public = keys.path().join("checkpoint.pub");
    assert_eq!(run(&["keygen", "--out", path(&key)]).0, 0);
    (keys, key, public)
}

/// A server signing with `key` every 10 events (or 1 s), with `sink`, sent
/// 40 events by `emit`.
async fn serve_40_events(key: &Path, sink: &impl std::fmt::Display) -> Server {
    let tables = format!(
        "[integrity]\nkey_file = \"{}\"\ncheckpoint_every = 10\ncheckpoint_interval = \"1s\"\n\n{sink}",
        key.display()
    );
    let server = Server::start_setup(Setup {
        tables: &tables,
        ..Setup::default()
    });
    let url = server.grpc_url();
    tokio::task::spawn_blocking(move || emit(url, 40))
        .await
        .unwrap();
    server
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_each_tampering_in_a_mysql_sink_by_seq_and_kind() {
    use auditrail_tests::mysql::{Database, SinkToml};
    let (_keys, key, public) = keypair();
    let db = Database::create().await;
    let sink = SinkToml::new("warehouse", &db.url())
        .delivery("linger", "\"20ms\"")
        // Partitioned: the key takes received_time, so a forged row can
        // reuse a seq (what a key on (node, seq) alone would refuse).
        .partitions("days_ahead", "2");
    let mut server = serve_40_events(&key, &sink).await;
    // Every event, and a checkpoint of all of them, in the sink.
    eventually("a checkpoint of seq 40 in audit_checkpoints", || async {
        db.scalar::<Option<u64>>("SELECT CAST(MAX(last_seq) AS UNSIGNED) FROM audit_checkpoints")
            .await
            == Some(40)
    })
    .await;
    assert!(server.terminate().success());
    let config = server.config_path.clone();

    let (code, out) = verify_sink(&config, &public);
    assert_eq!(code, 0, "{out}");
    let summary = out.lines().last().unwrap();
    assert!(
        summary.starts_with("40 events: 40 valid; checkpoints "),
        "{out}"
    );

    // An inclusion proof of seq 7, made before any tampering.
    let (_proofs, proof) = prove_seq_7(&server);

    // One change of each kind.
    db.execute("UPDATE audit_events SET body = 'deleted nothing' WHERE seq = 5")
        .await;
    db.execute("DELETE FROM audit_events WHERE seq = 12").await;
    // Seqs 20 and 21 trade places: each row now holds the other's event.
    for sql in [
        "CREATE TABLE swapped AS SELECT * FROM audit_events WHERE seq IN (20, 21)",
        "UPDATE swapped SET seq = 41 - seq",
        "DELETE FROM audit_events WHERE seq IN (20, 21)",
        "INSERT INTO audit_events SELECT * FROM swapped",
        "DROP TABLE swapped",
    ] {
        db.execute(sql).await;
    }
    let columns = "event_id, time, time_unix_nano, observed_time_unix_nano, tenant, service_name, \
                   event_name, severity_number, severity_text, actor_id, actor_name, client_address, \
                   outcome, target, trace_id, span_id, trace_flags, body, attributes, \
                   resource_attributes, scope_name, prev_hash, hash";
    // A forged row, stored beside seq 30 as a second copy of it.
    db.execute(&format!(
        "INSERT INTO audit_events ({columns}, node, seq, received_time_unix_nano) \
         SELECT {cols}, node, seq, received_time_unix_nano + 1000 FROM audit_events WHERE seq = 30",
        cols = columns.replace("body", "'an event that never happened'")
    ))
    .await;

    let (code, out) = verify_sink(&config, &public);
    assert_eq!(code, 1, "{out}");
    assert_found_exactly(
        &out,
        &[
            (5, "modified"),
            (12, "missing"),
            (20, "reordered"),
            (21, "reordered"),
            (30, "inserted"),
        ],
    );
    assert!(out.contains("1 missing"), "{out}");

    forged_checkpoint_fails_and_the_proof_checks_the_row(
        &config,
        &public,
        &proof,
        db.execute(
            "UPDATE audit_checkpoints SET note = REPLACE(note, 'previous ', 'previous 1') \
             ORDER BY tree_size LIMIT 1",
        ),
        db.execute("UPDATE audit_events SET actor_id = 'mallory' WHERE seq = 7"),
    )
    .await;
}

/// Runs `sql` on ClickHouse and waits until its mutations (ALTER ... UPDATE
/// / DELETE, asynchronous) are done.
async fn mutate(db: &auditrail_tests::clickhouse::Database, sql: &str) {
    use auditrail_tests::clickhouse::{count, query};
    query(db.url(), sql).await;
    eventually("the mutation done", || async {
        count(
            db.url(),
            &format!(
                "SELECT count() FROM system.mutations WHERE database = '{}' AND is_done = 0",
                db.name()
            ),
        )
        .await
            == 0
    })
    .await;
}

/// `text` as a ClickHouse string literal.
fn ch_str(text: &str) -> String {
    format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Debian's 18.16 (the legacy mapping: attributes as JSON text).
#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_each_tampering_in_a_clickhouse_18_16_sink_by_seq_and_kind() {
    clickhouse_tampering(None).await
}

/// ClickHouse 26.x (chdb): attributes as `Map(String, String)`, read back
/// by their stored hash.
#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_each_tampering_in_a_modern_clickhouse_sink_by_seq_and_kind() {
    let chdb = auditrail_tests::clickhouse::Chdb::start();
    clickhouse_tampering(Some(&chdb.url())).await
}

/// The tampering of the MySQL test, in a ClickHouse sink on the server at
/// `url` (none: the shared 18.16 one), as far as ClickHouse allows it.
async fn clickhouse_tampering(url: Option<&str>) {
    use auditrail_tests::clickhouse::{self, count, query, select, Database};
    let (_keys, key, public) = keypair();
    let db = match url {
        Some(url) => Database::create(url).await,
        None => Database::legacy().await,
    };
    let sink = clickhouse::sink("warehouse", db.url(), db.name()).delivery("linger", "\"20ms\"");
    let mut server = serve_40_events(&key, &sink).await;
    let checkpoints = db.table("audit_checkpoints");
    eventually("a checkpoint of seq 40 in audit_checkpoints", || async {
        clickhouse::try_query(
            db.url(),
            &format!("SELECT max(last_seq) FROM {checkpoints}"),
        )
        .await
        .is_ok_and(|text| text.trim() == "40")
    })
    .await;
    assert!(server.terminate().success());
    let config = server.config_path.clone();

    let (code, out) = verify_sink(&config, &public);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with("40 events: 40 valid; checkpoints "),
        "{out}"
    );
    let (_proofs, proof) = prove_seq_7(&server);

    let table = db.table("audit_events");
    // A forged row with the sorting key of seq 33 (service, event, time,
    // node, seq): the ReplacingMergeTree keeps the last one inserted when
    // it merges, so once merged it is seq 33 modified.
    let columns = "node, seq, event_id, time, time_unix_nano, observed_time_unix_nano, \
                   received_time_unix_nano, tenant, service_name, event_name, severity_number, \
                   severity_text, actor_id, actor_name, client_address, outcome, target, trace_id, \
                   span_id, trace_flags, body, attributes, resource_attributes, scope_name, \
                   prev_hash, hash";
    let forged_body = columns.replace(" body,", " 'an event that never happened',");
    query(
        db.url(),
        &format!(
            "INSERT INTO {table} ({columns}) SELECT {forged_body} FROM {table} WHERE seq = 33"
        ),
    )
    .await;
    // (18.16 may answer OPTIMIZE with nothing done: it is asked again.)
    eventually("the forged row of seq 33 merged", || async {
        let optimize = format!("{}/?optimize_throw_if_noop=1", db.url());
        let _ = clickhouse::try_query(&optimize, &format!("OPTIMIZE TABLE {table} FINAL")).await;
        count(
            db.url(),
            &format!("SELECT count() FROM {table} WHERE seq = 33"),
        )
        .await
            == 1
    })
    .await;
    // A forged second row of seq 30, a second later: another sorting key,
    // so it stays beside the original.
    let later = columns
        .replace(" time,", " time + 1,")
        .replace(" body,", " 'an event that never happened',");
    query(
        db.url(),
        &format!("INSERT INTO {table} ({columns}) SELECT {later} FROM {table} WHERE seq = 30"),
    )
    .await;
    // A batch stored twice (a retry 18.16 has no token to drop) is no
    // tampering: seq 3's row, again, as it is.
    query(
        db.url(),
        &format!("INSERT INTO {table} ({columns}) SELECT {columns} FROM {table} WHERE seq = 3"),
    )
    .await;
    mutate(
        &db,
        &format!("ALTER TABLE {table} UPDATE body = 'deleted nothing' WHERE seq = 5"),
    )
    .await;
    mutate(&db, &format!("ALTER TABLE {table} DELETE WHERE seq = 12")).await;
    // Seqs 20 and 21 trade contents: the key columns (service, event, time,
    // node, seq) cannot be updated, and are the same but `time`, which is
    // not hashed (`time_unix_nano` is).
    let swapped = [
        "event_id",
        "time_unix_nano",
        "observed_time_unix_nano",
        "received_time_unix_nano",
        "body",
        "attributes",
        "prev_hash",
        "hash",
    ];
    let rows = select(
        db.url(),
        &format!(
            "SELECT seq, {} FROM {table} WHERE seq IN (20, 21) ORDER BY seq",
            swapped.join(", ")
        ),
    )
    .await;
    let value = |row: usize, column: &str| match &rows[row][column] {
        serde_json::Value::Object(map) => {
            // A Map column (26.x).
            let pairs: Vec<String> = map
                .iter()
                .flat_map(|(k, v)| [ch_str(k), ch_str(v.as_str().unwrap())])
                .collect();
            format!("map({})", pairs.join(", "))
        }
        v if column.ends_with("_unix_nano") => format!("toUInt64({})", clickhouse::num(v)),
        v => ch_str(v.as_str().unwrap()),
    };
    let sets: Vec<String> = swapped
        .iter()
        .map(|c| format!("{c} = if(seq = 20, {}, {})", value(1, c), value(0, c)))
        .collect();
    mutate(
        &db,
        &format!(
            "ALTER TABLE {table} UPDATE {} WHERE seq IN (20, 21)",
            sets.join(", ")
        ),
    )
    .await;

    let (code, out) = verify_sink(&config, &public);
    assert_eq!(code, 1, "{out}");
    assert_found_exactly(
        &out,
        &[
            (5, "modified"),
            (12, "missing"),
            (20, "reordered"),
            (21, "reordered"),
            (30, "inserted"),
            (33, "modified"),
        ],
    );
    assert!(out.contains("1 missing"), "{out}");

    let smallest = count(
        db.url(),
        &format!("SELECT min(tree_size) FROM {checkpoints}"),
    )
    .await;
    forged_checkpoint_fails_and_the_proof_checks_the_row(
        &config,
        &public,
        &proof,
        mutate(
            &db,
            &format!(
                "ALTER TABLE {checkpoints} UPDATE note = replaceOne(note, 'previous ', 'previous 1') \
                 WHERE tree_size = {smallest}"
            ),
        ),
        mutate(
            &db,
            &format!("ALTER TABLE {table} UPDATE actor_id = 'mallory' WHERE seq = 7"),
        ),
    )
    .await;
}

/// A file sink's segments as text, line by line: each `.zst` segment is
/// decompressed into a plain one of the same name (as an operator editing
/// it would), so the lines can be edited and written back.
fn plain_segments(dir: &Path) -> Vec<(std::path::PathBuf, Vec<String>)> {
    let mut names: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    names.sort();
    let mut out = Vec::new();
    for path in names {
        let text = match path.to_str().unwrap().strip_suffix(".zst") {
            Some(plain) => {
                let bytes = zstd::decode_all(std::fs::File::open(&path).unwrap()).unwrap();
                std::fs::remove_file(&path).unwrap();
                let plain = std::path::PathBuf::from(plain);
                std::fs::write(&plain, &bytes).unwrap();
                out.push((plain, String::from_utf8(bytes).unwrap()));
                continue;
            }
            None => std::fs::read_to_string(&path).unwrap(),
        };
        out.push((path, text));
    }
    out.into_iter()
        .map(|(path, text)| (path, text.lines().map(str::to_owned).collect()))
        .collect()
}

fn write_segment(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    if !lines.is_empty() {
        text.push('\n');
    }
    std::fs::write(path, text).unwrap();
}

/// The seq of an event line; `None` for a checkpoint line (or a line cut
/// short).
fn line_seq(line: &str) -> Option<u64> {
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value["seq"].as_u64()
}

#[tokio::test(flavor = "multi_thread")]
async fn verify_file_finds_each_tampering_in_file_segments_by_seq_and_kind() {
    let (_keys, key, public) = keypair();
    let archive = tempfile::tempdir().unwrap();
    let dir = archive.path().join("archive");
    // Segments of a few events each, closed ones compressed.
    let sink = format!(
        "[[sinks]]\nname = \"archive\"\ntype = \"file\"\npath = {:?}\nrotate_bytes = \"2KiB\"\n\
         compression = \"zstd\"\n\n[sinks.delivery]\nlinger = \"20ms\"\n",
        dir.display().to_string()
    );
    let mut server = serve_40_events(&key, &sink).await;
    let files = || -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    };
    // A checkpoint of all 40 in the files, and closed segments compressed.
    eventually(
        "a checkpoint line of seq 40, and a compressed segment",
        || async {
            let (code, out, _) = run(&["verify", "--file", path(&dir)]);
            code == 0
                && out.contains("40 events: 40 valid")
                && !out.contains("not covered")
                && files().iter().any(|f| f.ends_with(".ndjson.zst"))
        },
    )
    .await;
    assert!(server.terminate().success());
    let config = server.config_path.clone();

    // Intact: read back whole, compressed segments too, by `--file` (the
    // files named one by one, in any order) and by `--sink`.
    let mut each: Vec<String> = files()
        .iter()
        .map(|f| dir.join(f).display().to_string())
        .collect();
    each.reverse();
    let mut args = vec!["verify", "--pubkey", path(&public), "--file"];
    args.extend(each.iter().map(String::as_str));
    let (code, out, stderr) = run(&args);
    assert_eq!(code, 0, "{out}{stderr}");
    let summary = out.lines().last().unwrap();
    assert!(
        summary.starts_with("40 events: 40 valid; checkpoints "),
        "{out}"
    );
    let (code, out) = verify_sink_named(&config, "archive", &public);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("40 events: 40 valid"), "{out}");

    let verify_files = || {
        let (code, out, stderr) = run(&["verify", "--file", path(&dir), "--pubkey", path(&public)]);
        (code, format!("{out}{stderr}"))
    };
    let mut segments = plain_segments(&dir);
    assert!(segments.len() >= 4, "{segments:?}");
    let find = |segments: &[(std::path::PathBuf, Vec<String>)], seq: u64| {
        segments
            .iter()
            .enumerate()
            .find_map(|(f, (_, lines))| {
                let l = lines.iter().position(|l| line_seq(l) == Some(seq))?;
                Some((f, l))
            })
            .unwrap_or_else(|| panic!("no line of seq {seq}"))
    };
    // Seq 5's body edited.
    let (f, l) = find(&segments, 5);
    let edited = segments[f].1[l].replace("deleted picture 5\"", "deleted nothing\"");
    assert_ne!(edited, segments[f].1[l]);
    segments[f].1[l] = edited;
    // Seq 12's line deleted.
    let (f, l) = find(&segments, 12);
    segments[f].1.remove(l);
    // The lines of seqs 20 and 21 swapped (in whichever segments they are).
    let (f20, l20) = find(&segments, 20);
    let (f21, l21) = find(&segments, 21);
    let line20 = segments[f20].1[l20].clone();
    segments[f20].1[l20] = std::mem::replace(&mut segments[f21].1[l21], line20);
    // Two segments that are not the newest cut short: one mid-line, one by
    // its last event line. (Segments whose cut-off part holds no checkpoint
    // line: one cut off too leaves a period with no checkpoint, a bad
    // checkpoint of its own.)
    let cut = |segments: &[(std::path::PathBuf, Vec<String>)], above: u64, nth: usize| {
        (0..segments.len() - 1)
            .find_map(|f| {
                let lines = &segments[f].1;
                let events: Vec<(usize, u64)> = lines
                    .iter()
                    .enumerate()
                    .filter_map(|(i, l)| Some((i, line_seq(l)?)))
                    .collect();
                let &(at, seq) = events.get(nth.min(events.len().saturating_sub(1)))?;
                let fits = events.len() > nth.min(1)
                    && events.iter().all(|(_, s)| *s > above)
                    && lines[at..].iter().all(|l| line_seq(l).is_some());
                fits.then_some((f, at, seq))
            })
            .expect("a segment to cut")
    };
    let (mid, at, torn_seq) = cut(&segments, 22, 1);
    let half = segments[mid].1[at][..60].to_owned();
    segments[mid].1.truncate(at);
    let (tail, at, gone) = cut(&segments, torn_seq + 1, usize::MAX);
    assert!(tail > mid);
    segments[tail].1.truncate(at);
    for (path, lines) in &segments {
        write_segment(path, lines);
    }
    let mut torn = std::fs::OpenOptions::new()
        .append(true)
        .open(&segments[mid].0)
        .unwrap();
    std::io::Write::write_all(&mut torn, half.as_bytes()).unwrap();
    drop(torn);

    let (code, out) = verify_files();
    assert_eq!(code, 1, "{out}");
    assert_found_exactly(
        &out,
        &[
            (5, "modified"),
            (12, "missing"),
            (20, "reordered"),
            (torn_seq, "unreadable"),
            (torn_seq, "missing"),
            (gone, "missing"),
        ],
    );
    assert!(out.contains("is cut off mid-line"), "{out}");

    // A forged checkpoint line fails its signature.
    let mut segments = plain_segments(&dir);
    let (f, l) = segments
        .iter()
        .enumerate()
        .find_map(|(f, (_, lines))| {
            let l = lines
                .iter()
                .position(|l| l.starts_with("{\"auditrail_checkpoint\":"))?;
            Some((f, l))
        })
        .expect("a checkpoint line");
    segments[f].1[l] = segments[f].1[l].replace("previous ", "previous 1");
    write_segment(&segments[f].0, &segments[f].1);
    let (code, out) = verify_files();
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bad checkpoint"), "{out}");

    // Not a segment: exit 2.
    let (code, _, stderr) = run(&["verify", "--file", "/nonexistent/segment.ndjson"]);
    assert_eq!(code, 2, "{stderr}");
}
