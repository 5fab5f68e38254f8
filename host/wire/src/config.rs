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

pub use crate::fingerprint::Fingerprint;

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
    /// Its TLS key's pin: the coordinator and the other custodians connect to `url` only if
    /// the server there holds this key. Required unless the cluster runs `insecure_loopback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_fingerprint: Option<Fingerprint>,
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
    /// Plain HTTP, for a cluster whose every server is on this machine's loopback: refused
    /// with any other address. Without it every connection is TLS.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_loopback: bool,
    /// The certificate chain (PEM) callers see, e.g. issued by the organization's CA, and its
    /// key; absent: the self-signed `tls.crt` and `tls.key` in `data_dir`. The custodians pin
    /// the key, so either serves them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Where the coordinator keeps its state: absent, `coordinator.db` (SQLite) in `data_dir`;
    /// present, a PostgreSQL database that several replicas share (see [`Database`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<Database>,
}

/// A PostgreSQL database for a coordinator's replicas. Each replica runs with a config of its
/// own naming the same database, the same custodians and a copy of the same keys in its
/// `data_dir`, behind one load balancer (one URL and one pin for callers and custodians).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Database {
    /// `postgresql://USER@HOST:PORT/DATABASE` (or libpq's `key=value` form), reached without
    /// TLS: on the loopback or the coordinator organization's own network.
    pub url: String,
    /// A file holding the database user's password (a mounted secret), so that the URL, which
    /// travels with the rest of the config, carries none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// This replica's name, unique among the replicas sharing the database and the same at
    /// every start: the preprocessing batches a replica orders are its own to hand out, and a
    /// replica that restarts gives up only what it had itself left unfinished. Absent here, it
    /// is given at start (`quorumvm coordinator --replica NAME`), as Kubernetes gives each pod
    /// of a StatefulSet its stable name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<String>,
    /// How often, in milliseconds, this replica looks in the shared audit log for what the
    /// others changed (versions, approvals, identities, freezes, refreshes); 200 if absent. A
    /// request naming a version this replica does not know, or knows as pending, looks at once
    /// whatever this says, so it only bounds how long a freeze or retirement made at another
    /// replica goes unseen here (the custodians refuse what they froze themselves meanwhile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_ms: Option<u64>,
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
    /// This custodian's index in `custodians`; for a machine that joins the cluster later
    /// (`joins`), the index the membership statement that brings it in gives it.
    pub index: u32,
    /// This machine joins the cluster later: its key is in none of `custodians` (the
    /// configured cluster, its trust root), and it waits at `index` for the rotation that
    /// brings it in. Without it, a key in no membership is refused at start (the wrong data
    /// directory or index).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub joins: bool,
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
    /// The coordinator's TLS key's pin. Required unless `insecure_loopback`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coordinator_tls_fingerprint: Option<Fingerprint>,
    /// See [`CoordinatorConfig::insecure_loopback`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_loopback: bool,
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
    /// Its TLS key's pin; `None` only in an `insecure_loopback` cluster.
    pub tls: Option<Fingerprint>,
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
                tls: e.tls_fingerprint,
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

    /// The members as a config lists them: what [`Cluster::new`] reads back to this cluster.
    pub fn entries(&self) -> Vec<CustodianEntry> {
        self.members
            .iter()
            .map(|m| CustodianEntry {
                index: m.index,
                url: m.url.clone(),
                operator_key: m.operator_key.to_hex(),
                sealing_key: m.sealing_key.to_hex(),
                tls_fingerprint: m.tls,
            })
            .collect()
    }
}

