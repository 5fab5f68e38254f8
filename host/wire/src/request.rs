//! A caller's request for one evaluation, signed with the caller's own ed25519 key (in
//! [`quorumvm_package::Domain::Request`]), and the terms of the session that serves it.
//!
//! The coordinator relays the signed request to every custodian of the quorum unchanged. Each
//! custodian verifies it under the key k custodian operators approved for the identity, refuses
//! a request id it has already served (recorded durably with the charge), refuses a request
//! whose time is outside [`REQUEST_WINDOW_MS`] of its own clock, and reads the visible inputs
//! from it, checking each against its declared range and scale. So the coordinator cannot
//! invent a caller, replay a request, or choose an input. Private inputs travel in the same
//! signed request, shared and sealed to each custodian ([`PrivateInputs`]).
//!
//! The session's [`Terms`] (request digest, package, kit, quorum, attempt) hash to its session
//! id. Round messages are authenticated over the session id, so members given different terms
//! for "one" session are in different sessions: no message of one is ever taken by the other,
//! and neither completes.

use std::collections::BTreeMap;

use quorumvm_package::{Domain, PublicKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::code::ErrorCode;
use crate::signed::{Signed, SignedError};

/// How far a request's time may be from a custodian's clock, either way. Request ids are kept
/// for good, so the window only bounds how long a signed request can be held back and used.
pub const REQUEST_WINDOW_MS: u64 = 120_000;

/// One evaluation, as the caller asks for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallerRequest {
    /// Chosen by the caller (random, 16 to 64 characters of `[0-9a-zA-Z_-]`); used once.
    pub request_id: String,
    pub identity: String,
    /// The program's name.
    pub program: String,
    /// The exact version asked for (the name's current one when the caller signed).
    pub package_id: String,
    /// Visible input name → its decimal value, exactly as written.
    pub inputs: BTreeMap<String, Decimal>,
    /// The private inputs, shared and sealed to each custodian by the caller's client: present
    /// exactly when the program declares private inputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private: Option<PrivateInputs>,
    pub time_ms: u64,
}

/// A request's private inputs. Each custodian opens only its own envelope
/// (`quorumvm_sealing::open_inputs`, bound to the request id, package and custodian); the
/// caller's signature over the request covers every envelope, so the coordinator can neither
/// read nor replace one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateInputs {
    /// Custodian index → its shares of the private inputs (manifest order), sealed to it (hex).
    pub sealed: BTreeMap<u32, String>,
    /// The X25519 public key (hex, 32 bytes) the caller's client made for this request alone:
    /// each custodian seals its output shares to it, so the coordinator sees no output either.
    pub reply_key: String,
}

/// A decimal value as the caller wrote it: a JSON string (`"1200.50"`) or a JSON number, kept
/// as its exact text (never through `f64`), so `999.99999999999999999` at scale 6 is refused
/// as having too many digits, not rounded to 1000.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decimal(pub String);

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Decimal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let raw: Box<serde_json::value::RawValue> = Deserialize::deserialize(d)?;
        let text = raw.get().trim();
        if text.starts_with('"') {
            let s: String = serde_json::from_str(text).map_err(serde::de::Error::custom)?;
            return Ok(Decimal(s));
        }
        // A JSON number: its text is already exact.
        serde_json::from_str::<serde::de::IgnoredAny>(text)
            .ok()
            .filter(|_| text.starts_with(|c: char| c == '-' || c.is_ascii_digit()))
            .map(|_| Decimal(text.to_string()))
            .ok_or_else(|| serde::de::Error::custom("an input value is a decimal string or number"))
    }
}

impl CallerRequest {
    /// The inputs as (name, decimal text) pairs, as `quorumvm_core::eval::encode_values` reads
    /// them.
    pub fn input_texts(&self) -> Vec<(String, String)> {
        self.inputs
            .iter()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect()
    }
}

/// Why a signed request is refused before anything is spent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("the request is malformed: {0}")]
    Malformed(String),
    #[error("the request is not signed by identity `{0}`'s approved key")]
    BadSignature(String),
    #[error("a request id is 16 to 64 characters of letters, digits, `_` and `-`")]
    BadId,
    #[error(
        "the request was signed {0} ms away from this server's clock; at most {REQUEST_WINDOW_MS} ms is accepted"
    )]
    Stale(u64),
}

impl RequestError {
    /// The code both servers answer with ([`ErrorCode::status`] gives the status: 400 for what
    /// the caller wrote wrong, 401 for what does not authenticate now).
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::Malformed(_) => ErrorCode::BadRequest,
            RequestError::BadSignature(_) => ErrorCode::BadRequestSignature,
            RequestError::BadId => ErrorCode::BadRequestId,
            RequestError::Stale(_) => ErrorCode::StaleRequest,
        }
    }

    pub fn status(&self) -> u16 {
        self.code().status()
    }
}

/// The identity a signed request claims, unverified: only to look up the key to verify it with.
pub fn claimed_identity(signed: &Signed) -> Result<String, RequestError> {
    signed
        .parse_unverified::<CallerRequest>()
        .map(|r| r.identity)
        .map_err(|e| RequestError::Malformed(e.to_string()))
}

