//! A local cluster for `quorumvm dev`, `demo` and `bench`: one coordinator and three custodians
//! (k = 2) as separate processes on 127.0.0.1, each with its own SQLite database under one
//! directory. The directory keeps the keys and configs, so starting again resumes the same
//! cluster with its state. The custodian operators' approval keys are in `operators/` and the
//! publisher's key in `publisher/`, apart from the servers' data directories, as they would be
//! on their own machines (docker-compose.yml mounts each into no server's container).
//!
//! Every link is TLS with the servers' keys pinned in the configs (each server's `tls.key` is
//! made here with its other keys), unless the cluster is made with `--insecure-loopback`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quorumvm_package::SecretKey;
use quorumvm_wire::config::{
    CoordinatorConfig, CustodianConfig, CustodianEntry, Engine, PoolConfig,
};

use crate::client::{Caller, Client};
use crate::endpoint::Endpoint;
use crate::exit::{Code, Failure, Result, read_text, write};
use crate::operator::Operator;
use crate::publish;

/// How many custodians a new local cluster has, and its threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    pub n: u32,
    pub k: usize,
}

impl Default for Size {
    /// 2-of-3: the smallest cluster where one custodian down stops nothing.
    fn default() -> Size {
        Size { n: 3, k: 2 }
    }
}

/// The files of a local cluster.
pub struct Layout {
    pub dir: PathBuf,
    pub coordinator: PathBuf,
    pub custodians: Vec<PathBuf>,
    /// Each custodian operator's approval key, in index order.
    pub operators: Vec<PathBuf>,
    pub publisher_key: PathBuf,
    /// Where the CLI reaches the coordinator, with its key's pin.
    pub coordinator_at: Endpoint,
}

fn io(what: &str, e: impl std::fmt::Display) -> Failure {
    Failure::new(Code::IoErr, format!("{what}: {e}"))
}

/// Writes a fresh ed25519 key at `path` (0600) and its public half beside it (`.pub`), as
/// `quorumvm keygen` does; returns the public half.
fn key_pair(path: &Path) -> Result<quorumvm_package::PublicKey> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| io(&format!("cannot create {}", parent.display()), e))?;
    }
    let key = SecretKey::generate();
    write(path, key.to_file_text().as_bytes(), true)?;
    write(
        &path.with_extension("pub"),
        key.public().to_file_text().as_bytes(),
        false,
    )?;
    Ok(key.public())
}

/// A cluster directory made by an earlier version kept each operator's key in its custodian's
/// data directory (`signing.key`, which the custodian now refuses) and the publisher's at the
/// top: moves them where this layout keeps them.
fn move_offline_keys(dir: &Path, operators: &[PathBuf], publisher: &Path) -> Result<()> {
    let moves = (1..)
        .zip(operators)
        .map(|(i, to)| (dir.join(format!("custodian-{i}/signing.key")), to.as_path()))
        .chain([(dir.join("publisher.key"), publisher)]);
    for (from, to) in moves {
        if from.exists() && !to.exists() {
            std::fs::create_dir_all(to.parent().expect("a key's directory"))
                .and_then(|()| std::fs::rename(&from, to))
                .map_err(|e| io(&format!("cannot move {}", from.display()), e))?;
        }
    }
    Ok(())
}

