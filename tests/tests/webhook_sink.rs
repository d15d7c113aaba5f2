//! The webhook sink end to end: the real `auditrail serve` POSTing to a
//! receiver that runs inside this test. A webhook receiver is the user's
//! own service, so this receiver is the real far side: it checks the
//! signature and timestamp as docs/sinks.md tells users to, refuses a
//! batch holding a poison event with 400, can answer 429 and 503 with
//! `Retry-After`, and can be down altogether (its runtime dropped, so
//! connections are refused).

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use auditrail_tests::sinks::{
    client, kill_9_then_outage_with_env, numbered_batch, send, send_batch, sink_status, tail,
    wait_caught_up,
};
use auditrail_tests::{eventually_within, free_port, Server};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

const SECRET: &str = "whsec_e2e_9c1f0d";
const TOKEN: &str = "Bearer receiver-token";
/// The first byte of the span ids of this file's events.
const SPAN: u8 = 0xfb;
const CATCH_UP: Duration = Duration::from_secs(60);

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
struct Seen {
    at: Instant,
    wall: SystemTime,
    status: u16,
    ids: Vec<String>,
}

#[derive(Default)]
struct Books {
    /// Answers to give to the next requests instead of taking them:
    /// (status, Retry-After value).
    refusals: VecDeque<(u16, String)>,
    /// Event id → how many times it was accepted.
    accepted: HashMap<String, usize>,
    requests: Vec<Seen>,
    /// Requests whose signature, timestamp, headers or batch name were wrong.
    bad: Vec<String>,
}

type Receiver = Arc<Mutex<Books>>;

/// What a receiver does before trusting a request, as docs/sinks.md
/// describes it: the timestamp is recent, and the signature is the HMAC of
/// timestamp "." body. `Err` names what is wrong.
fn verify(headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or(format!("no {name}"))
    };
    let timestamp = header("x-auditrail-timestamp")?;
    let signature = header("x-auditrail-signature")?;
    let sent: u64 = timestamp.parse().map_err(|_| "timestamp".to_string())?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if now.abs_diff(sent) > 300 {
        return Err(format!("timestamp {sent} is not within 5 minutes of {now}"));
    }
    let hex = signature
        .strip_prefix("sha256=")
        .ok_or("signature scheme")?;
    let expected = hex::decode(hex).map_err(|_| "signature hex".to_string())?;
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.verify_slice(&expected)
        .map_err(|_| "signature does not match".to_string())?;
    if header("content-type")? != "application/x-ndjson" {
        return Err("content type".into());
    }
    if header("authorization")? != TOKEN {
        return Err("configured header missing".into());
    }
    Ok(())
}

async fn hook(State(books): State<Receiver>, headers: HeaderMap, body: Bytes) -> Response {
    let (status, retry_after, reason) = answer(&books, &headers, &body);
    let mut response = (status, reason).into_response();
    if let Some(value) = retry_after {
        response
            .headers_mut()
            .insert("retry-after", value.parse().unwrap());
    }
    response
}

fn answer(
    books: &Receiver,
    headers: &HeaderMap,
    body: &[u8],
) -> (StatusCode, Option<String>, String) {
    let mut books = books.lock().unwrap();
    if let Err(reason) = verify(headers, body) {
        books.bad.push(reason.clone());
        return (StatusCode::UNAUTHORIZED, None, reason);
    }
    let lines: Vec<serde_json::Value> = std::str::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<String> = lines
        .iter()
        .map(|l| l["event_id"].as_str().unwrap().to_owned())
        .collect();
    let batch = headers
        .get("x-auditrail-batch")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let named = format!(
        "test-node:{}-{}",
        lines[0]["seq"],
        lines[lines.len() - 1]["seq"]
    );
    if batch != named {
        books
            .bad
            .push(format!("batch header {batch:?}, lines {named:?}"));
    }
    let (status, retry_after, reason) =
        if let Some(poison) = ids.iter().find(|id| id.starts_with("poison")) {
            (
                StatusCode::BAD_REQUEST,
                None,
                format!("event {poison} is poison"),
            )
        } else if let Some((status, retry_after)) = books.refusals.pop_front() {
            (
                StatusCode::from_u16(status).unwrap(),
                Some(retry_after),
                "not now".into(),
            )
        } else {
            for id in &ids {
                *books.accepted.entry(id.clone()).or_default() += 1;
            }
            (StatusCode::OK, None, String::new())
        };
    books.requests.push(Seen {
        at: Instant::now(),
        wall: SystemTime::now(),
        status: status.as_u16(),
        ids,
    });
    (status, retry_after, reason)
}

