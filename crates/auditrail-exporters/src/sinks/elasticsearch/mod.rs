//! The `elasticsearch` sink: `_bulk` into Elasticsearch (7.x and later) or
//! OpenSearch (1.x and later), into a date-pattern index or a data stream.
//!
//! Each event is one `create` action with `_id` = `<node>:<seq>` and an
//! ECS document ([`document`] says which field goes where and why this
//! `_id` and `create`). A resend (after a crash, a timeout or a retry)
//! meets the stored document and answers 409, which counts as stored: the
//! index holds every event exactly once, and never has a document
//! replaced. Each item of a bulk answer is read on its own
//! ([`response`]): what was stored is delivered, what was throttled is
//! sent again, and what the cluster refuses for its content goes to the
//! dead letters.
//!
//! `prepare` asks `GET /` which cluster this is (`version.distribution`
//! is `opensearch` on OpenSearch) and whether the credentials are taken,
//! checks that the ingest `pipeline` exists, and creates the data stream
//! when it does not exist yet (its index template must exist).

pub mod document;
pub mod response;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use auditrail_model::AuditEvent;
use base64::Engine as _;
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use reqwest::{StatusCode, Url};
use serde::Deserialize;

use crate::retry::parse_retry_after;
use crate::{ExportError, Exporter, HeldSeq, SinkContext};
use document::{check_index_name, write_bulk_item, IndexPattern};
use response::{classify_status, read_items, transport, truncated, ItemResult};

/// `type = "elasticsearch"`.
///
/// ```toml
/// [[sinks]]
/// name = "search"
/// type = "elasticsearch"
/// url = "https://es.internal:9200"
/// index = "audit-%Y.%m.%d"              # or: data_stream = "logs-auditrail-default"
/// username = "auditrail"
/// password_env = "ES_PASSWORD"          # or: api_key_env = "ES_API_KEY"
/// compression = "gzip"
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    /// The cluster's HTTP base URL (`http://` or `https://`, with a path
    /// prefix when behind a proxy that adds one).
    pub url: String,
    /// A date-pattern index: `%Y`, `%m`, `%d`, `%H` from the event's own
    /// time in UTC. One of `index` and `data_stream`.
    pub index: Option<String>,
    /// A data stream (`logs-auditrail-default`); a matching index template
    /// with `data_stream` enabled must exist (Elasticsearch ships one for
    /// `logs-*-*`).
    pub data_stream: Option<String>,
    /// Basic auth: the user, and the variable holding its password.
    pub username: Option<String>,
    pub password_env: Option<String>,
    /// An API key, sent as `Authorization: ApiKey <value>`: the variable
    /// holds the `encoded` value the create-API-key call returns, or
    /// `id:api_key`, which is encoded here.
    pub api_key_env: Option<String>,
    /// Of request bodies.
    #[serde(default)]
    pub compression: Compression,
    /// An ingest pipeline every document goes through (`?pipeline=`).
    pub pipeline: Option<String>,
    /// A PEM file of the CA(s) that signed the cluster's certificate, for
    /// `https://` with a private CA (Elasticsearch 8's default set-up);
    /// the web PKI roots otherwise.
    pub tls_ca_file: Option<PathBuf>,
    /// A request with no complete answer by then is sent again.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_timeout() -> Duration {
    Duration::from_secs(30)
}

/// Of `_bulk` request bodies (`Content-Encoding`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    /// Both Elasticsearch and OpenSearch read gzip request bodies; JSON
    /// shrinks about tenfold, for some CPU on both sides.
    Gzip,
}

/// Where documents go.
#[derive(Debug, Clone)]
enum Target {
    Index(IndexPattern),
    DataStream(String),
}

impl Target {
    fn for_event(&self, event: &AuditEvent) -> std::borrow::Cow<'_, str> {
        match self {
            Target::Index(pattern) if pattern.is_fixed() => pattern.render(0).into(),
            Target::Index(pattern) => pattern.render(event.time_unix_nano).into(),
            Target::DataStream(name) => name.as_str().into(),
        }
    }

    /// Every index that can hold this sink's documents, as an index
    /// expression for `_search`.
    fn expression(&self) -> String {
        match self {
            Target::Index(pattern) => pattern.wildcard(),
            Target::DataStream(name) => name.clone(),
        }
    }
}

/// Which cluster answered `GET /`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `elasticsearch` or `opensearch`.
    pub distribution: String,
    pub version: String,
}