impl CoordinatorConfig {
    pub fn load(path: &Path) -> Result<CoordinatorConfig, ConfigError> {
        let mut config: CoordinatorConfig = read_toml(path)?;
        config.data_dir = relative_to(path, &config.data_dir);
        config.tls_cert = config.tls_cert.map(|p| relative_to(path, &p));
        config.tls_key = config.tls_key.map(|p| relative_to(path, &p));
        if config.tls_cert.is_some() != config.tls_key.is_some() {
            return Err(ConfigError::Parse {
                path: path.to_path_buf(),
                message: "tls_cert and tls_key go together".into(),
            });
        }
        config.cluster()?;
        config.publisher_keys()?;
        let urls = config
            .custodians
            .iter()
            .map(|e| (&e.url, e.tls_fingerprint));
        check_transport(config.insecure_loopback, config.listen, urls)?;
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
        config.cluster()?;
        // An index among the configured custodians names this machine there; another is the
        // index a machine that joins later takes (the custodian checks its key against both at
        // start).
        if config.index == 0 {
            return Err(ConfigError::Cluster("custodian indices start at 1".into()));
        }
        config.coordinator_public_key()?;
        config.coordinator_exchange_key()?;
        let coordinator = (&config.coordinator_url, config.coordinator_tls_fingerprint);
        let urls = config
            .custodians
            .iter()
            .map(|e| (&e.url, e.tls_fingerprint));
        check_transport(
            config.insecure_loopback,
            config.listen,
            std::iter::once(coordinator).chain(urls),
        )?;
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

/// Every link TLS with a pinned key, or (`insecure_loopback`) every server on this machine's
/// loopback speaking plain HTTP: nothing in between, so a config cannot send shares in clear
/// across a network by mistake.
fn check_transport<'a>(
    insecure_loopback: bool,
    listen: SocketAddr,
    urls: impl IntoIterator<Item = (&'a String, Option<Fingerprint>)>,
) -> Result<(), ConfigError> {
    let bad = |m: String| Err(ConfigError::Cluster(m));
    if insecure_loopback && !listen.ip().is_loopback() {
        return bad(format!(
            "insecure_loopback: listen address {listen} is not a loopback address"
        ));
    }
    for (url, pin) in urls {
        match (insecure_loopback, url.split_once("://")) {
            (true, Some(("http", rest))) if is_loopback_host(rest) => {}
            (true, _) => {
                return bad(format!(
                    "insecure_loopback: `{url}` is not http:// to a loopback address"
                ));
            }
            (false, Some(("https", _))) if pin.is_some() => {}
            (false, Some(("https", _))) => {
                return bad(format!("`{url}` has no TLS key pin (tls_fingerprint)"));
            }
            (false, _) => {
                return bad(format!(
                    "`{url}` is not https://: plain HTTP needs insecure_loopback = true, and \
                     only on this machine's loopback"
                ));
            }
        }
    }
    Ok(())
}

/// Whether `url` (`scheme://host[:port]/...`) names a loopback address.
pub fn is_loopback_url(url: &str) -> bool {
    url.split_once("://")
        .is_some_and(|(_, rest)| is_loopback_host(rest))
}

/// Whether the authority of a URL (after `scheme://`) names a loopback address.
fn is_loopback_host(rest: &str) -> bool {
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.rsplit_once(':') {
        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => host,
        _ => authority,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
            tls_fingerprint: None,
        }
    }

    #[test]
    fn every_link_is_pinned_tls_or_all_on_the_loopback() {
        let listen: SocketAddr = "127.0.0.1:7100".parse().unwrap();
        let pin = Some(Fingerprint([7; 32]));
        let url = |u: &str| u.to_string();
        let check = |insecure, listen, u: &str, pin| {
            let u = url(u);
            check_transport(insecure, listen, [(&u, pin)]).map_err(|e| e.to_string())
        };
        assert!(check(false, listen, "https://10.0.0.7:7101", pin).is_ok());
        assert!(
            check(false, listen, "https://custodian-1:7101", None)
                .unwrap_err()
                .contains("no TLS key pin")
        );
        assert!(
            check(false, listen, "http://127.0.0.1:7101", pin)
                .unwrap_err()
                .contains("insecure_loopback")
        );
        assert!(check(true, listen, "http://127.0.0.1:7101", None).is_ok());
        assert!(check(true, listen, "http://localhost:7101/", None).is_ok());
        assert!(check(true, listen, "http://[::1]:7101", None).is_ok());
        assert!(check(true, listen, "http://10.0.0.7:7101", None).is_err());
        assert!(check(true, listen, "http://127.0.0.1.evil.com:7101", None).is_err());
        assert!(check(true, listen, "https://127.0.0.1:7101", pin).is_err());
        let everywhere: SocketAddr = "0.0.0.0:7100".parse().unwrap();
        assert!(
            check(true, everywhere, "http://127.0.0.1:7101", None)
                .unwrap_err()
                .contains("listen address")
        );
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
            joins: false,
            listen: "127.0.0.1:7102".parse().unwrap(),
            data_dir: "custodian-2".into(),
            coordinator_url: "http://127.0.0.1:7100".into(),
            coordinator_key: SecretKey::generate().public().to_hex(),
            coordinator_exchange_key: CustodianSecretKey::generate().public().to_hex(),
            threshold: 2,
            engine: Engine::Winch,
            round_timeout_ms: 1500,
            coordinator_tls_fingerprint: None,
            insecure_loopback: true,
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
