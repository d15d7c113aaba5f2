//! The search page (`/ui`) in a real browser: Debian's chromium, driven
//! through chromedriver over WebDriver, against a real auditrail holding
//! events sent over OTLP. It searches, pages, opens an event, follows deep
//! links, shows hostile event text as text, and works with tokens.
//!
//! Screenshots land in `target/ui-artifacts/` (the paths are printed).

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use auditrail_tests::otlp::{attr, record, request, string, trace_id};
use auditrail_tests::{Server, Setup};
use fantoccini::{Client, ClientBuilder, Locator};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde_json::{json, Value};

/// chromedriver on a free port, and a headless chromium session on it.
struct Browser {
    client: Option<Client>,
    driver: Child,
    /// chromium's profile: its processes carry it on their command line,
    /// which is how [`Drop`] finds them after a failed test.
    profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Browser {
        for tool in ["chromedriver", "chromium"] {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let found = std::env::split_paths(&path).any(|dir| dir.join(tool).is_file());
            assert!(
                found,
                "{tool} is not on PATH: `apt-get install chromium chromium-driver` \
                 (scripts/test does)"
            );
        }
        // Port 0: chromedriver binds a free port itself and says which, so
        // two tests (or another process) never race for one.
        let mut driver = Command::new("chromedriver")
            .arg("--port=0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let stdout = driver.stdout.take().expect("chromedriver's stdout");
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end, so chromedriver never blocks on a full pipe.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(port) = line
                    .strip_prefix("ChromeDriver was started successfully on port ")
                    .and_then(|rest| rest.trim_end_matches('.').parse::<u16>().ok())
                {
                    let _ = port_tx.send(port);
                }
            }
        });
        // From here on, a panic drops it: chromedriver and chromium end.
        let mut browser = Browser {
            client: None,
            driver,
            profile: tempfile::tempdir().expect("a chromium profile dir"),
        };
        let port = port_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("chromedriver did not say which port it listens on");
        let url = format!("http://127.0.0.1:{port}");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": "/usr/bin/chromium",
                // Root in a container: no sandbox; a fixed size, so the
                // screenshots show what an auditor's window would.
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1500,900",
                         format!("--user-data-dir={}", browser.profile.path().display())],
            }),
        );
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        let client = ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("no chromium session through chromedriver: {e}"));
        browser.client = Some(client);
        browser
    }

    fn client(&self) -> &Client {
        self.client.as_ref().expect("session open")
    }

    async fn goto(&self, url: &str) {
        self.client()
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    }

    async fn js(&self, script: &str) -> Value {
        self.client()
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script failed: {e}\n{script}"))
    }

    /// Waits until `condition` (a JS expression) is true on the page.
    async fn wait_until(&self, what: &str, condition: &str) {
        let script = format!("return Boolean({condition});");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.js(&script).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let page = self.js(PAGE_STATE).await;
                panic!("timed out waiting for {what}; the page: {page:#}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits for the search that `search` (the page's URL query) shows to
    /// have finished: the URL says it and nothing is loading.
    async fn wait_search(&self, search: &str) {
        let condition = format!(
            "location.search === {} && !document.body.classList.contains('busy') \
             && document.getElementById('summary').textContent !== '…'",
            json!(search)
        );
        self.wait_until(&format!("the search {search:?}"), &condition)
            .await;
    }

    /// Waits until the table shows `n` rows.
    async fn wait_rows(&self, what: &str, n: usize) {
        let condition = format!("document.querySelectorAll('#rows tr').length === {n}");
        self.wait_until(what, &condition).await;
    }

    /// Clears the form, types `value` into the field `name`, searches, and
    /// returns the rows once the URL says `?{name}=…`.
    async fn search(&self, name: &str, value: &str) -> Vec<Vec<String>> {
        self.click("#search-clear").await;
        self.wait_search("").await;
        self.type_into(&format!("#f-{name}"), value).await;
        self.click("#search-go").await;
        let query: String = url_encoded(&[(name, value)]);
        self.wait_search(&format!("?{query}")).await;
        self.rows().await
    }

    /// Types `keys` (WebDriver key codes for Enter, Esc, ...) into
    /// whatever has the focus, as a person at the keyboard would.
    async fn keys(&self, keys: &str) {
        self.client()
            .active_element()
            .await
            .expect("an element with the focus")
            .send_keys(keys)
            .await
            .unwrap_or_else(|e| panic!("typing {keys:?}: {e}"));
    }

    /// Clicks the row `css` and waits for its detail view.
    async fn open_detail(&self, css: &str) {
        self.click(css).await;
        self.wait_until(
            "the detail view",
            "!document.getElementById('detail').hidden",
        )
        .await;
    }

    /// The results table: each row's cells' text.
    async fn rows(&self) -> Vec<Vec<String>> {
        let rows = self
            .js("return [...document.querySelectorAll('#rows tr')].map(r => [...r.cells].map(c => c.textContent));")
            .await;
        serde_json::from_value(rows).expect("rows are lists of texts")
    }

    async fn text(&self, css: &str) -> String {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .text()
            .await
            .expect("element text")
    }

    async fn click(&self, css: &str) {
        self.client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"))
            .click()
            .await
            .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
    }

    /// Types `value` into the input `css` (after clearing it).
    async fn type_into(&self, css: &str, value: &str) {
        let input = self
            .client()
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        input.clear().await.expect("clearing");
        input.send_keys(value).await.expect("typing");
    }

    /// Saves a screenshot as `target/ui-artifacts/{name}` and prints where.
    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client().screenshot().await.expect("screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/ui-artifacts");
        std::fs::create_dir_all(&dir).expect("artifacts dir");
        let path = dir.join(name);
        std::fs::write(&path, png).expect("writing the screenshot");
        let path = path.canonicalize().expect("screenshot path");
        println!("screenshot: {}", path.display());
        path
    }

    async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }
}

