//! The JSON bodies of the HTTP API.
//!
//! Coordinator (public): `GET /v1/health`, `GET /v1/cluster`, `POST /v1/packages`,
//! `GET /v1/packages`, `GET /v1/packages/{id}`, `GET /v1/packages/{id}/wasm`,
//! `GET /v1/packages/{id}/deal`, `POST /v1/packages/{id}/approvals`,
//! `POST /v1/packages/{id}/retirements`, `GET /v1/identities/{name}`,
//! `POST /v1/identities/{name}/approvals`, `POST /v1/identities/{name}/revocations`,
//! `POST /v1/freezes` (a [`crate::freeze::Freeze`] signed with the coordinator's key; its
//! answer is a [`FreezeState`]), `POST /v1/unfreezes` (an [`UnfreezeApproval`]),
//! `POST /v1/eval` (a
//! [`crate::signed::Signed`] [`crate::request::CallerRequest`] with
//! `Authorization: Bearer <api key>`), `GET /metrics`. Custodian `i` only (with a
//! [`FETCH_AUTH_HEADER`]): `GET /v1/packages/{id}/shares/{i}`.
//!
//! Custodian (coordinator and peers only): `GET /v1/health`, `POST /v1/orders` (a
//! [`SignedOrder`]: activate, preprocess, abort, register, revoke, retire, unfreeze, ...),
//! `POST /v1/sessions` ([`SessionRequest`]), `POST /v1/freezes` (a [`crate::freeze::Freeze`]
//! signed with the custodian's operator key; its answer is a [`FreezeState`]),
//! `POST /v1/rounds/{session}/{layer}` (binary, see [`crate::peer`]), `GET /metrics`.
//!
//! Every error is [`ErrorBody`] with a fitting status.

use std::collections::BTreeMap;

use base64::Engine as _;
use quorumvm_core::circuit::Manifest;
use serde::{Deserialize, Serialize};

use crate::signed::Signed;

/// `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable and machine-readable: `unknown_program`, `pending`, `budget_exhausted`, ...
    pub code: String,
    pub message: String,
}

impl ErrorBody {
    pub fn new(code: &str, message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: code.into(),
                message: message.into(),
            },
        }
    }
}

/// Bytes in JSON (packages): standard base64.
pub fn encode_bytes(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode_bytes(text: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(text)
        .map_err(|e| format!("not base64: {e}"))
}

/// One custodian's sealed shares of a version's secrets: secret name → sealed share (hex).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedShares {
    pub custodian: u32,
    pub sealed: BTreeMap<String, String>,
}

/// `POST /v1/packages`: a signed package, for every custodian its sealed shares, and the
/// publisher's signed [`crate::deal::Deal`] of them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstallRequest {
    /// The signed package (base64).
    pub package: String,
    pub shares: Vec<SealedShares>,
    pub deal: Signed,
}

/// `GET /v1/packages/{id}/shares/{i}`: custodian i's sealed shares and the deal they are
/// checked against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DealtShares {
    pub shares: SealedShares,
    pub deal: Signed,
}

/// The header a custodian proves itself with when it fetches its sealed shares
/// ([`crate::order::TicketKey::fetch_tag`]).
pub const FETCH_AUTH_HEADER: &str = "x-quorumvm-custodian-auth";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionState {
    /// Installed, waiting for approvals.
    Pending,
    /// Approved by k custodians and its name's highest active version: it serves.
    Active,
    /// Superseded by a higher active version of its name, or retired by k custodian
    /// operators: it serves no more, anywhere.
    Retired,
}

/// What the coordinator knows of one installed version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub package_id: String,
    pub name: String,
    pub version: u32,
    pub state: VersionState,
    /// Custodians whose valid approval was counted.
    pub approvals: Vec<u32>,
    pub threshold: usize,
    /// Whether the program's name currently points to this version.
    pub current: bool,
    /// The publisher's ed25519 key (hex).
    pub publisher: String,
    pub manifest: Manifest,
    /// Custodians whose valid approval of its retirement was counted (at k it is retired).
    #[serde(default)]
    pub retirements: Vec<u32>,
}

/// `POST /v1/packages/{id}/approvals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApproveRequest {
    pub custodian: u32,
    /// ed25519 signature (hex) over [`crate::approval::statement`].
    pub signature: String,
}

