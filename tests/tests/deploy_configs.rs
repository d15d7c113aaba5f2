//! The deployment files, checked without a Collector, Docker or Grafana
//! (none can be installed here): `collector-config/*.yaml`,
//! `docker-compose.yml`, the `Dockerfile`, `deploy/` (auditrail's config in
//! the compose, Tempo, Prometheus, Grafana's provisioning and dashboard).
//!
//! - The Collector configs are parsed and checked as the Collector would
//!   refuse them (components used but not defined, extensions not enabled),
//!   and for what they promise (the audit route's persistent queue, endless
//!   retry, TLS and token); the gateway's routing conditions are evaluated
//!   (src/ottl.rs) on the recorded samples in `tests/fixtures/collector/`.
//! - The compose file's services, ports, volumes and environment must agree
//!   with the configs they mount.
//! - The real binary runs auditrail's config from the compose (addresses
//!   made local, TLS files from `deploy/gen-certs.sh`) against the real
//!   MariaDB and ClickHouse 18.16, takes the audit samples over OTLP/HTTPS,
//!   and the dashboard's SQL runs on what its ClickHouse sink stored, and
//!   its PromQL names only metrics the server exports.
//!
//! Each check is a function returning the problems it finds, and each has a
//! test that breaks a config on purpose and sees the check complain.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auditrail_tests::ottl;
use auditrail_tests::{clickhouse, eventually_within, free_port, mysql, Server};
use serde_json::{json, Value};