/// The receiver listening on `addr`, in a runtime of its own: dropping it
/// ends every connection too, as a stopped service would.
struct Listening(Option<tokio::runtime::Runtime>);

fn listen(addr: SocketAddr, books: &Receiver) -> Listening {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/hooks/audit", axum::routing::post(hook))
        .with_state(books.clone());
    let listener = {
        // The test's own runtime cannot block on this one; entering it is
        // enough to register the socket with it.
        let _inside = runtime.enter();
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        // Back on the same port after being down, past TIME_WAIT.
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).expect("binding the receiver's port");
        socket.listen(1024).unwrap()
    };
    runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
    Listening(Some(runtime))
}

impl Drop for Listening {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Waits until the receiver has accepted every id in `ids`.
async fn wait_accepted(books: &Receiver, ids: &HashSet<String>, server: &Server) {
    let deadline = Instant::now() + CATCH_UP;
    loop {
        let missing = {
            let books = books.lock().unwrap();
            ids.iter()
                .filter(|id| !books.accepted.contains_key(*id))
                .count()
        };
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} events never accepted:\n{}",
            ids.len(),
            tail(&server.log())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The ids of `sent` but `left_out`.
fn all_but(sent: &HashMap<String, String>, left_out: &str) -> HashSet<String> {
    sent.keys().filter(|id| *id != left_out).cloned().collect()
}

/// The first request refused with `status`, and the request after it.
fn refused_and_next(books: &Receiver, status: u16) -> (Seen, Seen) {
    let books = books.lock().unwrap();
    let at = books
        .requests
        .iter()
        .position(|r| r.status == status)
        .unwrap_or_else(|| panic!("no request was answered {status}"));
    let next = books
        .requests
        .get(at + 1)
        .unwrap_or_else(|| panic!("no request after the {status}"));
    (books.requests[at].clone(), next.clone())
}

#[tokio::test(flavor = "multi_thread")]
async fn signed_batches_arrive_with_poison_retry_after_and_an_outage() {
    let books = Receiver::default();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let mut receiver = Some(listen(addr, &books));

    // The receiver's own check refuses a forged request.
    let forged = reqwest::Client::new()
        .post(format!("http://{addr}/hooks/audit"))
        .header("content-type", "application/x-ndjson")
        .header("authorization", TOKEN)
        .header("x-auditrail-timestamp", "1700000000")
        .header("x-auditrail-signature", "sha256=00")
        .body("{}\n")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), 401);
    books.lock().unwrap().bad.clear();

    let sinks = format!(
        "[[sinks]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://{addr}/hooks/audit\"\nsecret_env = \"HOOK_SECRET\"\ntimeout = \"2s\"\n\
         [sinks.headers]\nAuthorization = \"{TOKEN}\"\n\
         [sinks.delivery]\nmax_events = 100\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"1s\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_in_env(dir.path(), "", &sinks, &[("HOOK_SECRET", SECRET)]);
    let mut client = client(&server).await;
    let mut sent = HashMap::new();

    // A: all is well.
    send_batch(&mut client, &mut sent, SPAN, "A", 5).await;
    wait_accepted(&books, &sent.keys().cloned().collect(), &server).await;

    // A poison event among good ones: its batch is refused with 400, the
    // loop splits it, the poison event is dead-lettered, the rest arrives.
    for (prefix, n) in [("P1", 20), ("poison", 1), ("P2", 20)] {
        let (request, ids) = numbered_batch(SPAN, prefix, n);
        send(&mut client, request).await;
        sent.extend(ids);
    }
    let poison_id = "poison-0".to_string();
    let good = all_but(&sent, &poison_id);
    wait_accepted(&books, &good, &server).await;
    eventually_within(CATCH_UP, "the poison event is dead-lettered", || async {
        let (_, status) = sink_status(&server, "hook").await;
        status["dead_letters"] == 1
    })
    .await;
    let letters = server.dead_letters(Some("hook")).await;
    let letters = letters.as_array().unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["event"]["event_id"], poison_id);
    let reason = letters[0]["reason"].as_str().unwrap();
    assert!(
        reason.contains("HTTP 400") && reason.contains("is poison"),
        "{reason}"
    );

    // The dead letter's tombstone arrives too, before the next batch.
    eventually_within(CATCH_UP, "the dead letter's tombstone", || async {
        books
            .lock()
            .unwrap()
            .accepted
            .keys()
            .any(|id| id.starts_with("auditrail-"))
    })
    .await;

