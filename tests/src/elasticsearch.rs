//! A **protocol double** of an Elasticsearch / OpenSearch cluster's HTTP
//! API, for the `elasticsearch` sink's tests (`tests/elasticsearch_sink.rs`)
//! and its benchmark (`src/bin/elasticsearch-double.rs`,
//! `scripts/bench-sinks`).
//!
//! No real cluster can be installed on these machines: neither
//! Elasticsearch nor OpenSearch is packaged in Debian, PyPI or npm (only
//! clients are). So this double answers as the vendors document, for the
//! calls the sink makes:
//!
//! * `GET /`: the cluster's name and `version`; OpenSearch adds
//!   `version.distribution: "opensearch"`
//!   (<https://www.elastic.co/docs/api/doc/elasticsearch/operation/operation-info>,
//!   <https://docs.opensearch.org/latest/api-reference/>).
//! * `POST /_bulk` (and `/{index}/_bulk`), from the bulk API reference
//!   (<https://www.elastic.co/guide/en/elasticsearch/reference/current/docs-bulk.html>,
//!   <https://docs.opensearch.org/latest/api-reference/document-apis/bulk/>):
//!   NDJSON, an action line (`create`, `index`, `delete`) and a source
//!   line, the body ending in a newline; a request-level error (401, 413,
//!   429, 503) takes nothing; otherwise 200 with `errors` and one entry in
//!   `items` per action, in order, each with its own `status` and, on
//!   failure, `error.type` and `error.reason`. Items fail on their own:
//!   a `create` whose `_id` exists answers 409
//!   `version_conflict_engine_exception` ("document already exists"); a
//!   full write queue answers 429 `es_rejected_execution_exception`
//!   (<https://www.elastic.co/guide/en/elasticsearch/reference/current/rejected-requests.html>);
//!   a document that does not fit the mapping answers 400
//!   `document_parsing_exception` (Elasticsearch 8.8 and later) or
//!   `mapper_parsing_exception` (earlier, and OpenSearch); a missing ingest
//!   pipeline 400 `illegal_argument_exception` ("pipeline with id [x]
//!   does not exist").
//! * Dynamic mapping
//!   (<https://www.elastic.co/guide/en/elasticsearch/reference/current/dynamic-field-mapping.html>):
//!   the first document to hold a field fixes its type (strings are
//!   `text` with a `.keyword` sub-field, or `date` when they look like
//!   one; whole numbers `long`; fractions `float`; `true`/`false`
//!   `boolean`; objects `object`; dots in field names are object paths),
//!   and a later value that cannot be read as that type refuses its
//!   document (a string into `long`, a concrete value where an object is
//!   mapped, an object into a concrete field).
//! * Data streams
//!   (<https://www.elastic.co/guide/en/elasticsearch/reference/current/data-streams.html>):
//!   `GET`/`PUT /_data_stream/{name}`; a name that matches an index
//!   template with `data_stream` enabled is created on `PUT` or on the
//!   first `create` into it; only `create` may write into one (400
//!   `illegal_argument_exception` for `index`), every document needs
//!   `@timestamp`, and documents live in a backing index
//!   `.ds-<name>-<date>-000001`.
//! * `GET /_ingest/pipeline/{id}` (404 `{}` when missing), `_search` with
//!   `size: 0`, a bool filter of `term` queries and `max` aggregations
//!   (what the sink asks for its highest seq), and `_count`.
//! * Security: with credentials set, anything else answers 401
//!   `security_exception` with `WWW-Authenticate`.
//!
//! Knobs make it fail as clusters do: the next K items answered 429, the
//! next requests answered 429 or 503 as a whole (with `Retry-After`), and
//! requests carried out but answered 504 (a proxy in front that gave up
//! waiting), so the client sends again what is stored already.
//! `filter_path` is ignored: the full answer is sent, which a client
//! must read the same way. Documents are kept by `(index, _id)` for the
//! tests to inspect.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

/// Which product the double plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// Elasticsearch 8.15: `document_parsing_exception` for mapping errors.
    Elasticsearch,
    /// OpenSearch 2.17: `version.distribution`, `mapper_parsing_exception`.
    OpenSearch,
}

/// A field's type in an index's mapping, as dynamic mapping sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Object,
    Text,
    Date,
    Long,
    Float,
    Boolean,
}

