//! Configuration files. Both servers read TOML; the `[[custodians]]` tables (index, URL and the
//! two public keys of every custodian) are the same in every file of one cluster, and
//! [`Cluster`] is their validated form: parsed keys, indices `1..=n` each once, and
//! `n >= 2k - 1`, which dealer-free preprocessing needs (products of two degree-(k−1)
//! sharings have degree 2k−2, so 2k−1 custodians must take part in reducing them).
//!
//! Relative paths in a file are taken relative to the file's own directory, so a cluster's
//! directory can be moved or mounted into a container as a whole.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use quorumvm_package::PublicKey;
use quorumvm_sealing::CustodianPublicKey;
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid cluster: {0}")]
    Cluster(String),
}

/// One custodian as every member of the cluster knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustodianEntry {
    /// Its Shamir x-coordinate, 1..=n.
    pub index: u32,
    /// Where the coordinator and the other custodians reach it, e.g. `http://127.0.0.1:7101`.
    pub url: String,
    /// Its operator's ed25519 key (hex): approvals. The private half lives on the operator's
    /// machine (`quorumvm keygen`), never on the custodian's server.
    #[serde(alias = "signing_key")]
    pub operator_key: String,
    /// Its X25519 key (hex): shares are sealed to it; peer messages are keyed from it.
    pub sealing_key: String,
}

/// How many preprocessed kits the coordinator keeps ready per active program version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Refill when fewer than this many kits are ready.
    pub low_water: u64,
    /// Kits generated per batch (one two-round protocol run among the custodians).
    pub batch: u64,
    /// Stop refilling at this many ready kits.
    pub target: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            low_water: 20_000,
            batch: 2_000,
            target: 40_000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoordinatorConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub threshold: usize,
    /// ed25519 keys (hex) of the publishers whose packages may be installed.
    pub publishers: Vec<String>,
    #[serde(default)]
    pub pool: PoolConfig,
    pub custodians: Vec<CustodianEntry>,
    /// Refresh the custodians' shares this often (seconds); absent: only when the operator
    /// asks (`quorumvm reshare`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reshare_interval_s: Option<u64>,
}

/// Which wasmtime engine runs a custodian's evaluator plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Cranelift,
    Winch,
    Pulley,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustodianConfig {
    /// This custodian's index in `custodians`.
    pub index: u32,
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// The coordinator: where this custodian fetches packages and sealed shares from, and the
    /// key (hex) every order it obeys must be signed with.
    pub coordinator_url: String,
    pub coordinator_key: String,
    /// The coordinator's X25519 key (hex): with this custodian's sealing key it gives the key
    /// that authenticates this custodian's session tickets.
    pub coordinator_exchange_key: String,
    pub threshold: usize,
    #[serde(default)]
    pub engine: Engine,
    /// How long a session waits for a peer's round message before giving up.
    #[serde(default = "default_round_timeout_ms")]
    pub round_timeout_ms: u64,
    pub custodians: Vec<CustodianEntry>,
}

fn default_round_timeout_ms() -> u64 {
    2_000
}

/// A validated cluster: the threshold and every member with parsed keys, sorted by index.
#[derive(Debug, Clone)]
pub struct Cluster {
    threshold: usize,
    members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub index: u32,
    pub url: String,
    /// Its operator's key: approvals and freezes at this custodian verify under it.
    pub operator_key: PublicKey,
    pub sealing_key: CustodianPublicKey,
}

impl Cluster {
    pub fn new(threshold: usize, entries: &[CustodianEntry]) -> Result<Cluster, ConfigError> {
        let bad = |m: String| ConfigError::Cluster(m);
        let n = entries.len();
        if threshold == 0 || n < 2 * threshold - 1 {
            return Err(bad(format!(
                "{n} custodians cannot run threshold {threshold}: need k >= 1 and n >= 2k - 1 = {} \
                 (dealer-free multiplication reduces degree-2(k-1) products)",
                (2 * threshold).saturating_sub(1)
            )));
        }
        let mut members = Vec::with_capacity(n);
        for e in entries {
            if e.index == 0 || e.index as usize > n {
                return Err(bad(format!(
                    "custodian index {} is outside 1..={n}",
                    e.index
                )));
            }
            if members.iter().any(|m: &Member| m.index == e.index) {
                return Err(bad(format!("custodian index {} appears twice", e.index)));
            }
            if !e.url.starts_with("http://") && !e.url.starts_with("https://") {
                return Err(bad(format!(
                    "custodian {}'s url `{}` is not an http(s) URL",
                    e.index, e.url
                )));
            }
            let operator_key = PublicKey::from_file_text(&e.operator_key)
                .map_err(|err| bad(format!("custodian {}'s operator_key: {err}", e.index)))?;
            let sealing_key = CustodianPublicKey::from_file_text(&e.sealing_key)
                .map_err(|err| bad(format!("custodian {}'s sealing_key: {err}", e.index)))?;
            members.push(Member {
                index: e.index,
                url: e.url.trim_end_matches('/').to_string(),
                operator_key,
                sealing_key,
            });
        }
        members.sort_by_key(|m| m.index);
        Ok(Cluster { threshold, members })
    }

