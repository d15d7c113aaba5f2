//! What the `splunk_hec` sink tests share: the HEC protocol double (crate
//! `auditrail-hec-double`, whose header names the Splunk documentation it
//! follows: no real Splunk can be installed here), the sink's config for
//! it, and waits on what it indexed.

use std::collections::HashSet;
use std::time::{Duration, Instant};

pub use auditrail_hec_double::{Books, HecDouble, Indexed, Knobs, Refusal, Seen};

use crate::sinks::tail;
use crate::Server;

/// The HEC token of the tests (a GUID, as Splunk's are).
pub const TOKEN: &str = "3f2b8c1e-5d4a-4e6f-9a7b-1c2d3e4f5a6b";

/// A double that takes [`TOKEN`], with `change` applied to its knobs.
pub fn double(change: impl FnOnce(&mut Knobs)) -> HecDouble {
    let mut knobs = Knobs {
        token: TOKEN.into(),
        ..Knobs::default()
    };
    change(&mut knobs);
    HecDouble::start(knobs)
}

/// A `[[sinks]]` table named `splunk` for `double`, its token in
/// `token_env`; `keys` are added to it (`index = ...`, `ack_timeout = ...`),
/// and the delivery is quick to retry, as tests want.
pub fn sink_toml(double: &HecDouble, token_env: &str, keys: &str) -> String {
    format!(
        "[[sinks]]\nname = \"splunk\"\ntype = \"splunk_hec\"\nurl = \"{}\"\ntoken_env = \"{token_env}\"\nack_poll_interval = \"100ms\"\n{keys}\n\
         [sinks.delivery]\nlinger = \"20ms\"\nbackoff_initial = \"50ms\"\nbackoff_max = \"1s\"\n",
        double.url()
    )
}

/// Waits until `double` has indexed every id in `ids` at least once.
pub async fn wait_indexed(
    double: &HecDouble,
    ids: &HashSet<String>,
    server: &Server,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    loop {
        let missing = {
            let books = double.books();
            ids.iter().filter(|id| books.copies(id) == 0).count()
        };
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} events never indexed within {within:?}:\n{}",
            ids.len(),
            tail(&server.log())
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