/// The request, once it verifies under `key` (the key approved for its identity), has a valid
/// id and was signed within [`REQUEST_WINDOW_MS`] of `now_ms`.
pub fn open(signed: &Signed, key: &PublicKey, now_ms: u64) -> Result<CallerRequest, RequestError> {
    let request: CallerRequest = signed.open(Domain::Request, key).map_err(|e| match e {
        SignedError::BadSignature => {
            RequestError::BadSignature(claimed_identity(signed).unwrap_or_default())
        }
        SignedError::Malformed(m) => RequestError::Malformed(m),
    })?;
    if !valid_request_id(&request.request_id) {
        return Err(RequestError::BadId);
    }
    let skew = request.time_ms.abs_diff(now_ms);
    if skew > REQUEST_WINDOW_MS {
        return Err(RequestError::Stale(skew));
    }
    Ok(request)
}

/// Whether `id` is an acceptable request id.
fn valid_request_id(id: &str) -> bool {
    (16..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// What every member of one session must agree on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Terms<'a> {
    /// [`crate::signed::Signed::digest`] of the caller's request.
    pub request: [u8; 32],
    pub package_id: &'a str,
    pub kit: u64,
    /// Sorted.
    pub quorum: &'a [u32],
    /// 0 for the first attempt; each retry (a fresh kit) counts up.
    pub attempt: u32,
    /// The share epoch: members of one session never mix shares of different refreshes.
    pub epoch: u64,
}

impl Terms<'_> {
    /// The session id these terms name: SHA-256 over every field, in hex.
    pub fn session_id(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"quorumvm session terms v1\0");
        h.update(self.request);
        h.update((self.package_id.len() as u64).to_be_bytes());
        h.update(self.package_id.as_bytes());
        h.update(self.kit.to_be_bytes());
        h.update((self.quorum.len() as u64).to_be_bytes());
        for x in self.quorum {
            h.update(x.to_be_bytes());
        }
        h.update(self.attempt.to_be_bytes());
        h.update(self.epoch.to_be_bytes());
        hex::encode(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_keep_their_exact_text_from_strings_and_numbers() {
        let m: BTreeMap<String, Decimal> = serde_json::from_str(
            r#"{"a": "1200.50", "b": 999.99999999999999999, "c": -3, "d": 1e3}"#,
        )
        .unwrap();
        assert_eq!(m["a"].0, "1200.50");
        assert_eq!(m["b"].0, "999.99999999999999999");
        assert_eq!(m["c"].0, "-3");
        assert_eq!(m["d"].0, "1e3");
        for bad in [r#"{"a": true}"#, r#"{"a": null}"#, r#"{"a": [1]}"#] {
            assert!(serde_json::from_str::<BTreeMap<String, Decimal>>(bad).is_err());
        }
    }

    #[test]
    fn requests_open_signed_by_their_key_with_a_valid_id_and_fresh() {
        let key = quorumvm_package::SecretKey::generate();
        let request = |id: &str, time_ms: u64| CallerRequest {
            request_id: id.into(),
            identity: "alice".into(),
            program: "p".into(),
            package_id: "00".into(),
            inputs: BTreeMap::new(),
            private: None,
            time_ms,
        };
        let now = 10 * REQUEST_WINDOW_MS;
        let good = Signed::sign(&request("0123456789abcdef", now), Domain::Request, &key);
        assert_eq!(claimed_identity(&good).unwrap(), "alice");
        assert_eq!(
            open(&good, &key.public(), now + REQUEST_WINDOW_MS)
                .unwrap()
                .time_ms,
            now
        );
        let other = quorumvm_package::SecretKey::generate();
        let err = open(&good, &other.public(), now).unwrap_err();
        assert_eq!(
            (err.status(), err.code()),
            (401, ErrorCode::BadRequestSignature)
        );
        let stale = open(&good, &key.public(), now + REQUEST_WINDOW_MS + 1).unwrap_err();
        assert_eq!(stale, RequestError::Stale(REQUEST_WINDOW_MS + 1));
        let early = open(&good, &key.public(), now - REQUEST_WINDOW_MS - 1).unwrap_err();
        assert_eq!(early.code(), ErrorCode::StaleRequest);
        for bad in ["short", "0123456789abcdef/", &"a".repeat(65)] {
            let signed = Signed::sign(&request(bad, now), Domain::Request, &key);
            assert_eq!(
                open(&signed, &key.public(), now),
                Err(RequestError::BadId),
                "{bad}"
            );
        }
        // Signed in another domain (an approval, say): not a request.
        let approval = Signed::sign(&request("0123456789abcdef", now), Domain::Approval, &key);
        assert_eq!(
            open(&approval, &key.public(), now).unwrap_err().code(),
            ErrorCode::BadRequestSignature
        );
    }

    #[test]
    fn every_term_changes_the_session_id() {
        let base = Terms {
            request: [1; 32],
            package_id: "p",
            kit: 7,
            quorum: &[1, 2, 3],
            attempt: 0,
            epoch: 0,
        };
        let id = base.session_id();
        assert_eq!(id.len(), 64);
        let variants = [
            Terms {
                request: [2; 32],
                ..base.clone()
            },
            Terms {
                package_id: "q",
                ..base.clone()
            },
            Terms {
                kit: 8,
                ..base.clone()
            },
            Terms {
                quorum: &[1, 2],
                ..base.clone()
            },
            Terms {
                attempt: 1,
                ..base.clone()
            },
            Terms {
                epoch: 1,
                ..base.clone()
            },
        ];
        for v in variants {
            assert_ne!(v.session_id(), id, "{v:?}");
        }
    }
}
