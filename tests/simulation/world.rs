//! The cluster a schedule starts from, and the hosts that run it.
//!
//! Installing a version (approvals, activation, the joint check of shares, the first kits) is
//! the same for every schedule, so it is done once per test binary on real processes (the
//! `quorumvm` binary, as `tests/cluster.rs` runs it): that is the [`Template`]. Each schedule
//! starts from a copy of its data directories (the compiled-component caches are shared, read
//! only) with its configuration pointed at simulated host names.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

use quorumvm_ledger::rusqlite;
use quorumvm_wire::config::{CoordinatorConfig, CustodianConfig, PoolConfig};

use crate::common::{Caller, Cluster, ok};
use crate::net;

/// `q = (x·w + 7)²` of a visible `x` and a secret `w`: one product of two shared wires, so
/// every evaluation takes a kit and a round of messages between the custodians. A budget small
/// enough that the schedules' loading clients run into it.
pub const PROGRAM: &str = "program sim
version 1
policy budget 6
policy rate 1000 per second
input x in -100..100
secret w in -10..10
mul y = x w
add t = y 7
mul q = t t
output q
";
pub const W: i64 = 3;
pub const BUDGET: u64 = 6;

/// The plain value every answer must equal.
pub fn expected(x: i64) -> String {
    ((x * W + 7) * (x * W + 7)).to_string()
}

/// The callers: two that load the cluster, one that checks it serves again afterwards.
pub const CALLERS: [&str; 3] = ["alice", "bob", "carol"];

/// Small batches, so that schedules also run preprocessing among their faults.
const POOL: PoolConfig = PoolConfig {
    low_water: 12,
    batch: 12,
    target: 24,
};

/// A cluster with `PROGRAM` active, kits ready and three callers approved, stopped, in the
/// scratch directory (so that the next run removes it).
pub struct Template {
    pub coordinator: CoordinatorConfig,
    pub custodians: Vec<CustodianConfig>,
    pub callers: Vec<Caller>,
    pub package_id: String,
    /// Each custodian operator's approval key (the key file's text), by index from 1.
    pub operators: Vec<String>,
}

/// The template, made on first use.
pub fn template() -> &'static Template {
    static TEMPLATE: OnceLock<Template> = OnceLock::new();
    TEMPLATE.get_or_init(Template::make)
}