/// Sends batches to one cluster with `_bulk`.
pub struct ElasticsearchSink {
    name: String,
    client: reqwest::Client,
    base: Url,
    bulk: Url,
    target: Target,
    authorization: Option<HeaderValue>,
    compression: Compression,
    pipeline: Option<String>,
    cluster: Mutex<Option<Cluster>>,
}

impl ElasticsearchSink {
    pub fn new(config: &ElasticsearchConfig, context: &SinkContext) -> Result<Self, ExportError> {
        let misconfigured = |m: String| ExportError::misconfigured("config", m);
        let mut base = Url::parse(&config.url).map_err(|e| misconfigured(format!("url: {e}")))?;
        if !matches!(base.scheme(), "http" | "https") {
            return Err(misconfigured(format!(
                "url: {:?} is not http:// or https://",
                config.url
            )));
        }
        if base.query().is_some() {
            return Err(misconfigured(format!(
                "url: {:?} has a query; give the cluster's base URL",
                config.url
            )));
        }
        // `join` replaces the last path segment unless the path ends in /.
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let target = match (&config.index, &config.data_stream) {
            (Some(index), None) => Target::Index(
                IndexPattern::parse(index).map_err(misconfigured)?,
            ),
            (None, Some(stream)) => {
                check_index_name(stream)
                    .map_err(|e| misconfigured(format!("data_stream: {e}")))?;
                Target::DataStream(stream.clone())
            }
            (Some(_), Some(_)) => {
                return Err(misconfigured(
                    "set either index or data_stream, not both".into(),
                ))
            }
            (None, None) => {
                return Err(misconfigured(
                    "set index (a date pattern such as \"audit-%Y.%m.%d\") or data_stream (such as \"logs-auditrail-default\")".into(),
                ))
            }
        };
        let authorization = authorization(config)?;
        if let Some(pipeline) = &config.pipeline {
            if pipeline.is_empty() {
                return Err(misconfigured("pipeline must not be empty".into()));
            }
        }
        let mut bulk = base.join("_bulk").expect("a relative path joins");
        {
            let mut query = bulk.query_pairs_mut();
            // Only what the sink reads: a full answer to 5,000 creates is
            // about a megabyte of JSON.
            query.append_pair("filter_path", "errors,items.*.status,items.*.error");
            if let Some(pipeline) = &config.pipeline {
                query.append_pair("pipeline", pipeline);
            }
        }
        let mut builder = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(Duration::from_secs(10))
            .tcp_nodelay(true)
            .user_agent(concat!("auditrail/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &config.tls_ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                misconfigured(format!("tls_ca_file: reading {}: {e}", path.display()))
            })?;
            let certificates = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| misconfigured(format!("tls_ca_file: {}: {e}", path.display())))?;
            if certificates.is_empty() {
                return Err(misconfigured(format!(
                    "tls_ca_file: {} holds no PEM certificate",
                    path.display()
                )));
            }
            for certificate in certificates {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .build()
            .map_err(|e| misconfigured(format!("HTTP client: {e}")))?;
        Ok(ElasticsearchSink {
            name: context.name.clone(),
            client,
            base,
            bulk,
            target,
            authorization,
            compression: config.compression,
            pipeline: config.pipeline.clone(),
            cluster: Mutex::new(None),
        })
    }

    /// Which cluster `prepare` found, once it has run.
    pub fn cluster(&self) -> Option<Cluster> {
        self.cluster.lock().expect("cluster lock").clone()
    }

