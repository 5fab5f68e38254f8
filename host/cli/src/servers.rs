//! The cluster commands: the two servers, `dev`, and the operator and caller commands
//! (`identity add|approve|revoke`, `install`, `approve`, `retire`, `freeze`, `unfreeze`, `eval`,
//! `audit verify`).

use std::path::Path;

use quorumvm_ledger::Ledger;
use quorumvm_wire::config::{CoordinatorConfig, CustodianConfig, PoolConfig};
use quorumvm_wire::freeze::Target;
use serde_json::json;

use quorumvm_package::{PublicKey, SecretKey};
use quorumvm_sandbox::Sandbox;

use crate::client::{Caller, Client};
use crate::cluster::{Hosts, Layout, Running, Size};
use crate::endpoint::Endpoint;
use crate::exit::{Code, Failure, Result, read, read_text};
use crate::governance;
use crate::operator::{Operator, OperatorArgs};
use crate::publish;

pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::new(Code::IoErr, format!("cannot start the async runtime: {e}")))
}

fn tracing_init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

async fn bind(addr: std::net::SocketAddr) -> Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| Failure::new(Code::IoErr, format!("cannot listen on {addr}: {e}")))
}

pub fn coordinator(config: &Path, replica: Option<String>) -> Result<()> {
    tracing_init();
    let mut config = CoordinatorConfig::load(config).map_err(Failure::data)?;
    if let Some(name) = replica {
        let Some(db) = config.database.as_mut() else {
            return Err(Failure::data(
                "--replica names a replica of a coordinator on PostgreSQL; this config has no \
                 [database]",
            ));
        };
        db.replica = Some(name);
    }
    runtime()?.block_on(async {
        let listener = bind(config.listen).await?;
        quorumvm_coordinator::serve(config, listener)
            .await
            .map_err(|e| Failure::new(Code::IoErr, format!("{e:#}")))
    })
}

pub fn custodian(config: &Path) -> Result<()> {
    tracing_init();
    let config = CustodianConfig::load(config).map_err(Failure::data)?;
    // First start: make the server's key (the cluster's configs must then list its public
    // half; `serve` refuses to run with a key the configuration does not name).
    let failed = |e: anyhow::Error| Failure::new(Code::IoErr, format!("{e:#}"));
    let sealing_key = quorumvm_custodian::init_key(&config.data_dir).map_err(failed)?;
    let tls = quorumvm_custodian::init_tls_key(&config.data_dir).map_err(failed)?;
    tracing::info!(sealing_key = %sealing_key.to_hex(), tls_fingerprint = %tls, "custodian keys");
    runtime()?.block_on(async {
        let listener = bind(config.listen).await?;
        quorumvm_custodian::serve(config, listener)
            .await
            .map_err(|e| Failure::new(Code::IoErr, format!("{e:#}")))
    })
}

/// A server of the cluster.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Role {
    Coordinator,
    Custodian,
}

/// `quorumvm server-keys`: the server's own keys, made in `data_dir` if absent; prints the
/// public halves as a config lists them.
pub fn server_keys(role: Role, data_dir: &Path, as_json: bool) -> Result<()> {
    let failed = |e: anyhow::Error| Failure::new(Code::IoErr, format!("{e:#}"));
    let keys = match role {
        Role::Coordinator => {
            let keys = quorumvm_coordinator::init_key(data_dir).map_err(failed)?;
            json!({
                "coordinator_key": keys.signing_key,
                "coordinator_exchange_key": keys.exchange_key,
                "coordinator_tls_fingerprint": keys.tls_fingerprint,
            })
        }
        Role::Custodian => {
            let key = quorumvm_custodian::init_key(data_dir).map_err(failed)?;
            let pin = quorumvm_custodian::init_tls_key(data_dir).map_err(failed)?;
            json!({ "sealing_key": key.to_hex(), "tls_fingerprint": pin })
        }
    };
    if as_json {
        println!("{keys}");
    } else {
        for (name, value) in keys.as_object().expect("an object") {
            println!("{name} = {value}");
        }
    }
    Ok(())
}

