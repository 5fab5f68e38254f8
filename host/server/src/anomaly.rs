//! The policy's anomaly rules at one party (the coordinator or a custodian), each of which
//! watches the queries it sees for itself: [`Anomalies`] keeps the identities' recent queries
//! ([`quorumvm_policy::Watcher`]), [`record`] audits what fired and applies a `freeze` firing
//! as a freeze of the identity at this party, and [`Anomalies::policy`] is the policy an
//! identity is admitted under while a `throttle` firing holds: a tenth of its rate limit.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use quorumvm_core::circuit::{Action, Manifest, Policy};
use quorumvm_core::field::Fp;
use quorumvm_ledger::rusqlite::Transaction;
use quorumvm_ledger::{LedgerError, NewEntry, Writer, audit};
use quorumvm_policy::{Firing, Watcher};
use quorumvm_wire::freeze::Target;

use crate::ApiError;
use crate::freeze::{Freezes, NewFreeze};

/// How much a throttle cuts an identity's rate limit on the program.
pub const THROTTLE_DIVISOR: u32 = 10;

/// Who the audit entries of what a rule did name as their actor.
pub const ACTOR: &str = "policy";

#[derive(Default)]
pub struct Anomalies {
    watcher: Mutex<Watcher>,
    /// Every firing seen here, for `/metrics`.
    fired: AtomicU64,
}

impl Anomalies {
    /// Records one query of `identity` on the program of `manifest` (its visible inputs' raw
    /// values) and returns the rules that fire on it.
    pub fn observe(
        &self,
        identity: &str,
        manifest: &Manifest,
        values: &[i128],
        now_ms: u64,
    ) -> Vec<Firing> {
        let fired = self
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .observe(
                identity,
                &manifest.name,
                &manifest.policy.watch,
                values,
                &manifest.inputs,
                now_ms,
            );
        self.fired.fetch_add(fired.len() as u64, Ordering::Relaxed);
        fired
    }

    /// The policy `identity` is admitted under now on the program of `manifest`: its own, or,
    /// while a throttle holds, the same with a tenth of the rate limit (at least one).
    pub fn policy(&self, identity: &str, manifest: &Manifest, now_ms: u64) -> Policy {
        let mut policy = manifest.policy.clone();
        let throttled = self
            .watcher
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .throttled(identity, &manifest.name, now_ms);
        if throttled {
            policy.rate_limit = (policy.rate_limit / THROTTLE_DIVISOR).max(1);
        }
        policy
    }

    pub fn fired_total(&self) -> u64 {
        self.fired.load(Ordering::Relaxed)
    }
}

/// One request, as the rules see it at one party.
pub struct Query<'a> {
    /// This party, for the refusal's message: "the coordinator", "custodian 2".
    pub at: &'a str,
    pub identity: &'a str,
    pub manifest: &'a Manifest,
    /// The visible inputs, encoded.
    pub inputs: &'a [Fp],
    pub now_ms: u64,
}

/// Runs the policy's anomaly rules on one request at this party: what fires is audited, a
/// `freeze` firing freezes the identity here (in `freezes` once committed) and refuses this
/// request (403 `frozen`), and a `throttle` lowers the rate limit the request is admitted under:
/// the policy returned.
pub async fn screen(
    anomalies: &Anomalies,
    freezes: &Freezes,
    writer: &Writer,
    q: &Query<'_>,
) -> Result<Policy, ApiError> {
    let values: Vec<i128> = q.inputs.iter().map(|x| x.to_i128()).collect();
    let firings = anomalies.observe(q.identity, q.manifest, &values, q.now_ms);
    if !firings.is_empty() {
        for f in &firings {
            tracing::warn!(identity = q.identity, program = %q.manifest.name, at = q.at, action = ?f.action, "anomaly rule fired: {}", f.evidence);
        }
        let (who, program, now) = (q.identity.to_string(), q.manifest.name.clone(), q.now_ms);
        let frozen = writer
            .run(move |tx| record(tx, &who, &program, &firings, now).map_err(ApiError::from))
            .await?;
        if let Some(f) = frozen {
            freezes.set(f.target.clone(), true, f.time_ms);
            freezes.admit(&f.target, q.at)?;
        }
    }
    Ok(anomalies.policy(q.identity, q.manifest, q.now_ms))
}

/// Audits each firing (`anomaly.fired`: identity, program, rule, action, evidence) and applies
/// a `freeze` firing as a freeze of the identity at this party (`frozen`, by [`ACTOR`]), in the
/// caller's transaction. Returns the freeze applied, if one was, for the caller to hold in
/// memory once this commits.
pub fn record(
    tx: &Transaction<'_>,
    identity: &str,
    program: &str,
    firings: &[Firing],
    now_ms: u64,
) -> Result<Option<NewFreeze>, LedgerError> {
    let mut freeze = None;
    for f in firings {
        let details = serde_json::json!({
            "identity": identity,
            "program": program,
            "rule": f.rule,
            "action": f.action,
            "evidence": f.evidence,
        });
        audit::append(
            tx,
            &NewEntry {
                timestamp_ms: now_ms,
                actor: ACTOR,
                kind: "anomaly.fired",
                details: &details,
            },
        )?;
        if f.action == Action::Freeze && freeze.is_none() {
            let record = NewFreeze {
                target: Target::Identity(identity.to_string()),
                frozen: true,
                time_ms: now_ms,
                statement: details.to_string(),
                actor: ACTOR,
                now_ms,
            };
            // An unfreeze dated after now holds (k operators lifted it in advance, say).
            if crate::freeze::apply(tx, &record)?.is_ok() {
                freeze = Some(record);
            }
        }
    }
    Ok(freeze)
}
