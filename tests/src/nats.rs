//! A NATS server with JetStream of the test's own (Debian's `nats-server`),
//! on a free port with its own store, so a test can stop and restart it,
//! and read back what a stream holds.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::free_port;

pub struct NatsServer {
    pub port: u16,
    store: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts `nats-server -js`; `max_payload` in bytes (the server's
    /// default is 1 MiB). Panics (loudly, naming the package) when the
    /// binary is missing.
    pub fn start(max_payload: Option<u32>) -> NatsServer {
        let store = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = store.path().join("nats.conf");
        let mut text = format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n}}\n",
            store.path().join("js").display()
        );
        if let Some(bytes) = max_payload {
            text.push_str(&format!("max_payload: {bytes}\n"));
        }
        std::fs::write(&config, text).expect("writing nats.conf");
        let mut server = NatsServer {
            port,
            store,
            config,
            child: None,
        };
        server.restart();
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again, on the same port and store).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "nats-server is running already");
        let log = std::fs::File::create(self.store.path().join("nats.log")).expect("log");
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server is not installed (Debian package `nats-server`; scripts/test installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on {} within 20s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// One message a stream holds.
#[derive(Debug, Clone)]
pub struct StreamMessage {
    pub subject: String,
    /// The `Nats-Msg-Id` header.
    pub msg_id: String,
    pub payload: serde_json::Value,
}

/// Every message `stream` holds, in stream order (empty when the stream
/// does not exist yet).
pub async fn stream_messages(url: &str, stream: &str) -> Vec<StreamMessage> {
    let client = async_nats::connect(url).await.expect("connecting to NATS");
    let js = jetstream::new(client);
    let Ok(mut stream) = js.get_stream(stream).await else {
        return Vec::new();
    };
    let info = stream.info().await.expect("stream info").clone();
    let mut out = Vec::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        if info.state.messages == 0 {
            break;
        }
        let Ok(message) = stream.get_raw_message(seq).await else {
            continue; // deleted
        };
        let msg_id = message
            .headers
            .get("Nats-Msg-Id")
            .map(|v| v.to_string())
            .unwrap_or_default();
        out.push(StreamMessage {
            subject: message.subject.to_string(),
            msg_id,
            payload: serde_json::from_slice(&message.payload).expect("a JSON payload"),
        });
    }
    out
}

/// Creates `stream` over `subjects` with a `max_msg_size` of its own (the
/// stream's limit, below the server's max_payload), as an operator would
/// before auditrail starts.
pub async fn create_stream_with_max_msg_size(
    url: &str,
    stream: &str,
    subjects: &str,
    max_msg_size: i32,
) {
    let client = async_nats::connect(url).await.expect("connecting to NATS");
    jetstream::new(client)
        .create_stream(jetstream::stream::Config {
            name: stream.to_owned(),
            subjects: vec![subjects.to_owned()],
            max_message_size: max_msg_size,
            ..Default::default()
        })
        .await
        .expect("creating the stream");
}