    /// `base` + `segments`, each escaped as a path segment.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("an http(s) URL has a path")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn request(&self, method: reqwest::Method, url: Url) -> reqwest::RequestBuilder {
        let request = self.client.request(method, url);
        match &self.authorization {
            Some(value) => request.header(AUTHORIZATION, value.clone()),
            None => request,
        }
    }

    /// Sends `request`; the status and body, or the error for no answer.
    async fn call(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<(StatusCode, Option<Duration>, Body), ExportError> {
        let response = request.send().await.map_err(transport)?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = response.bytes().await.map_err(transport)?;
        Ok((status, retry_after, Body(body.to_vec())))
    }

    /// `GET /`: which cluster, and whether it takes the credentials.
    async fn check_cluster(&self) -> Result<(), ExportError> {
        let (status, retry_after, body) = self
            .call(self.request(reqwest::Method::GET, self.base.clone()))
            .await?;
        match status.as_u16() {
            200 => {}
            // Authenticated, but without the `monitor` privilege GET /
            // needs: a writer-only key is a fine set-up, and `_bulk` tells.
            403 => {
                tracing::warn!(sink = %self.name, answer = %truncated(body.text().trim()),
                    "GET / is forbidden to these credentials (no `monitor` privilege), so the cluster's version is not known; delivery goes on");
                return Ok(());
            }
            code => {
                let mut error = classify_status(code, retry_after, body.text());
                error.message = format!("GET {}: {}", self.base, error.message);
                if error.class == crate::ErrorClass::Permanent {
                    error.class = crate::ErrorClass::Misconfigured;
                }
                return Err(error);
            }
        }
        let cluster = read_cluster(&body.0).map_err(|e| {
            ExportError::misconfigured(
                "url",
                format!(
                    "GET {}: not an Elasticsearch or OpenSearch answer ({e}): {}",
                    self.base,
                    truncated(body.text().trim())
                ),
            )
        })?;
        check_version(&cluster, &self.target)?;
        let mut known = self.cluster.lock().expect("cluster lock");
        if known.as_ref() != Some(&cluster) {
            tracing::info!(sink = %self.name, distribution = %cluster.distribution, version = %cluster.version, "connected to the cluster");
            *known = Some(cluster);
        }
        Ok(())
    }

    /// The ingest pipeline exists: a missing one would refuse every
    /// document with a reason that is no document's fault.
    async fn check_pipeline(&self, pipeline: &str) -> Result<(), ExportError> {
        let url = self.url(&["_ingest", "pipeline", pipeline]);
        let (status, retry_after, body) =
            self.call(self.request(reqwest::Method::GET, url)).await?;
        match status.as_u16() {
            200 => Ok(()),
            404 => Err(ExportError::misconfigured(
                "pipeline",
                format!("ingest pipeline {pipeline:?} does not exist on the cluster (create it, or remove `pipeline`)"),
            )),
            403 => {
                tracing::warn!(sink = %self.name, pipeline, "these credentials may not read ingest pipelines, so the pipeline is not checked");
                Ok(())
            }
            code => Err(classify_status(code, retry_after, body.text())),
        }
    }

    /// The data stream exists, or is created now from its index template.
    async fn check_data_stream(&self, stream: &str) -> Result<(), ExportError> {
        let url = self.url(&["_data_stream", stream]);
        let (status, retry_after, body) = self
            .call(self.request(reqwest::Method::GET, url.clone()))
            .await?;
        match status.as_u16() {
            200 => return Ok(()),
            404 => {}
            403 => {
                tracing::warn!(sink = %self.name, data_stream = stream, "these credentials may not look up data streams; the first write creates it if its index template allows");
                return Ok(());
            }
            code => return Err(classify_status(code, retry_after, body.text())),
        }
        let (status, retry_after, body) =
            self.call(self.request(reqwest::Method::PUT, url)).await?;
        match status.as_u16() {
            200 => {
                tracing::info!(sink = %self.name, data_stream = stream, "created the data stream");
                Ok(())
            }
            // Someone else created it meanwhile.
            400 if body.text().contains("resource_already_exists_exception") => Ok(()),
            400 | 404 => Err(ExportError::misconfigured(
                "data_stream",
                format!(
                    "data stream {stream:?} does not exist and cannot be created: {} (a data stream needs an index template whose index_patterns match it, with \"data_stream\": {{}})",
                    truncated(body.text().trim())
                ),
            )),
            403 => {
                tracing::warn!(sink = %self.name, data_stream = stream, "these credentials may not create the data stream; the first write creates it if they may");
                Ok(())
            }
            code => Err(classify_status(code, retry_after, body.text())),
        }
    }

    /// The `_bulk` body for `events`, compressed as configured.
    fn bulk_body(&self, events: &[AuditEvent]) -> Vec<u8> {
        let mut body = Vec::with_capacity(events.len() * 1600);
        for event in events {
            write_bulk_item(event, &self.target.for_event(event), &mut body);
        }
        match self.compression {
            Compression::None => body,
            Compression::Gzip => {
                let mut gz = flate2::write::GzEncoder::new(
                    Vec::with_capacity(body.len() / 6),
                    flate2::Compression::fast(),
                );
                gz.write_all(&body).expect("writing into a Vec cannot fail");
                gz.finish().expect("writing into a Vec cannot fail")
            }
        }
    }

    fn count_items(&self, results: &[ItemResult]) {
        let mut counts: Vec<(&'static str, u64)> = Vec::new();
        for result in results {
            let label = result.label();
            match counts.iter_mut().find(|(l, _)| *l == label) {
                Some((_, n)) => *n += 1,
                None => counts.push((label, 1)),
            }
        }
        for (label, n) in counts {
            metrics::counter!("auditrail_elasticsearch_items_total", "sink" => self.name.clone(), "result" => label)
                .increment(n);
        }
    }
}

/// The `Authorization` header the config asks for.
fn authorization(config: &ElasticsearchConfig) -> Result<Option<HeaderValue>, ExportError> {
    let misconfigured = |m: String| ExportError::misconfigured("config", m);
    let env = |key: &str, var: &str| {
        let value = std::env::var(var)
            .map_err(|_| misconfigured(format!("{key}: environment variable {var} is not set")))?;
        if value.is_empty() {
            return Err(misconfigured(format!(
                "{key}: environment variable {var} is empty"
            )));
        }
        Ok(value)
    };
    let value = match (&config.username, &config.password_env, &config.api_key_env) {
        (None, None, None) => return Ok(None),
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            return Err(misconfigured(
                "set either username and password_env, or api_key_env, not both".into(),
            ))
        }
        (Some(user), Some(var), None) => {
            let password = env("password_env", var)?;
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            format!("Basic {encoded}")
        }
        (Some(_), None, None) => {
            return Err(misconfigured(
                "username needs password_env (the variable holding the password)".into(),
            ))
        }
        (None, Some(_), None) => return Err(misconfigured("password_env needs username".into())),
        (None, None, Some(var)) => {
            let key = env("api_key_env", var)?;
            // `id:api_key` as shown when the key was made; the encoded form
            // (base64) never holds a `:`.
            let encoded = if key.contains(':') {
                base64::engine::general_purpose::STANDARD.encode(key.trim())
            } else {
                key.trim().to_owned()
            };
            format!("ApiKey {encoded}")
        }
    };
    let mut header = HeaderValue::from_str(&value)
        .map_err(|_| misconfigured("credentials: not valid in an HTTP header".into()))?;
    header.set_sensitive(true);
    Ok(Some(header))
}