impl FieldType {
    fn name(self) -> &'static str {
        match self {
            FieldType::Object => "object",
            FieldType::Text => "text",
            FieldType::Date => "date",
            FieldType::Long => "long",
            FieldType::Float => "float",
            FieldType::Boolean => "boolean",
        }
    }
}

/// A stored document.
#[derive(Debug, Clone)]
pub struct Doc {
    /// The `_source` as sent (`None` when the double keeps no sources).
    pub source: Option<Value>,
    /// `auditrail.node` and `auditrail.seq`, kept even without sources,
    /// for `_search`.
    pub node: Option<String>,
    pub seq: Option<u64>,
    pub version: u64,
}

/// One `_bulk` request as the double answered it.
#[derive(Debug, Clone)]
pub struct BulkSeen {
    pub at: Instant,
    pub status: u16,
    /// The `_id` and status of each item (empty for a request-level error).
    pub items: Vec<(String, u16)>,
}

/// The cluster's state and knobs.
#[derive(Debug)]
pub struct Cluster {
    pub flavor: Flavor,
    /// The one `Authorization` value accepted; `None`: security off.
    pub authorization: Option<String>,
    /// Keep each document's source (tests); the benchmark keeps ids only.
    pub keep_sources: bool,
    /// `(concrete index, _id)` → document.
    pub docs: HashMap<(String, String), Doc>,
    /// Concrete index → field path → type.
    pub mappings: HashMap<String, HashMap<String, FieldType>>,
    /// Data stream → its backing (write) index.
    pub data_streams: BTreeMap<String, String>,
    /// Index patterns (`logs-*-*`) of templates with `data_stream` enabled.
    pub data_stream_templates: Vec<String>,
    pub pipelines: BTreeSet<String>,
    /// Knob: the next this many items (across requests) answer 429.
    pub throttle_items: usize,
    /// Knob: the next requests to `_bulk` answered as a whole with this
    /// status and `Retry-After` (none when empty).
    pub refusals: VecDeque<(u16, String)>,
    /// Knob: the next this many `_bulk` requests are carried out, but
    /// answered 504, as a proxy in front of a cluster answers when it
    /// gives up waiting: the client cannot know what was stored.
    pub lose_answers: usize,
    pub bulks: Vec<BulkSeen>,
    /// Requests refused for their credentials.
    pub unauthorized: usize,
    seq_no: u64,
    next_auto_id: u64,
}

impl Cluster {
    pub fn new(flavor: Flavor) -> Cluster {
        Cluster {
            flavor,
            authorization: None,
            keep_sources: true,
            docs: HashMap::new(),
            mappings: HashMap::new(),
            data_streams: BTreeMap::new(),
            // Elasticsearch's built-in template for logs-*-*.
            data_stream_templates: vec!["logs-*-*".into()],
            pipelines: BTreeSet::new(),
            throttle_items: 0,
            refusals: VecDeque::new(),
            lose_answers: 0,
            bulks: Vec::new(),
            unauthorized: 0,
            seq_no: 0,
            next_auto_id: 0,
        }
    }

    /// Every stored document of index (or data stream) `target`.
    pub fn docs_in(&self, target: &str) -> Vec<(&str, &Doc)> {
        let index = self.data_streams.get(target).map_or(target, String::as_str);
        let mut docs: Vec<(&str, &Doc)> = self
            .docs
            .iter()
            .filter(|((i, _), _)| i == index)
            .map(|((_, id), doc)| (id.as_str(), doc))
            .collect();
        docs.sort_by_key(|(_, d)| d.seq);
        docs
    }

    /// The status of every item the double answered, over all requests.
    pub fn item_statuses(&self) -> Vec<u16> {
        self.bulks
            .iter()
            .flat_map(|b| b.items.iter().map(|(_, s)| *s))
            .collect()
    }

    fn mapping_error_type(&self) -> &'static str {
        match self.flavor {
            Flavor::Elasticsearch => "document_parsing_exception",
            Flavor::OpenSearch => "mapper_parsing_exception",
        }
    }
}

pub type Shared = Arc<Mutex<Cluster>>;

pub fn shared(flavor: Flavor) -> Shared {
    Arc::new(Mutex::new(Cluster::new(flavor)))
}

