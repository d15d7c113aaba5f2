//! A Kafka-protocol broker for the kafka sink tests, and a consumer that
//! reads back every record of a topic.
//!
//! By default each test starts its own `tansu` broker (a Kafka-compatible
//! broker from crates.io, with its in-memory storage) on a free port; the
//! binary is `$AUDITRAIL_TANSU`, else `tansu` on the PATH (`scripts/kafka-
//! broker` installs it), and a missing one fails the test loudly. When
//! `AUDITRAIL_TEST_KAFKA=host:port` names an Apache Kafka broker, the tests
//! run against it instead, on topics of their own.
//!
//! Between the clients and tansu sits a [`Gate`]: a plain TCP relay on the
//! port tansu advertises. Closing it refuses new connections and resets the
//! open ones, which is what a client sees of a broker that went down; tansu
//! itself keeps running, because its memory storage would not survive a
//! restart (and a broker that loses what it acknowledged is not the outage
//! under test). Nothing of the Kafka protocol passes through test code.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::net::{TcpListener, TcpStream};

use crate::free_port;

/// The broker the sink under test talks to.
pub struct KafkaBroker {
    /// `host:port` the sink and the consumer use.
    pub bootstrap: String,
    /// Our own tansu (none with `AUDITRAIL_TEST_KAFKA`).
    tansu: Option<Tansu>,
    /// A prefix no other test's topics have (an Apache Kafka broker is
    /// shared between tests and runs).
    pub prefix: String,
}

struct Tansu {
    child: Child,
    gate: Gate,
    _dir: tempfile::TempDir,
}

/// The tansu binary to run.
pub fn tansu_binary() -> PathBuf {
    std::env::var_os("AUDITRAIL_TANSU")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("tansu"))
}

impl KafkaBroker {
    /// Starts tansu (or names the `AUDITRAIL_TEST_KAFKA` broker).
    pub async fn start() -> KafkaBroker {
        let prefix = format!(
            "t{}x{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        if let Ok(bootstrap) = std::env::var("AUDITRAIL_TEST_KAFKA") {
            return KafkaBroker {
                bootstrap,
                tansu: None,
                prefix,
            };
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let (inner, outer) = (free_port(), free_port());
        let log = std::fs::File::create(dir.path().join("tansu.log")).expect("log");
        let bin = tansu_binary();
        let child = Command::new(&bin)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{inner}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{outer}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {} ({e}): tansu is not installed. Run scripts/kafka-broker (cargo install tansu --locked --features dynostore), or set AUDITRAIL_TANSU=/path/to/tansu, or AUDITRAIL_TEST_KAFKA=host:port for an Apache Kafka broker",
                    bin.display()
                )
            });
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", inner)).is_err() {
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on {inner} within 30s; its log:\n{}",
                std::fs::read_to_string(dir.path().join("tansu.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let gate = Gate::open(outer, inner).await;
        KafkaBroker {
            bootstrap: format!("127.0.0.1:{outer}"),
            tansu: Some(Tansu {
                child,
                gate,
                _dir: dir,
            }),
            prefix,
        }
    }

    /// Whether this is our own tansu (so it can be cut off).
    pub fn is_tansu(&self) -> bool {
        self.tansu.is_some()
    }

    /// The broker's log (tansu's), for failure messages.
    pub fn log(&self) -> String {
        self.tansu
            .as_ref()
            .map(|t| std::fs::read_to_string(t._dir.path().join("tansu.log")).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Cuts the broker off: connections refused, open ones reset. A no-op
    /// (said on stderr) against an Apache Kafka broker, which this test
    /// cannot stop.
    pub fn go_down(&self) {
        match &self.tansu {
            Some(t) => t.gate.close(),
            None => eprintln!(
                "AUDITRAIL_TEST_KAFKA: the broker cannot be stopped by the test; no outage"
            ),
        }
    }

    /// Lets clients reach the broker again.
    pub fn come_back(&self) {
        if let Some(t) = &self.tansu {
            t.gate.reopen();
        }
    }
}

impl Drop for KafkaBroker {
    fn drop(&mut self) {
        if let Some(t) = &mut self.tansu {
            t.gate.close();
            let _ = t.child.kill();
            let _ = t.child.wait();
        }
    }
}

/// A TCP relay from `outer` to `inner` that can be closed and reopened.
pub struct Gate {
    outer: u16,
    inner: u16,
    state: Arc<Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl Gate {
    async fn open(outer: u16, inner: u16) -> Gate {
        let gate = Gate {
            outer,
            inner,
            state: Arc::new(Mutex::new(None)),
        };
        gate.start().await;
        gate
    }

    async fn start(&self) {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_reuseaddr(true).expect("SO_REUSEADDR");
        let mut tries = 0;
        loop {
            match socket.bind(([127, 0, 0, 1], self.outer).into()) {
                Ok(()) => break,
                // The old listener's port may take a moment to free.
                Err(_) if tries < 100 => {
                    tries += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(e) => panic!("gate: binding 127.0.0.1:{}: {e}", self.outer),
            }
        }
        let listener: TcpListener = socket.listen(128).expect("listen");
        let inner = self.inner;
        // Every relay task is a child of the acceptor's JoinSet: aborting
        // the acceptor drops the set, which aborts (and so resets) every
        // open connection.
        let task = tokio::spawn(async move {
            let mut relays = tokio::task::JoinSet::new();
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    continue;
                };
                relays.spawn(async move {
                    let Ok(mut broker) = TcpStream::connect(("127.0.0.1", inner)).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut broker).await;
                });
                while relays.try_join_next().is_some() {}
            }
        });
        *self.state.lock().unwrap() = Some(task);
    }

    pub fn close(&self) {
        if let Some(task) = self.state.lock().unwrap().take() {
            task.abort();
        }
    }

    /// Opens the gate again (blocking: called from sync test closures).
    pub fn reopen(&self) {
        if self.state.lock().unwrap().is_some() {
            return;
        }
        let gate = Gate {
            outer: self.outer,
            inner: self.inner,
            state: self.state.clone(),
        };
        // The test's runtime is multi-threaded; start the acceptor on it.
        tokio::task::block_in_place(|| {
            tokio::runtime::Handle::current().block_on(gate.start());
        });
    }
}

/// One record a topic holds.
#[derive(Debug, Clone)]
pub struct KafkaRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: String,
    pub payload: serde_json::Value,
    /// The value as bytes, to compare copies of one event.
    pub raw: Vec<u8>,
}