/// `quorumvm health`: the server of `config`, reached on this machine where it listens, with
/// its own pin (a coordinator's from its key files; a custodian's from its config's entry).
pub fn health(role: Role, config: &Path) -> Result<()> {
    let (mut addr, pin) = match role {
        Role::Coordinator => {
            let config = CoordinatorConfig::load(config).map_err(Failure::data)?;
            let pin = quorumvm_coordinator::tls_fingerprint(&config)
                .map_err(|e| Failure::new(Code::NoInput, format!("{e:#}")))?;
            (config.listen, pin)
        }
        Role::Custodian => {
            let config = CustodianConfig::load(config).map_err(Failure::data)?;
            let cluster = config.cluster().map_err(Failure::data)?;
            let pin = cluster.member(config.index).and_then(|m| m.tls);
            (config.listen, pin)
        }
    };
    if addr.ip().is_unspecified() {
        addr.set_ip([127, 0, 0, 1].into());
    }
    let scheme = if pin.is_some() { "https" } else { "http" };
    let client = Client::new(&Endpoint::pinned(format!("{scheme}://{addr}"), pin))?;
    runtime()?.block_on(client.ping())?;
    Ok(())
}

/// `quorumvm dev`: creates (or resumes) the cluster in `dir` and runs it until interrupted or
/// until one server stops.
pub fn dev(dir: &Path, port: u16, init_only: bool, hosts: Hosts, size: Size) -> Result<()> {
    if hosts == Hosts::Compose && size != Size::default() {
        return Err(Failure::data(
            "docker-compose.yml runs three custodians: --compose makes a 2-of-3 cluster",
        ));
    }
    let layout = Layout::init_for(dir, port, PoolConfig::default(), hosts, size)?;
    println!("cluster directory: {}", layout.dir.display());
    println!("coordinator:       {}", layout.coordinator_at.url);
    for i in 1..=layout.custodians.len() as u32 {
        let (c, at) = (layout.custodian_config(i)?, layout.custodian_at(i)?);
        println!("custodian {i}:       {} ({:?})", at.url, c.engine);
    }
    if let crate::endpoint::Trust::Pin(pin) = layout.coordinator_at.trust {
        println!("coordinator's TLS key pin (--pin, QUORUMVM_PIN): {pin}");
    }
    println!("publisher key:     {}", layout.publisher_key.display());
    if init_only {
        return Ok(());
    }
    runtime()?.block_on(async {
        let mut running = Running::start(&layout).await?;
        println!(
            "running; logs in {}/logs (a server that dies is started again; Ctrl-C stops the \
             cluster)",
            layout.dir.display()
        );
        let signal = running.supervise().await?;
        drop(running);
        println!("cluster stopped ({signal})");
        Ok(())
    })
}

pub fn identity_add(config: &Path, name: &str, pubkey: &Path, as_json: bool) -> Result<()> {
    let config = CoordinatorConfig::load(config).map_err(Failure::data)?;
    let caller = PublicKey::from_file_text(&read_text(pubkey)?).map_err(Failure::data)?;
    let key = quorumvm_coordinator::add_identity(&config, name, &caller).map_err(|e| {
        let message = format!("{e:#}");
        let code = if message.contains("already exists") || message.contains("identity name") {
            Code::DataErr
        } else {
            Code::IoErr
        };
        Failure::new(code, message)
    })?;
    if as_json {
        println!("{}", json!({ "identity": name, "api_key": key.as_str() }));
    } else {
        println!(
            "identity {name} proposed; it serves once {} custodian operators approve it \
             (`quorumvm identity approve {name} --key operator.key`). Its API key (shown \
             once, stored only as a hash):",
            config.threshold
        );
        println!("{}", key.as_str());
    }
    Ok(())
}

/// Runs `act` as the operator `args` names: its custodian's index, and what `act` returned.
fn as_operator<T>(
    args: &OperatorArgs,
    act: impl AsyncFnOnce(&Operator) -> Result<T>,
) -> Result<(u32, T)> {
    runtime()?.block_on(async {
        let operator = args.connect().await?;
        let value = act(&operator).await?;
        Ok((operator.index, value))
    })
}

pub fn identity_approve(name: &str, operator: &OperatorArgs, as_json: bool) -> Result<()> {
    let (index, info) = as_operator(operator, async |o| publish::approve_identity(o, name).await)?;
    if as_json {
        println!("{}", serde_json::to_string(&info).expect("json"));
    } else {
        println!(
            "custodian {index}'s operator approved identity {} (key {}): approvals from {:?}, {}",
            info.name,
            info.public_key,
            info.approvals,
            if info.active { "active" } else { "pending" }
        );
    }
    Ok(())
}

