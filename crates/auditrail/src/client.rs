//! The commands that read events: `query` and `tail`, against a
//! running server's admin API or a stopped server's spool directory.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use auditrail_spool::{check_is_spool, Budget, Spool, SpoolConfig};

use crate::output::{EventView, EventsPage, Format, PageEnd, PageLine, Printer};
use crate::query_args::QueryArgs;

/// A running server's admin API, or a stopped server's spool.
#[derive(Debug, Clone, clap::Args)]
pub struct Location {
    /// The admin API of a running server.
    #[arg(long, default_value = "http://127.0.0.1:8686")]
    pub admin: String,
    /// Use this spool directory directly (its server must be stopped).
    #[arg(long = "data-dir")]
    pub data_dir: Option<PathBuf>,
    /// The environment variable holding the bearer token to send: the
    /// operator's (every tenant) or a writer's (its own tenant), or an OIDC
    /// JWT. Never the token itself on the command line, where `ps` shows it.
    #[arg(long = "token-env", value_name = "VAR")]
    pub token_env: Option<String>,
    /// PEM: the CA that signed an `https://` admin API's certificate (when
    /// it is not a public one).
    #[arg(long = "ca-file", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM: a client certificate and its key, for an admin listener that
    /// asks for one (mTLS).
    #[arg(long = "client-cert", value_name = "FILE", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    #[arg(long = "client-key", value_name = "FILE", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

impl Location {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.admin.trim_end_matches('/'))
    }

    /// Opens the spool at `--data-dir`, if one was given.
    pub fn open_spool(&self) -> anyhow::Result<Option<Arc<Spool>>> {
        let Some(dir) = &self.data_dir else {
            return Ok(None);
        };
        // A wrong path is an error, not a new empty spool.
        check_is_spool(dir)?;
        // The node id only matters for writing events, which no client does.
        let spool = Spool::open(SpoolConfig::new(dir, "reader"))
            .with_context(|| format!("opening spool {}", dir.display()))?;
        Ok(Some(Arc::new(spool)))
    }

    /// An HTTP client for the admin API, trusting `--ca-file` and showing
    /// `--client-cert` when given.
    pub fn client(&self) -> anyhow::Result<reqwest::Client> {
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &self.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("--ca-file: reading {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--ca-file {}: not PEM certificates", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&self.client_cert, &self.client_key) {
            let mut pem = std::fs::read(cert)
                .with_context(|| format!("--client-cert: reading {}", cert.display()))?;
            pem.extend(
                std::fs::read(key)
                    .with_context(|| format!("--client-key: reading {}", key.display()))?,
            );
            builder = builder.identity(
                reqwest::Identity::from_pem(&pem)
                    .context("--client-cert/--client-key: not a PEM certificate and key")?,
            );
        }
        builder.build().context("setting up the HTTP client")
    }

    /// The token named by `--token-env`, if one was named.
    pub fn token(&self) -> anyhow::Result<Option<String>> {
        self.token_env.as_deref().map(token_from_env).transpose()
    }

    /// Sends a request to the admin API and returns its JSON answer, with
    /// errors that say what to try.
    pub async fn call(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<serde_json::Value> {
        let body = self
            .send(request)
            .await?
            .text()
            .await
            .context("reading the admin API's answer")?;
        serde_json::from_str(&body).context("the admin API's answer is not JSON")
    }

    /// Sends a request to the admin API; an answer other than a success is
    /// an error that holds the server's message. While the server is busy
    /// (429: its queries are all running), it waits as `Retry-After` says
    /// and asks again, for up to [`BUSY_WAIT`] in all.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = match self.token()? {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let busy_since = std::time::Instant::now();
        loop {
            let again = request.try_clone();
            let response = request.send().await.with_context(|| {
                format!(
                    "cannot reach the admin API at {} (is `auditrail serve` running? or use --data-dir)",
                    self.admin
                )
            })?;
            let status = response.status();
            if status.is_success() {
                return Ok(response);
            }
            let wait = retry_after(&response);
            let body = response.text().await.unwrap_or_default();
            let message = server_message(&body);
            match (again, wait) {
                (Some(again), Some(wait))
                    if status == reqwest::StatusCode::TOO_MANY_REQUESTS
                        && busy_since.elapsed() + wait <= BUSY_WAIT =>
                {
                    tracing::warn!(
                        "{} is busy ({message}); asking again in {wait:?}",
                        self.admin
                    );
                    tokio::time::sleep(wait).await;
                    request = again;
                }
                _ if status == reqwest::StatusCode::UNAUTHORIZED && self.token_env.is_none() => {
                    bail!(
                        "{} answered {status}: {message}\n(the admin API wants a token: put it \
                         in an environment variable and pass --token-env VAR)",
                        self.admin
                    )
                }
                _ => bail!("{} answered {status}: {message}", self.admin),
            }
        }
    }
}

