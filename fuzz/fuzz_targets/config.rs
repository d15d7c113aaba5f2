//! The config file parser: `${VAR}` interpolation, TOML, validation.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // Some variables are set, others not, so both paths are explored.
    let env = |name: &str| (name.len() % 2 == 0).then(|| format!("value-of-{name}"));
    if let Ok(config) = auditrail::config::Config::parse(text, Path::new("fuzz.toml"), env) {
        let _ = config.receiver.receiver_config();
    }
});
