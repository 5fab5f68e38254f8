//! A custodian operator, on the operator's own machine: the approval key that no server holds
//! (`quorumvm keygen -o operator`), and the coordinator's URL and TLS key pin. That is all an
//! operator needs.
//!
//! Approvals (of versions, callers, revocations, retirements, unfreezes, memberships) are signed here and sent
//! to the coordinator, which collects k of them for every custodian to check against the operator
//! keys of its own config. A freeze is signed here and sent straight to the operator's own
//! custodian ([`freeze_at`]), so the coordinator can neither withhold nor forge it.
//!
//! Which custodian a key operates is read from the coordinator's description of the cluster
//! (`GET /v1/cluster`), matched by the key's public half. A coordinator that lies there gains
//! nothing: an approval under the wrong index does not verify at any custodian.

use std::path::{Path, PathBuf};

use quorumvm_package::SecretKey;
use quorumvm_wire::api::{
    ApproveRequest, ClusterInfo, CustodianHealth, FreezeState, MembershipApproval, MembershipInfo,
    MembershipState,
};
use quorumvm_wire::approval::{self, Subject};
use quorumvm_wire::config::{Cluster, Fingerprint};
use quorumvm_wire::freeze::{Authority, Freeze, Target};
use quorumvm_wire::membership::{Change, Membership};
use quorumvm_wire::now_ms;

use crate::client::Client;
use crate::endpoint::{Endpoint, TrustArgs};
use crate::exit::{Code, Failure, Result, read_text};

/// What every operator command takes: `--key`, `--coordinator` and `--pin` (or `--ca`).
#[derive(clap::Args, Clone)]
pub struct OperatorArgs {
    /// The operator's approval key: an ed25519 key made with `quorumvm keygen -o operator` on
    /// the operator's machine, kept there (never in a custodian's data directory); its public
    /// half is the custodian's `operator_key` in every config of the cluster.
    #[arg(long = "key", env = "QUORUMVM_OPERATOR_KEY")]
    pub key: PathBuf,
    /// The coordinator's URL.
    #[arg(
        long,
        default_value = "https://127.0.0.1:7100",
        env = "QUORUMVM_COORDINATOR"
    )]
    pub coordinator: String,
    /// How the coordinator is checked: its key's pin, or its CA.
    #[command(flatten)]
    pub trust: TrustArgs,
}

impl OperatorArgs {
    pub async fn connect(&self) -> Result<Operator> {
        Operator::connect(&self.key, &self.trust.at(&self.coordinator)).await
    }
}

/// An operator's key, and the custodian it operates in the coordinator's cluster.
pub struct Operator {
    key: SecretKey,
    /// The custodian whose operator key this is.
    pub index: u32,
    pub coordinator: Client,
    /// The cluster as the coordinator describes it.
    pub cluster: ClusterInfo,
}

impl Operator {
    /// Reads the key and finds its custodian in the coordinator's cluster.
    pub async fn connect(key_file: &Path, coordinator: &Endpoint) -> Result<Operator> {
        let key = read_key(key_file)?;
        let client = Client::new(coordinator)?;
        let cluster = client.cluster().await?;
        let public = key.public().to_hex();
        let index = cluster
            .custodians
            .iter()
            .find(|c| c.operator_key.eq_ignore_ascii_case(&public))
            .map(|c| c.index)
            .ok_or_else(|| {
                Failure::new(
                    Code::Rejected,
                    format!(
                        "the cluster at {} lists no custodian whose operator key is \
                         {public} (the public half of {}): this key approves nothing there",
                        coordinator.url,
                        key_file.display()
                    ),
                )
            })?;
        Ok(Operator {
            key,
            index,
            coordinator: client,
            cluster,
        })
    }

    /// This operator's approval of `subject`, as the coordinator collects it.
    pub fn approve(&self, subject: &Subject<'_>) -> ApproveRequest {
        ApproveRequest {
            custodian: self.index,
            signature: self.sign(subject),
        }
    }