/// Where a freeze goes: the coordinator (signed with its key, on its machine), or one
/// custodian (signed with its operator's key, sent to it directly).
pub enum FreezeAt {
    Coordinator(std::path::PathBuf),
    Custodian {
        key: std::path::PathBuf,
        at: Endpoint,
    },
}

pub fn freeze(target: Target, at: FreezeAt, as_json: bool) -> Result<()> {
    target.check().map_err(Failure::data)?;
    let state = match at {
        FreezeAt::Coordinator(config) => {
            let config = CoordinatorConfig::load(&config).map_err(Failure::data)?;
            let coordinator = governance::CoordinatorSide::local(&config)?;
            runtime()?.block_on(governance::freeze(&coordinator, target))?
        }
        FreezeAt::Custodian { key, at } => {
            runtime()?.block_on(crate::operator::freeze_at(&key, &at, target))?
        }
    };
    if as_json {
        println!("{}", serde_json::to_string(&state).expect("json"));
    } else {
        let known = if state.known {
            ""
        } else {
            " (not known there yet; it holds once it is)"
        };
        println!(
            "{} froze {}{known}; lifting it takes k operators (quorumvm unfreeze)",
            state.at, state.target
        );
    }
    Ok(())
}

pub fn unfreeze(
    target: Target,
    at: Option<u64>,
    operator: &OperatorArgs,
    as_json: bool,
) -> Result<()> {
    target.check().map_err(Failure::data)?;
    let (_, state) = as_operator(operator, async |o| {
        governance::unfreeze(o, target, at).await
    })?;
    if as_json {
        println!("{}", serde_json::to_string(&state).expect("json"));
        return Ok(());
    }
    let u = &state.unfreeze;
    if state.lifted {
        println!(
            "{} unfrozen: {} of {} approvals; the custodians that took it: {:?}",
            u.target, state.approvals, state.needed, state.taken_by
        );
    } else {
        let flag = match &u.target {
            Target::Identity(name) => format!("--identity {name}"),
            Target::Version(id) => format!("--version {id}"),
        };
        println!(
            "approved the unfreeze of {} at {} ms: {} of {} approvals; the other operators \
             run: quorumvm unfreeze {flag} --at {} --key <their operator key>",
            u.target, u.time_ms, state.approvals, state.needed, u.time_ms
        );
    }
    Ok(())
}

pub fn clear_suspect(index: u32, config: &Path, as_json: bool) -> Result<()> {
    let config = CoordinatorConfig::load(config).map_err(Failure::data)?;
    let coordinator = governance::CoordinatorSide::local(&config)?;
    let state = runtime()?.block_on(governance::clear_suspect(&coordinator, index))?;
    if as_json {
        println!("{}", serde_json::to_string(&state).expect("json"));
    } else if state.cleared {
        println!("custodian {index} cleared: it takes part in quorums again");
    } else {
        println!("custodian {index} was not suspect (or was caught again since): nothing to clear");
    }
    Ok(())
}

pub fn reshare(config: &Path, as_json: bool) -> Result<()> {
    let config = CoordinatorConfig::load(config).map_err(Failure::data)?;
    if !as_json {
        eprintln!("refreshing the custodians' shares of every serving version…");
    }
    let coordinator = governance::CoordinatorSide::local(&config)?;
    let report = runtime()?.block_on(governance::reshare(&coordinator))?;
    if as_json {
        println!("{}", serde_json::to_string(&report).expect("json"));
    } else {
        println!(
            "shares refreshed: {} secrets of {} version(s), epoch {} ({} ms, session {})",
            report.secrets,
            report.packages.len(),
            report.epoch,
            report.ms,
            report.session
        );
        if !report.behind.is_empty() {
            println!(
                "custodians {:?} did not take the commit yet: the coordinator sends it again when \
                 they answer",
                report.behind
            );
        }
    }
    Ok(())
}

pub fn identity_revoke(name: &str, operator: &OperatorArgs, as_json: bool) -> Result<()> {
    let (index, info) = as_operator(operator, async |o| governance::revoke(o, name).await)?;
    if as_json {
        println!("{}", serde_json::to_string(&info).expect("json"));
    } else {
        println!(
            "custodian {index}'s operator approved revoking identity {}: approvals from {:?}, {}",
            info.name,
            info.revocations,
            if info.revoked {
                "revoked for good"
            } else {
                "not yet revoked"
            }
        );
    }
    Ok(())
}

