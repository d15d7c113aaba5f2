//! Counts the records Kafka topics hold, for `scripts/bench-sinks`: every
//! record of every topic whose name starts with `--prefix`, read from the
//! beginning to each partition's end. Read, not taken from the watermarks:
//! tansu 0.6.0 answers ListOffsets with wrong high watermarks for partitions
//! other than 0.
//!
//! `kafka_records --bootstrap 127.0.0.1:19092 --prefix audit.`

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn main() -> anyhow::Result<()> {
    let mut bootstrap = "127.0.0.1:9092".to_owned();
    let mut prefix = String::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bootstrap" => bootstrap = args.next().unwrap_or_default(),
            "--prefix" => prefix = args.next().unwrap_or_default(),
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    let timeout = Duration::from_secs(10);
    let lister: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let metadata = lister.fetch_metadata(None, timeout)?;
    let mut total = 0u64;
    for topic in metadata.topics() {
        if !topic.name().starts_with(&prefix) {
            continue;
        }
        // One consumer per topic: a partition EOF names only the partition.
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", "auditrail-bench-count")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .create()?;
        let mut assignment = TopicPartitionList::new();
        let mut left = HashSet::new();
        for partition in topic.partitions() {
            assignment.add_partition_offset(topic.name(), partition.id(), Offset::Beginning)?;
            left.insert(partition.id());
        }
        consumer.assign(&assignment)?;
        let deadline = Instant::now() + Duration::from_secs(300);
        while !left.is_empty() {
            anyhow::ensure!(
                Instant::now() < deadline,
                "reading {} took over 5 min",
                topic.name()
            );
            match consumer.poll(Duration::from_millis(500)) {
                None => {}
                Some(Err(KafkaError::PartitionEOF(partition))) => {
                    left.remove(&partition);
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(_)) => total += 1,
            }
        }
    }
    println!("{total}");
    Ok(())
}
