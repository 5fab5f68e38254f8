//! Who is calling.
//!
//! Two credentials, for two parties. The API key (`Authorization: Bearer qvm_...`, stored only
//! as a hash) is the coordinator's own admission: checked before a request's body is read. The
//! caller's ed25519 key signs every request, and every custodian verifies that signature under
//! the key k custodian operators approved: the coordinator checks it too (refusing a forgery
//! early), but cannot make one. Identities are proposed by `quorumvm identity add` on the
//! coordinator's machine, which writes the database directly, and approved by custodian
//! operators through the API; an identity unknown to this process is looked up there on first
//! use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::http::{HeaderMap, StatusCode, header};
use quorumvm_ledger::Storage;
use quorumvm_package::PublicKey;
use quorumvm_policy::{KeyHash, PolicyError};
use quorumvm_server::Env;
use quorumvm_wire::api::IdentityInfo;
use quorumvm_wire::order::ApprovalSignature;

use crate::error::{ApiError, policy_refusal};
use crate::store::{self, StoredIdentity};

/// One caller identity: its key, and the approvals counted so far (of it, and of its
/// revocation).
pub struct Caller {
    pub name: String,
    pub key: PublicKey,
    pub approvals: Mutex<Vec<(u32, String)>>,
    pub revocations: Mutex<Vec<(u32, String)>>,
}

impl Caller {
    fn from_stored(stored: StoredIdentity) -> Result<Caller, ApiError> {
        let key = PublicKey::from_file_text(&stored.public_key).map_err(|e| {
            ApiError::internal(format!("stored key of identity {}: {e}", stored.name))
        })?;
        Ok(Caller {
            name: stored.name,
            key,
            approvals: Mutex::new(stored.approvals),
            revocations: Mutex::new(stored.revocations),
        })
    }

    pub fn approvals(&self) -> Vec<ApprovalSignature> {
        crate::registry::signatures(&self.approvals)
    }

    pub fn revocation_approvals(&self) -> Vec<ApprovalSignature> {
        crate::registry::signatures(&self.revocations)
    }

    /// k custodian operators approved it.
    pub fn is_active(&self, threshold: usize) -> bool {
        self.approvals.lock().expect("approvals lock").len() >= threshold
    }

    /// k custodian operators approved its revocation: it never serves again.
    pub fn is_revoked(&self, threshold: usize) -> bool {
        self.revocations.lock().expect("revocations lock").len() >= threshold
    }

    /// Whether the coordinator admits its requests: approved by k operators and not revoked
    /// (403 with the reason otherwise; its freezes are checked apart).
    pub fn admit(&self, threshold: usize) -> Result<(), ApiError> {
        let refuse =
            |code, message: String| Err(ApiError::new(StatusCode::FORBIDDEN, code, message));
        let name = &self.name;
        if self.is_revoked(threshold) {
            return refuse(
                "identity_revoked",
                format!(
                    "identity `{name}` is revoked by k custodian operators: never served again"
                ),
            );
        }
        if !self.is_active(threshold) {
            return refuse(
                "identity_pending",
                format!("identity `{name}` is waiting for custodian operators' approvals"),
            );
        }
        Ok(())
    }

    /// What the coordinator knows of it; `frozen`: whether it is frozen here.
    pub fn info(&self, threshold: usize, frozen: bool) -> IdentityInfo {
        let approvals: Vec<u32> = self
            .approvals
            .lock()
            .expect("approvals lock")
            .iter()
            .map(|(c, _)| *c)
            .collect();
        let revocations: Vec<u32> = self
            .revocations
            .lock()
            .expect("revocations lock")
            .iter()
            .map(|(c, _)| *c)
            .collect();
        IdentityInfo {
            name: self.name.clone(),
            public_key: self.key.to_hex(),
            active: approvals.len() >= threshold,
            approvals,
            revoked: revocations.len() >= threshold,
            revocations,
            frozen,
        }
    }
}

pub struct Identities {
    /// SHA-256 of an API key → identity name. Only hashes: a key is never held.
    known: RwLock<HashMap<[u8; 32], String>>,
    callers: RwLock<HashMap<String, Arc<Caller>>>,
    storage: Storage,
    /// Where the blocking reads run.
    env: Env,
}

impl Identities {
    pub fn new(env: &Env, storage: Storage) -> Identities {
        Identities {
            known: RwLock::new(HashMap::new()),
            callers: RwLock::new(HashMap::new()),
            storage,
            env: env.clone(),
        }
    }

    /// The API key's identity, or 401. `Bearer` is matched without regard to case (RFC 9110
    /// §11.1: the scheme is case-insensitive).
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, token) = v.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then_some(token)
            })
            .ok_or_else(|| {
                policy_refusal(PolicyError::Unauthenticated).with_message(
                    "an API key is required: `Authorization: Bearer qvm_...` (create one with `quorumvm identity add NAME`)",
                )
            })?
            .trim()
            .to_string();
        let hash = KeyHash::of(&token).to_bytes();
        if let Some(name) = self.known.read().expect("identities lock").get(&hash) {
            return Ok(name.clone());
        }
        // Unknown here: perhaps added since. `authenticate` compares every stored hash in
        // constant time.
        let storage = self.storage.clone();
        let name = self
            .env
            .blocking(move || storage.read(|conn| quorumvm_policy::authenticate(conn, &token)))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?
            .map_err(policy_refusal)?;
        self.known
            .write()
            .expect("identities lock")
            .insert(hash, name.clone());
        Ok(name)
    }

    /// Identity `name`, or 404.
    pub async fn caller(&self, name: &str) -> Result<Arc<Caller>, ApiError> {
        if let Some(c) = self.callers.read().expect("callers lock").get(name) {
            return Ok(Arc::clone(c));
        }
        let storage = self.storage.clone();
        let stored = self
            .env
            .blocking(move || storage.read(store::load_identities))
            .await
            .map_err(|e| ApiError::internal(e.to_string()))??;
        let mut callers = self.callers.write().expect("callers lock");
        for s in stored {
            if !callers.contains_key(&s.name) {
                let caller = Caller::from_stored(s)?;
                callers.insert(caller.name.clone(), Arc::new(caller));
            }
        }
        callers.get(name).cloned().ok_or_else(|| {
            ApiError::not_found(
                "unknown_identity",
                format!("no identity `{name}` is proposed: `quorumvm identity add` first"),
            )
        })
    }

    /// Every identity this process has seen (at start: every stored one).
    pub fn all(&self) -> Vec<Arc<Caller>> {
        self.callers
            .read()
            .expect("callers lock")
            .values()
            .cloned()
            .collect()
    }

    /// Loads every stored identity (at startup), or takes their approvals and revocations
    /// again (what another replica may have counted since).
    pub fn refresh(&self, stored: Vec<StoredIdentity>) -> Result<(), ApiError> {
        let mut callers = self.callers.write().expect("callers lock");
        for s in stored {
            match callers.get(&s.name) {
                Some(held) => {
                    *held.approvals.lock().expect("approvals lock") = s.approvals;
                    *held.revocations.lock().expect("revocations lock") = s.revocations;
                }
                None => {
                    let caller = Caller::from_stored(s)?;
                    callers.insert(caller.name.clone(), Arc::new(caller));
                }
            }
        }
        Ok(())
    }
}
