//! `auditrail hash`: what a value was stored as under a tenant's HMAC keys,
//! so that an investigator can search for a known user, e-mail address or
//! phone number that no one stored in clear.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};

use crate::config::Config;

/// Prints `value`'s HMAC under every key version of `tenant`, newest first,
/// one per line, each exactly as a redaction rule stores it. `-` reads the
/// value from stdin (one trailing newline removed), so that it shows in no
/// shell history or process list.
pub fn run(config_path: &Path, tenant: &str, value: &str) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let value = if value == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the value from stdin")?;
        let trimmed = text
            .strip_suffix('\n')
            .map(|t| t.strip_suffix('\r').unwrap_or(t));
        trimmed.map(str::to_owned).unwrap_or(text)
    } else {
        value.to_owned()
    };
    for line in hashes(&config, tenant, &value)? {
        println!("{line}");
    }
    Ok(())
}

/// `value` under every key version of `tenant` (or of the `*` keys when it
/// has none of its own), newest first.
pub fn hashes(config: &Config, tenant: &str, value: &str) -> anyhow::Result<Vec<String>> {
    let keyring = config.redaction.keyring()?;
    let Some(keys) = keyring.tenant(tenant) else {
        if config.redaction.keys.is_empty() {
            bail!("the config has no [[redaction.keys]]: nothing is stored as an HMAC");
        }
        bail!(
            "no [[redaction.keys]] entry for tenant {tenant} (and none with tenant = \"*\"): \
             its values are not stored as HMACs"
        );
    };
    Ok(keys.hash_all(value))
}