/// Reads `GET /`: `version.number`, and `version.distribution`, which
/// only OpenSearch sends.
fn read_cluster(body: &[u8]) -> Result<Cluster, String> {
    #[derive(Deserialize)]
    struct Root {
        version: Version,
    }
    #[derive(Deserialize)]
    struct Version {
        number: String,
        distribution: Option<String>,
    }
    let root: Root = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    Ok(Cluster {
        distribution: root
            .version
            .distribution
            .unwrap_or_else(|| "elasticsearch".into()),
        version: root.version.number,
    })
}

/// Elasticsearch before 7 needs a `_type` in every action, and data
/// streams came with 7.9; OpenSearch has both from 1.0.
fn check_version(cluster: &Cluster, target: &Target) -> Result<(), ExportError> {
    let mut numbers = cluster
        .version
        .split(['.', '-'])
        .map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    if cluster.distribution != "elasticsearch" {
        return Ok(());
    }
    if major < 7 {
        return Err(ExportError::misconfigured(
            "version",
            format!(
                "Elasticsearch {} is not supported (7.0 or later; 6.x and earlier need a mapping type in every action)",
                cluster.version
            ),
        ));
    }
    if matches!(target, Target::DataStream(_)) && major == 7 && minor < 9 {
        return Err(ExportError::misconfigured(
            "version",
            format!(
                "Elasticsearch {} has no data streams (7.9 or later); use index instead",
                cluster.version
            ),
        ));
    }
    Ok(())
}

/// A response body, with its text for messages.
struct Body(Vec<u8>);

impl Body {
    fn text(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("(a body that is not UTF-8)")
    }
}

#[async_trait]
impl Exporter for ElasticsearchSink {
    async fn prepare(&self) -> Result<(), ExportError> {
        self.check_cluster().await?;
        if let Some(pipeline) = &self.pipeline {
            self.check_pipeline(pipeline).await?;
        }
        if let Target::DataStream(stream) = &self.target {
            self.check_data_stream(stream).await?;
        }
        Ok(())
    }

