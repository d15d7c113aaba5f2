//! Power cuts while group commits are big: 8 clients with 1024 records
//! per request fill commits of several MiB, so sled writes batch values
//! (and leaves) over its blob threshold to new files under `blobs/`, the
//! files sled 0.34 never fsyncs and that came back empty after a cut. The
//! spool lives on a cutfs mount, which keeps only what was fsync'd; after
//! each cut auditrail restarts on what is left, and every acknowledged event
//! must be there exactly once, with gap-free seqs. (`power_cut.rs` cuts
//! under small commits, which sled keeps inline in its log.)

use std::collections::HashSet;
use std::time::Duration;

use auditrail_tests::cutfs::{CutDirs, CutFs};
use auditrail_tests::load::{load_until_killed_with, Stored};
use auditrail_tests::Server;

/// Load time before each kill and cut, in ms.
const CUTS: [u64; 3] = [1_500, 700, 2_500];

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_events_in_blob_files_survive_power_cuts() {
    let dirs = CutDirs::new();
    let (backing, work) = (&dirs.backing, &dirs.work);

    let mut acked = HashSet::new();
    let mut report = Vec::new();
    let mut durable_blobs = 0;
    for round in 0..=CUTS.len() {
        let fs = CutFs::mount(backing);
        let spool = fs.mountpoint().join("spool");
        let mut server = Server::try_start_at(work, &spool, "", "", &[]).unwrap_or_else(|log| {
            panic!(
                "auditrail did not restart after cut {round}:\n{}\n{log}",
                report.join("\n")
            )
        });
        if round > 0 {
            let stored = Stored::of(&server).await;
            let missing = stored.missing(&acked);
            assert!(
                missing.is_empty(),
                "cut {round} lost {} of {} acknowledged events, e.g. {:?}:\n{}",
                missing.len(),
                acked.len(),
                &missing[..missing.len().min(3)],
                report.join("\n")
            );
            assert!(stored.doubled().is_empty(), "{:?}", &stored.doubled()[..1]);
            assert!(stored.seqs_gap_free(), "seqs are not 1..={}", stored.len());
        }
        let Some(&ms) = CUTS.get(round) else {
            assert!(server.terminate().success(), "{}", server.log());
            fs.cut();
            break;
        };
        let this_round = load_until_killed_with(
            &mut server,
            &format!("blob{round}-"),
            8,
            1024,
            Duration::from_millis(ms),
        )
        .await;
        report.push(format!(
            "cut {} after {ms} ms: {} acknowledged; cutfs: {}",
            round + 1,
            this_round.len(),
            fs.stats()
        ));
        acked.extend(this_round);
        fs.cut();
        durable_blobs += std::fs::read_dir(backing.join("spool/blobs"))
            .map(|d| d.count())
            .unwrap_or(0);
    }
    println!("{}", report.join("\n"));
    assert!(acked.len() > 5_000, "too little load: {}", acked.len());
    assert!(
        durable_blobs > 0,
        "no blob file survived a cut, so this test did not exercise blobs:\n{}",
        report.join("\n")
    );
}
