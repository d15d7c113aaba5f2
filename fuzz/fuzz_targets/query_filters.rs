//! The query filters as `GET /v1/events?...` parses them (the CLI flags
//! reach the same `QueryArgs::to_filter`).
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use auditrail::query_args::{parse_time, QueryArgs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    if let Ok(args) = serde_urlencoded::from_bytes::<QueryArgs>(data) {
        let _ = args.to_filter(now);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = parse_time("since", text, now);
        let _ = parse_time("since", text, UNIX_EPOCH);
    }
});