impl Drop for Browser {
    /// After a failed test the session is still open, and chromium would
    /// outlive chromedriver: end both, and only the processes of this
    /// browser (those started with its profile).
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
        let marker = format!("--user-data-dir={}", self.profile.path().display());
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
                continue;
            };
            if cmdline
                .split(|b| *b == 0)
                .any(|arg| arg == marker.as_bytes())
            {
                // SAFETY: kill(2) on a process this test started.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                }
            }
        }
    }
}

/// `key=value&…` as the page writes it into its URL (URLSearchParams).
fn url_encoded(pairs: &[(&str, &str)]) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("a URL");
    url.query_pairs_mut().extend_pairs(pairs);
    url.query().unwrap_or("").to_owned()
}

/// What the page shows, for a failure message.
const PAGE_STATE: &str = "return {url: location.href, \
    summary: document.getElementById('summary').textContent, \
    notice: document.getElementById('notice').hidden ? null : document.getElementById('notice').textContent, \
    rows: document.querySelectorAll('#rows tr').length};";

/// One audit event as a service's OTel SDK sends it.
struct Sent {
    uid: &'static str,
    service: &'static str,
    event: &'static str,
    actor: &'static str,
    actor_name: &'static str,
    outcome: &'static str,
    target: &'static str,
    body: &'static str,
    trace: u64,
    /// Seconds before now.
    ago: u64,
}

impl Sent {
    fn record(&self) -> LogRecord {
        let mut record = record(
            self.uid,
            trace_id(self.trace).0,
            [7; 8],
            self.body,
            vec![
                attr("event.name", string(self.event)),
                attr("user.id", string(self.actor)),
                attr("user.name", string(self.actor_name)),
                attr("audit.outcome", string(self.outcome)),
                attr("audit.target", string(self.target)),
                attr("client.address", string("10.1.2.3")),
                attr("gen_ai.request.model", string("sdxl-1.0")),
            ],
        );
        record.time_unix_nano -= self.ago * 1_000_000_000;
        record
    }
}