    /// This operator's signature of `subject` (hex).
    pub fn sign(&self, subject: &Subject<'_>) -> String {
        hex::encode(approval::sign(&self.key, subject))
    }
}

/// Freezes `target` at the custodian at `custodian` (a URL), signed with the operator key in
/// `key_file`: that custodian stops serving it at once, whatever the coordinator does.
pub async fn freeze_at(
    key_file: &Path,
    custodian: &Endpoint,
    target: Target,
) -> Result<FreezeState> {
    let key = read_key(key_file)?;
    let client = Client::new(custodian)?;
    // Which index the statement names: the custodian's own word, which it checks again.
    let health: CustodianHealth = client.get("/v1/health").await?;
    let statement = Freeze {
        target,
        at: Authority::Custodian(health.index),
        time_ms: now_ms(),
    };
    Ok(client.post("/v1/freezes", &statement.sign(&key)).await?)
}

fn read_key(path: &Path) -> Result<SecretKey> {
    SecretKey::from_file_text(&read_text(path)?).map_err(|e| {
        Failure::data(format!(
            "{}: {e} (an operator key is an ed25519 key from `quorumvm keygen`)",
            path.display()
        ))
    })
}

/// What `quorumvm custodian remove|threshold` take beside the operator's key: the operator's
/// own custodian, which the statement starts from.
#[derive(clap::Args, Clone)]
pub struct ChangeArgs {
    #[command(flatten)]
    pub operator: OperatorArgs,
    /// The operator's own custodian's URL. The change is built from the membership that
    /// machine holds (`GET /v1/membership`), not from the coordinator's word, so an operator
    /// signs a change of the cluster its own custodian is in.
    #[arg(long = "custodian", env = "QUORUMVM_CUSTODIAN")]
    pub custodian: String,
    /// The pin of that custodian's TLS key (its `tls_fingerprint`); absent, only plain HTTP
    /// on the loopback (an `--insecure-loopback` cluster).
    #[arg(long = "custodian-pin")]
    pub custodian_pin: Option<Fingerprint>,
    #[arg(long)]
    pub json: bool,
}

/// Signs this operator's approval of the membership `build` makes from the cluster its own
/// custodian holds (and the epoch it is at), and sends it to the coordinator. The approval that
/// reaches k runs the rotation, and the answer says what it did.
pub async fn approve_membership(
    args: &ChangeArgs,
    build: impl FnOnce(&Cluster, u64) -> Result<Membership>,
) -> Result<(u32, Change, MembershipState)> {
    let operator = args.operator.connect().await?;
    let own = Client::new(&Endpoint::pinned(&args.custodian, args.custodian_pin))?;
    let held: MembershipInfo = own.get("/v1/membership").await?;
    let cluster = Cluster::new(held.threshold, &held.custodians).map_err(|e| {
        Failure::new(
            Code::Rejected,
            format!("{}: its membership does not parse: {e}", args.custodian),
        )
    })?;
    let mine = cluster
        .member(operator.index)
        .map(|m| m.operator_key.to_hex());
    if mine.as_deref() != Some(operator.key.public().to_hex().as_str()) {
        return Err(Failure::new(
            Code::Rejected,
            format!(
                "the coordinator says this key operates custodian {}, but {} (generation {}) \
                 does not: they disagree on the membership, so nothing is signed",
                operator.index, args.custodian, held.generation
            ),
        ));
    }
    let membership = build(&cluster, held.epoch)?;
    let change = Change::new(&cluster, &membership)
        .map_err(|e| Failure::new(Code::Rejected, e.to_string()))?;
    let request = MembershipApproval {
        custodian: operator.index,
        signature: operator.sign(&Subject::Membership(&change)),
        membership,
    };
    let state = operator
        .coordinator
        .post("/v1/memberships", &request)
        .await?;
    Ok((operator.index, change, state))
}