/// Every record in `topics` (missing topics hold none), read from the
/// beginning until each partition has reported its end.
///
/// The end is librdkafka's partition EOF (the fetch reached the partition's
/// high watermark), not a watermark asked for beforehand: tansu 0.6.0
/// answers ListOffsets with wrong high watermarks for partitions other than
/// 0, while its fetches end where they should.
pub async fn read_topics(bootstrap: &str, topics: &[String]) -> Vec<KafkaRecord> {
    let bootstrap = bootstrap.to_owned();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        topics
            .iter()
            .flat_map(|topic| read_topic(&bootstrap, topic))
            .collect()
    })
    .await
    .expect("consumer task")
}

/// One topic with a consumer of its own: a partition EOF names only the
/// partition, not its topic.
fn read_topic(bootstrap: &str, topic: &str) -> Vec<KafkaRecord> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "auditrail-test-reader")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("allow.auto.create.topics", "false")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    let mut left = BTreeSet::new();
    for t in metadata.topics() {
        if t.error().is_some() {
            continue; // not created (yet)
        }
        for p in t.partitions() {
            assignment
                .add_partition_offset(topic, p.id(), Offset::Beginning)
                .expect("assignment");
            left.insert(p.id());
        }
    }
    let mut out = Vec::new();
    if left.is_empty() {
        return out;
    }
    consumer.assign(&assignment).expect("assign");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !left.is_empty() {
        assert!(
            Instant::now() < deadline,
            "reading {topic} took over 60s; partitions without an end: {left:?}"
        );
        match consumer.poll(Duration::from_millis(200)) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                left.remove(&partition);
            }
            Some(Err(e)) => panic!("consuming {topic}: {e}"),
            Some(Ok(message)) => {
                let raw = message.payload().unwrap_or_default().to_vec();
                out.push(KafkaRecord {
                    topic: topic.to_owned(),
                    partition: message.partition(),
                    offset: message.offset(),
                    key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                    payload: serde_json::from_slice(&raw).expect("a JSON value"),
                    raw,
                });
            }
        }
    }
    out
}

/// Waits until `topics` hold at least `n` records; returns them.
pub async fn wait_for_records(
    broker: &KafkaBroker,
    topics: &[String],
    n: usize,
    within: Duration,
) -> Vec<KafkaRecord> {
    let deadline = Instant::now() + within;
    loop {
        let records = read_topics(&broker.bootstrap, topics).await;
        if records.len() >= n || Instant::now() > deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The partition the Java client (and librdkafka's `murmur2_random`) puts
/// `key` in: murmur2 of the key, made positive, modulo the partitions.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    let (m, r) = (0x5bd1_e995_u32, 24);
    let mut h = 0x9747_b28c_u32 ^ key.len() as u32;
    let mut chunks = key.chunks_exact(4);
    for c in &mut chunks {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(m);
        k ^= k >> r;
        k = k.wrapping_mul(m);
        h = h.wrapping_mul(m);
        h ^= k;
    }
    let rest = chunks.remainder();
    if rest.len() >= 3 {
        h ^= (rest[2] as u32) << 16;
    }
    if rest.len() >= 2 {
        h ^= (rest[1] as u32) << 8;
    }
    if !rest.is_empty() {
        h ^= rest[0] as u32;
        h = h.wrapping_mul(m);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(m);
    h ^= h >> 15;
    ((h & 0x7fff_ffff) % partitions as u32) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_matches_the_java_client() {
        // Values from Kafka's own Utils.murmur2 tests / DefaultPartitioner.
        // Utils.toPositive(Utils.murmur2("21".getBytes())) % 3 etc. are not
        // published, but murmur2 of these strings is (UtilsTest):
        let cases: [(&[u8], i32); 3] = [
            (b"21", -973932308),
            (b"foobar", -790332482),
            (b"a-little-bit-long-string", -985981536),
        ];
        for (key, want) in cases {
            let full = java_partition(key, i32::MAX);
            // toPositive(want) % i32::MAX
            let positive = (want as u32 & 0x7fff_ffff) % i32::MAX as u32;
            assert_eq!(full as u32, positive, "{:?}", std::str::from_utf8(key));
        }
    }
}