pub fn retire(package: &str, operator: &OperatorArgs, as_json: bool) -> Result<()> {
    let (index, info) = as_operator(operator, async |o| governance::retire(o, package).await)?;
    if as_json {
        println!("{}", serde_json::to_string(&info).expect("json"));
    } else {
        println!(
            "custodian {index}'s operator approved retiring package {} ({} version {}): \
             approvals from {:?} (threshold {}), {:?}",
            info.package_id, info.name, info.version, info.retirements, info.threshold, info.state
        );
    }
    Ok(())
}

pub fn install(
    package: &Path,
    key: &Path,
    coordinator: &Endpoint,
    secrets: &[String],
    pinned: &publish::PinnedArgs,
    as_json: bool,
) -> Result<()> {
    let signed = read(package)?;
    let publisher = SecretKey::from_file_text(&read_text(key)?).map_err(Failure::data)?;
    let secrets = crate::commands::pairs("secret", secrets)?;
    let client = Client::new(coordinator)?;
    let info = runtime()?.block_on(async {
        let pinned = pinned.cluster().await?;
        publish::install(&client, &signed, &publisher, &secrets, pinned.as_ref()).await
    })?;
    if as_json {
        println!("{}", serde_json::to_string(&info).expect("json"));
    } else {
        println!(
            "installed {} version {} as package {}: {:?}, {} of {} approvals",
            info.name,
            info.version,
            info.package_id,
            info.state,
            info.approvals.len(),
            info.threshold
        );
    }
    Ok(())
}

pub fn approve(package: &str, operator: &OperatorArgs, as_json: bool) -> Result<()> {
    let (index, (manifest, info)) =
        as_operator(operator, async |o| publish::approve(o, package).await)?;
    if as_json {
        println!("{}", serde_json::to_string(&info).expect("json"));
    } else {
        println!("reviewed {}", publish::describe(&manifest));
        println!(
            "custodian {index}'s operator approved package {}: {:?} with approvals from {:?} \
             (threshold {})",
            info.package_id, info.state, info.approvals, info.threshold
        );
    }
    Ok(())
}

/// What `quorumvm eval` signs and authenticates with.
pub struct Credentials {
    pub api_key: String,
    pub identity: String,
    pub key_file: std::path::PathBuf,
}

pub fn eval(
    program: &str,
    inputs: &[String],
    coordinator: &Endpoint,
    credentials: Credentials,
    pinned: &crate::publish::PinnedArgs,
    as_json: bool,
) -> Result<()> {
    let inputs = crate::commands::pairs("input", inputs)?;
    let caller = Caller {
        identity: credentials.identity,
        api_key: credentials.api_key,
        key: SecretKey::from_file_text(&read_text(&credentials.key_file)?)
            .map_err(Failure::data)?,
    };
    let sandbox = Sandbox::new().map_err(|e| Failure::new(Code::IoErr, format!("{e:#}")))?;
    let client = Client::new(coordinator)?;
    let rt = runtime()?;
    let pinned = rt.block_on(pinned.cluster())?;
    let answer = rt.block_on(async {
        let target = client.target(program, &sandbox).await?;
        client
            .eval(&caller, &target, &inputs, pinned.as_ref())
            .await
    })?;
    if as_json {
        println!("{}", serde_json::to_string(&answer).expect("json"));
    } else {
        for (name, value) in &answer.outputs {
            println!("{name} = {value}");
        }
        eprintln!(
            "({} version {}, {} round(s) among custodians {:?}, request {})",
            answer.program, answer.version, answer.rounds, answer.custodians, answer.request_id
        );
    }
    Ok(())
}

/// `quorumvm audit verify`: recomputes every hash of a server's audit chain.
pub fn audit_verify(db: &Path, as_json: bool) -> Result<()> {
    if !db.is_file() {
        return Err(Failure::new(
            Code::NoInput,
            format!("no database at {}", db.display()),
        ));
    }
    let ledger = Ledger::open(db)
        .map_err(|e| Failure::new(Code::IoErr, format!("{}: {e}", db.display())))?;
    match ledger.verify_chain() {
        Ok(report) => {
            if as_json {
                println!(
                    "{}",
                    json!({ "ok": true, "entries": report.entries, "head": hex::encode(report.head) })
                );
            } else {
                println!(
                    "{}: the audit chain verifies: {} entries, head {}",
                    db.display(),
                    report.entries,
                    hex::encode(report.head)
                );
            }
            Ok(())
        }
        Err(quorumvm_ledger::VerifyError::Broken(link)) => {
            if as_json {
                println!(
                    "{}",
                    json!({ "ok": false, "broken_at": link.seq, "reason": link.reason.to_string() })
                );
            }
            Err(Failure::new(
                Code::Rejected,
                format!("{}: {link}", db.display()),
            ))
        }
        Err(e) => Err(Failure::new(Code::IoErr, format!("{}: {e}", db.display()))),
    }
}