    // 429 with Retry-After in seconds: the retry waits that long.
    books.lock().unwrap().refusals.push_back((429, "2".into()));
    send_batch(&mut client, &mut sent, SPAN, "T", 1).await;
    wait_accepted(&books, &all_but(&sent, &poison_id), &server).await;
    let (refused, next) = refused_and_next(&books, 429);
    let waited = next.at - refused.at;
    eprintln!("429 Retry-After: 2 → retried after {waited:?}");
    assert!(waited >= Duration::from_secs(2), "retried after {waited:?}");
    assert_eq!(next.ids, refused.ids, "the same batch again");

    // 503 with Retry-After as an HTTP date: not retried before that time.
    let not_before = SystemTime::now() + Duration::from_secs(3);
    let date = httpdate::fmt_http_date(not_before);
    let not_before = httpdate::parse_http_date(&date).unwrap(); // whole seconds
    books.lock().unwrap().refusals.push_back((503, date));
    send_batch(&mut client, &mut sent, SPAN, "U", 1).await;
    wait_accepted(&books, &all_but(&sent, &poison_id), &server).await;
    let (refused, next) = refused_and_next(&books, 503);
    eprintln!(
        "503 Retry-After: date {:?} after the refusal → retried after {:?}",
        not_before.duration_since(refused.wall).unwrap_or_default(),
        next.at - refused.at
    );
    assert!(
        next.wall >= not_before,
        "retried before the Retry-After date"
    );

    // The receiver is down for a while: ingest goes on, the sink shows it,
    // and catches up once the receiver is back.
    drop(receiver.take());
    send_batch(&mut client, &mut sent, SPAN, "D", 10).await;
    eventually_within(CATCH_UP, "/readyz shows the failing webhook", || async {
        let (code, status) = sink_status(&server, "hook").await;
        assert_eq!(code, 200, "a failing sink does not make the node unready");
        status["healthy"] == false && status["lag_events"].as_u64() > Some(0)
    })
    .await;
    let (_, status) = sink_status(&server, "hook").await;
    eprintln!("while down: {status}");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .starts_with("connection"),
        "{status}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    receiver = Some(listen(addr, &books));
    let good = all_but(&sent, &poison_id);
    wait_accepted(&books, &good, &server).await;
    wait_caught_up(&server, "hook", sent.len(), CATCH_UP).await;

    // At least once: every good event accepted, the poison one never, and
    // every request properly signed and named.
    let books = books.lock().unwrap();
    assert!(books.bad.is_empty(), "{:?}", books.bad);
    assert!(!books.accepted.contains_key(&poison_id));
    // ...and the tombstone of the poison event's dead letter.
    let tombstones = books
        .accepted
        .keys()
        .filter(|id| id.starts_with("auditrail-"))
        .count();
    assert_eq!(tombstones, 1);
    assert_eq!(
        books.accepted.len(),
        good.len() + tombstones,
        "nothing else accepted"
    );
    let resent = books.accepted.values().filter(|n| **n > 1).count();
    eprintln!(
        "{} events accepted in {} requests; {resent} accepted more than once",
        good.len(),
        books.requests.len()
    );
    drop(receiver);
}

/// `kill -9` while the sink delivers, then the receiver down while
/// auditrail restarts and takes more: every acknowledged event is accepted
/// (at least once: a batch the receiver took just before the kill may come
/// again, and is counted; `X-Auditrail-Batch` and the ids let a receiver
/// drop it).
#[tokio::test(flavor = "multi_thread")]
async fn kill_9_during_delivery_and_an_outage_lose_nothing() {
    let books = Receiver::default();
    let addr: SocketAddr = ([127, 0, 0, 1], free_port()).into();
    let receiver = std::cell::RefCell::new(Some(listen(addr, &books)));
    let sinks = format!(
        "[[sinks]]\nname = \"hook\"\ntype = \"webhook\"\nurl = \"http://{addr}/hooks/audit\"\nsecret_env = \"HOOK_SECRET_KILL\"\ntimeout = \"2s\"\n\
         [sinks.headers]\nAuthorization = \"{TOKEN}\"\n\
         [sinks.delivery]\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"500ms\"\n"
    );
    let dir = tempfile::tempdir().unwrap();
    let (server, acked) = kill_9_then_outage_with_env(
        dir.path(),
        &sinks,
        &[("HOOK_SECRET_KILL", SECRET)],
        SPAN,
        || drop(receiver.borrow_mut().take()),
        || *receiver.borrow_mut() = Some(listen(addr, &books)),
    )
    .await;
    wait_accepted(&books, &acked, &server).await;
    let books = books.lock().unwrap();
    assert!(books.bad.is_empty(), "{:?}", books.bad);
    let doubles: usize = books.accepted.values().map(|n| n - 1).sum();
    eprintln!(
        "{} events accepted, {doubles} of them again (at-least-once)",
        acked.len()
    );
}
