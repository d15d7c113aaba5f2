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
    let (status, listed) = server.admin_get("/v1/checkpoints", None).await;
    assert_eq!(status, 200, "{listed}");
    let sizes: Vec<u64> = listed["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["size"].as_u64().unwrap())
        .collect();
    assert!(sizes.len() >= 2 && sizes[0] >= 25, "{sizes:?}");
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
    let (code, stdout, stderr) = run(&[
        "verify",
        "--config",
        path(config),
        "--sink",
        "warehouse",
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

#[tokio::test(flavor = "multi_thread")]
async fn verify_finds_each_tampering_in_a_mysql_sink_by_seq_and_kind() {
    use auditrail_tests::mysql::{Database, SinkToml};
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("checkpoint.key");
    let public = keys.path().join("checkpoint.pub");
    assert_eq!(run(&["keygen", "--out", path(&key)]).0, 0);
    let db = Database::create().await;
    let sink = SinkToml::new("warehouse", &db.url())
        .delivery("linger", "\"20ms\"")
        // Partitioned: the key takes received_time, so a forged row can
        // reuse a seq (what a key on (node, seq) alone would refuse).
        .partitions("days_ahead", "2");
    let tables = format!(
        "[integrity]\nkey_file = \"{}\"\ncheckpoint_every = 10\ncheckpoint_interval = \"1s\"\n\n{sink}",
        key.display()
    );
    let mut server = Server::start_setup(Setup {
        tables: &tables,
        ..Setup::default()
    });
    let url = server.grpc_url();
    tokio::task::spawn_blocking(move || emit(url, 40))
        .await
        .unwrap();
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
    let spool = server.spool_dir();
    let proofs = tempfile::tempdir().unwrap();
    let proof = proofs.path().join("seq7.json");
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
    let found = broken(&out);
    for want in [
        (5, "modified"),
        (12, "missing"),
        (20, "reordered"),
        (21, "reordered"),
        (30, "inserted"),
    ] {
        assert!(
            found.iter().any(|(s, k)| (*s, k.as_str()) == want),
            "{want:?} not found:\n{out}"
        );
    }
    // Nothing else is blamed on an intact event.
    for (seq, kind) in &found {
        assert!(
            [5, 12, 20, 21, 30].contains(seq),
            "seq {seq} ({kind}) was not changed:\n{out}"
        );
    }
    assert!(out.contains("1 missing"), "{out}");

    // A forged checkpoint signature fails.
    db.execute(
        "UPDATE audit_checkpoints SET note = REPLACE(note, 'previous ', 'previous 1') \
         ORDER BY tree_size LIMIT 1",
    )
    .await;
    let (code, out) = verify_sink(&config, &public);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("bad checkpoint"), "{out}");

    // The proof of seq 7 holds for its row, until the row changes.
    let check_row = || {
        run(&[
            "verify",
            "--proof",
            path(&proof),
            "--pubkey",
            path(&public),
            "--config",
            path(&config),
            "--sink",
            "warehouse",
        ])
    };
    let (code, stdout, stderr) = check_row();
    assert_eq!(code, 0, "{stdout}{stderr}");
    db.execute("UPDATE audit_events SET actor_id = 'mallory' WHERE seq = 7")
        .await;
    let (code, stdout, stderr) = check_row();
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.starts_with("INVALID: "), "{stdout}");
    // The proof alone, offline, still holds: it carries the event as signed.
    let (code, stdout, _) = run(&["verify", "--proof", path(&proof), "--pubkey", path(&public)]);
    assert_eq!(code, 0, "{stdout}");
}
