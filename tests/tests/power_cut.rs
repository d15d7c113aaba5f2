//! Durability under a power cut, not just `kill -9`: the spool lives on a
//! cutfs mount, which keeps only what was fsync'd (file data, sizes and
//! directory entries) and drops the rest when the power is cut. After each
//! cut, auditrail restarts on what the backing directory holds, and every
//! acknowledged event must be there exactly once, with gap-free seqs and an
//! intact hash chain.
//!
//! The cuts come at different moments of the load: right after the start
//! (before or during the first commits, while even the spool directory's
//! creation may not be durable), and mid-load on a spool that already holds
//! events. Each round mounts the same backing directory afresh, so the next
//! cut continues on the same spool.

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use auditrail_tests::cutfs::{CutDirs, CutFs};
use auditrail_tests::load::{load_until_killed, Stored};
use auditrail_tests::{cli, Server};

/// (load time before the kill and the cut, what the moment is).
const CUTS: [(u64, &str); 6] = [
    (
        30,
        "right after the start, before or during the first commits",
    ),
    (1_500, "mid-load"),
    (300, "early in the load"),
    (2_500, "mid-load, on a spool that holds events"),
    (800, "mid-load"),
    (1_200, "mid-load"),
];

/// `auditrail verify --data-dir`: None if it reports the chain intact,
/// else what it said.
fn verify(spool: &Path) -> Option<String> {
    let out = cli(&["verify", "--data-dir", spool.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (!(out.status.success() && text.contains("chain intact")))
        .then(|| format!("verify exited {}: {}", out.status, text.trim()))
}

/// What is wrong with what `server` holds, given everything acknowledged.
async fn problems(
    server: &Server,
    acked: &HashSet<String>,
    this_round: &HashSet<String>,
) -> Vec<String> {
    let stored = Stored::of(server).await;
    let mut problems = Vec::new();
    let missing = stored.missing(acked);
    if !missing.is_empty() {
        let from_last = missing
            .iter()
            .filter(|id| this_round.contains(**id))
            .count();
        problems.push(format!(
            "{} of {} acknowledged events lost ({} of the {} acknowledged since the previous cut); {} events stored; e.g. {:?}",
            missing.len(),
            acked.len(),
            from_last,
            this_round.len(),
            stored.len(),
            &missing[..missing.len().min(3)]
        ));
    }
    let doubled = stored.doubled();
    if !doubled.is_empty() {
        problems.push(format!(
            "{} events stored more than once, e.g. {:?}",
            doubled.len(),
            &doubled[..doubled.len().min(3)]
        ));
    }
    if !stored.seqs_gap_free() {
        problems.push(format!("seqs are not 1..={}", stored.len()));
    }
    problems
}

#[tokio::test(flavor = "multi_thread")]
async fn acknowledged_events_survive_power_cuts() {
    let dirs = CutDirs::new();
    let (backing, work) = (&dirs.backing, &dirs.work);

    let mut acked = HashSet::new();
    let mut last_round = HashSet::new();
    let mut report = Vec::new();
    let mut failed = false;
    for round in 0..=CUTS.len() {
        let fs = CutFs::mount(backing);
        let spool = fs.mountpoint().join("spool");
        if round > 0 {
            let mut line = format!("after cut {round}:");
            if !spool.exists() {
                // Legitimate only while nothing was acknowledged; the
                // check of the ids below says so otherwise.
                line += " no spool directory;";
            } else if let Some(problem) = verify(&spool) {
                line += &format!(" {problem};");
                failed = true;
            }
            report.push(line);
        }
        let mut server = Server::try_start_at(work, &spool, "", "", &[]).unwrap_or_else(|log| {
            panic!(
                "auditrail did not restart after cut {round}:\n{}\n{log}",
                report.join("\n")
            )
        });
        if round > 0 {
            let problems = problems(&server, &acked, &last_round).await;
            let line = report.last_mut().unwrap();
            if problems.is_empty() {
                *line += " every acknowledged event there exactly once, seqs gap-free";
            } else {
                *line += &format!(" {}", problems.join("; "));
                failed = true;
            }
        }
        let Some(&(ms, moment)) = CUTS.get(round) else {
            assert!(server.terminate().success(), "{}", server.log());
            fs.cut();
            break;
        };
        last_round = load_until_killed(
            &mut server,
            &format!("cut{round}-"),
            4,
            Duration::from_millis(ms),
        )
        .await;
        if ms >= 1_000 {
            assert!(
                last_round.len() > 500,
                "cut {}: the load should get going, got {} acks:\n{}",
                round + 1,
                last_round.len(),
                server.log()
            );
        }
        report.push(format!(
            "cut {} ({moment}, {ms} ms of load): {} acknowledged; cutfs: {}",
            round + 1,
            last_round.len(),
            fs.stats()
        ));
        acked.extend(last_round.iter().cloned());
        fs.cut();
    }
    assert!(
        !failed,
        "power cuts lost acknowledged events:\n{}",
        report.join("\n")
    );
    assert!(
        acked.len() > 5_000,
        "too little load to prove anything: {}",
        acked.len()
    );
    // What the backing directory holds is a plain spool, intact on its own.
    let problem = verify(&backing.join("spool"));
    assert!(problem.is_none(), "{problem:?}");
    println!("{}", report.join("\n"));
}
