//! HMAC keys: several versions per tenant, read from the environment or a
//! file, never from the config itself.
//!
//! A value hashes to `hmac-sha256:v<version>:<64 lower-case hex>`: the
//! HMAC-SHA256 (RFC 2104) of the value's UTF-8 bytes under the key's bytes.
//! The newest (highest) version hashes what arrives; older versions stay so
//! that `auditrail hash` can still say what a value hashed to before a
//! rotation.

use std::collections::BTreeMap;
use std::path::PathBuf;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// What every stored HMAC starts with.
pub const HMAC_PREFIX: &str = "hmac-sha256";

/// The shortest key accepted, in bytes: RFC 2104 advises a key no shorter
/// than the hash's output; a short key would let anyone holding the stored
/// values guess it, and then every low-entropy value (user ids, phone
/// numbers) behind them.
pub const MIN_KEY_BYTES: usize = 32;

/// The tenant name of keys that serve every tenant without keys of its own.
pub const ANY_TENANT: &str = "*";

/// Where a key's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// An environment variable: its value, trimmed.
    Env(String),
    /// A file: its text, trimmed.
    File(PathBuf),
}

/// One configured key version of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpec {
    /// A tenant name, or [`ANY_TENANT`].
    pub tenant: String,
    /// 1 or more; the highest of a tenant hashes new values.
    pub version: u32,
    pub source: KeySource,
}

/// Why keys could not be loaded. Each names the key by its place in the
/// config (`keys[i]`), its tenant and version.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("keys[{index}] (tenant {tenant}, version {version}): environment variable {name} is not set")]
    EnvMissing {
        index: usize,
        tenant: String,
        version: u32,
        name: String,
    },
    #[error(
        "keys[{index}] (tenant {tenant}, version {version}): reading key_file {path}: {source}"
    )]
    File {
        index: usize,
        tenant: String,
        version: u32,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "keys[{index}] (tenant {tenant}, version {version}): the key is {len} bytes, \
         at least {MIN_KEY_BYTES} are needed (e.g. `openssl rand -hex 32`)"
    )]
    TooShort {
        index: usize,
        tenant: String,
        version: u32,
        len: usize,
    },
    #[error("keys[{index}]: version must be at least 1")]
    Version { index: usize },
    #[error("keys[{index}]: tenant {tenant} has version {version} twice")]
    Duplicate {
        index: usize,
        tenant: String,
        version: u32,
    },
}

/// One tenant's keys, newest first.
#[derive(Clone)]
pub struct TenantKeys {
    /// (version, the HMAC state after the key schedule): cloning a keyed
    /// state is cheaper than keying a new one for every value.
    versions: Vec<(u32, Hmac<Sha256>)>,
}

impl TenantKeys {
    /// The newest version's HMAC of `value`: what is stored.
    pub fn hash(&self, value: &str) -> String {
        let (version, mac) = &self.versions[0];
        format_mac(*version, mac.clone(), value)
    }

    /// `value` under every version, newest first: what `auditrail hash`
    /// prints, so values stored before a rotation are found too.
    pub fn hash_all(&self, value: &str) -> Vec<String> {
        self.versions
            .iter()
            .map(|(version, mac)| format_mac(*version, mac.clone(), value))
            .collect()
    }

    /// The versions, newest first.
    pub fn versions(&self) -> impl Iterator<Item = u32> + '_ {
        self.versions.iter().map(|(v, _)| *v)
    }
}

impl std::fmt::Debug for TenantKeys {
    // Never the key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKeys")
            .field("versions", &self.versions().collect::<Vec<_>>())
            .finish()
    }
}