/// Ports for the coordinator and `n` custodians: `base..=base+n`, or free ones picked by the
/// OS when `base` is 0 (bound, read and released; the servers bind them a moment later).
fn ports(base: u16, n: u32) -> Result<Vec<u16>> {
    if base != 0 {
        return Ok((0..=n as u16).map(|i| base + i).collect());
    }
    let listeners: Vec<TcpListener> = (0..=n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()
        .map_err(|e| io("cannot pick free ports", e))?;
    listeners
        .iter()
        .map(|l| {
            Ok(l.local_addr()
                .map_err(|e| io("cannot pick free ports", e))?
                .port())
        })
        .collect()
}

impl Layout {
    /// Reuses the cluster in `dir`, or creates a 2-of-3 one: keys for every server and a
    /// publisher, and the config files.
    pub fn init(dir: &Path, base_port: u16, pool: PoolConfig) -> Result<Layout> {
        Layout::init_for(
            dir,
            base_port,
            pool,
            Hosts::Loopback(Link::Tls),
            Size::default(),
        )
    }

    /// As [`Layout::init`], with the servers' addresses chosen for `hosts`, and `size` for a
    /// cluster it creates (one it reuses keeps its own).
    pub fn init_for(
        dir: &Path,
        base_port: u16,
        pool: PoolConfig,
        hosts: Hosts,
        size: Size,
    ) -> Result<Layout> {
        let coordinator = dir.join("coordinator.toml");
        let n = if coordinator.exists() {
            let config = CoordinatorConfig::load(&coordinator).map_err(Failure::data)?;
            config.custodians.len() as u32
        } else {
            size.n
        };
        let custodians: Vec<PathBuf> = (1..=n)
            .map(|i| dir.join(format!("custodian-{i}.toml")))
            .collect();
        let operators: Vec<PathBuf> = (1..=n)
            .map(|i| dir.join(format!("operators/custodian-{i}.key")))
            .collect();
        let publisher_key = dir.join("publisher/publisher.key");
        if coordinator.exists() {
            move_offline_keys(dir, &operators, &publisher_key)?;
            // Where the custodians reach the coordinator: this machine's address for it, or
            // its name on the compose network.
            let custodian = CustodianConfig::load(&custodians[0]).map_err(Failure::data)?;
            return Ok(Layout {
                dir: dir.to_path_buf(),
                coordinator,
                custodians,
                operators,
                publisher_key,
                coordinator_at: Endpoint::pinned(
                    custodian.coordinator_url,
                    custodian.coordinator_tls_fingerprint,
                ),
            });
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| io(&format!("cannot create {}", dir.display()), e))?;
        if size.k == 0 || (size.n as usize) < 2 * size.k - 1 {
            return Err(Failure::data(format!(
                "{} custodians cannot run threshold {}: need k >= 1 and n >= 2k - 1",
                size.n, size.k
            )));
        }
        let ports = ports(base_port, n)?;
        let port_of = |p: u16| ports.iter().position(|&q| q == p).expect("one of ours");
        let tls = hosts != Hosts::Loopback(Link::InsecureLoopback);
        let scheme = if tls { "https" } else { "http" };
        let url = |p: u16| match hosts {
            Hosts::Loopback(_) => format!("{scheme}://127.0.0.1:{p}"),
            Hosts::Compose => match port_of(p) {
                0 => format!("{scheme}://coordinator:{p}"),
                i => format!("{scheme}://custodian-{i}:{p}"),
            },
        };
        let listen = |p: u16| -> std::net::SocketAddr {
            match hosts {
                Hosts::Loopback(_) => ([127, 0, 0, 1], p).into(),
                Hosts::Compose => ([0, 0, 0, 0], p).into(),
            }
        };
        let failed = |what: &'static str| move |e: anyhow::Error| io(what, format!("{e:#}"));
        let mut entries = Vec::new();
        for (i, operator) in (1..=n).zip(&operators) {
            let data_dir = dir.join(format!("custodian-{i}"));
            let sealing = quorumvm_custodian::init_key(&data_dir)
                .map_err(failed("cannot create a custodian key"))?;
            let pin = quorumvm_custodian::init_tls_key(&data_dir)
                .map_err(failed("cannot create a custodian's TLS key"))?;
            entries.push(CustodianEntry {
                index: i,
                url: url(ports[i as usize]),
                operator_key: key_pair(operator)?.to_hex(),
                sealing_key: sealing.to_hex(),
                tls_fingerprint: tls.then_some(pin),
            });
        }
        let coordinator_keys = quorumvm_coordinator::init_key(&dir.join("coordinator"))
            .map_err(failed("cannot create the coordinator key"))?;
        let coordinator_pin = tls.then_some(coordinator_keys.tls_fingerprint);
        let publisher = key_pair(&publisher_key)?;
        let config = CoordinatorConfig {
            listen: listen(ports[0]),
            data_dir: "coordinator".into(),
            threshold: size.k,
            publishers: vec![publisher.to_hex()],
            pool,
            custodians: entries.clone(),
            reshare_interval_s: None,
            insecure_loopback: !tls,
            tls_cert: None,
            tls_key: None,
            database: None,
        };
        write(&coordinator, config.to_toml().as_bytes(), false)?;
        // A mixed quorum: the custodians run the plugin under two wasmtime engines, and their
        // shares must still agree.
        let engines = [Engine::Cranelift, Engine::Winch];
        for (i, path) in custodians.iter().enumerate() {
            let c = CustodianConfig {
                index: i as u32 + 1,
                joins: false,
                listen: listen(ports[i + 1]),
                data_dir: format!("custodian-{}", i + 1).into(),
                coordinator_url: url(ports[0]),
                coordinator_key: coordinator_keys.signing_key.clone(),
                coordinator_exchange_key: coordinator_keys.exchange_key.clone(),
                threshold: size.k,
                engine: engines[i % 2],
                round_timeout_ms: 2_000,
                coordinator_tls_fingerprint: coordinator_pin,
                insecure_loopback: !tls,
                custodians: entries.clone(),
            };
            write(path, c.to_toml().as_bytes(), false)?;
        }
        Ok(Layout {
            dir: dir.to_path_buf(),
            coordinator,
            custodians,
            operators,
            publisher_key,
            coordinator_at: Endpoint::pinned(url(ports[0]), coordinator_pin),
        })
    }

    /// Custodian `index`'s operator, as `quorumvm approve --key` is.
    pub async fn operator(&self, index: u32) -> Result<Operator> {
        Operator::connect(&self.operators[index as usize - 1], &self.coordinator_at).await
    }

    pub fn publisher(&self) -> Result<SecretKey> {
        SecretKey::from_file_text(&read_text(&self.publisher_key)?).map_err(Failure::data)
    }

    pub fn custodian_config(&self, index: u32) -> Result<CustodianConfig> {
        CustodianConfig::load(&self.custodians[index as usize - 1]).map_err(Failure::data)
    }

    /// The coordinator's own side (its key, from its data directory), reached where this
    /// layout's clients reach it.
    pub fn coordinator_side(&self) -> Result<crate::governance::CoordinatorSide> {
        crate::governance::CoordinatorSide::at(&self.coordinator_config()?, &self.coordinator_at)
    }

    /// Where custodian `index` is reached (the URL and pin every config lists for it).
    pub fn custodian_at(&self, index: u32) -> Result<Endpoint> {
        let cluster = self
            .coordinator_config()?
            .cluster()
            .map_err(Failure::data)?;
        let member = cluster.member(index).ok_or_else(|| {
            Failure::data(format!("custodian {index} is not in the cluster's config"))
        })?;
        Ok(Endpoint::pinned(member.url.clone(), member.tls))
    }

    pub fn coordinator_config(&self) -> Result<CoordinatorConfig> {
        CoordinatorConfig::load(&self.coordinator).map_err(Failure::data)
    }

    /// Proposes caller `name` with a fresh key (as `quorumvm keygen` makes one on the caller's
    /// machine) at the coordinator, without approving it yet.
    pub fn propose(&self, name: &str) -> Result<Caller> {
        let key = SecretKey::generate();
        let api_key =
            quorumvm_coordinator::add_identity(&self.coordinator_config()?, name, &key.public())
                .map_err(|e| Failure::new(Code::IoErr, format!("{e:#}")))?;
        Ok(Caller {
            identity: name.to_string(),
            api_key: api_key.as_str().to_string(),
            key,
        })
    }

    /// Has custodian operators `approvers` approve identity `name`; returns whether it is
    /// active.
    pub async fn approve_identity(&self, name: &str, approvers: &[u32]) -> Result<bool> {
        let mut active = false;
        for &i in approvers {
            active = publish::approve_identity(&self.operator(i).await?, name)
                .await?
                .active;
        }
        Ok(active)
    }

    /// A caller approved by custodians 1..=k, ready to evaluate.
    pub async fn enrol(&self, name: &str) -> Result<Caller> {
        let caller = self.propose(name)?;
        let k = self.coordinator_config()?.threshold as u32;
        let approvers: Vec<u32> = (1..=k).collect();
        if !self.approve_identity(name, &approvers).await? {
            return Err(Failure::new(
                Code::Rejected,
                format!("identity {name} is not active after {k} approvals"),
            ));
        }
        Ok(caller)
    }
}

/// Where the servers run: all on this machine, or as the services of docker-compose.yml
/// (each reaches the others by service name and listens on every interface of its container).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hosts {
    Loopback(Link),
    Compose,
}