/// What the coordinator knows of one caller identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityInfo {
    pub name: String,
    /// The caller's ed25519 key (hex), which signs its requests.
    pub public_key: String,
    /// Custodians whose valid approval was counted.
    pub approvals: Vec<u32>,
    /// Whether k custodians approved it.
    pub active: bool,
    /// Custodians whose valid approval of its revocation was counted.
    #[serde(default)]
    pub revocations: Vec<u32>,
    /// Whether k custodians approved its revocation: it never serves again.
    #[serde(default)]
    pub revoked: bool,
    /// Whether it is frozen at the coordinator (which admits none of its requests).
    #[serde(default)]
    pub frozen: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalResponse {
    pub request_id: String,
    pub program: String,
    pub version: u32,
    pub package_id: String,
    /// Output name → decimal value; empty when the request had private inputs (then the
    /// outputs are in `sealed_outputs`, for the caller alone).
    pub outputs: BTreeMap<String, String>,
    /// Custodian index → its output shares sealed to the request's reply key (hex), when the
    /// request had private inputs: the caller's client opens and reconstructs them
    /// (`quorumvm eval` does); the coordinator cannot.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub sealed_outputs: BTreeMap<u32, String>,
    /// Communication rounds among the custodians (= the circuit's multiplicative depth).
    pub rounds: u32,
    /// The custodians that computed it.
    pub custodians: Vec<u32>,
    /// Custodians whose output share disagreed with the others (empty when all agree).
    pub inconsistent: Vec<u32>,
    pub remaining_budget: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustodianInfo {
    pub index: u32,
    pub url: String,
    /// The operator's approval key (hex).
    pub operator_key: String,
    pub sealing_key: String,
    pub live: bool,
}

/// `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterInfo {
    pub threshold: usize,
    pub custodians: Vec<CustodianInfo>,
}

/// `POST /v1/sessions` on a custodian: its ticket and the caller's signed request, under one
/// tag (see [`crate::order::TicketKey`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRequest {
    /// The ticket's JSON, exactly as tagged.
    pub ticket: String,
    /// The caller's signed [`crate::request::CallerRequest`], exactly as the caller sent it.
    pub request: Signed,
    /// HMAC-SHA256 (hex) over ticket and request.
    pub tag: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionResponse {
    pub outputs: OutputShares,
    pub rounds: u32,
}

/// A custodian's output shares, in the manifest's output order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputShares {
    /// Hex field elements, for the coordinator to reconstruct.
    Plain(String),
    /// Sealed to the caller's reply key (hex): the request had private inputs.
    Sealed(String),
}

/// A custodian's `GET /v1/health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustodianHealth {
    pub index: u32,
    /// The versions that serve here (activated, and their shares checked) and how many unused
    /// kits this custodian holds for each.
    pub versions: Vec<VersionKits>,
    /// How many caller identities it has registered (and not revoked).
    pub identities: u64,
    /// How many identities it holds revoked by k approvals.
    #[serde(default)]
    pub revocations: u64,
    /// How many versions it holds retired by k approvals.
    #[serde(default)]
    pub retirements: u64,
    /// Its share epoch: how many refreshes and rotations of the shares it committed.
    #[serde(default)]
    pub epoch: u64,
    /// How many rotations of the membership it committed (0: the cluster its config names).
    #[serde(default)]
    pub generation: u64,
    /// The threshold of the cluster in force here, and its members' indices (this custodian
    /// is not among them once it left).
    #[serde(default)]
    pub threshold: usize,
    #[serde(default)]
    pub members: Vec<u32>,
    /// What is frozen here, and since when (the time of the freeze): the coordinator sends
    /// again an unfreeze it holds that is later, which the custodian missed.
    #[serde(default)]
    pub frozen: Vec<Frozen>,
}

/// A target frozen at a party, since the time of the freeze statement.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frozen {
    pub target: crate::freeze::Target,
    pub since_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionKits {
    pub package_id: String,
    pub kits: u64,
}

/// A custodian's standing after `POST /v1/custodians/clearances`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearanceState {
    pub custodian: u32,
    /// Whether the statement cleared a suspicion (`false`: the custodian was not suspect, or
    /// was caught again after the statement was signed).
    pub cleared: bool,
}