    async fn export(&self, events: &[AuditEvent]) -> Result<(), ExportError> {
        if events.is_empty() {
            return Ok(());
        }
        let body = self.bulk_body(events);
        let mut request = self
            .request(reqwest::Method::POST, self.bulk.clone())
            .header(CONTENT_TYPE, "application/x-ndjson");
        if self.compression == Compression::Gzip {
            request = request.header(CONTENT_ENCODING, "gzip");
        }
        let (status, retry_after, answer) = self.call(request.body(body)).await?;
        if status != StatusCode::OK {
            return Err(classify_status(status.as_u16(), retry_after, answer.text()));
        }
        let results = read_items(&answer.0, events.len())?;
        self.count_items(&results);
        response::outcome(&results)
    }

    /// The highest `auditrail.seq` of `node` in the target: documents are
    /// keyed by `(node, seq)`, so a new spool must start after it, or its
    /// events would meet old `_id`s and be taken as stored.
    async fn highest_seq(&self, node: &str) -> Result<HeldSeq, ExportError> {
        let mut url = self.url(&[&self.target.expression(), "_search"]);
        url.query_pairs_mut()
            .append_pair("ignore_unavailable", "true")
            .append_pair("allow_no_indices", "true")
            .append_pair("filter_path", "aggregations");
        // `auditrail.node` is a keyword under an explicit mapping, and a
        // text field with a `.keyword` sub-field under dynamic mapping:
        // either term matches the node id exactly.
        let query = serde_json::json!({
            "size": 0,
            "track_total_hits": false,
            "query": {"bool": {"filter": [{"bool": {
                "should": [
                    {"term": {"auditrail.node": node}},
                    {"term": {"auditrail.node.keyword": node}}
                ],
                "minimum_should_match": 1
            }}]}},
            "aggs": {"max_seq": {"max": {"field": "auditrail.seq"}}}
        });
        let (status, retry_after, body) = self
            .call(
                self.request(reqwest::Method::POST, url)
                    .header(CONTENT_TYPE, "application/json")
                    .body(query.to_string()),
            )
            .await?;
        if status != StatusCode::OK {
            let mut error = classify_status(status.as_u16(), retry_after, body.text());
            error.message = format!(
                "asking for the highest auditrail.seq of node {node:?} (the sink's user needs `read` on the target for this): {}",
                error.message
            );
            return Err(error);
        }
        let answer: serde_json::Value = serde_json::from_slice(&body.0).map_err(|e| {
            ExportError::retryable("server", format!("the _search answer is not JSON: {e}"))
        })?;
        match &answer["aggregations"]["max_seq"]["value"] {
            // No document of this node (or none at all: then the
            // aggregation, filtered away, is absent too).
            serde_json::Value::Null => Ok(HeldSeq::Highest(0)),
            value => value
                .as_f64()
                .filter(|v| *v >= 0.0)
                .map(|v| HeldSeq::Highest(v as u64))
                .ok_or_else(|| {
                    ExportError::retryable(
                        "server",
                        format!("unexpected max(auditrail.seq) in the _search answer: {answer}"),
                    )
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(toml: &str) -> Result<ElasticsearchSink, ExportError> {
        let config: ElasticsearchConfig = toml::from_str(toml).unwrap();
        let context = SinkContext {
            name: "search".into(),
            retention: Duration::from_secs(60),
        };
        ElasticsearchSink::new(&config, &context)
    }

    #[test]
    fn one_target_is_required() {
        let error = sink("url = \"http://127.0.0.1:9200\"").err().unwrap();
        assert!(error.message.contains("set index"), "{error}");
        let error =
            sink("url = \"http://127.0.0.1:9200\"\nindex = \"a\"\ndata_stream = \"logs-a-b\"")
                .err()
                .unwrap();
        assert!(error.message.contains("not both"), "{error}");
        let error = sink("url = \"http://127.0.0.1:9200\"\nindex = \"Audit-%Y\"")
            .err()
            .unwrap();
        assert!(error.message.contains("lower case"), "{error}");
    }

    #[test]
    fn urls_keep_a_path_prefix_and_escape_segments() {
        let s = sink(
            "url = \"https://proxy.internal/es\"\nindex = \"audit-%Y\"\npipeline = \"geo ip\"",
        )
        .unwrap();
        assert_eq!(
            s.bulk.as_str(),
            "https://proxy.internal/es/_bulk?filter_path=errors%2Citems.*.status%2Citems.*.error&pipeline=geo+ip"
        );
        assert_eq!(
            s.url(&["_ingest", "pipeline", "geo ip"]).as_str(),
            "https://proxy.internal/es/_ingest/pipeline/geo%20ip"
        );
        assert_eq!(
            s.url(&[&s.target.expression(), "_search"]).as_str(),
            "https://proxy.internal/es/audit-*/_search"
        );
    }

    #[test]
    fn credentials_come_from_the_environment() {
        std::env::set_var("AUDITRAIL_TEST_ES_PASSWORD", "s3cret");
        std::env::set_var(
            "AUDITRAIL_TEST_ES_KEY_PAIR",
            "VuaCfGcBCdbkQm-e5aOx:ui2lp2axTNmsyakw9tvNnw",
        );
        std::env::set_var(
            "AUDITRAIL_TEST_ES_KEY",
            "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==",
        );
        let basic = sink("url = \"http://h:9200\"\nindex = \"a\"\nusername = \"elastic\"\npassword_env = \"AUDITRAIL_TEST_ES_PASSWORD\"").unwrap();
        // base64("elastic:s3cret")
        assert_eq!(
            basic.authorization.unwrap().to_str().unwrap(),
            "Basic ZWxhc3RpYzpzM2NyZXQ="
        );
        // The example key of the create-API-key docs, both spellings.
        for var in ["AUDITRAIL_TEST_ES_KEY_PAIR", "AUDITRAIL_TEST_ES_KEY"] {
            let keyed = sink(&format!(
                "url = \"http://h:9200\"\nindex = \"a\"\napi_key_env = \"{var}\""
            ))
            .unwrap();
            assert_eq!(
                keyed.authorization.unwrap().to_str().unwrap(),
                "ApiKey VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
            );
        }
        let error = sink(
            "url = \"http://h:9200\"\nindex = \"a\"\napi_key_env = \"AUDITRAIL_TEST_ES_UNSET\"",
        )
        .err()
        .unwrap();
        assert!(
            error.message.contains("AUDITRAIL_TEST_ES_UNSET is not set"),
            "{error}"
        );
        let error = sink("url = \"http://h:9200\"\nindex = \"a\"\nusername = \"u\"")
            .err()
            .unwrap();
        assert!(error.message.contains("needs password_env"), "{error}");
        let inline: Result<ElasticsearchConfig, _> =
            toml::from_str("url = \"http://h:9200\"\nindex = \"a\"\npassword = \"x\"");
        assert!(inline.is_err(), "an inline password is an unknown key");
    }

    #[test]
    fn the_cluster_and_its_version_are_read_from_get_root() {
        let es = br#"{"name":"n","cluster_name":"c","version":{"number":"8.15.0","build_flavor":"default","lucene_version":"9.11.1"},"tagline":"You Know, for Search"}"#;
        let os = br#"{"name":"n","cluster_name":"c","version":{"distribution":"opensearch","number":"2.17.1"},"tagline":"The OpenSearch Project: https://opensearch.org/"}"#;
        let es = read_cluster(es).unwrap();
        assert_eq!(es.distribution, "elasticsearch");
        assert_eq!(es.version, "8.15.0");
        assert_eq!(read_cluster(os).unwrap().distribution, "opensearch");
        let stream = Target::DataStream("logs-a-b".into());
        let index = Target::Index(IndexPattern::parse("a").unwrap());
        let old = |v: &str| Cluster {
            distribution: "elasticsearch".into(),
            version: v.into(),
        };
        assert!(check_version(&old("6.8.23"), &index).is_err());
        assert!(check_version(&old("7.8.0"), &index).is_ok());
        assert!(check_version(&old("7.8.0"), &stream).is_err());
        assert!(check_version(&old("7.17.0"), &stream).is_ok());
        let opensearch = Cluster {
            distribution: "opensearch".into(),
            version: "1.3.0".into(),
        };
        assert!(check_version(&opensearch, &stream).is_ok());
    }

    #[test]
    fn gzip_bodies_read_back() {
        use std::io::Read as _;
        let s = sink("url = \"http://h:9200\"\nindex = \"audit-%Y.%m.%d\"\ncompression = \"gzip\"")
            .unwrap();
        let events = [AuditEvent {
            node: "n".into(),
            seq: 1,
            ..AuditEvent::default()
        }];
        let mut text = String::new();
        flate2::read::GzDecoder::new(&s.bulk_body(&events)[..])
            .read_to_string(&mut text)
            .unwrap();
        assert!(
            text.starts_with("{\"create\":{\"_index\":\"audit-1970.01.01\",\"_id\":\"n:1\"}}\n{"),
            "{text}"
        );
    }
}