/// How the servers of a cluster on this machine talk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// TLS, every server's key pinned in the configs.
    Tls,
    /// Plain HTTP on the loopback (`--insecure-loopback`).
    InsecureLoopback,
}

/// The first wait before a dead server is started again; each failure in a row doubles it, up
/// to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A server that stays up this long is healthy again: its next death waits [`FIRST_BACKOFF`].
const STAYS_UP: Duration = Duration::from_secs(60);

/// One server process of the cluster, and how to start it again.
struct Server {
    role: String,
    config: PathBuf,
    child: Option<Child>,
    started: Instant,
    /// How long to wait after its next death.
    backoff: Duration,
    /// When a dead server is to be started again.
    restart_at: Option<Instant>,
}

/// Waits, a minute at most, until the coordinator answers and counts every custodian live (a
/// cluster started elsewhere, e.g. by compose).
pub async fn wait_live(client: &Client) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = client.cluster().await;
        if let Ok(cluster) = &seen
            && cluster.custodians.iter().all(|c| c.live)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Failure::new(
                Code::Unavailable,
                format!("the cluster is not up after a minute: {seen:?}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The four server processes; dropping this stops them.
pub struct Running {
    exe: PathBuf,
    logs: PathBuf,
    servers: Vec<Server>,
}

impl Running {
    /// Starts the servers of `layout` with this same executable, logs in `dir/logs/`, and
    /// waits until each answers its health check.
    pub async fn start(layout: &Layout) -> Result<Running> {
        let exe = std::env::current_exe().map_err(|e| io("cannot find this executable", e))?;
        let logs = layout.dir.join("logs");
        std::fs::create_dir_all(&logs).map_err(|e| io("cannot create the log directory", e))?;
        let mut running = Running {
            exe,
            logs,
            servers: vec![],
        };
        let mut servers = vec![layout.coordinator_at.clone()];
        running.add("coordinator", &layout.coordinator)?;
        for (i, path) in (1..).zip(&layout.custodians) {
            running.add(&format!("custodian-{i}"), path)?;
            servers.push(layout.custodian_at(i)?);
        }
        for (at, server) in servers.iter().zip(&running.servers) {
            wait_healthy(at, &server.role, &running.logs).await?;
        }
        Ok(running)
    }

    fn add(&mut self, role: &str, config: &Path) -> Result<()> {
        let mut server = Server {
            role: role.to_string(),
            config: config.to_path_buf(),
            child: None,
            started: Instant::now(),
            backoff: FIRST_BACKOFF,
            restart_at: None,
        };
        spawn(&self.exe, &self.logs, &mut server)?;
        self.servers.push(server);
        Ok(())
    }

    /// Keeps the cluster running until this process is told to stop (SIGINT, SIGTERM; the
    /// signal's name is returned): a server that dies (a crash, a `kill -9`) is reported, the
    /// others keep running, and it is started again after a back-off that doubles while it
    /// keeps dying (1 s up to 30 s). The caller then drops `self`, which stops every server:
    /// none outlives `quorumvm dev`.
    pub async fn supervise(&mut self) -> Result<&'static str> {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| io("cannot watch for SIGTERM", e))?;
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok("SIGINT"),
                _ = term.recv() => return Ok("SIGTERM"),
                _ = tick.tick() => self.look_after()?,
            }
        }
    }

    /// Notices the servers that died since the last look and starts those whose back-off ran
    /// out.
    fn look_after(&mut self) -> Result<()> {
        let now = Instant::now();
        for server in &mut self.servers {
            if let Some(child) = &mut server.child
                && let Ok(Some(status)) = child.try_wait()
            {
                server.child = None;
                if server.started.elapsed() >= STAYS_UP {
                    server.backoff = FIRST_BACKOFF;
                }
                println!(
                    "{} exited ({status}); the other servers keep running; starting it again in {} s",
                    server.role,
                    server.backoff.as_secs()
                );
                server.restart_at = Some(now + server.backoff);
                server.backoff = (server.backoff * 2).min(MAX_BACKOFF);
            }
            if server.child.is_none() && server.restart_at.is_some_and(|at| now >= at) {
                server.restart_at = None;
                spawn(&self.exe, &self.logs, server)?;
                println!(
                    "{} started again (its log: {}/{}.log)",
                    server.role,
                    self.logs.display(),
                    server.role
                );
            }
        }
        Ok(())
    }
}