/// A party's answer to a freeze it applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FreezeState {
    pub target: crate::freeze::Target,
    pub at: crate::freeze::Authority,
    pub frozen: bool,
    /// Whether the party knows the target (an identity registered there, a version installed
    /// there); a freeze of one not known yet still holds when it is.
    pub known: bool,
}

/// `POST /v1/unfreezes` at the coordinator: one operator's approval of an unfreeze.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnfreezeApproval {
    pub unfreeze: crate::freeze::Unfreeze,
    pub custodian: u32,
    /// Hex of the operator's ed25519 signature ([`crate::approval::Subject::Unfreeze`]).
    pub signature: String,
}

/// The coordinator's answer to an unfreeze approval: how many distinct operators approved
/// this unfreeze, how many are needed, and, once they are, what the custodians said.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnfreezeState {
    pub unfreeze: crate::freeze::Unfreeze,
    pub approvals: usize,
    pub needed: usize,
    /// Whether k approved: the freezes are lifted at the coordinator and at every custodian
    /// that took the order (a custodian down now gets it when it is seen again).
    pub lifted: bool,
    /// The custodians that took the unfreeze (empty until `lifted`).
    pub taken_by: Vec<u32>,
}

/// `POST /v1/reshares`: what a refresh of the shares did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReshareReport {
    pub session: String,
    /// The cluster's epoch now.
    pub epoch: u64,
    /// The versions whose secrets were refreshed.
    pub packages: Vec<String>,
    pub secrets: u64,
    /// The custodians at the new epoch already; those `behind` get the commit when they
    /// answer again.
    pub committed: Vec<u32>,
    pub behind: Vec<u32>,
    /// How long the refresh took, from the request to the last commit answered.
    pub ms: u64,
}

/// A custodian's answer to an order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderResponse {
    /// Activate: "active" (it serves) or "unchecked" (it awaits the joint check of its shares);
    /// check of shares: "active"; preprocess: "stored"; abort: "aborted"; reshare: "verified";
    /// commit: "committed".
    pub status: String,
    /// Preprocess: how many kits were stored.
    #[serde(default)]
    pub kits: u64,
    /// Reshare: this custodian's tag for each peer, attesting that it holds its new shares.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub attestations: std::collections::BTreeMap<u32, String>,
    /// Reshare and commit: the share epoch this custodian is at after the order.
    #[serde(default)]
    pub epoch: u64,
}

/// `GET /v1/membership` (custodian and coordinator): the membership in force, as it would be
/// written in a config, and the epoch a change of it moves from. An operator's
/// `quorumvm custodian` asks its own custodian, so the statement it signs starts from what
/// that machine holds, not from what the coordinator says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipInfo {
    /// How many rotations made it: 0 is the configured cluster.
    pub generation: u64,
    pub epoch: u64,
    pub threshold: usize,
    pub custodians: Vec<crate::config::CustodianEntry>,
}

/// `POST /v1/memberships`: one operator's approval of a membership statement
/// ([`crate::approval::Subject::Membership`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MembershipApproval {
    pub membership: crate::membership::Membership,
    pub custodian: u32,
    /// ed25519 signature (hex) over the statement.
    pub signature: String,
}

/// What the coordinator holds of a membership statement; the approval that reaches k runs the
/// rotation and answers with its report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipState {
    /// The statement's digest (hex).
    pub statement: String,
    pub from_epoch: u64,
    /// The current custodians whose approval was counted.
    pub approvals: Vec<u32>,
    /// k of the current cluster.
    pub needed: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<RotationReport>,
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotationReport {
    pub session: String,
    /// The membership's generation and the cluster's epoch now.
    pub generation: u64,
    pub epoch: u64,
    pub threshold: usize,
    /// The new set's indices.
    pub members: Vec<u32>,
    /// The versions whose secrets were re-dealt.
    pub packages: Vec<String>,
    /// The machines that took the commit and those behind, by their index before the rotation
    /// (those behind get it when they answer again, if they stay members).
    pub committed: Vec<u32>,
    pub behind: Vec<u32>,
    pub ms: u64,
}
