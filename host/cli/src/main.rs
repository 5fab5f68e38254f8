//! `quorumvm`: the one command of QuorumVM.
//!
//! Exit codes a script can rely on: 0 success; 1 a check said no (a signature that does not
//! verify); 2 a usage error; 65 invalid data (a compile error, a malformed or mismatched
//! package, a refused input value); 66 an input file that cannot be read; 74 an output that
//! cannot be written.

mod bench;
mod client;
mod cluster;
mod commands;
mod demo;
mod endpoint;
mod exit;
mod governance;
mod operator;
mod publish;
mod servers;
mod web;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The servers allocate for every request, message and session; mimalloc is measurably
/// cheaper than glibc's allocator there (see README, Performance).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "quorumvm",
    version,
    about = "Threshold execution of secret parametric functions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compile DSL source into an (unsigned) program package component.
    Compile {
        /// The `.qvm` source.
        source: PathBuf,
        /// Where to write the package.
        #[arg(short, long)]
        output: PathBuf,
        /// Print the summary as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a package's manifest, signer, id and circuit figures.
    Inspect {
        package: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a package in plain (no sharing): `x=3 income=1200.50 --secret w1=0.35`.
    EvalPlain {
        package: PathBuf,
        /// Inputs as NAME=VALUE.
        inputs: Vec<String>,
        /// Secret coefficients as NAME=VALUE (repeatable).
        #[arg(long = "secret", value_name = "NAME=VALUE")]
        secrets: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Make an ed25519 key pair: PREFIX.key (secret, 0600) and PREFIX.pub. The same command
    /// makes a publisher's key, a caller's, and a custodian operator's approval key. An
    /// operator's key lives on the operator's own machine, never on the custodian's server
    /// (which refuses to start with one in its data directory); the hex public key it prints is
    /// that custodian's `operator_key` in every config of the cluster.
    Keygen {
        /// Path prefix of the two key files.
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Sign a package with a publisher key (embeds the signature in a custom section).
    Sign {
        package: PathBuf,
        #[arg(long)]
        key: PathBuf,
        /// Where to write the signed package (default: replace the input).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Verify a signed package against a publisher's public key; prints the package id.
    Verify {
        package: PathBuf,
        #[arg(long)]
        pubkey: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Run a coordinator (its config names the custodians and the trusted publishers).
    Coordinator {
        #[arg(long)]
        config: PathBuf,
        /// This replica's name, for a coordinator on PostgreSQL whose config leaves it out
        /// (each pod of a Kubernetes StatefulSet passes its own, stable name).
        #[arg(long)]
        replica: Option<String>,
    },
    /// Run a custodian (creates its key in its data directory on first start); or, as its
    /// operator, approve a change of the cluster's membership (`remove`, `threshold`).
    #[command(subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
    Custodian {
        #[arg(long, required = true)]
        config: Option<PathBuf>,
        #[command(subcommand)]
        command: Option<MembershipCommand>,
    },
    /// Make a server's own keys in its data directory (kept if present) and print their
    /// public halves, which every config of the cluster lists: a custodian's sealing key, or
    /// the coordinator's signing and exchange keys. Run on the server's machine, before its
    /// config exists.
    ServerKeys {
        #[arg(value_enum)]
        role: servers::Role,
        /// The server's data directory (`data_dir` in its config).
        #[arg(long)]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Check a server on its own machine (a container's health check): GET /v1/health where
    /// its config says it listens, over TLS to its own pinned key. Exit status 0 when it
    /// answers 200.
    Health {
        #[arg(value_enum)]
        role: servers::Role,
        /// The server's config.
        #[arg(long)]
        config: PathBuf,
    },
    /// A whole local cluster: a coordinator and 3 custodians (k = 2) on 127.0.0.1.
    Dev {
        /// Keys, configs, databases and logs (reused when it already holds a cluster).
        #[arg(long, default_value = "target/dev-cluster")]
        dir: PathBuf,
        /// The coordinator's port; custodians take the next ones. 0: any free ports.
        #[arg(long, default_value_t = 7100)]
        port: u16,
        /// How many custodians a new cluster has (n >= 2k - 1).
        #[arg(long, default_value_t = 3)]
        custodians: u32,
        /// Its threshold k: how many custodians evaluate and approve.
        #[arg(long, default_value_t = 2)]
        threshold: usize,
        /// Only write the keys and configs.
        #[arg(long)]
        init_only: bool,
        /// Address the servers as docker-compose.yml's services (with --init-only).
        #[arg(long, requires = "init_only", conflicts_with = "insecure_loopback")]
        compose: bool,
        /// Plain HTTP between the servers and to the CLI, all on 127.0.0.1 (the servers
        /// refuse any other address in this mode). Without it every link is TLS with the
        /// servers' keys pinned. Applies when the cluster is created.
        #[arg(long)]
        insecure_loopback: bool,
    },
    /// Put back into evaluation quorums a custodian the coordinator holds suspect (failed
    /// checks proved it deviated; see `/metrics` and the audit's `custodian.suspected`). Signed
    /// with the coordinator's key, on the coordinator's machine.
    ClearSuspect {
        index: u32,
        /// The coordinator's config.
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Refresh the custodians' shares of every secret of every serving version now (proactive
    /// resharing): shares from before are useless with shares from after. Needs every
    /// custodian up. Signed with the coordinator's key, on the coordinator's machine.
    Reshare {
        /// The coordinator's config.
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Manage the identities that may evaluate: propose (coordinator), approve and revoke
    /// (custodian operators).
    Identity {
        #[command(subcommand)]
        command: IdentityCommand,
    },
    /// Upload a signed package; secrets are Shamir-shared and sealed to the custodians here,
    /// and the deal of the sealed shares is signed with the publisher's key.
    Install {
        package: PathBuf,
        /// The publisher's key: the one that signed the package.
        #[arg(long)]
        key: PathBuf,
        #[arg(
            long,
            default_value = "https://127.0.0.1:7100",
            env = "QUORUMVM_COORDINATOR"
        )]
        coordinator: String,
        #[command(flatten)]
        trust: TrustArgs,
        /// Secret coefficients as NAME=VALUE (repeatable); they never leave this machine.
        #[arg(long = "secret", value_name = "NAME=VALUE")]
        secrets: Vec<String>,
        /// The custodians' keys the coordinator's must match (a cluster config, or a custodian
        /// the publisher trusts): without it the publisher trusts the coordinator's list.
        #[command(flatten)]
        pinned: publish::PinnedArgs,
        #[arg(long)]
        json: bool,
    },
    /// Approve a package version as a custodian operator, on the operator's machine (signs with
    /// the operator's key, which no server holds).
    Approve {
        /// The package id (hex).
        package: String,
        #[command(flatten)]
        operator: OperatorArgs,
        #[arg(long)]
        json: bool,
    },
    /// Approve retiring a version as a custodian operator (signs its package id); at k
    /// approvals it never serves again, anywhere.
    Retire {
        /// The package id (hex).
        package: String,
        #[command(flatten)]
        operator: OperatorArgs,
        #[arg(long)]
        json: bool,
    },
    /// Freeze an identity or a version at once: with the coordinator's config, at the
    /// coordinator (it admits none of its requests); with an operator's key and its custodian's
    /// URL, at that custodian only (signed with the operator key and sent to it directly). With
    /// fewer than k custodians willing, the cluster stops serving it. Lifting takes k operators
    /// (`unfreeze`).
    Freeze {
        #[command(flatten)]
        target: TargetArgs,
        /// The coordinator's config (on the coordinator's machine).
        #[arg(long, conflicts_with_all = ["key", "custodian"], required_unless_present = "key")]
        config: Option<PathBuf>,
        /// The operator's key (`quorumvm keygen`, on the operator's machine).
        #[arg(long, requires = "custodian")]
        key: Option<PathBuf>,
        /// The operator's own custodian's URL (with `--pin`: its `tls_fingerprint`).
        #[arg(long, requires = "key")]
        custodian: Option<String>,
        #[command(flatten)]
        trust: TrustArgs,
        #[arg(long)]
        json: bool,
    },
    /// Approve lifting the freezes of an identity or a version, as a custodian operator. The
    /// first operator's approval fixes the unfreeze's time; the others pass it with `--at`. At
    /// k approvals every freeze of the target older than that time is lifted, everywhere.
    Unfreeze {
        #[command(flatten)]
        target: TargetArgs,
        /// The time (ms since the epoch) of the unfreeze another operator proposed.
        #[arg(long)]
        at: Option<u64>,
        #[command(flatten)]
        operator: OperatorArgs,
        #[arg(long)]
        json: bool,
    },
    /// Evaluate a program on the cluster: `quorumvm eval square x=3`. The request is signed
    /// with the caller's key; every custodian verifies it.
    Eval {
        /// A program name or package id.
        program: String,
        /// Inputs as NAME=VALUE.
        inputs: Vec<String>,
        #[arg(
            long,
            default_value = "https://127.0.0.1:7100",
            env = "QUORUMVM_COORDINATOR"
        )]
        coordinator: String,
        #[command(flatten)]
        trust: TrustArgs,
        /// The API key (or the QUORUMVM_API_KEY environment variable).
        #[arg(long, env = "QUORUMVM_API_KEY", hide_env_values = true)]
        key: String,
        /// The caller identity's name.
        #[arg(long, env = "QUORUMVM_IDENTITY")]
        identity: String,
        /// The caller's ed25519 key file (`quorumvm keygen`), approved with the identity.
        #[arg(long, env = "QUORUMVM_CALLER_KEY")]
        caller_key: PathBuf,
        /// The custodians' keys (a cluster config, or a custodian the caller trusts): needed
        /// for a program with private inputs, which are sealed to those keys.
        #[command(flatten)]
        pinned: publish::PinnedArgs,
        #[arg(long)]
        json: bool,
    },
    /// Audit-log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Measure a local cluster: latency and throughput against the floor of bare round trips.
    Bench {
        /// Where the benchmark's cluster lives (wiped first unless --running).
        #[arg(long, default_value = "target/bench-cluster")]
        dir: PathBuf,
        /// Use the cluster `quorumvm dev --dir DIR` is running instead of starting one.
        #[arg(long)]
        running: bool,
        /// Sequential calls per measurement.
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        /// Seconds per concurrent measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Concurrent clients.
        #[arg(long, default_value_t = 8)]
        clients: usize,
        /// Plain HTTP on the loopback instead of TLS (a fresh cluster only): compare the two
        /// runs to see what TLS costs.
        #[arg(long, conflicts_with = "running")]
        insecure_loopback: bool,
    },
    /// The reference demo on a fresh local cluster, step by step.
    Demo {
        /// Where the example sources are.
        #[arg(long, default_value = "packages")]
        packages: PathBuf,
        /// Where to write the demo's files.
        #[arg(long, default_value = "target/demo")]
        work: PathBuf,
        /// Use the new cluster already running from DIR (`quorumvm dev --dir DIR`, or `/cluster`
        /// in docker-compose.yml's `tools`) instead of starting one.
        #[arg(long, value_name = "DIR", conflicts_with = "work")]
        running: Option<PathBuf>,
    },
    /// Serve the browser demo of the compiler (a static directory).
    Web {
        #[arg(long, default_value = "127.0.0.1:8080")]
        addr: std::net::SocketAddr,
        #[arg(long, default_value = "web/dist")]
        dir: PathBuf,
    },
}

/// A machine that joins the cluster, as its operator sent it to the others.
#[derive(clap::Args)]
struct NewMachine {
    /// Where the coordinator and the custodians reach the new machine.
    #[arg(long)]
    url: String,
    /// Its operator's public key (hex, as `quorumvm keygen` prints it).
    #[arg(long)]
    operator_key: String,
    /// Its sealing key (hex, as `quorumvm server-keys custodian` prints it).
    #[arg(long)]
    sealing_key: String,
    /// Its TLS key's pin (required unless the cluster runs `insecure_loopback`).
    #[arg(long)]
    tls_fingerprint: Option<quorumvm_wire::config::Fingerprint>,
}

impl NewMachine {
    /// Its entry; the index is the statement's to give.
    fn entry(self) -> quorumvm_wire::config::CustodianEntry {
        quorumvm_wire::config::CustodianEntry {
            index: 0,
            url: self.url,
            operator_key: self.operator_key,
            sealing_key: self.sealing_key,
            tls_fingerprint: self.tls_fingerprint,
        }
    }
}

#[derive(Subcommand)]
enum MembershipCommand {
    /// Approve bringing a new machine in as custodian n + 1, as a current custodian operator.
    /// Its operator sends the other operators its keys (`quorumvm keygen` for the operator key,
    /// `quorumvm server-keys custodian` for the others) and URL, and starts it with the
    /// cluster's config at `index` n + 1. At k approvals the coordinator runs the rotation:
    /// the new machine checks the chain of rotations and the versions itself, and every secret
    /// is re-dealt to the new set. To replace a custodian: add the new machine, then remove the
    /// old one.
    Add {
        #[command(flatten)]
        machine: NewMachine,
        /// The threshold after the change (default: k as it is).
        #[arg(long)]
        threshold: Option<usize>,
        #[command(flatten)]
        change: operator::ChangeArgs,
    },
    /// Approve the next step of replacing custodian INDEX by a new machine, as a current
    /// custodian operator: while the new machine is not a member, its addition (as `add`);
    /// once it is, removing custodian INDEX (as `remove`), after which the new machine holds
    /// index INDEX. Each step is a rotation of its own, at k approvals: run the command again
    /// once the first step committed. Then stop the old machine and destroy its data.
    Replace {
        index: u32,
        #[command(flatten)]
        machine: NewMachine,
        /// The threshold after each step (default: k as it is).
        #[arg(long)]
        threshold: Option<usize>,
        #[command(flatten)]
        change: operator::ChangeArgs,
    },
    /// Approve removing custodian INDEX, as a current custodian operator. The others keep their
    /// order and are numbered 1..n−1; its shares become useless and it deletes them. At k
    /// approvals the coordinator runs the rotation: every secret is re-dealt to the new set.
    Remove {
        index: u32,
        /// The threshold after the change (default: k as it is; n − 1 ≥ 2k − 1 must hold).
        #[arg(long)]
        threshold: Option<usize>,
        #[command(flatten)]
        change: operator::ChangeArgs,
    },
    /// Approve moving the same custodians to threshold K (n ≥ 2K − 1), as a current
    /// custodian operator; at k approvals every secret is re-dealt at the new threshold.
    Threshold {
        k: usize,
        #[command(flatten)]
        change: operator::ChangeArgs,
    },
}

#[derive(clap::Subcommand)]
enum IdentityCommand {
    /// Propose an identity with the caller's public key; prints its API key once. It serves
    /// once k custodian operators approved it (`identity approve`).
    Add {
        name: String,
        /// The caller's public key file (`quorumvm keygen -o NAME` makes NAME.key and NAME.pub
        /// on the caller's machine; only the .pub comes here).
        #[arg(long)]
        pubkey: PathBuf,
        /// The coordinator's config (for its data directory).
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Approve a proposed identity as a custodian operator (signs its name and key).
    Approve {
        name: String,
        #[command(flatten)]
        operator: OperatorArgs,
        #[arg(long)]
        json: bool,
    },
    /// Approve revoking an identity as a custodian operator (signs its name); at k approvals
    /// it never serves again, and its name is never registered again.
    Revoke {
        name: String,
        #[command(flatten)]
        operator: OperatorArgs,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify a server's hash-chained audit log; reports the first broken link.
    Verify {
        /// The server's database (`coordinator.db` or `custodian.db` in its data directory).
        db: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

use cluster::{Hosts, Link};
use endpoint::TrustArgs;
use operator::OperatorArgs;
use servers::Credentials;

fn main() -> ExitCode {
    let cli = Cli::parse();
    quorumvm_server::tls::install_default_provider();
    let result = match cli.command {
        Command::Compile {
            source,
            output,
            json,
        } => commands::compile(&source, &output, json),
        Command::Inspect { package, json } => commands::inspect(&package, json),
        Command::EvalPlain {
            package,
            inputs,
            secrets,
            json,
        } => commands::eval_plain(&package, &inputs, &secrets, json),
        Command::Keygen { output } => commands::keygen(&output),
        Command::Sign {
            package,
            key,
            output,
        } => commands::sign(&package, &key, output.as_deref()),
        Command::Verify {
            package,
            pubkey,
            json,
        } => commands::verify(&package, &pubkey, json),
        Command::Coordinator { config, replica } => servers::coordinator(&config, replica),
        Command::Custodian {
            config: Some(config),
            command: None,
        } => servers::custodian(&config),
        Command::Custodian {
            command:
                Some(MembershipCommand::Remove {
                    index,
                    threshold,
                    change,
                }),
            ..
        } => servers::rotate(servers::Rotate::Remove { index, threshold }, &change),
        Command::Custodian {
            command:
                Some(MembershipCommand::Add {
                    machine,
                    threshold,
                    change,
                }),
            ..
        } => {
            let joining = machine.entry();
            servers::rotate(servers::Rotate::Add { joining, threshold }, &change)
        }
        Command::Custodian {
            command:
                Some(MembershipCommand::Replace {
                    index,
                    machine,
                    threshold,
                    change,
                }),
            ..
        } => {
            let joining = machine.entry();
            let replace = servers::Rotate::Replace {
                index,
                joining,
                threshold,
            };
            servers::rotate(replace, &change)
        }
        Command::Custodian {
            command: Some(MembershipCommand::Threshold { k, change }),
            ..
        } => servers::rotate(servers::Rotate::Threshold(k), &change),
        Command::Custodian {
            config: None,
            command: None,
        } => unreachable!("clap requires --config or a subcommand"),
        Command::ServerKeys {
            role,
            data_dir,
            json,
        } => servers::server_keys(role, &data_dir, json),
        Command::Health { role, config } => servers::health(role, &config),
        Command::Dev {
            dir,
            port,
            custodians,
            threshold,
            init_only,
            compose,
            insecure_loopback,
        } => {
            let hosts = match (compose, insecure_loopback) {
                (true, _) => Hosts::Compose,
                (false, true) => Hosts::Loopback(Link::InsecureLoopback),
                (false, false) => Hosts::Loopback(Link::Tls),
            };
            let size = cluster::Size {
                n: custodians,
                k: threshold,
            };
            servers::dev(&dir, port, init_only, hosts, size)
        }
        Command::ClearSuspect {
            index,
            config,
            json,
        } => servers::clear_suspect(index, &config, json),
        Command::Reshare { config, json } => servers::reshare(&config, json),
        Command::Identity {
            command:
                IdentityCommand::Add {
                    name,
                    pubkey,
                    config,
                    json,
                },
        } => servers::identity_add(&config, &name, &pubkey, json),
        Command::Identity {
            command:
                IdentityCommand::Approve {
                    name,
                    operator,
                    json,
                },
        } => servers::identity_approve(&name, &operator, json),
        Command::Identity {
            command:
                IdentityCommand::Revoke {
                    name,
                    operator,
                    json,
                },
        } => servers::identity_revoke(&name, &operator, json),
        Command::Retire {
            package,
            operator,
            json,
        } => servers::retire(&package, &operator, json),
        Command::Freeze {
            target,
            config,
            key,
            custodian,
            trust,
            json,
        } => {
            let at = match (config, key, custodian) {
                (Some(config), _, _) => servers::FreezeAt::Coordinator(config),
                (None, Some(key), Some(url)) => servers::FreezeAt::Custodian {
                    key,
                    at: trust.at(&url),
                },
                _ => unreachable!("clap requires --config, or --key with --custodian"),
            };
            servers::freeze(target.into(), at, json)
        }
        Command::Unfreeze {
            target,
            at,
            operator,
            json,
        } => servers::unfreeze(target.into(), at, &operator, json),
        Command::Install {
            package,
            key,
            coordinator,
            trust,
            secrets,
            pinned,
            json,
        } => servers::install(
            &package,
            &key,
            &trust.at(&coordinator),
            &secrets,
            &pinned,
            json,
        ),
        Command::Approve {
            package,
            operator,
            json,
        } => servers::approve(&package, &operator, json),
        Command::Eval {
            program,
            inputs,
            coordinator,
            trust,
            key,
            identity,
            caller_key,
            pinned,
            json,
        } => servers::eval(
            &program,
            &inputs,
            &trust.at(&coordinator),
            Credentials {
                api_key: key,
                identity,
                key_file: caller_key,
            },
            &pinned,
            json,
        ),
        Command::Audit {
            command: AuditCommand::Verify { db, json },
        } => servers::audit_verify(&db, json),
        Command::Bench {
            dir,
            running,
            requests,
            seconds,
            clients,
            insecure_loopback,
        } => bench::run(bench::Options {
            dir,
            running,
            requests,
            seconds,
            clients,
            link: if insecure_loopback {
                Link::InsecureLoopback
            } else {
                Link::Tls
            },
        }),
        Command::Demo {
            packages,
            work,
            running,
        } => demo::run(&packages, &work, running.as_deref()),
        Command::Web { addr, dir } => web::serve(addr, dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("{failure}");
            ExitCode::from(failure.code as u8)
        }
    }
}

/// What `freeze` and `unfreeze` act on: exactly one of an identity and a version.
#[derive(clap::Args)]
#[group(required = true, multiple = false)]
struct TargetArgs {
    /// A caller identity's name.
    #[arg(long)]
    identity: Option<String>,
    /// A version's package id (hex).
    #[arg(long)]
    version: Option<String>,
}

impl From<TargetArgs> for quorumvm_wire::freeze::Target {
    fn from(t: TargetArgs) -> Self {
        match (t.identity, t.version) {
            (Some(name), _) => quorumvm_wire::freeze::Target::Identity(name),
            (None, Some(id)) => quorumvm_wire::freeze::Target::Version(id.to_ascii_lowercase()),
            (None, None) => unreachable!("clap requires one of --identity and --version"),
        }
    }
}