/// Whether `text` is exactly an HMAC as [`TenantKeys::hash`] writes it
/// (`hmac-sha256:v<version>:<64 lower-case hex>`), so nothing else is in it.
pub fn is_hmac(text: &str) -> bool {
    let Some(rest) = text
        .strip_prefix(HMAC_PREFIX)
        .and_then(|r| r.strip_prefix(":v"))
    else {
        return false;
    };
    let Some((version, hex)) = rest.split_once(':') else {
        return false;
    };
    !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
        && hex.len() == 64
        && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn format_mac(version: u32, mut mac: Hmac<Sha256>, value: &str) -> String {
    mac.update(value.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(HMAC_PREFIX.len() + 16 + 64);
    out.push_str(HMAC_PREFIX);
    out.push_str(":v");
    out.push_str(&version.to_string());
    out.push(':');
    out.push_str(&hex::encode(digest));
    out
}

/// Every tenant's keys.
#[derive(Debug, Clone, Default)]
pub struct Keyring {
    tenants: BTreeMap<String, TenantKeys>,
}

impl Keyring {
    /// Reads every key: a missing variable or file, a short key or a
    /// version given twice is an error naming the key.
    pub fn load(specs: &[KeySpec]) -> Result<Keyring, KeyError> {
        Keyring::load_with(specs, |name| std::env::var(name).ok())
    }

    /// [`Keyring::load`] with the environment given (for tests).
    pub fn load_with(
        specs: &[KeySpec],
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Keyring, KeyError> {
        let mut by_tenant: BTreeMap<String, Vec<(u32, Hmac<Sha256>)>> = BTreeMap::new();
        for (index, spec) in specs.iter().enumerate() {
            let (tenant, version) = (spec.tenant.clone(), spec.version);
            if version == 0 {
                return Err(KeyError::Version { index });
            }
            let text = match &spec.source {
                KeySource::Env(name) => env(name).ok_or_else(|| KeyError::EnvMissing {
                    index,
                    tenant: tenant.clone(),
                    version,
                    name: name.clone(),
                })?,
                KeySource::File(path) => {
                    std::fs::read_to_string(path).map_err(|source| KeyError::File {
                        index,
                        tenant: tenant.clone(),
                        version,
                        path: path.clone(),
                        source,
                    })?
                }
            };
            let key = text.trim();
            if key.len() < MIN_KEY_BYTES {
                return Err(KeyError::TooShort {
                    index,
                    tenant,
                    version,
                    len: key.len(),
                });
            }
            let versions = by_tenant.entry(tenant.clone()).or_default();
            if versions.iter().any(|(v, _)| *v == version) {
                return Err(KeyError::Duplicate {
                    index,
                    tenant,
                    version,
                });
            }
            let mac = Hmac::<Sha256>::new_from_slice(key.as_bytes())
                .expect("HMAC takes a key of any length");
            versions.push((version, mac));
        }
        Ok(Keyring::of(by_tenant))
    }

    /// A keyring of the given keys, as text (for tests and tools).
    pub fn from_keys<'a>(keys: impl IntoIterator<Item = (&'a str, u32, &'a [u8])>) -> Keyring {
        let mut by_tenant: BTreeMap<String, Vec<(u32, Hmac<Sha256>)>> = BTreeMap::new();
        for (tenant, version, key) in keys {
            let mac = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
            by_tenant
                .entry(tenant.to_owned())
                .or_default()
                .push((version, mac));
        }
        Keyring::of(by_tenant)
    }

    /// Each tenant's keys, newest first.
    fn of(by_tenant: BTreeMap<String, Vec<(u32, Hmac<Sha256>)>>) -> Keyring {
        let tenants = by_tenant
            .into_iter()
            .map(|(tenant, mut versions)| {
                versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
                (tenant, TenantKeys { versions })
            })
            .collect();
        Keyring { tenants }
    }

    /// `tenant`'s keys, else those of [`ANY_TENANT`].
    pub fn tenant(&self, tenant: &str) -> Option<&TenantKeys> {
        self.tenants
            .get(tenant)
            .or_else(|| self.tenants.get(ANY_TENANT))
    }

    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// One line per key, `tenant/v<version>/<16 hex>`: the hex is the
    /// key's HMAC of a fixed label, which tells keys apart and says nothing
    /// of them. What the trail records when keys rotate.
    pub fn fingerprints(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for (tenant, keys) in &self.tenants {
            for (version, mac) in &keys.versions {
                let mut mac = mac.clone();
                mac.update(b"auditrail key fingerprint");
                let digest = mac.finalize().into_bytes();
                lines.push(format!("{tenant}/v{version}/{}", hex::encode(&digest[..8])));
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 (a short key, so through `from_keys`).
    #[test]
    fn rfc_4231_case_2() {
        let ring = Keyring::from_keys([("t", 1, b"Jefe".as_slice())]);
        assert_eq!(
            ring.tenant("t")
                .unwrap()
                .hash("what do ya want for nothing?"),
            "hmac-sha256:v1:5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    /// RFC 4231 test cases 1 and 6 (6: a key longer than the block size).
    #[test]
    fn rfc_4231_cases_1_and_6() {
        let key1 = [0x0bu8; 20];
        let key6 = [0xaau8; 131];
        let ring = Keyring::from_keys([("a", 3, key1.as_slice()), ("b", 1, key6.as_slice())]);
        assert_eq!(
            ring.tenant("a").unwrap().hash("Hi There"),
            "hmac-sha256:v3:b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            ring.tenant("b")
                .unwrap()
                .hash("Test Using Larger Than Block-Size Key - Hash Key First"),
            "hmac-sha256:v1:60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn newest_version_hashes_and_all_versions_are_listed_newest_first() {
        let k = "k".repeat(32);
        let specs = [1, 3, 2].map(|version| KeySpec {
            tenant: "acme".into(),
            version,
            source: KeySource::Env(format!("K{version}")),
        });
        let ring = Keyring::load_with(&specs, |name| {
            Some(format!("{k}{name}\n")) // trimmed
        })
        .unwrap();
        let keys = ring.tenant("acme").unwrap();
        assert_eq!(keys.versions().collect::<Vec<_>>(), [3, 2, 1]);
        let all = keys.hash_all("alice");
        assert_eq!(all[0], keys.hash("alice"));
        assert!(all[0].starts_with("hmac-sha256:v3:"));
        assert!(all[2].starts_with("hmac-sha256:v1:"));
        let v1_alone = Keyring::from_keys([("x", 1, format!("{k}K1").as_bytes())]);
        assert_eq!(all[2], v1_alone.tenant("x").unwrap().hash("alice"));
        assert_ne!(all[0][15..], all[1][15..], "another key, another hash");
    }

    #[test]
    fn a_tenant_without_keys_uses_the_any_tenant_keys() {
        let ring = Keyring::from_keys([("*", 1, b"0123456789abcdef0123456789abcdef".as_slice())]);
        assert!(ring.tenant("whoever").is_some());
        let ring =
            Keyring::from_keys([("acme", 1, b"0123456789abcdef0123456789abcdef".as_slice())]);
        assert!(ring.tenant("globex").is_none());
    }

    #[test]
    fn load_errors_name_the_key() {
        let spec = |version, source| KeySpec {
            tenant: "acme".into(),
            version,
            source,
        };
        let err = Keyring::load_with(&[spec(1, KeySource::Env("NOPE".into()))], |_| None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("keys[0]") && err.contains("NOPE"), "{err}");
        let err = Keyring::load_with(&[spec(1, KeySource::Env("E".into()))], |_| {
            Some("short".into())
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("at least 32"), "{err}");
        let long = || Some("x".repeat(40));
        let err = Keyring::load_with(
            &[
                spec(1, KeySource::Env("A".into())),
                spec(1, KeySource::Env("B".into())),
            ],
            |_| long(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("keys[1]") && err.contains("twice"), "{err}");
        let err = Keyring::load_with(&[spec(0, KeySource::Env("A".into()))], |_| long())
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 1"), "{err}");
        let err = Keyring::load_with(
            &[spec(1, KeySource::File("/nonexistent/key".into()))],
            |_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/nonexistent/key"), "{err}");
    }

    #[test]
    fn hmacs_are_recognised_exactly() {
        let ring = Keyring::from_keys([("t", 12, b"k".as_slice())]);
        assert!(is_hmac(&ring.tenant("t").unwrap().hash("x")));
        for not in [
            "hmac-sha256:v1:abc",
            "hmac-sha256:v:960ddf949ae80402adb430890f0211fa886cb64e263aaf52fceff1cf5c470f1b",
            "hmac-sha256:v1:960DDF949ae80402adb430890f0211fa886cb64e263aaf52fceff1cf5c470f1b",
            "hmac-sha256:v1:960ddf949ae80402adb430890f0211fa886cb64e263aaf52fceff1cf5c470f1b x@y.org",
            "hmac-sha256:v1:alice@example.com",
        ] {
            assert!(!is_hmac(not), "{not}");
        }
    }

    #[test]
    fn debug_never_shows_key_material() {
        let ring =
            Keyring::from_keys([("t", 7, b"super-secret-key-material-0123456789".as_slice())]);
        let shown = format!("{ring:?}");
        assert!(!shown.contains("super-secret"), "{shown}");
        assert!(shown.contains('7'), "{shown}");
    }
}