fn repo() -> PathBuf {
    clickhouse::repo_root()
}

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// A YAML file as JSON values (every key here is a string).
fn yaml(path: &str) -> Value {
    serde_yaml_ng::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn json_file(path: &str) -> Value {
    serde_json::from_str(&read(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn auditrail_toml() -> toml::Table {
    read("deploy/auditrail.toml")
        .parse()
        .expect("deploy/auditrail.toml is TOML")
}

/// The strings of a YAML/JSON list (empty when absent).
fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .map(|l| {
            l.iter()
                .map(|v| v.as_str().expect("a name").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A change that breaks a config on purpose, and the words of the
/// complaint the check must make about it.
type Breakage = (&'static str, fn(&mut Value));

/// `type/name` -> `type`.
fn kind(id: &str) -> &str {
    id.split('/').next().unwrap()
}

/// The keys of a YAML map (empty when absent).
fn keys(map: &Value) -> BTreeSet<String> {
    map.as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// `host:port` -> (host, port).
fn host_port(endpoint: &str) -> (String, u16) {
    let endpoint = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://");
    let (host, port) = endpoint
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("{endpoint:?} has no port"));
    let port = port.trim_end_matches('/');
    (
        host.to_owned(),
        port.parse()
            .unwrap_or_else(|e| panic!("{endpoint:?}: port {e}")),
    )
}

fn port_of(addr: &str) -> u16 {
    host_port(addr).1
}

/// The ports an auditrail config listens on for clients: OTLP/gRPC,
/// OTLP/HTTP and the admin API, each with its key.
fn listener_ports(config: &toml::Table) -> Vec<(&'static str, u16)> {
    [
        ("[receiver] grpc_addr", &config["receiver"]["grpc_addr"]),
        ("[receiver] http_addr", &config["receiver"]["http_addr"]),
        ("[admin] addr", &config["admin"]["addr"]),
    ]
    .into_iter()
    .map(|(key, addr)| (key, port_of(addr.as_str().expect("an address"))))
    .collect()
}

// ---------------------------------------------------------------------------
// The Collector configs.

/// What the Collector would refuse at start-up, or silently not do: a
/// pipeline naming a component that is not defined, a connector not used on
/// both sides, an extension used but not enabled, a route to a pipeline that
/// does not exist.
fn collector_problems(config: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let defined = |section: &str| keys(&config[section]);
    let (receivers, processors, exporters, connectors, extensions) = (
        defined("receivers"),
        defined("processors"),
        defined("exporters"),
        defined("connectors"),
        defined("extensions"),
    );
    let enabled: BTreeSet<String> = names(&config["service"]["extensions"])
        .into_iter()
        .collect();
    let pipelines = config["service"]["pipelines"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    if pipelines.is_empty() {
        problems.push("no pipelines".into());
    }
    let mut connector_in = BTreeSet::new();
    let mut connector_out = BTreeSet::new();
    for (name, pipeline) in &pipelines {
        let signal = kind(name);
        if !["logs", "traces", "metrics"].contains(&signal) {
            problems.push(format!("pipeline {name}: unknown signal {signal}"));
        }
        for r in names(&pipeline["receivers"]) {
            if connectors.contains(&r) {
                connector_out.insert(r);
            } else if !receivers.contains(&r) {
                problems.push(format!("pipeline {name}: receiver {r} is not defined"));
            }
        }
        for p in names(&pipeline["processors"]) {
            if !processors.contains(&p) {
                problems.push(format!("pipeline {name}: processor {p} is not defined"));
            }
        }
        for e in names(&pipeline["exporters"]) {
            if connectors.contains(&e) {
                connector_in.insert(e);
            } else if !exporters.contains(&e) {
                problems.push(format!("pipeline {name}: exporter {e} is not defined"));
            }
        }
        if names(&pipeline["receivers"]).is_empty() || names(&pipeline["exporters"]).is_empty() {
            problems.push(format!("pipeline {name} needs receivers and exporters"));
        }
    }
    for c in &connectors {
        if !connector_in.contains(c) || !connector_out.contains(c) {
            problems.push(format!(
                "connector {c} must be an exporter of one pipeline and a receiver of another"
            ));
        }
        for p in names(&config["connectors"][c]["default_pipelines"])
            .into_iter()
            .chain(
                config["connectors"][c]["table"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|route| names(&route["pipelines"])),
            )
        {
            if !pipelines.contains_key(&p) {
                problems.push(format!(
                    "connector {c} routes to {p}, which is not a pipeline"
                ));
            } else if !names(&pipelines[&p]["receivers"]).contains(c) {
                problems.push(format!(
                    "connector {c} routes to {p}, which does not receive from it"
                ));
            }
        }
    }
    for e in &enabled {
        if !extensions.contains(e) {
            problems.push(format!("service.extensions: {e} is not defined"));
        }
    }
    // Extensions that components use: queue storage and authenticators.
    for (section, components) in [("exporters", &exporters), ("receivers", &receivers)] {
        for c in components {
            let component = &config[section][c];
            let used = [
                component["sending_queue"]["storage"].as_str(),
                component["auth"]["authenticator"].as_str(),
            ];
            for e in used.into_iter().flatten() {
                if !extensions.contains(e) {
                    problems.push(format!(
                        "{section}.{c} uses extension {e}, which is not defined"
                    ));
                } else if !enabled.contains(e) {
                    problems.push(format!(
                        "{section}.{c} uses extension {e}, which is not in service.extensions"
                    ));
                }
            }
        }
    }
    for e in &extensions {
        if !enabled.contains(e) {
            problems.push(format!("extension {e} is defined but not enabled"));
        }
    }
    problems
}

/// What an exporter that must never lose data has to have: a persistent
/// queue on an fsync'ing file_storage, retries that never give up, and a
/// queue that blocks rather than drops when full.
fn durable_exporter_problems(config: &Value, exporter: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let e = &config["exporters"][exporter];
    if !["otlp", "otlp_grpc"].contains(&kind(exporter)) {
        problems.push(format!("{exporter} is not the OTLP/gRPC exporter"));
    }
    let queue = &e["sending_queue"];
    if queue["enabled"] == json!(false) {
        problems.push(format!("{exporter}: sending_queue is disabled"));
    }
    match queue["storage"].as_str() {
        Some(storage) if kind(storage) == "file_storage" => {
            if config["extensions"][storage]["fsync"] != json!(true) {
                problems.push(format!("{storage}: fsync is not true"));
            }
        }
        other => problems.push(format!(
            "{exporter}: sending_queue.storage is {other:?}, not a file_storage extension"
        )),
    }
    if queue["block_on_overflow"] != json!(true) {
        problems.push(format!(
            "{exporter}: a full queue would drop (block_on_overflow)"
        ));
    }
    let retry = &e["retry_on_failure"];
    if retry["enabled"] == json!(false) {
        problems.push(format!("{exporter}: retry_on_failure is disabled"));
    }
    let forever = matches!(&retry["max_elapsed_time"], Value::Number(n) if n.as_u64() == Some(0))
        || matches!(retry["max_elapsed_time"].as_str(), Some("0" | "0s"));
    if !forever {
        problems.push(format!(
            "{exporter}: retry_on_failure.max_elapsed_time is {}, not 0 (retry forever)",
            retry["max_elapsed_time"]
        ));
    }
    problems
}

/// The pipelines the gateway's routing connector sends audit events to.
fn routing_connector(gateway: &Value) -> (String, Value) {
    let connectors = gateway["connectors"].as_object().expect("connectors");
    let (name, connector) = connectors
        .iter()
        .find(|(name, _)| kind(name) == "routing")
        .expect("a routing connector in the gateway");
    (name.clone(), connector.clone())
}

fn audit_pipelines(connector: &Value) -> BTreeSet<String> {
    connector["table"]
        .as_array()
        .expect("a routing table")
        .iter()
        .flat_map(|route| names(&route["pipelines"]))
        .collect()
}

/// What the audit route promises: durable delivery to auditrail's gRPC
/// port with a token over TLS, no batch processor in memory on the way, and
/// nothing of it on the default route.
fn audit_route_problems(gateway: &Value, auditrail_grpc: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let (_, connector) = routing_connector(gateway);
    let audit = audit_pipelines(&connector);
    if audit.is_empty() {
        problems.push("the routing table routes nothing".into());
    }
    let pipelines = &gateway["service"]["pipelines"];
    let mut audit_exporters = BTreeSet::new();
    for p in &audit {
        if names(&pipelines[p]["processors"])
            .iter()
            .any(|p| kind(p) == "batch")
        {
            problems.push(format!(
                "{p}: a batch processor holds acknowledged audit records in memory"
            ));
        }
        let exporters = names(&pipelines[p]["exporters"]);
        if exporters.is_empty() {
            problems.push(format!("{p} exports nowhere"));
        }
        audit_exporters.extend(exporters);
    }
    for p in names(&connector["default_pipelines"]) {
        if audit.contains(&p) {
            problems.push(format!("default pipeline {p} is also an audit pipeline"));
        }
        for e in names(&pipelines[&p]["exporters"]) {
            if audit_exporters.contains(&e) {
                problems.push(format!("the default route also exports to {e}"));
            }
        }
    }
    let (want_host, want_port) = host_port(auditrail_grpc);
    for exporter in &audit_exporters {
        problems.extend(durable_exporter_problems(gateway, exporter));
        let e = &gateway["exporters"][exporter];
        let endpoint = e["endpoint"].as_str().unwrap_or_default();
        if host_port(endpoint) != (want_host.clone(), want_port) {
            problems.push(format!(
                "{exporter} sends to {endpoint}, not auditrail's {want_host}:{want_port}"
            ));
        }
        match e["auth"]["authenticator"].as_str() {
            Some(a) if kind(a) == "bearertokenauth" => {}
            other => problems.push(format!(
                "{exporter}: authenticator {other:?} is not bearertokenauth (auditrail's writer token)"
            )),
        }
        // The extension's gRPC credentials refuse a plaintext connection.
        if e["tls"]["insecure"] == json!(true) || e["tls"]["ca_file"].as_str().is_none() {
            problems.push(format!("{exporter}: the token needs TLS with a ca_file"));
        }
    }
    problems
}

/// Records of an OTLP/JSON request with their resources.
fn records(request: &Value) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for rl in request["resourceLogs"].as_array().expect("resourceLogs") {
        for sl in rl["scopeLogs"].as_array().expect("scopeLogs") {
            for record in sl["logRecords"].as_array().expect("logRecords") {
                out.push((record.clone(), rl["resource"].clone()));
            }
        }
    }
    out
}

/// Every sample the routing connector sends the wrong way.
fn routing_mistakes(connector: &Value) -> Vec<String> {
    let audit = audit_pipelines(connector);
    let default: BTreeSet<String> = names(&connector["default_pipelines"]).into_iter().collect();
    let mut mistakes = Vec::new();
    for (file, want) in [
        ("tests/fixtures/collector/audit-events.json", &audit),
        ("tests/fixtures/collector/other-logs.json", &default),
    ] {
        let samples = records(&json_file(file));
        assert!(samples.len() >= 4, "{file} has too few samples");
        for (record, resource) in samples {
            let got: BTreeSet<String> = ottl::route(connector, &record, &resource)
                .into_iter()
                .collect();
            if &got != want {
                mistakes.push(format!("{file}: {record} went to {got:?}, not {want:?}"));
            }
        }
    }
    mistakes
}

fn gateway() -> Value {
    yaml("collector-config/gateway.yaml")
}

fn agent() -> Value {
    yaml("collector-config/agent.yaml")
}

/// auditrail's OTLP/gRPC address as the Collector reaches it in the compose:
/// the service name and the port of `[receiver] grpc_addr`.
fn auditrail_grpc_in_compose() -> String {
    let config = auditrail_toml();
    let grpc = config["receiver"]["grpc_addr"].as_str().expect("grpc_addr");
    format!("{}:{}", auditrail_service(), port_of(grpc))
}

/// The compose service built from the Dockerfile.
fn auditrail_service() -> String {
    let compose = yaml("docker-compose.yml");
    let services = compose["services"].as_object().expect("services");
    let built: Vec<&String> = services
        .iter()
        .filter(|(_, s)| !s["build"].is_null())
        .map(|(name, _)| name)
        .collect();
    assert_eq!(built.len(), 1, "one service is built from the Dockerfile");
    built[0].clone()
}

/// The compose service that runs the Collector with `config_file`.
fn collector_service(config_file: &str) -> String {
    let compose = yaml("docker-compose.yml");
    compose["services"]
        .as_object()
        .unwrap()
        .iter()
        .find(|(_, s)| {
            mounts(s)
                .iter()
                .any(|(source, _)| source == &format!("./{config_file}"))
        })
        .map(|(name, _)| name.clone())
        .unwrap_or_else(|| panic!("no compose service mounts {config_file}"))
}

#[test]
fn the_collector_configs_define_what_their_pipelines_use() {
    for (file, config) in [("gateway.yaml", gateway()), ("agent.yaml", agent())] {
        let problems = collector_problems(&config);
        assert!(problems.is_empty(), "{file}:\n{}", problems.join("\n"));
    }
}

#[test]
fn the_structure_check_finds_what_the_collector_would_refuse() {
    let mut broken = gateway();
    broken["service"]["extensions"] = json!(["health_check"]);
    let problems = collector_problems(&broken);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("not in service.extensions")),
        "{problems:?}"
    );
    let mut broken = gateway();
    broken["service"]["pipelines"]["logs/audit"]["exporters"] = json!(["otlp_grpc/audit"]);
    assert!(collector_problems(&broken)
        .iter()
        .any(|p| p.contains("exporter otlp_grpc/audit is not defined")));
    let mut broken = gateway();
    broken["service"]["pipelines"]
        .as_object_mut()
        .unwrap()
        .remove("logs/default");
    assert!(collector_problems(&broken)
        .iter()
        .any(|p| p.contains("routes to logs/default, which is not a pipeline")));
}

#[test]
fn the_gateway_sends_audit_events_to_auditrail_durably() {
    let problems = audit_route_problems(&gateway(), &auditrail_grpc_in_compose());
    assert!(
        problems.is_empty(),
        "gateway.yaml:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_audit_route_check_finds_a_route_that_can_lose_events() {
    let target = auditrail_grpc_in_compose();
    let exporter = "otlp_grpc/auditrail";
    let breakages: [Breakage; 6] = [
        ("max_elapsed_time", |g| {
            g["exporters"]["otlp_grpc/auditrail"]["retry_on_failure"]["max_elapsed_time"] =
                json!("300s")
        }),
        ("not a file_storage", |g| {
            g["exporters"]["otlp_grpc/auditrail"]["sending_queue"]
                .as_object_mut()
                .unwrap()
                .remove("storage");
        }),
        ("fsync", |g| {
            g["extensions"]["file_storage/audit_queue"]["fsync"] = json!(false)
        }),
        ("not auditrail's", |g| {
            g["exporters"]["otlp_grpc/auditrail"]["endpoint"] = json!("tempo:4317")
        }),
        ("batch processor", |g| {
            g["service"]["pipelines"]["logs/audit"]["processors"] = json!(["batch"])
        }),
        ("needs TLS", |g| {
            g["exporters"]["otlp_grpc/auditrail"]["tls"] = json!({"insecure": true})
        }),
    ];
    for (complaint, breakage) in breakages {
        let mut broken = gateway();
        assert!(!broken["exporters"][exporter].is_null());
        breakage(&mut broken);
        let problems = audit_route_problems(&broken, &target);
        assert!(
            problems.iter().any(|p| p.contains(complaint)),
            "breaking {complaint:?} went unnoticed: {problems:?}"
        );
    }
}

#[test]
fn the_gateway_routes_the_recorded_samples() {
    let (name, connector) = routing_connector(&gateway());
    let mistakes = routing_mistakes(&connector);
    assert!(mistakes.is_empty(), "{name}:\n{}", mistakes.join("\n"));
}

#[test]
fn a_wrong_routing_condition_misroutes_a_sample() {
    let (_, connector) = routing_connector(&gateway());
    // Every named event, browser events included.
    let mut too_wide = connector.clone();
    too_wide["table"][0]["condition"] = json!(r#"event_name != """#);
    assert!(!routing_mistakes(&too_wide).is_empty());
    // Without the audit.* route, an event with no name but an audit.target.
    let mut too_narrow = connector.clone();
    too_narrow["table"].as_array_mut().unwrap().pop();
    assert!(!routing_mistakes(&too_narrow).is_empty());
    // A namespace without its dot: `imagegen.queue_depth` would match.
    let mut no_dot = connector.clone();
    no_dot["table"][0]["condition"] =
        json!(r#"IsMatch(event_name, "^(user|image|history|model_config|dataset|api|admin)")"#);
    assert!(!routing_mistakes(&no_dot).is_empty());
    // OTTL the evaluator does not know is refused, not passed.
    let mut unknown = connector;
    unknown["table"][0]["condition"] = json!(r#"HasPrefix(event_name, "image.")"#);
    let refused = std::panic::catch_unwind(|| routing_mistakes(&unknown));
    assert!(refused.is_err(), "an OTTL function it cannot check passed");
}

#[test]
fn the_agent_forwards_everything_to_the_gateway() {
    let agent = agent();
    let gateway = gateway();
    let gateway_grpc = gateway["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        .as_str()
        .expect("the gateway's OTLP/gRPC receiver");
    let want = (
        collector_service("collector-config/gateway.yaml"),
        port_of(gateway_grpc),
    );
    let pipelines = agent["service"]["pipelines"].as_object().unwrap();
    for signal in ["logs", "traces", "metrics"] {
        let pipeline = pipelines
            .iter()
            .find(|(name, _)| kind(name) == signal)
            .unwrap_or_else(|| panic!("the agent has no {signal} pipeline"))
            .1;
        let exporters = names(&pipeline["exporters"]);
        assert_eq!(exporters.len(), 1, "{signal}: {exporters:?}");
        let exporter = &exporters[0];
        let endpoint = agent["exporters"][exporter]["endpoint"].as_str().unwrap();
        assert_eq!(host_port(endpoint), want, "{signal} goes to {endpoint}");
        let problems = durable_exporter_problems(&agent, exporter);
        assert!(problems.is_empty(), "agent.yaml:\n{}", problems.join("\n"));
        assert!(
            !names(&pipeline["processors"])
                .iter()
                .any(|p| kind(p) == "batch"),
            "{signal}: a batch processor before the persistent queue"
        );
    }
}

// ---------------------------------------------------------------------------
// docker-compose.yml and the files it mounts.

/// `source:target[:mode]` volume entries of a service.
fn mounts(service: &Value) -> Vec<(String, String)> {
    names(&service["volumes"])
        .iter()
        .map(|v| {
            let mut parts = v.split(':');
            (
                parts.next().unwrap().to_owned(),
                parts.next().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// Published ports: (host address, host port, container port).
fn published(service: &Value) -> Vec<(String, u16, u16)> {
    names(&service["ports"])
        .iter()
        .map(|p| {
            let parts: Vec<&str> = p.split(':').collect();
            assert_eq!(parts.len(), 3, "{p}: publish as ADDRESS:HOST:CONTAINER");
            (
                parts[0].to_owned(),
                parts[1].parse().unwrap(),
                parts[2].parse().unwrap(),
            )
        })
        .collect()
}

/// The environment variable names a compose service sets.
fn environment(service: &Value) -> BTreeSet<String> {
    keys(&service["environment"])
}

/// Environment variables a config text reads: `*_env = "VAR"`, `${VAR}`
/// and the Collector's `${env:VAR}`.
fn variables_read(text: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    let env_key = regex::Regex::new(r#"(?m)^\s*\w+_env\s*=\s*"(\w+)""#).unwrap();
    let reference = regex::Regex::new(r"\$\{(?:env:)?(\w+)\}").unwrap();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        vars.extend(env_key.captures_iter(line).map(|c| c[1].to_owned()));
        vars.extend(reference.captures_iter(line).map(|c| c[1].to_owned()));
    }
    vars
}

/// Environment variables a Grafana provisioning file reads: `$VAR` and
/// `${VAR}`, where `$$` is a literal `$`.
fn grafana_variables(text: &str) -> BTreeSet<String> {
    let text: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("$$", "");
    regex::Regex::new(r"\$\{?(\w+)\}?")
        .unwrap()
        .captures_iter(&text)
        .map(|c| c[1].to_owned())
        .collect()
}

/// Whether `path` lies under one of the service's mount targets.
fn mounted(service: &Value, path: &str) -> bool {
    mounts(service)
        .iter()
        .any(|(_, target)| !target.is_empty() && Path::new(path).starts_with(target))
}

/// Everything in the compose file that does not fit the files it runs.
fn compose_problems(compose: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let services = compose["services"].as_object().expect("services");
    let volumes = keys(&compose["volumes"]);
    let mut host_ports = BTreeMap::new();
    for (name, s) in services {
        if s["image"].is_null() && s["build"].is_null() {
            problems.push(format!("{name}: neither image nor build"));
        }
        for (source, target) in mounts(s) {
            if let Some(path) = source.strip_prefix("./") {
                if !repo().join(path).exists() {
                    problems.push(format!("{name}: mounts {source}, which does not exist"));
                }
            } else if !volumes.contains(&source) {
                problems.push(format!("{name}: volume {source} is not declared"));
            }
            if target.is_empty() {
                problems.push(format!("{name}: volume {source} has no target"));
            }
        }
        for dependency in keys(&s["depends_on"])
            .into_iter()
            .chain(names(&s["depends_on"]))
        {
            if !services.contains_key(&dependency) {
                problems.push(format!("{name}: depends on {dependency}, not a service"));
            }
        }
        for (address, host, _) in published(s) {
            if address != "127.0.0.1" {
                problems.push(format!("{name}: port {host} published on {address}"));
            }
            if let Some(other) = host_ports.insert(host, name.clone()) {
                problems.push(format!("host port {host}: {other} and {name}"));
            }
        }
    }

    // auditrail: built here, its config where the image's CMD reads it,
    // its listeners published, its spool and TLS files mounted.
    let auditrail_name = auditrail_service();
    let auditrail = &services[&auditrail_name];
    let config = auditrail_toml();
    if !mounts(auditrail).contains(&(
        "./deploy/auditrail.toml".into(),
        "/etc/auditrail/auditrail.toml".into(),
    )) {
        problems.push(
            "auditrail: deploy/auditrail.toml is not its /etc/auditrail/auditrail.toml".into(),
        );
    }
    let container_ports: BTreeSet<u16> = published(auditrail).iter().map(|p| p.2).collect();
    for (key, port) in listener_ports(&config) {
        if !container_ports.contains(&port) {
            problems.push(format!("auditrail: {key} port {port} is not published"));
        }
    }
    for path in [
        config["spool"]["dir"].as_str().unwrap(),
        config["receiver"]["tls"]["cert_file"].as_str().unwrap(),
        config["receiver"]["tls"]["key_file"].as_str().unwrap(),
    ] {
        if !mounted(auditrail, path) {
            problems.push(format!("auditrail: {path} is on no volume"));
        }
    }
    let set = environment(auditrail);
    for var in variables_read(&read("deploy/auditrail.toml")) {
        if !set.contains(&var) {
            problems.push(format!(
                "auditrail: the config reads ${var}, which is not set"
            ));
        }
    }
    for sink in config["sinks"].as_array().unwrap() {
        let url = sink["url"].as_str().unwrap();
        let authority = url.split("://").nth(1).unwrap().split('/').next().unwrap();
        let (host, _) = host_port(authority.rsplit('@').next().unwrap());
        if !services.contains_key(&host) {
            problems.push(format!("sink {}: {host} is not a service", sink["name"]));
        } else if !keys(&auditrail["depends_on"]).contains(&host) {
            problems.push(format!("auditrail does not wait for {host}"));
        }
    }

    // The Collector: its config mounted, its receivers published, its queue
    // and CA on volumes, its token set; the services it sends to exist.
    let collector_name = collector_service("collector-config/gateway.yaml");
    let collector = &services[&collector_name];
    let gateway = gateway();
    let collector_ports: BTreeSet<u16> = published(collector).iter().map(|p| p.2).collect();
    for protocol in ["grpc", "http"] {
        let endpoint = gateway["receivers"]["otlp"]["protocols"][protocol]["endpoint"]
            .as_str()
            .unwrap();
        if !collector_ports.contains(&port_of(endpoint)) {
            problems.push(format!(
                "the Collector's OTLP/{protocol} port is not published"
            ));
        }
    }
    let config_mount = mounts(collector)
        .into_iter()
        .find(|(source, _)| source == "./collector-config/gateway.yaml")
        .unwrap()
        .1;
    if !names(&collector["command"])
        .iter()
        .any(|c| c == &format!("--config={config_mount}"))
    {
        problems.push(format!(
            "the Collector does not run --config={config_mount}"
        ));
    }
    for (name, extension) in gateway["extensions"].as_object().unwrap() {
        if kind(name) == "file_storage"
            && !mounted(collector, extension["directory"].as_str().unwrap())
        {
            problems.push(format!("{name}: its directory is on no volume"));
        }
    }
    for (name, exporter) in gateway["exporters"].as_object().unwrap() {
        if let Some(ca) = exporter["tls"]["ca_file"].as_str() {
            if !mounted(collector, ca) {
                problems.push(format!("{name}: {ca} is on no volume"));
            }
        }
        if let Some(endpoint) = exporter["endpoint"].as_str() {
            let (host, _) = host_port(endpoint);
            if !services.contains_key(&host) {
                problems.push(format!("{name} sends to {host}, not a compose service"));
            }
        }
    }
    let set = environment(collector);
    for var in variables_read(&read("collector-config/gateway.yaml")) {
        if !set.contains(&var) {
            problems.push(format!(
                "the Collector reads ${{env:{var}}}, which is not set"
            ));
        }
    }
    // Tempo takes what the gateway's trace exporter sends.
    let tempo = yaml("deploy/tempo.yaml");
    let tempo_grpc = tempo["distributor"]["receivers"]["otlp"]["protocols"]["grpc"]["endpoint"]
        .as_str()
        .unwrap();
    let trace_exporters: Vec<String> = gateway["service"]["pipelines"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| kind(name) == "traces")
        .flat_map(|(_, p)| names(&p["exporters"]))
        .collect();
    for e in trace_exporters {
        let endpoint = gateway["exporters"][&e]["endpoint"]
            .as_str()
            .unwrap_or_default();
        if host_port(endpoint) != ("tempo".to_owned(), port_of(tempo_grpc)) {
            problems.push(format!(
                "{e} sends traces to {endpoint}, not Tempo's OTLP port"
            ));
        }
    }

    // Prometheus scrapes auditrail's metrics_addr.
    let prometheus = yaml("deploy/prometheus.yml");
    let metrics_port = port_of(config["admin"]["metrics_addr"].as_str().unwrap());
    let targets: Vec<String> = prometheus["scrape_configs"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|job| {
            job["static_configs"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|sc| names(&sc["targets"]))
        .collect();
    if !targets.contains(&format!("{auditrail_name}:{metrics_port}")) {
        problems.push(format!(
            "Prometheus scrapes {targets:?}, not {auditrail_name}:{metrics_port} (metrics_addr)"
        ));
    }

    // Grafana: its data sources reach the services that hold the data.
    let grafana = services
        .iter()
        .find(|(_, s)| {
            s["image"]
                .as_str()
                .unwrap_or_default()
                .starts_with("grafana/grafana")
        })
        .map(|(_, s)| s)
        .expect("a grafana service");
    let datasources = yaml("deploy/grafana/provisioning/datasources/datasources.yaml");
    for ds in datasources["datasources"].as_array().unwrap() {
        let (host, port) = match ds["type"].as_str().unwrap() {
            "grafana-clickhouse-datasource" => (
                ds["jsonData"]["host"].as_str().unwrap().to_owned(),
                ds["jsonData"]["port"].as_u64().unwrap() as u16,
            ),
            _ => host_port(ds["url"].as_str().unwrap()),
        };
        let want = match ds["type"].as_str().unwrap() {
            "tempo" => (
                "tempo".to_owned(),
                tempo["server"]["http_listen_port"].as_u64().unwrap() as u16,
            ),
            "prometheus" => ("prometheus".to_owned(), 9090),
            "grafana-clickhouse-datasource" => {
                let sink = config["sinks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["type"].as_str() == Some("clickhouse"))
                    .unwrap();
                host_port(sink["url"].as_str().unwrap())
            }
            other => {
                problems.push(format!("data source type {other} is not checked"));
                continue;
            }
        };
        if (host.clone(), port) != want {
            problems.push(format!(
                "data source {}: {host}:{port}, not {want:?}",
                ds["name"]
            ));
        }
        if !services.contains_key(&host) {
            problems.push(format!(
                "data source {}: {host} is not a service",
                ds["name"]
            ));
        }
    }
    let set = environment(grafana);
    for var in grafana_variables(&read(
        "deploy/grafana/provisioning/datasources/datasources.yaml",
    )) {
        if !set.contains(&var) {
            problems.push(format!(
                "grafana: the data sources read ${var}, which is not set"
            ));
        }
    }
    let provider = yaml("deploy/grafana/provisioning/dashboards/dashboards.yaml");
    for p in provider["providers"].as_array().unwrap() {
        let path = p["options"]["path"].as_str().unwrap();
        if !mounted(grafana, path) {
            problems.push(format!("grafana: dashboards path {path} is on no volume"));
        }
    }
    problems
}

#[test]
fn the_compose_file_fits_the_configs_it_runs() {
    let problems = compose_problems(&yaml("docker-compose.yml"));
    assert!(
        problems.is_empty(),
        "docker-compose.yml:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_compose_check_finds_what_does_not_fit() {
    let breakages: [Breakage; 5] = [
        ("neither image nor build", |c| {
            c["services"]["tempo"]
                .as_object_mut()
                .unwrap()
                .remove("image");
        }),
        ("is not published", |c| {
            c["services"]["auditrail"]["ports"] = json!(["127.0.0.1:14317:4317"])
        }),
        ("is not set", |c| {
            c["services"]["otel-collector"]["environment"] = json!({})
        }),
        ("is on no volume", |c| {
            c["services"]["otel-collector"]["volumes"] =
                json!(["./collector-config/gateway.yaml:/etc/otelcol-contrib/gateway.yaml:ro"])
        }),
        ("published on 0.0.0.0", |c| {
            c["services"]["grafana"]["ports"] = json!(["0.0.0.0:3000:3000"])
        }),
    ];
    for (complaint, breakage) in breakages {
        let mut broken = yaml("docker-compose.yml");
        breakage(&mut broken);
        let problems = compose_problems(&broken);
        assert!(
            problems.iter().any(|p| p.contains(complaint)),
            "breaking {complaint:?} went unnoticed: {problems:?}"
        );
    }
}

/// `auditrail check-config` of a config's text, with every variable it
/// reads set.
fn check_config(text: &str, dir: &Path) -> Result<(), String> {
    let path = dir.join("check.toml");
    std::fs::write(&path, text).unwrap();
    auditrail_tests::check_config(&path, variables_read(text))
}

/// The demo's TLS files, written by `deploy/gen-certs.sh` as the compose's
/// `init` service writes them.
fn demo_certs(dir: &Path) -> PathBuf {
    let certs = dir.join("certs");
    let uid = unsafe { libc::getuid() }.to_string();
    let out = Command::new(repo().join("deploy/gen-certs.sh"))
        .env("CERT_DIR", &certs)
        .env("CERT_OWNER", &uid)
        .output()
        .expect("running deploy/gen-certs.sh (needs openssl)");
    assert!(
        out.status.success(),
        "deploy/gen-certs.sh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    certs
}

#[test]
fn auditrail_configs_of_the_compose_and_the_image_pass_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let certs = demo_certs(dir.path());
    // The certificate paths of the compose, where gen-certs.sh wrote them.
    let compose_config =
        read("deploy/auditrail.toml").replace("/certs/", &format!("{}/", certs.display()));
    for (name, text) in [
        ("deploy/auditrail.toml", compose_config),
        ("deploy/container.toml", read("deploy/container.toml")),
    ] {
        if let Err(e) = check_config(&text, dir.path()) {
            panic!("{name}: {e}");
        }
    }
}

// ---------------------------------------------------------------------------
// The Dockerfile.

/// A Dockerfile's stages: (FROM line, the instructions after it).
fn stages(dockerfile: &str) -> Vec<(String, Vec<String>)> {
    let mut stages: Vec<(String, Vec<String>)> = Vec::new();
    let mut logical = String::new();
    for line in dockerfile.lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(start) = line.strip_suffix('\\') {
            logical.push_str(start);
            logical.push(' ');
            continue;
        }
        logical.push_str(line);
        let instruction = std::mem::take(&mut logical);
        if instruction.to_uppercase().starts_with("FROM ") {
            stages.push((instruction, Vec::new()));
        } else if let Some(stage) = stages.last_mut() {
            stage.1.push(instruction);
        }
    }
    stages
}

fn dockerfile_problems(dockerfile: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let stages = stages(dockerfile);
    if stages.len() < 2 {
        problems.push("not multi-stage".into());
        return problems;
    }
    let (from, runtime) = stages.last().unwrap();
    let builder = stages[..stages.len() - 1]
        .iter()
        .find_map(|(from, _)| from.split_whitespace().last().map(str::to_owned))
        .unwrap();
    if !runtime
        .iter()
        .any(|i| i.starts_with(&format!("COPY --from={builder} ")))
    {
        problems.push(format!("the last stage copies nothing from {builder}"));
    }
    if !from.contains("debian") || !from.contains("slim") {
        problems.push(format!("runtime stage {from}: not Debian slim"));
    }
    match runtime.iter().rfind(|i| i.starts_with("USER ")) {
        None => problems.push("the runtime stage runs as root (no USER)".into()),
        Some(user) => {
            let who = user[5..].split(':').next().unwrap().trim();
            if who == "root" || who == "0" {
                problems.push(format!("{user}: root"));
            }
        }
    }
    // The container config: its listeners exposed, its spool a volume,
    // /healthz checked on its admin port, and CMD reading it.
    let config: toml::Table = read("deploy/container.toml").parse().unwrap();
    let copied = runtime
        .iter()
        .find(|i| i.starts_with("COPY deploy/container.toml "))
        .map(|i| i.split_whitespace().last().unwrap().to_owned());
    match &copied {
        None => problems.push("deploy/container.toml is not copied into the image".into()),
        Some(path) => {
            if !runtime
                .iter()
                .any(|i| i.starts_with("CMD ") && i.contains(path.as_str()))
            {
                problems.push(format!("CMD does not read {path}"));
            }
        }
    }
    let exposed: BTreeSet<u16> = runtime
        .iter()
        .filter(|i| i.starts_with("EXPOSE "))
        .flat_map(|i| {
            i[7..]
                .split_whitespace()
                .map(|p| p.parse::<u16>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    for (key, port) in listener_ports(&config) {
        if !exposed.contains(&port) {
            problems.push(format!("port {port} ({key}) is not exposed"));
        }
    }
    let spool = config["spool"]["dir"].as_str().unwrap();
    if !runtime
        .iter()
        .any(|i| i.starts_with("VOLUME ") && i.contains(&format!("\"{spool}\"")))
    {
        problems.push(format!("the spool {spool} is not a VOLUME"));
    }
    let admin_port = port_of(config["admin"]["addr"].as_str().unwrap());
    if !runtime.iter().any(|i| {
        i.starts_with("HEALTHCHECK ") && i.contains(&format!("127.0.0.1:{admin_port}/healthz"))
    }) {
        problems.push(format!("no HEALTHCHECK of /healthz on port {admin_port}"));
    }
    // The builder's Rust is the workspace's rust-version.
    let workspace: toml::Table = read("Cargo.toml").parse().unwrap();
    let rust_version = workspace["workspace"]["package"]["rust-version"]
        .as_str()
        .unwrap();
    if !dockerfile.contains(&format!("ARG RUST_VERSION={rust_version}\n")) {
        problems.push(format!("the builder's RUST_VERSION is not {rust_version}"));
    }
    problems
}

#[test]
fn the_dockerfile_is_multi_stage_and_runs_unprivileged() {
    let problems = dockerfile_problems(&read("Dockerfile"));
    assert!(problems.is_empty(), "Dockerfile:\n{}", problems.join("\n"));
    let ignore = read(".dockerignore");
    for line in ["target/", ".git/", "auditrail-data/"] {
        assert!(
            ignore.lines().any(|l| l == line),
            ".dockerignore leaves {line} in the context"
        );
    }
}

#[test]
fn the_dockerfile_check_finds_a_root_or_single_stage_image() {
    let dockerfile = read("Dockerfile");
    let as_root = dockerfile.replace("USER auditrail:auditrail", "USER root");
    assert!(dockerfile_problems(&as_root)
        .iter()
        .any(|p| p.contains("root")));
    let no_user = dockerfile.replace("USER auditrail:auditrail\n", "");
    assert!(dockerfile_problems(&no_user)
        .iter()
        .any(|p| p.contains("no USER")));
    let single: String = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("FROM debian"))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(dockerfile_problems(&single)
        .iter()
        .any(|p| p.contains("multi-stage")));
    let other_port = dockerfile.replace("EXPOSE 4317 4318 8686", "EXPOSE 4317 4318");
    assert!(dockerfile_problems(&other_port)
        .iter()
        .any(|p| p.contains("8686")));
}

// ---------------------------------------------------------------------------
// Grafana: data sources, the dashboard, and what its queries name.

fn dashboard() -> Value {
    json_file("deploy/grafana/dashboards/auditrail.json")
}

fn datasources() -> Value {
    yaml("deploy/grafana/provisioning/datasources/datasources.yaml")
}

/// Every query of the dashboard: (panel title, data source uid, the query).
fn dashboard_queries(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let uid = target["datasource"]["uid"]
                .as_str()
                .or(panel["datasource"]["uid"].as_str())
                .unwrap_or_default()
                .to_owned();
            let query = target["rawSql"]
                .as_str()
                .or(target["expr"].as_str())
                .unwrap_or_default()
                .to_owned();
            out.push((
                panel["title"].as_str().unwrap_or_default().to_owned(),
                uid,
                query,
            ));
        }
    }
    out
}

/// Data source uids the dashboard, its links and the correlations name that
/// no data source has; queries on the wrong kind of data source.
fn grafana_problems(dashboard: &Value, datasources: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let by_uid: BTreeMap<String, String> = datasources["datasources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|ds| {
            (
                ds["uid"].as_str().unwrap().to_owned(),
                ds["type"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let queries = dashboard_queries(dashboard);
    if queries.len() < 8 {
        problems.push(format!("only {} queries", queries.len()));
    }
    for (title, uid, query) in &queries {
        match by_uid.get(uid) {
            None => problems.push(format!("{title}: data source {uid:?} is not provisioned")),
            Some(kind) => {
                let sql = kind == "grafana-clickhouse-datasource";
                if query.is_empty() || sql != query.trim_start().starts_with("SELECT") {
                    problems.push(format!("{title}: {query:?} is not a {kind} query"));
                }
            }
        }
    }
    // Data source uids named in links and correlations.
    let uid_in_text = regex::Regex::new(r#"uid%22%3A%22(\w+)%22"#).unwrap();
    for uid in uid_in_text.captures_iter(&dashboard.to_string()) {
        if !by_uid.contains_key(&uid[1]) {
            problems.push(format!(
                "a link opens data source {}, not provisioned",
                &uid[1]
            ));
        }
    }
    let mut links = 0;
    for ds in datasources["datasources"].as_array().unwrap() {
        for c in ds["correlations"].as_array().into_iter().flatten() {
            links += 1;
            if let Some(target) = c["targetUID"].as_str() {
                if !by_uid.contains_key(target) {
                    problems.push(format!(
                        "correlation {}: no data source {target}",
                        c["label"]
                    ));
                }
            }
        }
    }
    if links == 0 {
        problems.push("no link from a trace to its audit events".into());
    }
    let text = dashboard.to_string();
    if !text.contains("/ui?trace_id=${__value.raw}") {
        problems.push("no link from a trace id to auditrail's search page".into());
    }
    problems
}

#[test]
fn the_dashboard_uses_the_provisioned_data_sources() {
    let problems = grafana_problems(&dashboard(), &datasources());
    assert!(
        problems.is_empty(),
        "Grafana provisioning:\n{}",
        problems.join("\n")
    );
    let mut broken = dashboard();
    broken["panels"][0]["targets"][0]["datasource"]["uid"] = json!("prom");
    assert!(grafana_problems(&broken, &datasources())
        .iter()
        .any(|p| p.contains("\"prom\" is not provisioned")));
    let mut broken = datasources();
    broken["datasources"][0]["correlations"][0]["targetUID"] = json!("clickhouse-old");
    assert!(grafana_problems(&dashboard(), &broken)
        .iter()
        .any(|p| p.contains("no data source clickhouse-old")));
}

/// The dashboard's ClickHouse SQL (and the trace correlation's) with the
/// ClickHouse data source's macros expanded for the last hour, reading
/// `database` instead of the sink's. Panics on a macro it does not know.
fn runnable_sql(sql: &str, sink_table: &str, database: &str, table: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let time_filter = regex::Regex::new(r"\$__timeFilter\((\w+)\)").unwrap();
    let sql = time_filter.replace_all(sql, |c: &regex::Captures| {
        format!(
            "{0} >= toDateTime({1}) AND {0} <= toDateTime({2})",
            &c[1],
            now - 3600,
            now + 60
        )
    });
    // Buckets of $__interval_s seconds (ClickHouse 18.16 has no
    // toStartOfInterval, which $__timeInterval expands to).
    let sql = sql.replace("$__interval_s", "60");
    assert!(
        !sql.contains('$'),
        "a macro this test does not expand: {sql}"
    );
    assert!(
        sql.contains(sink_table),
        "{sql} does not read the sink's table {sink_table}"
    );
    sql.replace(sink_table, &format!("{database}.{table}"))
}

/// An OTLP/JSON request with every record's time set to now.
fn stamped_now(mut request: Value) -> Value {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut n = 0;
    for rl in request["resourceLogs"].as_array_mut().unwrap() {
        for sl in rl["scopeLogs"].as_array_mut().unwrap() {
            for record in sl["logRecords"].as_array_mut().unwrap() {
                n += 1;
                record["timeUnixNano"] = json!((now - 1_000_000 * (100 - n)).to_string());
            }
        }
    }
    request
}

#[tokio::test(flavor = "multi_thread")]
async fn the_demo_pipeline_fills_what_the_dashboard_reads() {
    let dir = tempfile::tempdir().unwrap();
    let certs = demo_certs(dir.path());
    let warehouse = mysql::Database::create().await;
    let analytics = clickhouse::Database::legacy().await;
    let spool = dir.path().join("spool");
    let metrics_port = free_port();
    let compose_config = auditrail_toml();
    let ch_sink = compose_config["sinks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["type"].as_str() == Some("clickhouse"))
        .unwrap()
        .clone();
    let sink_table = format!(
        "{}.{}",
        ch_sink["database"].as_str().unwrap(),
        ch_sink["table"].as_str().unwrap()
    );
    let table = ch_sink["table"].as_str().unwrap().to_owned();

    // deploy/auditrail.toml as it is, but with its addresses, files and
    // databases made local (the local ClickHouse has no `auditrail` user).
    let localize = |grpc: u16, http: u16, admin: u16| -> String {
        let mut config = auditrail_toml();
        let receiver = config["receiver"].as_table_mut().unwrap();
        receiver.insert("grpc_addr".into(), format!("127.0.0.1:{grpc}").into());
        receiver.insert("http_addr".into(), format!("127.0.0.1:{http}").into());
        let tls = receiver["tls"].as_table_mut().unwrap();
        for key in ["cert_file", "key_file"] {
            let file = Path::new(tls[key].as_str().unwrap())
                .file_name()
                .unwrap()
                .to_owned();
            tls.insert(key.into(), certs.join(file).display().to_string().into());
        }
        let admin_table = config["admin"].as_table_mut().unwrap();
        admin_table.insert("addr".into(), format!("127.0.0.1:{admin}").into());
        admin_table.insert(
            "metrics_addr".into(),
            format!("127.0.0.1:{metrics_port}").into(),
        );
        config["spool"]
            .as_table_mut()
            .unwrap()
            .insert("dir".into(), spool.display().to_string().into());
        for sink in config["sinks"].as_array_mut().unwrap() {
            let sink = sink.as_table_mut().unwrap();
            let sink_type = sink["type"].as_str().unwrap().to_owned();
            match sink_type.as_str() {
                "mysql" => {
                    sink.insert("url".into(), warehouse.url().into());
                }
                "clickhouse" => {
                    sink.insert("url".into(), clickhouse::legacy_url().into());
                    sink.insert("database".into(), analytics.name().into());
                    sink.remove("user");
                    sink.remove("password_env");
                }
                other => panic!("a {other} sink in the compose's config is not made local here"),
            }
        }
        toml::to_string(&config).unwrap()
    };
    let token = "demo-writer-token-0123456789abcdef";
    let env = [
        ("AUDITRAIL_WRITER_TOKEN", token),
        ("AUDITRAIL_ADMIN_TOKEN", "demo-admin-token-0123456789abcdef"),
        ("MYSQL_PASSWORD", "unused"),
        ("CLICKHOUSE_PASSWORD", "unused"),
    ];
    let server = Server::start_config(dir.path(), &spool, &env, localize)
        .unwrap_or_else(|log| panic!("auditrail on the compose's config: {log}"));

    // The audit samples, over OTLP/HTTPS with the writer token, trusting the
    // demo CA as the Collector does.
    let ca = std::fs::read(certs.join("ca.pem")).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
        .build()
        .unwrap();
    let request = stamped_now(json_file("tests/fixtures/collector/audit-events.json"));
    let sent = records(&request).len() as u64;
    let response = client
        .post(format!("https://localhost:{}/v1/logs", server.http.port()))
        .bearer_auth(token)
        .json(&request)
        .send()
        .await
        .expect("OTLP/HTTPS to auditrail");
    let status = response.status();
    let body = response.text().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    assert!(!body.contains("rejected"), "{body}");

    // The ClickHouse sink stores them, and the alert the history.clear
    // sample raises.
    let url = analytics.url().to_owned();
    let count_sql = format!(
        "SELECT count() FROM {} FINAL WHERE service_name != 'auditrail'",
        analytics.table(&table)
    );
    let alert_sql = format!(
        "SELECT count() FROM {} FINAL WHERE event_name = 'auditrail.alert'",
        analytics.table(&table)
    );
    eventually_within(
        Duration::from_secs(60),
        "the samples and an alert in ClickHouse",
        || {
            let (url, count_sql, alert_sql) = (url.clone(), count_sql.clone(), alert_sql.clone());
            async move {
                clickhouse::try_query(&url, &count_sql)
                    .await
                    .is_ok_and(|n| n.trim() == sent.to_string())
                    && clickhouse::try_query(&url, &alert_sql)
                        .await
                        .is_ok_and(|n| n.trim() != "0")
            }
        },
    )
    .await;

    // Every ClickHouse query of the dashboard and of the trace correlation
    // runs on the sink's table; the panels about activity find the samples.
    let mut sql: Vec<(String, String)> = dashboard_queries(&dashboard())
        .into_iter()
        .filter(|(_, uid, _)| uid == "clickhouse")
        .map(|(title, _, q)| (title, q))
        .collect();
    for ds in datasources()["datasources"].as_array().unwrap() {
        for c in ds["correlations"].as_array().into_iter().flatten() {
            if let Some(raw) = c["config"]["target"]["rawSql"].as_str() {
                let trace = "5b8efff798038103d269b633813fc60c";
                sql.push((
                    c["label"].as_str().unwrap().to_owned(),
                    raw.replace("$${traceID}", trace),
                ));
            }
        }
    }
    assert!(sql.len() >= 6, "{sql:?}");
    for (title, query) in sql {
        let runnable = runnable_sql(&query, &sink_table, analytics.name(), &table);
        let rows = clickhouse::try_query(&url, &format!("{runnable} FORMAT JSONEachRow"))
            .await
            .unwrap_or_else(|e| panic!("{title}: {runnable}\n{e}"));
        assert!(
            !rows.trim().is_empty(),
            "{title} finds nothing in what the sink stored: {runnable}"
        );
    }

    // Every metric the dashboard's PromQL names is one auditrail exports.
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let exported = reqwest::get(&metrics_url)
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let metric = regex::Regex::new(r"\bauditrail_[a-z_]+\b").unwrap();
    let exported: BTreeSet<&str> = exported
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| metric.find(l).map(|m| m.as_str()))
        .collect();
    let promql: Vec<(String, String)> = dashboard_queries(&dashboard())
        .into_iter()
        .filter(|(_, uid, _)| uid == "prometheus")
        .map(|(title, _, q)| (title, q))
        .collect();
    assert!(promql.len() >= 6, "{promql:?}");
    for (title, expr) in promql {
        let named: Vec<&str> = metric.find_iter(&expr).map(|m| m.as_str()).collect();
        assert!(
            !named.is_empty(),
            "{title}: {expr} names no auditrail metric"
        );
        for name in named {
            // Counters and histograms carry suffixes in the exposition.
            assert!(
                exported.contains(name),
                "{title}: {name} is not among the metrics auditrail exports: {exported:?}"
            );
        }
    }
    drop(server);
    drop(warehouse);
}