/// The double listening on `addr` in a runtime of its own: dropping it
/// ends every connection too, as a stopped cluster would.
pub struct Double {
    pub addr: SocketAddr,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Double {
    pub fn start(addr: SocketAddr, cluster: &Shared) -> Double {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a runtime for the double");
        let listener = {
            // The caller's runtime cannot block on this one; entering it
            // registers the socket with it.
            let _inside = runtime.enter();
            let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
            // Back on the same port after being down, past TIME_WAIT.
            socket.set_reuseaddr(true).expect("SO_REUSEADDR");
            socket.bind(addr).expect("binding the double's port");
            socket.listen(1024).expect("listening")
        };
        let app = router(cluster.clone());
        runtime.spawn(async move { axum::serve(listener, app).await.expect("serving") });
        Double {
            addr,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// The double's HTTP routes, for a server of one's own (the benchmark's).
pub fn router(cluster: Shared) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        // Elasticsearch's default http.max_content_length; a larger
        // request is answered 413, as there (axum's own default is 2 MB).
        .layer(axum::extract::DefaultBodyLimit::max(100 * 1024 * 1024))
        .with_state(cluster)
}

async fn handle(
    State(cluster): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut cluster = cluster.lock().expect("cluster lock");
    answer(&mut cluster, &method, &uri, &headers, &body)
}

fn json_response(status: u16, body: Value) -> Response {
    let mut response = (
        StatusCode::from_u16(status).expect("a valid status"),
        body.to_string(),
    )
        .into_response();
    response.headers_mut().insert(
        "content-type",
        "application/json; charset=UTF-8".parse().expect("a header"),
    );
    response
}

/// An error answer as both products write them: `{"error": {...}, "status": N}`.
fn error(status: u16, kind: &str, reason: &str) -> Response {
    let cause = json!({"type": kind, "reason": reason});
    json_response(
        status,
        json!({"error": {"root_cause": [cause], "type": kind, "reason": reason}, "status": status}),
    )
}

fn answer(
    cluster: &mut Cluster,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    if let Some(expected) = &cluster.authorization {
        let given = headers.get("authorization").and_then(|v| v.to_str().ok());
        if given != Some(expected.as_str()) {
            cluster.unauthorized += 1;
            let mut response = error(
                401,
                "security_exception",
                &format!(
                    "unable to authenticate user for REST request [{}]",
                    uri.path()
                ),
            );
            response.headers_mut().insert(
                "www-authenticate",
                "Basic realm=\"security\" charset=\"UTF-8\", ApiKey"
                    .parse()
                    .expect("a header"),
            );
            return response;
        }
    }
    let body = match headers
        .get("content-encoding")
        .and_then(|v| v.to_str().ok())
    {
        Some("gzip") => {
            let mut plain = Vec::new();
            if flate2::read::GzDecoder::new(body)
                .read_to_end(&mut plain)
                .is_err()
            {
                return error(400, "parse_exception", "the gzip request body is corrupt");
            }
            plain
        }
        _ => body.to_vec(),
    };
    let query: HashMap<String, String> = uri
        .query()
        .map(|q| {
            url_decode_pairs(q)
                .into_iter()
                .collect::<HashMap<String, String>>()
        })
        .unwrap_or_default();
    let segments: Vec<String> = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET" | "HEAD", []) => root(cluster),
        ("POST" | "PUT", ["_bulk"]) => bulk(cluster, None, &query, &body),
        ("POST" | "PUT", [index, "_bulk"]) => bulk(cluster, Some(index), &query, &body),
        ("GET", ["_data_stream", name]) => get_data_stream(cluster, name),
        ("PUT", ["_data_stream", name]) => put_data_stream(cluster, name),
        ("GET", ["_ingest", "pipeline", id]) => {
            if cluster.pipelines.contains(*id) {
                json_response(200, json!({ *id: {"processors": []} }))
            } else {
                json_response(404, json!({}))
            }
        }
        ("GET" | "POST", [target, "_search"]) => search(cluster, target, &body),
        ("GET" | "POST", ["_count"]) => count(cluster, "*"),
        ("GET" | "POST", [target, "_count"]) => count(cluster, target),
        _ => error(
            400,
            "illegal_argument_exception",
            &format!(
                "request [{}] contains unrecognized parameters or path (the double does not implement it)",
                uri.path()
            ),
        ),
    }
}

fn root(cluster: &Cluster) -> Response {
    let version = match cluster.flavor {
        Flavor::Elasticsearch => json!({
            "number": "8.15.0", "build_flavor": "default", "build_type": "docker",
            "lucene_version": "9.11.1", "minimum_wire_compatibility_version": "7.17.0",
            "minimum_index_compatibility_version": "7.0.0"
        }),
        Flavor::OpenSearch => json!({
            "distribution": "opensearch", "number": "2.17.1", "build_type": "tar",
            "lucene_version": "9.11.1", "minimum_wire_compatibility_version": "7.10.0",
            "minimum_index_compatibility_version": "7.0.0"
        }),
    };
    let tagline = match cluster.flavor {
        Flavor::Elasticsearch => "You Know, for Search",
        Flavor::OpenSearch => "The OpenSearch Project: https://opensearch.org/",
    };
    json_response(
        200,
        json!({"name": "double-0", "cluster_name": "auditrail-double",
               "cluster_uuid": "dOuBlE0000000000000000", "version": version, "tagline": tagline}),
    )
}

/// `*` matches any run of characters, as in index patterns.
fn matches_pattern(pattern: &str, name: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == name;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !name.starts_with(first) || !name[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &name[first.len()..name.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

fn get_data_stream(cluster: &Cluster, name: &str) -> Response {
    match cluster.data_streams.get(name) {
        Some(backing) => json_response(
            200,
            json!({"data_streams": [{
                "name": name, "timestamp_field": {"name": "@timestamp"},
                "indices": [{"index_name": backing}], "generation": 1, "status": "GREEN"
            }]}),
        ),
        None => error(
            404,
            "index_not_found_exception",
            &format!("no such index [{name}]"),
        ),
    }
}

fn put_data_stream(cluster: &mut Cluster, name: &str) -> Response {
    if cluster.data_streams.contains_key(name) {
        return error(
            400,
            "resource_already_exists_exception",
            &format!("data_stream [{name}] already exists"),
        );
    }
    if !create_data_stream(cluster, name) {
        return error(
            400,
            "illegal_argument_exception",
            &format!("no matching index template found for data stream [{name}]"),
        );
    }
    json_response(200, json!({"acknowledged": true}))
}

/// Creates data stream `name` if a data-stream template matches it.
fn create_data_stream(cluster: &mut Cluster, name: &str) -> bool {
    if !cluster
        .data_stream_templates
        .iter()
        .any(|p| matches_pattern(p, name))
    {
        return false;
    }
    let backing = format!(".ds-{name}-2026.01.01-000001");
    cluster.data_streams.insert(name.to_owned(), backing);
    true
}

/// One item's answer: `(status, body of the item)`.
type ItemAnswer = (u16, Value);

fn item_error(status: u16, index: &str, id: &str, kind: &str, reason: &str) -> ItemAnswer {
    (
        status,
        json!({"_index": index, "_id": id, "status": status,
               "error": {"type": kind, "reason": reason, "index_uuid": "dOuBlEiNdEx", "shard": "0", "index": index}}),
    )
}

fn bulk(
    cluster: &mut Cluster,
    path_index: Option<&str>,
    query: &HashMap<String, String>,
    body: &[u8],
) -> Response {
    let started = Instant::now();
    if let Some((status, retry_after)) = cluster.refusals.pop_front() {
        cluster.bulks.push(BulkSeen {
            at: started,
            status,
            items: Vec::new(),
        });
        let mut response = match status {
            429 => error(
                429,
                "es_rejected_execution_exception",
                "rejected execution of coordinating operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, coordinating_operation_bytes=1048576, max_coordinating_and_primary_bytes=1024]",
            ),
            503 => error(
                503,
                "cluster_block_exception",
                "blocked by: [SERVICE_UNAVAILABLE/1/state not recovered / initialized];",
            ),
            413 => error(413, "content_too_long_exception", "entity content is too long"),
            other => error(other, "exception", "refused by the double's knob"),
        };
        if !retry_after.is_empty() {
            response
                .headers_mut()
                .insert("retry-after", retry_after.parse().expect("a header"));
        }
        return response;
    }
    if !body.is_empty() && !body.ends_with(b"\n") {
        return error(
            400,
            "illegal_argument_exception",
            "The bulk request must be terminated by a newline [\\n]",
        );
    }
    let pipeline = query.get("pipeline").cloned();
    let mut lines = body
        .split(|b| *b == b'\n')
        .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
    let mut items = Vec::new();
    let mut seen = Vec::new();
    let mut errors = false;
    let mut line_no = 0;
    while let Some(action_line) = lines.next() {
        line_no += 1;
        let action: Map<String, Value> = match serde_json::from_slice(action_line) {
            Ok(Value::Object(map)) if map.len() == 1 => map,
            _ => {
                return error(
                    400,
                    "illegal_argument_exception",
                    &format!("Malformed action/metadata line [{line_no}], expected a simple value for field [_index] but found something else"),
                )
            }
        };
        let (op, meta) = action.into_iter().next().expect("one entry");
        if !matches!(op.as_str(), "create" | "index" | "delete") {
            return error(
                400,
                "illegal_argument_exception",
                &format!("Malformed action/metadata line [{line_no}], expected one of [create, delete, index, update] but found [{op}]"),
            );
        }
        let target = meta["_index"]
            .as_str()
            .map(str::to_owned)
            .or_else(|| path_index.map(str::to_owned));
        let Some(target) = target else {
            return error(
                400,
                "action_request_validation_exception",
                "Validation Failed: 1: index is missing;",
            );
        };
        let id = meta["_id"].as_str().map(str::to_owned);
        let source = if op == "delete" {
            None
        } else {
            line_no += 1;
            match lines.next() {
                Some(line) => Some(line),
                None => {
                    return error(
                        400,
                        "illegal_argument_exception",
                        "The bulk request must be terminated by a newline [\\n]",
                    )
                }
            }
        };
        let (status, mut result) = item(
            cluster,
            &op,
            &target,
            id.clone(),
            source,
            pipeline.as_deref(),
        );
        if result.get("error").is_some() {
            errors = true;
        }
        result["status"] = json!(status);
        seen.push((
            result["_id"].as_str().unwrap_or_default().to_owned(),
            status,
        ));
        items.push(json!({ op: result }));
    }
    if cluster.lose_answers > 0 {
        cluster.lose_answers -= 1;
        cluster.bulks.push(BulkSeen {
            at: started,
            status: 504,
            items: seen,
        });
        return (StatusCode::GATEWAY_TIMEOUT, "504 Gateway Time-out").into_response();
    }
    cluster.bulks.push(BulkSeen {
        at: started,
        status: 200,
        items: seen,
    });
    json_response(
        200,
        json!({"took": started.elapsed().as_millis() as u64, "errors": errors, "items": items}),
    )
}

/// Writes one action; its status and item body.
fn item(
    cluster: &mut Cluster,
    op: &str,
    target: &str,
    id: Option<String>,
    source: Option<&[u8]>,
    pipeline: Option<&str>,
) -> ItemAnswer {
    let shown_id = id.clone().unwrap_or_default();
    if cluster.throttle_items > 0 {
        cluster.throttle_items -= 1;
        return item_error(
            429,
            target,
            &shown_id,
            "es_rejected_execution_exception",
            "rejected execution of org.elasticsearch.action.support.replication.TransportWriteAction$1 on EsThreadPoolExecutor[name = double-0/write, queue capacity = 10000]",
        );
    }
    if let Some(pipeline) = pipeline {
        if !cluster.pipelines.contains(pipeline) {
            return item_error(
                400,
                target,
                &shown_id,
                "illegal_argument_exception",
                &format!("pipeline with id [{pipeline}] does not exist"),
            );
        }
    }
    let stream = if cluster.data_streams.contains_key(target) {
        true
    } else if op == "create" && !cluster.mappings.contains_key(target) {
        create_data_stream(cluster, target)
    } else {
        false
    };
    if stream && op != "create" {
        return item_error(
            400,
            target,
            &shown_id,
            "illegal_argument_exception",
            "only write ops with an op_type of create are allowed in data streams",
        );
    }
    let index = if stream {
        cluster.data_streams[target].clone()
    } else {
        target.to_owned()
    };
    let id = id.unwrap_or_else(|| {
        cluster.next_auto_id += 1;
        format!("auto{:016}", cluster.next_auto_id)
    });
    if op == "delete" {
        return match cluster.docs.remove(&(index.clone(), id.clone())) {
            Some(_) => (
                200,
                json!({"_index": index, "_id": id, "result": "deleted"}),
            ),
            None => (
                404,
                json!({"_index": index, "_id": id, "result": "not_found"}),
            ),
        };
    }
    let mapping_error = cluster.mapping_error_type();
    let source: Value = match serde_json::from_slice(source.unwrap_or_default()) {
        Ok(value @ Value::Object(_)) => value,
        _ => {
            return item_error(
                400,
                &index,
                &id,
                mapping_error,
                "failed to parse: the source is not a JSON object",
            )
        }
    };
    if stream && source.get("@timestamp").is_none() {
        return item_error(
            400,
            &index,
            &id,
            mapping_error,
            "data stream timestamp field [@timestamp] is missing",
        );
    }
    let key = (index.clone(), id.clone());
    if let Some(existing) = cluster.docs.get(&key) {
        if op == "create" {
            return item_error(
                409,
                &index,
                &id,
                "version_conflict_engine_exception",
                &format!(
                    "[{id}]: version conflict, document already exists (current version [{}])",
                    existing.version
                ),
            );
        }
    }
    let mapping = cluster.mappings.entry(index.clone()).or_default();
    let mut new_fields = HashMap::new();
    if let Err(reason) = check_object(mapping, &mut new_fields, "", &source, &id) {
        return item_error(400, &index, &id, mapping_error, &reason);
    }
    mapping.extend(new_fields);
    let version = cluster.docs.get(&key).map_or(1, |d| d.version + 1);
    let doc = Doc {
        node: source
            .pointer("/auditrail/node")
            .and_then(Value::as_str)
            .map(str::to_owned),
        seq: source.pointer("/auditrail/seq").and_then(Value::as_u64),
        source: cluster.keep_sources.then_some(source),
        version,
    };
    cluster.docs.insert(key, doc);
    cluster.seq_no += 1;
    let (status, result) = if version == 1 {
        (201, "created")
    } else {
        (200, "updated")
    };
    (
        status,
        json!({"_index": index, "_id": id, "_version": version, "result": result,
               "_shards": {"total": 2, "successful": 1, "failed": 0},
               "_seq_no": cluster.seq_no - 1, "_primary_term": 1}),
    )
}

/// Checks an object's fields against `mapping` (and the fields this
/// document adds, in `new`), as dynamic mapping would; the reason when
/// the document does not fit.
fn check_object(
    mapping: &HashMap<String, FieldType>,
    new: &mut HashMap<String, FieldType>,
    prefix: &str,
    object: &Value,
    id: &str,
) -> Result<(), String> {
    let Value::Object(fields) = object else {
        return Ok(());
    };
    for (key, value) in fields {
        // Dots in a field name are object paths: {"user.id": 1} is
        // {"user": {"id": 1}}.
        let mut path = prefix.to_owned();
        let parts: Vec<&str> = key.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(part);
            if i + 1 < parts.len() {
                check_value(mapping, new, &path, &json!({}), id, false)?;
            }
        }
        check_value(mapping, new, &path, value, id, true)?;
    }
    Ok(())
}

fn check_value(
    mapping: &HashMap<String, FieldType>,
    new: &mut HashMap<String, FieldType>,
    path: &str,
    value: &Value,
    id: &str,
    descend: bool,
) -> Result<(), String> {
    let value_type = match value {
        Value::Null => return Ok(()),
        Value::Array(values) => {
            for v in values {
                check_value(mapping, new, path, v, id, descend)?;
            }
            return Ok(());
        }
        Value::Object(_) => FieldType::Object,
        Value::String(s) if looks_like_date(s) => FieldType::Date,
        Value::String(_) => FieldType::Text,
        Value::Bool(_) => FieldType::Boolean,
        Value::Number(n) if n.is_i64() || n.is_u64() => FieldType::Long,
        Value::Number(_) => FieldType::Float,
    };
    let mapped = mapping.get(path).or_else(|| new.get(path)).copied();
    let preview = || {
        let text = value.to_string();
        text.chars().take(20).collect::<String>()
    };
    match mapped {
        None => {
            new.insert(path.to_owned(), value_type);
        }
        Some(FieldType::Object) if value_type != FieldType::Object => {
            return Err(format!(
                "object mapping for [{path}] tried to parse field [{}] as object, but found a concrete value",
                path.rsplit('.').next().unwrap_or(path)
            ));
        }
        Some(mapped) if mapped != FieldType::Object && value_type == FieldType::Object => {
            return Err(format!(
                "failed to parse field [{path}] of type [{}] in document with id '{id}'. Preview of field's value: '{}'",
                mapped.name(),
                preview()
            ));
        }
        Some(mapped) => {
            let fits = match (mapped, value) {
                (FieldType::Object, _) | (FieldType::Text, _) => true,
                (FieldType::Long | FieldType::Float, Value::Number(_)) => true,
                (FieldType::Long | FieldType::Float, Value::String(s)) => {
                    s.trim().parse::<f64>().is_ok()
                }
                (FieldType::Boolean, Value::Bool(_)) => true,
                (FieldType::Boolean, Value::String(s)) => s == "true" || s == "false",
                (FieldType::Date, Value::String(s)) => looks_like_date(s),
                (FieldType::Date, Value::Number(n)) => n.is_u64(),
                _ => false,
            };
            if !fits {
                return Err(format!(
                    "failed to parse field [{path}] of type [{}] in document with id '{id}'. Preview of field's value: '{}'",
                    mapped.name(),
                    preview()
                ));
            }
        }
    }
    if descend && value_type == FieldType::Object {
        check_object(mapping, new, path, value, id)?;
    }
    Ok(())
}

/// What dynamic date detection takes for a date: `yyyy-MM-dd`, optionally
/// followed by a `T` and a time (strict_date_optional_time).
fn looks_like_date(s: &str) -> bool {
    let b = s.as_bytes();
    let digits =
        |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    b.len() >= 10
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b.len() == 10 || b[10] == b'T')
}

/// The concrete indices an index expression (comma-separated patterns,
/// data stream names) names.
fn resolve(cluster: &Cluster, expression: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let indices: BTreeSet<&String> = cluster.mappings.keys().collect();
    for pattern in expression.split(',') {
        for (stream, backing) in &cluster.data_streams {
            if matches_pattern(pattern, stream) || pattern == "_all" {
                names.insert(backing.clone());
            }
        }
        for index in &indices {
            // Wildcards do not match hidden (dot) indices.
            let visible = !index.starts_with('.') || !pattern.contains('*');
            if (matches_pattern(pattern, index) && visible) || pattern == "_all" {
                names.insert((*index).clone());
            }
        }
    }
    names
}

fn field(doc: &Doc, path: &str) -> Option<Value> {
    match path {
        "auditrail.node" => return doc.node.clone().map(Value::String),
        "auditrail.seq" => return doc.seq.map(Value::from),
        _ => {}
    }
    let pointer = format!("/{}", path.replace('.', "/"));
    doc.source.as_ref()?.pointer(&pointer).cloned()
}

/// A `term` query on a `text` field matches a token of the standard
/// analyzer (lower case, split on what is not a letter or digit); on
/// `.keyword` the whole value.
fn term_matches(doc: &Doc, field_name: &str, term: &Value) -> bool {
    let term = term.get("value").unwrap_or(term);
    if let Some(path) = field_name.strip_suffix(".keyword") {
        return field(doc, path).as_ref() == Some(term);
    }
    match (field(doc, field_name), term) {
        (Some(Value::String(text)), Value::String(term)) => text
            .to_lowercase()
            .split(|c: char| !c.is_alphanumeric())
            .any(|token| token == term),
        (Some(value), term) => &value == term,
        (None, _) => false,
    }
}

fn query_matches(doc: &Doc, query: &Value) -> bool {
    if let Some(term) = query.get("term").and_then(Value::as_object) {
        return term.iter().all(|(f, t)| term_matches(doc, f, t));
    }
    if let Some(b) = query.get("bool") {
        let all = |key: &str| {
            b.get(key)
                .and_then(Value::as_array)
                .is_none_or(|qs| qs.iter().all(|q| query_matches(doc, q)))
        };
        let should_ok = match b.get("should").and_then(Value::as_array) {
            None => true,
            Some(qs) if qs.is_empty() => true,
            Some(qs) => {
                let wanted = b
                    .get("minimum_should_match")
                    .and_then(Value::as_u64)
                    .unwrap_or(1) as usize;
                qs.iter().filter(|q| query_matches(doc, q)).count() >= wanted
            }
        };
        return all("filter") && all("must") && should_ok;
    }
    query.get("match_all").is_some()
}

fn search(cluster: &Cluster, target: &str, body: &[u8]) -> Response {
    let request: Value = if body.is_empty() {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return error(400, "parsing_exception", &e.to_string()),
        }
    };
    let indices = resolve(cluster, target);
    let query = request
        .get("query")
        .cloned()
        .unwrap_or(json!({"match_all": {}}));
    let hits: Vec<&Doc> = cluster
        .docs
        .iter()
        .filter(|((i, _), _)| indices.contains(i))
        .map(|(_, d)| d)
        .filter(|d| query_matches(d, &query))
        .collect();
    let mut aggregations = Map::new();
    if let Some(aggs) = request
        .get("aggs")
        .or_else(|| request.get("aggregations"))
        .and_then(Value::as_object)
    {
        for (name, agg) in aggs {
            let Some(path) = agg.pointer("/max/field").and_then(Value::as_str) else {
                return error(
                    400,
                    "parsing_exception",
                    "the double supports max aggregations only",
                );
            };
            let max = hits
                .iter()
                .filter_map(|d| field(d, path).and_then(|v| v.as_f64()))
                .fold(None, |m: Option<f64>, v| Some(m.map_or(v, |m| m.max(v))));
            aggregations.insert(name.clone(), json!({ "value": max }));
        }
    }
    json_response(
        200,
        json!({"took": 1, "timed_out": false,
               "_shards": {"total": indices.len(), "successful": indices.len(), "skipped": 0, "failed": 0},
               "hits": {"total": {"value": hits.len(), "relation": "eq"}, "max_score": null, "hits": []},
               "aggregations": aggregations}),
    )
}

fn count(cluster: &Cluster, target: &str) -> Response {
    let indices = resolve(cluster, target);
    let n = cluster
        .docs
        .keys()
        .filter(|(i, _)| indices.contains(i))
        .count();
    json_response(
        200,
        json!({"count": n, "_shards": {"total": indices.len(), "successful": indices.len(), "skipped": 0, "failed": 0}}),
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(high * 16 + low);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn url_decode_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (
                percent_decode(&k.replace('+', " ")),
                percent_decode(&v.replace('+', " ")),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_index_patterns_do() {
        assert!(matches_pattern("logs-*-*", "logs-auditrail-default"));
        assert!(!matches_pattern("logs-*-*", "logs-auditrail"));
        assert!(matches_pattern("audit-*.*.*", "audit-2026.05.04"));
        assert!(matches_pattern("audit", "audit"));
        assert!(!matches_pattern("audit", "audit-1"));
    }

    #[test]
    fn dynamic_mapping_refuses_what_does_not_fit() {
        let mut mapping = HashMap::new();
        let mut add = |doc: Value| -> Result<(), String> {
            let mut new = HashMap::new();
            check_object(&mapping, &mut new, "", &doc, "x")?;
            mapping.extend(new);
            Ok(())
        };
        add(json!({"a": {"mood": 3, "user.id": "u"}, "t": "2026-05-04T10:00:00Z"})).unwrap();
        add(json!({"a": {"mood": "4", "user": {"id": 5}}})).unwrap();
        let e = add(json!({"a": {"mood": "calm"}})).unwrap_err();
        assert!(e.contains("[a.mood] of type [long]"), "{e}");
        let e = add(json!({"a": {"user": "u"}})).unwrap_err();
        assert!(e.contains("object mapping for [a.user]"), "{e}");
        let e = add(json!({"a": {"mood": {"x": 1}}})).unwrap_err();
        assert!(e.contains("[a.mood] of type [long]"), "{e}");
        let e = add(json!({"t": "yesterday"})).unwrap_err();
        assert!(e.contains("of type [date]"), "{e}");
    }

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("geo%20ip"), "geo ip");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(
            url_decode_pairs("filter_path=errors%2Citems.*.status&pipeline=geo+ip"),
            [
                ("filter_path".to_owned(), "errors,items.*.status".to_owned()),
                ("pipeline".to_owned(), "geo ip".to_owned())
            ]
        );
    }
}