/// The token in the environment variable `name` (`--token-env`), trimmed.
pub fn token_from_env(name: &str) -> anyhow::Result<String> {
    match std::env::var(name) {
        Ok(token) if !token.trim().is_empty() => Ok(token.trim().to_owned()),
        Ok(_) => bail!("--token-env {name}: the environment variable is empty"),
        Err(_) => bail!("--token-env {name}: the environment variable is not set"),
    }
}

/// How long a command keeps asking again while the admin API answers 429
/// (a stream may hold the only query slot for up to `query_timeout`).
pub const BUSY_WAIT: Duration = Duration::from_secs(60);

/// A 429's `Retry-After` in seconds (at most a minute).
fn retry_after(response: &reqwest::Response) -> Option<Duration> {
    let seconds: u64 = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(seconds.min(60)))
}

/// The `error` of a JSON error body, else the body.
fn server_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned())
}

/// Where events are read from.
#[derive(Debug, Clone, clap::Args)]
pub struct Source {
    #[command(flatten)]
    pub at: Location,
    /// Trace link template for --data-dir output, e.g.
    /// `http://127.0.0.1:16686/trace/{trace_id}` (a server uses its config).
    #[arg(long = "trace-url")]
    pub trace_url: Option<String>,
}

/// What `query` and `tail` take: filters, where to read, how to print.
#[derive(Debug, Clone, clap::Args)]
pub struct ReadArgs {
    #[command(flatten)]
    pub filter: QueryArgs,
    #[command(flatten)]
    pub source: Source,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

enum Reader {
    Admin {
        client: reqwest::Client,
        at: Location,
    },
    Spool {
        spool: Arc<Spool>,
        trace_url: Option<String>,
    },
}

impl Reader {
    fn open(source: &Source) -> anyhow::Result<Reader> {
        match source.at.open_spool()? {
            Some(spool) => Ok(Reader::Spool {
                spool,
                trace_url: source.trace_url.clone(),
            }),
            None => Ok(Reader::Admin {
                client: source.at.client()?,
                at: source.at.clone(),
            }),
        }
    }

    /// One page (`args.limit` > 0): the newest matches, or with `after_seq`
    /// the first ones above it.
    async fn page(&self, args: &QueryArgs) -> anyhow::Result<EventsPage> {
        match self {
            Reader::Admin { client, at } => {
                let body = at
                    .send(client.get(at.url("/v1/events")).query(args))
                    .await?
                    .text()
                    .await
                    .context("reading the admin API's answer")?;
                serde_json::from_str(&body).context("the admin API's answer is not an events page")
            }
            Reader::Spool { spool, trace_url } => {
                let filter = args
                    .to_filter(SystemTime::now())
                    .map_err(anyhow::Error::msg)?;
                let (events, end) = spool.query_within(&filter, &Budget::default())?;
                Ok(EventsPage::new(events, &end, trace_url.as_deref()))
            }
        }
    }