/// Starts `server`'s process with executable `exe`, its output appended to its log in `logs`.
fn spawn(exe: &Path, logs: &Path, server: &mut Server) -> Result<()> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(logs.join(format!("{}.log", server.role)))
        .map_err(|e| io("cannot open a log file", e))?;
    let command = if server.role == "coordinator" {
        "coordinator"
    } else {
        "custodian"
    };
    let child = Command::new(exe)
        .arg(command)
        .arg("--config")
        .arg(&server.config)
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| io("log file", e))?)
        .stderr(log)
        .spawn()
        .map_err(|e| io(&format!("cannot start the {}", server.role), e))?;
    server.child = Some(child);
    server.started = Instant::now();
    Ok(())
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in self.servers.iter_mut().filter_map(|s| s.child.as_mut()) {
            let _ = child.kill();
        }
        for child in self.servers.iter_mut().filter_map(|s| s.child.as_mut()) {
            let _ = child.wait();
        }
    }
}

async fn wait_healthy(at: &Endpoint, name: &str, logs: &Path) -> Result<()> {
    let client = Client::new(at)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client.ping().await.is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(logs.join(format!("{name}.log"))).unwrap_or_default();
            return Err(Failure::new(
                Code::Unavailable,
                format!("the {name} did not come up at {}; its log:\n{log}", at.url),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
