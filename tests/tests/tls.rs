//! TLS and mTLS on every listener, through the real Rust and Python OTel
//! SDKs configured for TLS, with certificates the tests generate: the
//! tenant from a client certificate, a certificate from an unknown CA
//! refused in the handshake, and certificates reloaded by SIGHUP.

use std::path::{Path, PathBuf};
use std::process::Command;

use auditrail_tests::sinks::{self, CountingExporter};
use auditrail_tests::tls::{ClientCert, TestPki};
use auditrail_tests::{eventually, python_venv, Server, Setup};
use opentelemetry::logs::{AnyValue, LogRecord as _, Severity};
use opentelemetry_otlp::{LogExporter, WithExportConfig, WithTonicConfig};
use serde_json::Value;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

const OPERATOR: &str = "operator-token-7c1d0e9f3b";
const ACME: &str = "acme-writer-token-0a9b8c7d6e";

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `[receiver.tls]` with the PKI's server certificate and `receiver_tls`'s
/// further keys, `[admin.tls]` too when `admin_tls`; acme writes with its
/// token.
fn tls_server(pki: &TestPki, receiver_tls: &str, admin_tls: bool) -> Server {
    let pair = format!(
        "cert_file = \"{}\"\nkey_file = \"{}\"\n",
        pki.server_cert.display(),
        pki.server_key.display()
    );
    let admin = if admin_tls {
        format!("[admin.tls]\n{pair}")
    } else {
        String::new()
    };
    Server::start_setup(Setup {
        admin: "token_env = \"OPERATOR_TOKEN\"",
        tables: &format!(
            "[receiver.tls]\n{pair}{receiver_tls}\n\n{admin}\n\
             [[receiver.tokens]]\ntenant = \"acme\"\ntoken_env = \"ACME_TOKEN\"\n"
        ),
        env: &[("OPERATOR_TOKEN", OPERATOR), ("ACME_TOKEN", ACME)],
        ..Setup::default()
    })
}

fn grpc_tls(pki: &TestPki, client: Option<&ClientCert>) -> ClientTlsConfig {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&pki.ca)))
        .domain_name("localhost");
    if let Some(client) = client {
        tls = tls.identity(Identity::from_pem(read(&client.cert), read(&client.key)));
    }
    tls
}

/// Emits one event (body `body`) through `exporter` with the real Rust SDK;
/// whether the export succeeded.
fn emit(exporter: LogExporter, body: &'static str) -> bool {
    let (exporter, failures) = CountingExporter::new(exporter);
    sinks::emit_in_span(exporter, |record| {
        record.set_severity_number(Severity::Info);
        record.set_body(AnyValue::from(body));
        record.add_attribute("user.id", "alice");
    });
    failures.load(std::sync::atomic::Ordering::SeqCst) == 0
}