    /// Every match above `args.after_seq` in seq order, each handed to
    /// `each` as it arrives, over one request (which the server's limits
    /// may end early: see the returned end).
    async fn stream_once(
        &self,
        args: &QueryArgs,
        each: &mut dyn FnMut(EventView) -> std::io::Result<()>,
    ) -> anyhow::Result<PageEnd> {
        let args = QueryArgs {
            limit: 0,
            ..args.clone()
        };
        match self {
            Reader::Admin { client, at } => {
                let mut response = at
                    .send(client.get(at.url("/v1/events")).query(&args))
                    .await?;
                let mut lines = LineSplitter::default();
                let mut head = false;
                while let Some(chunk) = response
                    .chunk()
                    .await
                    .context("reading the admin API's answer")?
                {
                    for line in lines.push(&chunk) {
                        let line = std::str::from_utf8(&line)
                            .context("the admin API's answer is not UTF-8")?;
                        match PageLine::parse(line).map_err(anyhow::Error::msg)? {
                            PageLine::Head if !head => head = true,
                            PageLine::Event(event) if head => each(*event)?,
                            PageLine::End(end) if head => return Ok(end),
                            _ => bail!("the admin API's answer is out of order at: {line}"),
                        }
                    }
                }
                bail!("the admin API's answer ended before its last line (connection lost?)")
            }
            Reader::Spool { spool, trace_url } => {
                let filter = args
                    .to_filter(SystemTime::now())
                    .map_err(anyhow::Error::msg)?;
                let mut failed = None;
                let end = spool.scan(&filter, &Budget::default(), |event| {
                    match each(EventView::new(event, trace_url.as_deref())) {
                        Ok(()) => std::ops::ControlFlow::Continue(()),
                        Err(e) => {
                            failed = Some(e);
                            std::ops::ControlFlow::Break(())
                        }
                    }
                })?;
                if let Some(e) = failed {
                    return Err(e.into());
                }
                Ok(PageEnd::of(&end))
            }
        }
    }

    /// [`Reader::stream_once`], asking again from where the server stopped
    /// each time it stops at its scan budget or timeout, until every match
    /// was handed over. Each request stays within the server's limits.
    async fn stream(
        &self,
        args: &QueryArgs,
        each: &mut dyn FnMut(EventView) -> std::io::Result<()>,
    ) -> anyhow::Result<PageEnd> {
        let mut args = args.clone();
        loop {
            let end = self.stream_once(&args, each).await?;
            if end.complete {
                return Ok(end);
            }
            let error = end.error.as_deref().unwrap_or("the answer stopped early");
            let after = args.after_seq.unwrap_or(0);
            if !end.can_continue() || end.next_after_seq <= after {
                bail!("the server stopped the answer after seq {after}: {error}");
            }
            tracing::debug!(next_after_seq = end.next_after_seq, "{error}; continuing");
            args.after_seq = Some(end.next_after_seq);
        }
    }
}

/// Cuts a byte stream into lines (without their `\n`).
#[derive(Default)]
struct LineSplitter {
    partial: Vec<u8>,
}

impl LineSplitter {
    fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while let Some(at) = rest.iter().position(|&b| b == b'\n') {
            self.partial.extend_from_slice(&rest[..at]);
            lines.push(std::mem::take(&mut self.partial));
            rest = &rest[at + 1..];
        }
        self.partial.extend_from_slice(rest);
        lines
    }
}

pub async fn query(read: ReadArgs) -> anyhow::Result<()> {
    read.filter
        .to_filter(SystemTime::now())
        .map_err(anyhow::Error::msg)?;
    let reader = Reader::open(&read.source)?;
    let mut printer = Printer::new(read.format);
    // Line-buffered: each event is out as soon as it is printed.
    let mut out = std::io::stdout();
    if read.filter.limit == 0 {
        printer.header(&mut out)?;
        reader
            .stream(&read.filter, &mut |event| printer.event(&mut out, &event))
            .await?;
        out.flush()?;
    } else {
        let page = reader.page(&read.filter).await?;
        printer.print(&mut out, &page.events)?;
    }
    Ok(())
}

/// Prints the last `args.limit` matches, then follows new ones until
/// interrupted.
pub async fn tail(read: ReadArgs, every: Duration) -> anyhow::Result<()> {
    let mut args = read.filter;
    args.to_filter(SystemTime::now())
        .map_err(anyhow::Error::msg)?;
    let reader = Reader::open(&read.source)?;
    let mut printer = Printer::new(read.format);
    let mut out = std::io::stdout();
    printer.header(&mut out)?;
    let mut after = if args.limit == 0 {
        let end = reader
            .stream(&args, &mut |event| printer.event(&mut out, &event))
            .await?;
        end.next_after_seq
    } else {
        let first = reader.page(&args).await?;
        printer.print(&mut out, &first.events)?;
        first.end.next_after_seq
    };
    // What follows is read in seq order as it comes.
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(()),
            _ = tokio::time::sleep(every) => {}
        }
        args.after_seq = Some(after);
        let end = reader
            .stream(&args, &mut |event| printer.event(&mut out, &event))
            .await?;
        out.flush()?;
        after = end.next_after_seq;
    }
}