const EVENTS: [Sent; 4] = [
    Sent {
        uid: "ui-alice-generate",
        service: "imagegen",
        event: "image.generate",
        actor: "u-alice",
        actor_name: "Alice Martin",
        outcome: "success",
        target: "/data/images/cat-1.png",
        body: "a cat on a red sofa, oil painting",
        trace: 101,
        ago: 40,
    },
    Sent {
        uid: "ui-bob-generate",
        service: "imagegen",
        event: "image.generate",
        actor: "u-bob",
        actor_name: "Bob Stone",
        outcome: "failure",
        target: "/data/images/dog-7.png",
        body: "a dog in the snow",
        trace: 102,
        ago: 30,
    },
    Sent {
        uid: "ui-carol-config",
        service: "model-admin",
        event: "model_config.update",
        actor: "u-carol",
        actor_name: "Carol Diaz",
        outcome: "success",
        target: "/models/sdxl.yaml",
        body: "guidance_scale 7.5 -> 9",
        trace: 103,
        ago: 20,
    },
    Sent {
        uid: "ui-alice-delete",
        service: "imagegen",
        event: "image.delete",
        actor: "u-alice",
        actor_name: "Alice Martin",
        outcome: "success",
        target: "/data/images/cat-1.png",
        body: "removed by its owner",
        trace: 104,
        ago: 10,
    },
];