/// Emits one event with the Rust SDK's gRPC exporter over TLS to
/// `localhost:port`; whether the export succeeded.
fn emit_grpc(port: u16, tls: ClientTlsConfig, token: Option<&str>, body: &'static str) -> bool {
    let mut metadata = tonic::metadata::MetadataMap::new();
    if let Some(token) = token {
        metadata.insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    let exporter = LogExporter::builder()
        .with_tonic()
        .with_endpoint(format!("https://localhost:{port}"))
        .with_tls_config(tls)
        .with_metadata(metadata)
        .build()
        .unwrap();
    emit(exporter, body)
}

/// The Python SDK's exporter over TLS (`protocol` grpc or http), trusting
/// the PKI's CA, with `client` for mTLS and `token` as a bearer token.
fn python_send(
    server: &Server,
    pki: &TestPki,
    protocol: &str,
    client: Option<&ClientCert>,
    token: Option<&str>,
    body: &str,
) -> std::process::Output {
    let endpoint = match protocol {
        "grpc" => format!("https://localhost:{}", server.grpc.port()),
        _ => format!("https://localhost:{}/v1/logs", server.http.port()),
    };
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("python/send_audit.py");
    let mut command = Command::new(python_venv());
    command
        .arg(script)
        .args(["--protocol", protocol, "--endpoint", &endpoint])
        .args([
            "--service",
            "dify-api",
            "--actor",
            "bob",
            "--event",
            "dataset.read",
        ])
        .args(["--body", body])
        // requests lets these override the exporter's own CA file (its
        // issue 3829); this machine's environment sets them.
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .envs(pki.python_env(client));
    if let Some(token) = token {
        command.args(["--header", &format!("authorization=Bearer {token}")]);
    }
    command.output().expect("running the Python client")
}

/// (tenant, body) of every stored event, in seq order.
async fn stored(server: &Server) -> Vec<(String, String)> {
    server
        .events_as(OPERATOR, "limit=0")
        .await
        .iter()
        .map(|e: &Value| {
            (
                e["tenant"].as_str().unwrap().to_owned(),
                e["body"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
    expected
        .iter()
        .map(|(t, b)| (t.to_string(), b.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn otlp_over_tls_from_the_rust_and_python_sdks() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let server = tls_server(&pki, "", false);
    let port = server.grpc.port();
    let tls = grpc_tls(&pki, None);
    // (The Rust SDK's HTTP exporter is left to the Python one here: its
    // reqwest 0.13 client would need a TLS stack of its own in the tests.)
    let grpc_ok =
        tokio::task::spawn_blocking(move || emit_grpc(port, tls, Some(ACME), "rust over grpc+tls"))
            .await
            .unwrap();
    assert!(grpc_ok, "the Rust SDK's export over TLS failed");
    for protocol in ["grpc", "http"] {
        let body = format!("python over {protocol}+tls");
        let out = python_send(&server, &pki, protocol, None, Some(ACME), &body);
        assert!(
            out.status.success(),
            "Python over {protocol}+TLS: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(
        stored(&server).await,
        pairs(&[
            ("acme", "rust over grpc+tls"),
            ("acme", "python over grpc+tls"),
            ("acme", "python over http+tls"),
        ])
    );
    // Plain text to a TLS listener gets nowhere, and stores nothing.
    let plain = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{}/v1/logs", server.http.port()))
        .header("content-type", "application/json")
        .header("authorization", format!("Bearer {ACME}"))
        .body(r#"{"resourceLogs":[{"scopeLogs":[{"logRecords":[{"body":{"stringValue":"plain"}}]}]}]}"#)
        .send()
        .await;
    assert!(
        plain.is_err(),
        "plain HTTP answered on a TLS listener: {plain:?}"
    );
    assert_eq!(stored(&server).await.len(), 3);
}

/// mTLS: the tenant comes from the client certificate's CN when no token
/// is sent; a certificate signed by an unknown CA fails the handshake, and
/// so does none at all.
#[tokio::test(flavor = "multi_thread")]
async fn client_certificates_name_tenants_and_unknown_cas_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let server = tls_server(
        &pki,
        &format!(
            "client_ca_file = \"{}\"\ntenant_from = \"common_name\"\n",
            pki.ca.display()
        ),
        false,
    );
    let globex = pki.client("globex", "globex", &[]);
    let unmapped = pki.client("bad", "not a tenant name", &[]);
    let port = server.grpc.port();
    let (with_cert, with_token, unknown_ca, no_cert, bad_name) = {
        let configs = (
            grpc_tls(&pki, Some(&globex)),
            grpc_tls(&pki, Some(&globex)),
            grpc_tls(&pki, Some(&pki.unknown_client)),
            grpc_tls(&pki, None),
            grpc_tls(&pki, Some(&unmapped)),
        );
        tokio::task::spawn_blocking(move || {
            (
                emit_grpc(port, configs.0, None, "globex by its certificate"),
                emit_grpc(
                    port,
                    configs.1,
                    Some(ACME),
                    "acme's token on globex's connection",
                ),
                emit_grpc(port, configs.2, None, "intruder"),
                emit_grpc(port, configs.3, Some(ACME), "no certificate"),
                emit_grpc(port, configs.4, None, "unmapped certificate"),
            )
        })
        .await
        .unwrap()
    };
    assert!(
        with_cert,
        "a client certificate from the CA names its tenant"
    );
    assert!(with_token, "a token, when sent, decides the tenant");
    assert!(!unknown_ca, "a certificate from an unknown CA must fail");
    assert!(!no_cert, "client certificates are required");
    assert!(!bad_name, "a CN that is no tenant name must be refused");
    let out = python_send(
        &server,
        &pki,
        "http",
        Some(&globex),
        None,
        "python with a certificate",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = python_send(
        &server,
        &pki,
        "grpc",
        Some(&pki.unknown_client),
        None,
        "python intruder",
    );
    assert!(
        !out.status.success(),
        "the Python SDK got in with an unknown CA's certificate"
    );
    assert_eq!(
        stored(&server).await,
        pairs(&[
            ("globex", "globex by its certificate"),
            ("acme", "acme's token on globex's connection"),
            ("globex", "python with a certificate"),
        ])
    );
    assert!(
        server
            .metric(r#"auditrail_tls_handshake_failures_total{listener="otlp_grpc",reason="bad_certificate"}"#)
            .await
            >= 2.0,
        "{}",
        server.metrics_text().await
    );
}

/// The admin API over TLS for the CLI, and certificates rotated by SIGHUP
/// without a restart: new connections get the new certificate.
#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_serves_tls_and_certificates_reload_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let pki = TestPki::generate(dir.path());
    let server = tls_server(&pki, "", true);
    let admin = format!("https://localhost:{}", server.admin.port());
    let query = |ca: &Path| {
        Command::new(auditrail_tests::binary())
            .args([
                "query",
                "--admin",
                &admin,
                "--token-env",
                "T",
                "--format",
                "json",
            ])
            .arg("--ca-file")
            .arg(ca)
            .env("T", OPERATOR)
            .output()
            .unwrap()
    };
    let ok = query(&pki.ca);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    // A second PKI: its own CA and server certificate, copied over the files
    // the config names.
    let next_dir = tempfile::tempdir().unwrap();
    let next = TestPki::generate(next_dir.path());
    assert!(
        !query(&next.ca).status.success(),
        "the old certificate is still served"
    );
    std::fs::copy(&next.server_cert, &pki.server_cert).unwrap();
    std::fs::copy(&next.server_key, &pki.server_key).unwrap();
    server.sighup();
    eventually("the new certificate is served after SIGHUP", || async {
        query(&next.ca).status.success()
    })
    .await;
    assert!(
        !query(&pki.ca).status.success(),
        "the old CA no longer verifies"
    );
    // The OTLP listeners reloaded too.
    let port = server.grpc.port();
    let tls = grpc_tls(&next, None);
    let sent =
        tokio::task::spawn_blocking(move || emit_grpc(port, tls, Some(ACME), "after reload"))
            .await
            .unwrap();
    assert!(sent);
    // A broken certificate file on reload keeps the one in force.
    std::fs::write(&pki.server_key, "not a key").unwrap();
    server.sighup();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(query(&next.ca).status.success());
    assert!(server.log().contains("reload failed"), "{}", server.log());
    // Counted: the gRPC and HTTP listeners' and the admin listener's.
    let metrics = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&read(&next.ca)).unwrap())
        .build()
        .unwrap()
        .get(format!("{admin}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l == "auditrail_reload_errors_total 3"),
        "{metrics}"
    );
}
