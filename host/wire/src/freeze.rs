//! Freezing: one party stops serving a caller identity or a program version at once, at itself
//! only; lifting a freeze takes k custodian operators.
//!
//! Two parties may freeze: the coordinator (it stops admitting the target's requests) and each
//! custodian's operator, for that custodian alone (it refuses every session of the target,
//! whatever the coordinator relays). A [`Freeze`] names the party it is addressed to, is signed
//! in [`Domain::Freeze`] with that party's key (the coordinator's own, or the custodian's
//! operator key, the one that signs approvals), and counts only there: a custodian checks it
//! under its own operator's key, so neither the coordinator nor another custodian's operator
//! can freeze anything at it. With fewer than k custodians willing to serve a target, the
//! cluster cannot serve it. A policy's anomaly rule freezes too, at the party where it fired.
//!
//! One frightened operator must be able to stop a target at once; lifting is the opposite
//! decision and is taken like the approval of a version: an [`Unfreeze`] counts only with k
//! valid approvals of distinct operators ([`crate::approval::Subject::Unfreeze`]), which every
//! party checks itself. It lifts the freezes of its target that are older than its own time at
//! every party that applies it.
//!
//! Every party records, per target, the time of the last statement it applied (freeze or
//! unfreeze) and applies only a later one: an old unfreeze replayed cannot undo a newer freeze,
//! nor an old freeze a newer unfreeze. A freeze is fresh for [`FREEZE_WINDOW_MS`] either way; an
//! unfreeze may not be dated further than that into the future (its approvals may take days to
//! gather, so it has no other age limit: the ordering rule is what makes a replay harmless).

use quorumvm_package::{Domain, PublicKey, SecretKey};
use serde::{Deserialize, Serialize};

use crate::signed::{Signed, SignedError};

/// How far a freeze's time may be from the receiving party's clock, either way; how far an
/// unfreeze may be dated into its future.
pub const FREEZE_WINDOW_MS: u64 = 120_000;

/// Where a freeze applies, and so whose key must have signed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Authority {
    /// The coordinator's admission; signed with the coordinator's key.
    Coordinator,
    /// Custodian `i`; signed with custodian `i`'s operator key.
    Custodian(u32),
}

impl std::fmt::Display for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authority::Coordinator => f.write_str("the coordinator"),
            Authority::Custodian(i) => write!(f, "custodian {i}"),
        }
    }
}

/// What a freeze stops: every request of one caller identity, or every evaluation of one
/// program version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    /// A caller identity's name.
    Identity(String),
    /// A package id: 64 lowercase hexadecimal digits.
    Version(String),
}

impl Target {
    /// The target as one string (`identity/NAME`, `version/ID`): how parties store it, and
    /// what an unfreeze approval signs. Names hold no `/`, so the two kinds never collide.
    pub fn key(&self) -> String {
        match self {
            Target::Identity(name) => format!("identity/{name}"),
            Target::Version(id) => format!("version/{id}"),
        }
    }

    /// The target a [`Target::key`] names.
    pub fn from_key(key: &str) -> Option<Target> {
        let (kind, rest) = key.split_once('/')?;
        let target = match kind {
            "identity" => Target::Identity(rest.to_string()),
            "version" => Target::Version(rest.to_string()),
            _ => return None,
        };
        target.check().ok()?;
        Some(target)
    }

    /// Refuses a target no party could hold: a package id that is not 64 lowercase hex digits,
    /// or an empty name or one with a `/` (identity names are checked further where they are
    /// registered).
    pub fn check(&self) -> Result<(), String> {
        match self {
            Target::Identity(name) if name.is_empty() || name.len() > 64 || name.contains('/') => {
                Err(format!("`{name}` is not an identity name"))
            }
            Target::Version(id)
                if id.len() != 64
                    || !id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                Err(format!(
                    "`{id}` is not a package id (64 lowercase hex digits)"
                ))
            }
            _ => Ok(()),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Identity(name) => write!(f, "identity `{name}`"),
            Target::Version(id) => write!(f, "version {}", &id[..id.len().min(12)]),
        }
    }
}

/// One party's freeze of a target, at itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    pub target: Target,
    pub at: Authority,
    pub time_ms: u64,
}

/// Lifting a target's freezes, wherever they are older than `time_ms`: what k operators
/// approve, each signing [`Unfreeze::statement`] in [`Domain::Unfreeze`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Unfreeze {
    pub target: Target,
    pub time_ms: u64,
}

impl Unfreeze {
    /// The bytes an approval signs: the target's key, then the time (8 bytes, big-endian).
    pub fn statement(&self) -> Vec<u8> {
        let mut out = self.target.key().into_bytes();
        out.extend_from_slice(&self.time_ms.to_be_bytes());
        out
    }

