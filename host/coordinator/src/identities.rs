//! Who is calling: API keys (`Authorization: Bearer qvm_...`), checked against the identities
//! table. Keys are added by `quorumvm identity add` on the coordinator's machine, which writes
//! the database directly; a key this process has not seen yet is looked up there on first use.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::http::{HeaderMap, header};
use quorumvm_ledger::Ledger;
use quorumvm_policy::{KeyHash, PolicyError};

use crate::error::ApiError;

pub struct Identities {
    /// SHA-256 of a key → identity name. Only hashes: a key is never held.
    known: RwLock<HashMap<[u8; 32], String>>,
    reader: Arc<Mutex<Ledger>>,
}

impl Identities {
    pub fn new(reader: Arc<Mutex<Ledger>>) -> Identities {
        Identities {
            known: RwLock::new(HashMap::new()),
            reader,
        }
    }

    /// The caller's identity, or 401.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<String, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::from(PolicyError::Unauthenticated).with_message(
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
        let reader = Arc::clone(&self.reader);
        let name = tokio::task::spawn_blocking(move || {
            quorumvm_policy::authenticate(reader.lock().expect("reader lock").connection(), &token)
        })
        .await
        .map_err(|e| ApiError::internal(e.to_string()))??;
        self.known
            .write()
            .expect("identities lock")
            .insert(hash, name.clone());
        Ok(name)
    }
}