    pub fn threshold(&self) -> usize {
        self.threshold
    }

    pub fn n(&self) -> usize {
        self.members.len()
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn member(&self, index: u32) -> Option<&Member> {
        self.members.iter().find(|m| m.index == index)
    }

    pub fn indices(&self) -> Vec<u32> {
        self.members.iter().map(|m| m.index).collect()
    }
}

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let mut config: CoordinatorConfig = read_toml(path)?;
        config.data_dir = relative_to(path, &config.data_dir);
        config.cluster()?;
        config.publisher_keys()?;
        if config.pool.batch == 0 || config.pool.low_water > config.pool.target {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: "pool: need batch >= 1 and low_water <= target".into(),
            });
        }
        Ok(config)
    }

    pub fn cluster(&self) -> Result<Cluster, ConfigError> {
        Cluster::new(self.threshold, &self.custodians)
    }

    pub fn publisher_keys(&self) -> Result<Vec<PublicKey>, ConfigError> {
        self.publishers
            .iter()
            .map(|k| {
                PublicKey::from_file_text(k)
                    .map_err(|e| ConfigError::Cluster(format!("publisher key `{k}`: {e}")))
            })
            .collect()
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config serializes")
    }
}

impl CustodianConfig {
    pub fn load(path: &Path) -> Result<CustodianConfig, ConfigError> {
        let mut config: CustodianConfig = read_toml(path)?;
        config.data_dir = relative_to(path, &config.data_dir);
        let cluster = config.cluster()?;
        if cluster.member(config.index).is_none() {
            return Err(ConfigError::Cluster(format!(
                "index {} is not among the custodians",
                config.index
            )));
        }
        config.coordinator_public_key()?;
        config.coordinator_exchange_key()?;
        Ok(config)
    }

    pub fn cluster(&self) -> Result<Cluster, ConfigError> {
        Cluster::new(self.threshold, &self.custodians)
    }

    pub fn coordinator_public_key(&self) -> Result<PublicKey, ConfigError> {
        PublicKey::from_file_text(&self.coordinator_key)
            .map_err(|e| ConfigError::Cluster(format!("coordinator_key: {e}")))
    }

    pub fn coordinator_exchange_key(&self) -> Result<CustodianPublicKey, ConfigError> {
        CustodianPublicKey::from_file_text(&self.coordinator_exchange_key)
            .map_err(|e| ConfigError::Cluster(format!("coordinator_exchange_key: {e}")))
    }

    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a config serializes")
    }
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn relative_to(config_path: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        return p.to_path_buf();
    }
    config_path
        .parent()
        .map(|dir| dir.join(p))
        .unwrap_or_else(|| p.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use quorumvm_package::SecretKey;
    use quorumvm_sealing::CustodianSecretKey;

    fn entry(index: u32) -> CustodianEntry {
        CustodianEntry {
            index,
            url: format!("http://127.0.0.1:{}", 7100 + index),
            operator_key: SecretKey::generate().public().to_hex(),
            sealing_key: CustodianSecretKey::generate().public().to_hex(),
        }
    }

    #[test]
    fn clusters_are_validated() {
        let three: Vec<_> = (1..=3).map(entry).collect();
        let c = Cluster::new(2, &three).unwrap();
        assert_eq!((c.threshold(), c.n(), c.indices()), (2, 3, vec![1, 2, 3]));
        // 3 custodians cannot reduce degree-4 products for k = 3.
        assert!(Cluster::new(3, &three).is_err());
        assert!(Cluster::new(0, &three).is_err());
        let mut dup = three.clone();
        dup[2].index = 1;
        assert!(
            Cluster::new(2, &dup)
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
        let mut far = three.clone();
        far[2].index = 9;
        assert!(Cluster::new(2, &far).is_err());
        let mut badkey = three.clone();
        badkey[1].operator_key = "00".into();
        assert!(
            Cluster::new(2, &badkey)
                .unwrap_err()
                .to_string()
                .contains("custodian 2")
        );
    }

    #[test]
    fn files_round_trip_with_relative_data_dirs() {
        let dir = std::env::temp_dir().join(format!("qvm-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = CustodianConfig {
            index: 2,
            listen: "127.0.0.1:7102".parse().unwrap(),
            data_dir: "custodian-2".into(),
            coordinator_url: "http://127.0.0.1:7100".into(),
            coordinator_key: SecretKey::generate().public().to_hex(),
            coordinator_exchange_key: CustodianSecretKey::generate().public().to_hex(),
            threshold: 2,
            engine: Engine::Winch,
            round_timeout_ms: 1500,
            custodians: (1..=3).map(entry).collect(),
        };
        let path = dir.join("custodian-2.toml");
        std::fs::write(&path, config.to_toml()).unwrap();
        let back = CustodianConfig::load(&path).unwrap();
        assert_eq!(back.data_dir, dir.join("custodian-2"));
        assert_eq!(back.engine, Engine::Winch);
        std::fs::write(
            &path,
            config
                .to_toml()
                .replace("index = 2\n", "index = 2\nbogus = 1\n"),
        )
        .unwrap();
        assert!(CustodianConfig::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