impl Template {
    fn make() -> Template {
        let pool = format!(
            "[pool]\nlow_water = {}\nbatch = {}\ntarget = {}\n",
            POOL.low_water, POOL.batch, POOL.target
        );
        let cluster = Cluster::init(|_, text| {
            let start = text.find("[pool]").expect("a [pool] table");
            let end = text[start + 6..]
                .find("\n[")
                .map_or(text.len(), |i| start + 6 + i + 1);
            format!("{}{pool}{}", &text[..start], &text[end..])
        });
        cluster.start_all();
        let info = cluster.publish("sim", PROGRAM, &[&format!("w={W}")]);
        for i in [1, 2] {
            ok(cluster.approve(&info.package_id, i));
        }
        let callers: Vec<Caller> = CALLERS.iter().map(|n| cluster.identity(n)).collect();
        let rt = crate::common::runtime();
        let answer = rt.block_on(cluster.eval_ready(&callers[2], "sim", &[("x", "1".into())]));
        assert_eq!(answer.outputs["q"], expected(1));
        // Kits for the first requests (a batch still being generated at the stop is abandoned
        // at the next start, as after any crash).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while kits_ready(&rt, &cluster) < POOL.low_water {
            assert!(
                std::time::Instant::now() < deadline,
                "the pool did not fill"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        for name in ["coordinator", "custodian-1", "custodian-2", "custodian-3"] {
            cluster.kill(name);
        }
        let mut coordinator =
            CoordinatorConfig::load(&cluster.path("coordinator.toml")).expect("config");
        let mut custodians: Vec<CustodianConfig> =
            (1..=3).map(|i| cluster.custodian_config(i)).collect();
        // Fold the write-ahead logs into the databases, so that a copy is two files.
        let dbs = std::iter::once(coordinator.data_dir.join("coordinator.db"))
            .chain(custodians.iter().map(|c| c.data_dir.join("custodian.db")));
        for db in dbs {
            let conn = rusqlite::Connection::open(&db).expect("a template database");
            conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
                .expect("checkpoint");
        }
        let home = scratch().join("template");
        coordinator.data_dir = copy_tree(&coordinator.data_dir, &home.join("coordinator"));
        for c in &mut custodians {
            c.data_dir = copy_tree(&c.data_dir, &home.join(format!("custodian-{}", c.index)));
        }
        Template {
            coordinator,
            custodians,
            callers,
            package_id: info.package_id,
            operators: (1..=3)
                .map(|i| {
                    std::fs::read_to_string(cluster.path(&format!("operators/custodian-{i}.key")))
                        .expect("an operator's key")
                })
                .collect(),
        }
    }
}

fn kits_ready(rt: &tokio::runtime::Runtime, cluster: &Cluster) -> u64 {
    rt.block_on(async {
        let text = cluster
            .http
            .get(format!("{}/metrics", cluster.coordinator_url))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .find(|l| l.starts_with("quorumvm_kits_available{"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0) as u64
    })
}

/// One schedule's copy of the template, with every server's configuration pointed at its
/// simulated host; removed when dropped.
pub struct World {
    pub dir: PathBuf,
    pub coordinator: CoordinatorConfig,
    pub custodians: Vec<CustodianConfig>,
}

/// Where the template and the schedules keep their databases: memory when the machine has a
/// tmpfs (a crash of a simulated host loses what a crashed process would, its page cache does
/// not, so fsync buys nothing here), else cargo's scratch directory. One directory per test
/// process; those of processes that have ended are removed on first use.
fn scratch() -> &'static Path {
    static SCRATCH: OnceLock<PathBuf> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        };
        for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ended = name
                .strip_prefix("quorumvm-sim-")
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
            if ended {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        base.join(format!("quorumvm-sim-{}", std::process::id()))
    })
}

impl World {
    /// A fresh copy; `name` (with a number of its own, as tests run at once) names its directory.
    pub fn new(name: &str) -> World {
        static WORLDS: AtomicU64 = AtomicU64::new(0);
        let t = template();
        let dir = scratch().join(format!("{name}-{}", WORLDS.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        let mut coordinator = t.coordinator.clone();
        coordinator.data_dir = copy_data(&t.coordinator.data_dir, &dir.join("coordinator"));
        coordinator.listen = ([0, 0, 0, 0], net::PORT).into();
        for (e, i) in coordinator.custodians.iter_mut().zip(1..) {
            e.url = net::url(&format!("custodian-{i}"));
        }
        let custodians = t
            .custodians
            .iter()
            .map(|c| {
                let mut c = c.clone();
                c.data_dir = copy_data(&c.data_dir, &dir.join(format!("custodian-{}", c.index)));
                c.listen = ([0, 0, 0, 0], net::PORT).into();
                c.coordinator_url = net::url("coordinator");
                c.custodians = coordinator.custodians.clone();
                c
            })
            .collect();
        World {
            dir,
            coordinator,
            custodians,
        }
    }

    /// The database of `host` (`coordinator` or `custodian-i`).
    pub fn db(&self, host: &str) -> PathBuf {
        if host == "coordinator" {
            self.coordinator.data_dir.join("coordinator.db")
        } else {
            self.dir.join(host).join("custodian.db")
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies a directory and everything in it to `to`.
fn copy_tree(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).expect("a directory");
    for entry in std::fs::read_dir(from).expect("a directory to copy") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
    to.to_path_buf()
}

/// Copies a data directory (keys and database) to `to`, linking its compiled-component cache.
fn copy_data(from: &Path, to: &Path) -> PathBuf {
    std::fs::create_dir_all(to).expect("a schedule's directory");
    for entry in std::fs::read_dir(from).expect("a template directory") {
        let entry = entry.expect("an entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            std::os::unix::fs::symlink(entry.path(), &target).expect("link the cache");
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a file");
        }
    }
    to.to_path_buf()
}