/// The membership change `quorumvm custodian add|remove|threshold` approves.
pub enum Rotate {
    /// Bring `joining` in as custodian n + 1, at `threshold` (absent: k as it is).
    Add {
        joining: quorumvm_wire::config::CustodianEntry,
        threshold: Option<usize>,
    },
    /// Remove custodian `index`, at `threshold` (absent: k as it is).
    Remove {
        index: u32,
        threshold: Option<usize>,
    },
    /// The same custodians at threshold k.
    Threshold(usize),
    /// The next step of replacing custodian `index` by `joining`: its addition while it is not
    /// a member, then the removal of `index` (at `threshold`, absent: k as it is).
    Replace {
        index: u32,
        joining: quorumvm_wire::config::CustodianEntry,
        threshold: Option<usize>,
    },
}

pub fn rotate(rotate: Rotate, args: &crate::operator::ChangeArgs) -> Result<()> {
    use quorumvm_wire::membership::Membership;
    let replacing = matches!(rotate, Rotate::Replace { .. });
    let build = |cluster: &quorumvm_wire::config::Cluster, epoch: u64| match rotate {
        Rotate::Add { joining, threshold } => {
            let k = threshold.unwrap_or(cluster.threshold());
            Ok(Membership::with(cluster, epoch, joining, k))
        }
        Rotate::Remove { index, threshold } => {
            let k = threshold.unwrap_or(cluster.threshold());
            Membership::without(cluster, epoch, index, k).map_err(Failure::data)
        }
        Rotate::Threshold(k) => Ok(Membership::rethreshold(cluster, epoch, k)),
        Rotate::Replace {
            index,
            joining,
            threshold,
        } => {
            let k = threshold.unwrap_or(cluster.threshold());
            let key = quorumvm_sealing::CustodianPublicKey::from_file_text(&joining.sealing_key)
                .map_err(|e| Failure::data(format!("the new machine's sealing key: {e}")))?;
            match cluster.members().iter().find(|m| m.sealing_key == key) {
                None => Ok(Membership::with(cluster, epoch, joining, k)),
                Some(new) if new.index == index => Err(Failure::data(format!(
                    "the new machine is custodian {index} already: the replacement is done"
                ))),
                Some(_) => Membership::without(cluster, epoch, index, k).map_err(Failure::data),
            }
        }
    };
    if !args.json {
        eprintln!(
            "approving the change; the k-th approval runs the rotation (every secret is re-dealt \
             to the new membership), which this waits for…"
        );
    }
    let (index, change, state) =
        runtime()?.block_on(crate::operator::approve_membership(args, build))?;
    if args.json {
        println!("{}", serde_json::to_string(&state).expect("json"));
        return Ok(());
    }
    let next = change.next();
    println!(
        "custodian {index}'s operator approved {}-of-{} {:?} from epoch {} (joining: {:?}, \
         leaving: {:?}): approvals from {:?}, {} needed",
        next.threshold(),
        next.n(),
        next.indices(),
        state.from_epoch,
        change.joining(),
        change.leaving(),
        state.approvals,
        state.needed
    );
    let first_of_two = replacing && !change.joining().is_empty();
    if let Some(r) = state.rotation {
        println!(
            "rotated: generation {}, epoch {}, {}-of-{} custodians {:?}, {} version(s) re-dealt \
             in {} ms (session {})",
            r.generation,
            r.epoch,
            r.threshold,
            r.members.len(),
            r.members,
            r.packages.len(),
            r.ms,
            r.session
        );
        if !r.behind.is_empty() {
            println!(
                "custodians {:?} (their indices before) did not take the commit yet: the \
                 coordinator sends it again when they answer",
                r.behind
            );
        }
    }
    if first_of_two {
        println!(
            "this was the replacement's first step (the new machine joins); once it has run, the \
             same command approves its second (the old custodian leaves)"
        );
    }
    Ok(())
}