async fn send(server: &Server, token: Option<&str>, events: &[Sent]) {
    let mut client = LogsServiceClient::connect(server.grpc_url())
        .await
        .expect("connecting over gRPC");
    for sent in events {
        let mut export = tonic::Request::new(request(sent.service, vec![sent.record()]));
        if let Some(token) = token {
            export
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        client.export(export).await.expect("export accepted");
    }
}

/// The actor column's texts.
fn actors(rows: &[Vec<String>]) -> Vec<String> {
    rows.iter().map(|r| r[3].clone()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_auditor_searches_pages_opens_an_event_and_follows_deep_links() {
    let archive = tempfile::tempdir().expect("a dir for the file sink");
    let server = Server::start_with(
        "",
        &format!(
            "[query]\ntrace_url = \"http://tempo.example:3200/trace/{{trace_id}}\"\n\n\
             [[sinks]]\nname = \"archive\"\ntype = \"file\"\npath = \"{}\"\n",
            archive.path().display()
        ),
    );
    send(&server, None, &EVENTS).await;
    let ui = format!("{}/ui", server.admin_url());
    let browser = Browser::start().await;

    // The page opens on the newest events, newest first.
    browser.goto(&ui).await;
    browser.wait_rows("the first results", 4).await;
    let rows = browser.rows().await;
    assert_eq!(
        rows.iter().map(|r| r[2].as_str()).collect::<Vec<_>>(),
        [
            "image.delete",
            "model_config.update",
            "image.generate",
            "image.generate"
        ],
        "{rows:?}"
    );
    assert_eq!(rows[1][1], "success");
    assert_eq!(rows[2][1], "failure");
    assert!(rows[0][0].starts_with("20"), "a readable time: {rows:?}");
    browser.screenshot("search.png").await;

    // By keyboard: j moves to the second event, Enter opens it, Esc closes.
    browser.keys("j").await;
    browser.keys("\u{e007}").await;
    browser
        .wait_until(
            "the second event's detail",
            "!document.getElementById('detail').hidden && \
             document.getElementById('d-title').textContent === 'model_config.update'",
        )
        .await;
    browser.keys("\u{e00c}").await;
    browser
        .wait_until(
            "the detail view to close",
            "document.getElementById('detail').hidden",
        )
        .await;

    // By actor: alice's two events and no one else's; the URL says so.
    let rows = browser.search("actor", "u-alice").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        actors(&rows).iter().all(|a| a.contains("u-alice")),
        "{rows:?}"
    );

    // A deep link, as Grafana's trace link opens it: that trace's events,
    // with the search filled in.
    let bob_trace = trace_id(102).1;
    browser.goto(&format!("{ui}?trace_id={bob_trace}")).await;
    browser.wait_search(&format!("?trace_id={bob_trace}")).await;
    let rows = browser.rows().await;
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(rows[0][3].contains("u-bob"), "{rows:?}");
    let field = browser
        .client()
        .find(Locator::Css("#f-trace_id"))
        .await
        .unwrap();
    assert_eq!(
        field.prop("value").await.unwrap().as_deref(),
        Some(bob_trace.as_str())
    );

    // The detail view of bob's failed generation: every field.
    browser.open_detail("#rows tr").await;
    assert_eq!(browser.text("#d-title").await, "image.generate");
    let detail = browser.text("#d-body").await;
    for expected in [
        "u-bob",
        "Bob Stone",
        "10.1.2.3",
        "failure",
        "/data/images/dog-7.png",
        "imagegen",
        "a dog in the snow",
        "gen_ai.request.model",
        "sdxl-1.0",
        "ui-bob-generate",
        bob_trace.as_str(),
    ] {
        assert!(
            detail.contains(expected),
            "{expected:?} not in the detail view:\n{detail}"
        );
    }
    let api = server.events("actor=u-bob").await;
    let hash = api[0]["hash"].as_str().expect("a hash");
    assert!(detail.contains(hash), "the hash {hash} is shown");
    let link = browser
        .client()
        .find(Locator::Css("#d-trace-link"))
        .await
        .expect("a trace link");
    assert_eq!(
        link.attr("href").await.unwrap().as_deref(),
        Some(format!("http://tempo.example:3200/trace/{bob_trace}").as_str())
    );
    browser.screenshot("detail.png").await;

    browser.goto(&format!("{ui}?actor=u-carol")).await;
    browser.wait_search("?actor=u-carol").await;
    let rows = browser.rows().await;
    assert_eq!(actors(&rows).len(), 1, "{rows:?}");
    assert!(rows[0][3].contains("u-carol"), "{rows:?}");

    // Paging, newest first, two at a time: the four events once each.
    browser.goto(&format!("{ui}?limit=2")).await;
    browser.wait_search("?limit=2").await;
    let first = browser.rows().await;
    browser.click("#page-next").await;
    browser
        .wait_until(
            "the second page",
            "document.getElementById('summary').textContent.startsWith('Events 3')",
        )
        .await;
    let second = browser.rows().await;
    let bodies: Vec<&str> = first.iter().chain(&second).map(|r| r[7].as_str()).collect();
    assert_eq!(
        bodies,
        EVENTS.iter().rev().map(|e| e.body).collect::<Vec<_>>(),
        "pages: {first:?} then {second:?}"
    );
    browser.click("#page-prev").await;
    browser
        .wait_until(
            "the first page again",
            "document.getElementById('summary').textContent.startsWith('Events 1')",
        )
        .await;
    assert_eq!(browser.rows().await, first);

    // By target prefix: the images, not the model config.
    let rows = browser.search("target", "/data/images/*").await;
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter().all(|r| r[5].starts_with("/data/images/")),
        "{rows:?}"
    );
    assert!(!actors(&rows).iter().any(|a| a.contains("u-carol")));

    // Health and integrity: the spool accepts, the file sink delivers.
    browser.click("#pill-spool").await;
    browser
        .wait_until(
            "the health panel",
            "document.getElementById('pill-spool').textContent === 'Spool: accepting' && \
             document.getElementById('pill-sinks').textContent === 'Sinks: 1/1 healthy'",
        )
        .await;
    let sink = browser.text("#sink-rows tr").await;
    assert!(sink.starts_with("archive file"), "{sink}");
    browser.screenshot("health.png").await;
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn event_text_that_looks_like_markup_is_shown_as_text() {
    let server = Server::start();
    const BODY: &str = "<img src=x onerror=\"window.pwned='img'\"> prompt";
    const ACTOR: &str = "<script>window.pwned='script'</script>";
    const TARGET: &str = "<b>bold</b><svg onload=\"window.pwned='svg'\">";
    let mut client = LogsServiceClient::connect(server.grpc_url())
        .await
        .expect("connecting over gRPC");
    let hostile = record(
        "ui-hostile",
        trace_id(9).0,
        [9; 8],
        BODY,
        vec![
            attr("event.name", string("image.generate")),
            attr("user.id", string(ACTOR)),
            attr("audit.target", string(TARGET)),
            attr(
                "note",
                string("<iframe src=\"javascript:window.pwned='iframe'\">"),
            ),
        ],
    );
    client
        .export(request("<i>svc</i>", vec![hostile]))
        .await
        .expect("export accepted");

    // The page's headers: only its own script may run, nothing is sniffed.
    let page = reqwest::get(format!("{}/ui", server.admin_url()))
        .await
        .expect("GET /ui");
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert_eq!(page.headers()["x-content-type-options"], "nosniff");

    let browser = Browser::start().await;
    browser.goto(&format!("{}/ui", server.admin_url())).await;
    browser.wait_rows("the hostile event", 1).await;
    let rows = browser.rows().await;
    assert_eq!(rows[0][3], ACTOR, "{rows:?}");
    assert_eq!(rows[0][4], "<i>svc</i>");
    assert_eq!(rows[0][5], TARGET);
    assert_eq!(rows[0][7], BODY);
    browser.open_detail("#rows tr").await;
    assert_eq!(browser.text("#d-body-text").await, BODY);
    // Give any handler that slipped through a moment to run.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let found = browser
        .js("return {pwned: window.pwned || null, \
             markup: document.querySelectorAll('main img, main script, main svg, main b, main i, main iframe, \
             #detail img, #detail script, #detail svg, #detail b, #detail i, #detail iframe').length};")
        .await;
    assert_eq!(
        found,
        json!({"pwned": null, "markup": 0}),
        "event text became markup"
    );
    browser.screenshot("hostile.png").await;
    browser.close().await;
}

const OPERATOR: &str = "operator-token-for-the-ui-3c9e1f";
const ACME: &str = "acme-writer-token-for-the-ui-7d2b4a";

#[tokio::test(flavor = "multi_thread")]
async fn with_tokens_the_page_asks_for_one_and_sends_it() {
    let server = Server::start_setup(Setup {
        admin: "token_env = \"UI_OPERATOR_TOKEN\"",
        tables: "[[receiver.tokens]]\ntenant = \"acme\"\ntoken_env = \"UI_ACME_TOKEN\"\n",
        env: &[("UI_OPERATOR_TOKEN", OPERATOR), ("UI_ACME_TOKEN", ACME)],
        ..Setup::default()
    });
    send(&server, Some(ACME), &EVENTS[..2]).await;
    // The page itself needs no token (a browser cannot send one when it
    // opens a URL); the events do.
    let (status, _) = server.admin_get("/ui", None).await;
    assert_eq!(status, 200);
    let (status, _) = server.admin_get("/ui/app.js", None).await;
    assert_eq!(status, 200);
    let (status, _) = server.admin_get("/v1/events", None).await;
    assert_eq!(status, 401);

    let browser = Browser::start().await;
    browser
        .goto(&format!("{}/ui?actor=u-bob", server.admin_url()))
        .await;
    browser
        .wait_until(
            "the page to ask for a token",
            "!document.getElementById('notice').hidden && \
             document.getElementById('notice').textContent.includes('needs a bearer token')",
        )
        .await;
    assert!(browser.rows().await.is_empty());

    // The operator's token: the search runs, and a verify can be started.
    browser.type_into("#token", OPERATOR).await;
    browser.click("#token-use").await;
    browser.wait_rows("bob's event", 1).await;
    assert!(browser.rows().await[0][3].contains("u-bob"));
    browser.click("#pill-verify").await;
    browser
        .wait_until(
            "the verify button",
            "!document.getElementById('verify-run').hidden",
        )
        .await;
    browser.click("#verify-run").await;
    browser
        .wait_until(
            "the verify report",
            "document.getElementById('verify-report').textContent.includes('chain intact')",
        )
        .await;
    browser
        .wait_until(
            "the verify status from the trail",
            "document.getElementById('pill-verify').textContent.startsWith('Verified: intact')",
        )
        .await;
    browser.screenshot("status.png").await;
    // The run was done with the operator's token and is in the trail.
    let (status, page) = server
        .admin_get("/v1/events?event=auditrail.verify", Some(OPERATOR))
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["events"][0]["outcome"], "success", "{page}");

    // A tenant's token reads its own events, but not the trail's record of
    // the operator's verify (the internal tenant's): the page says so.
    browser.type_into("#token", ACME).await;
    browser.click("#token-use").await;
    browser
        .wait_until(
            "the verify status as acme sees it",
            "document.getElementById('pill-verify').textContent === 'Verify: not run'",
        )
        .await;
    browser.wait_rows("acme's event", 1).await;
    assert!(browser.rows().await[0][3].contains("u-bob"));
    browser.close().await;
}