    /// Refuses an unfreeze dated too far into `now_ms`'s future (see the module doc).
    pub fn check_time(&self, now_ms: u64) -> Result<(), FreezeError> {
        match self.time_ms.checked_sub(now_ms) {
            Some(ahead) if ahead > FREEZE_WINDOW_MS => Err(FreezeError::Stale(ahead)),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FreezeError {
    #[error("the freeze is not signed by {0}'s key")]
    BadSignature(Authority),
    #[error("the freeze is malformed: {0}")]
    Malformed(String),
    #[error("the freeze is addressed to {addressed}, not to {here}")]
    Elsewhere {
        addressed: Authority,
        here: Authority,
    },
    #[error(
        "the statement was signed {0} ms away from this party's clock (at most {FREEZE_WINDOW_MS} ms)"
    )]
    Stale(u64),
}

impl Freeze {
    pub fn sign(&self, key: &SecretKey) -> Signed {
        Signed::sign(self, Domain::Freeze, key)
    }

    /// Opens a freeze as party `here` does: signed by `key` (the party's own authority),
    /// addressed to `here`, about a well-formed target, and fresh at `now_ms`. Whether it is
    /// later than the last statement applied is the party's check, against its own record.
    pub fn open(
        signed: &Signed,
        key: &PublicKey,
        here: Authority,
        now_ms: u64,
    ) -> Result<Freeze, FreezeError> {
        let statement: Freeze = signed.open(Domain::Freeze, key).map_err(|e| match e {
            SignedError::BadSignature => FreezeError::BadSignature(here),
            SignedError::Malformed(m) => FreezeError::Malformed(m),
        })?;
        if statement.at != here {
            return Err(FreezeError::Elsewhere {
                addressed: statement.at,
                here,
            });
        }
        statement.target.check().map_err(FreezeError::Malformed)?;
        let skew = statement.time_ms.abs_diff(now_ms);
        if skew > FREEZE_WINDOW_MS {
            return Err(FreezeError::Stale(skew));
        }
        Ok(statement)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freezes_count_only_at_their_party_under_its_key_and_fresh() {
        let operator = SecretKey::generate();
        let here = Authority::Custodian(1);
        let statement = Freeze {
            target: Target::Identity("alice".into()),
            at: here,
            time_ms: 1_000_000,
        };
        let signed = statement.sign(&operator);
        assert_eq!(
            Freeze::open(&signed, &operator.public(), here, 1_000_500),
            Ok(statement.clone())
        );
        let other = SecretKey::generate();
        assert_eq!(
            Freeze::open(&signed, &other.public(), here, 1_000_500),
            Err(FreezeError::BadSignature(here))
        );
        assert_eq!(
            Freeze::open(
                &signed,
                &operator.public(),
                Authority::Custodian(2),
                1_000_500
            ),
            Err(FreezeError::Elsewhere {
                addressed: here,
                here: Authority::Custodian(2)
            })
        );
        assert_eq!(
            Freeze::open(
                &signed,
                &operator.public(),
                here,
                1_000_000 + FREEZE_WINDOW_MS + 1
            ),
            Err(FreezeError::Stale(FREEZE_WINDOW_MS + 1))
        );
        // The same key's signature in another domain (an unfreeze approval, say) is not one.
        let approval = Signed {
            body: signed.body.clone(),
            signature: hex::encode(
                operator.sign_statement(Domain::Unfreeze, signed.body.as_bytes()),
            ),
        };
        assert_eq!(
            Freeze::open(&approval, &operator.public(), here, 1_000_500),
            Err(FreezeError::BadSignature(here))
        );
        // A target no party could hold is refused as malformed.
        let bad = Freeze {
            target: Target::Version("not-hex".into()),
            ..statement
        };
        assert!(matches!(
            Freeze::open(&bad.sign(&operator), &operator.public(), here, 1_000_500),
            Err(FreezeError::Malformed(_))
        ));
    }

    #[test]
    fn target_keys_round_trip_and_unfreezes_sign_target_and_time() {
        let id = "ab".repeat(32);
        for t in [
            Target::Identity("alice".into()),
            Target::Version(id.clone()),
        ] {
            assert_eq!(Target::from_key(&t.key()), Some(t));
        }
        assert_eq!(Target::from_key("identity/a/b"), None);
        assert_eq!(Target::from_key("version/AB"), None);
        assert_eq!(Target::from_key("program/x"), None);
        let u = |time_ms| Unfreeze {
            target: Target::Version(id.clone()),
            time_ms,
        };
        assert_ne!(u(1).statement(), u(2).statement());
        assert_eq!(u(10_000 + FREEZE_WINDOW_MS).check_time(10_000), Ok(()));
        assert_eq!(
            u(10_001 + FREEZE_WINDOW_MS).check_time(10_000),
            Err(FreezeError::Stale(FREEZE_WINDOW_MS + 1))
        );
        assert_eq!(u(1).check_time(10_000), Ok(()));
    }
}
