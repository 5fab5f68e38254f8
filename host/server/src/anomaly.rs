//! The policy's anomaly rules at one party (the coordinator or a custodian), each of which
//! watches the queries it sees for itself: [`Anomalies`] keeps the identities' recent queries
//! ([`quorumvm_policy::Watcher`]), [`record`] audits what fired and applies a `freeze` firing
//! as a freeze of the identity at this party, and [`Anomalies::policy`] is the policy an
//! identity is admitted under while a `throttle` firing holds: a tenth of its rate limit.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use quorumvm_core::circuit::{Action, Manifest, Policy};
use quorumvm_core::field::Fp;
use quorumvm_ledger::{Commit, LedgerError, NewEntry, Sql, audit};
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

/// What the rules made of one query.
pub struct Observed {
    /// The rules that fired on it.
    pub firings: Vec<Firing>,
    /// The policy the query is admitted under: the program's own, or, while a throttle holds
    /// for the identity (one that fired on this very query included), the same with a tenth
    /// of the rate limit (at least one).
    pub policy: Policy,
}

impl Anomalies {
    /// Records one query of `identity` on the program of `manifest` (its visible inputs' raw
    /// values): the rules that fire on it and the policy it is admitted under, in one hold of
    /// the watcher's lock. A program that declares no rule is not watched and takes no lock.
    pub fn observe(
        &self,
        identity: &str,
        manifest: &Manifest,
        values: &[i128],
        now_ms: u64,
    ) -> Observed {
        let mut policy = manifest.policy.clone();
        if policy.watch.is_empty() {
            return Observed {
                firings: Vec::new(),
                policy,
            };
        }
        let mut watcher = self.watcher.lock().unwrap_or_else(|p| p.into_inner());
        let firings = watcher.observe(
            identity,
            &manifest.name,
            &policy.watch,
            values,
            &manifest.inputs,
            now_ms,
        );
        let throttled = watcher.throttled(identity, &manifest.name, now_ms);
        drop(watcher);
        if throttled {
            policy.rate_limit = (policy.rate_limit / THROTTLE_DIVISOR).max(1);
        }
        self.fired
            .fetch_add(firings.len() as u64, Ordering::Relaxed);
        Observed { firings, policy }
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
    writer: &impl Commit,
    q: &Query<'_>,
) -> Result<Policy, ApiError> {
    let values: Vec<i128> = q.inputs.iter().map(|x| x.to_i128()).collect();
    let Observed { firings, policy } = anomalies.observe(q.identity, q.manifest, &values, q.now_ms);
    if !firings.is_empty() {
        for f in &firings {
            tracing::warn!(identity = q.identity, program = %q.manifest.name, at = q.at, action = ?f.action, "anomaly rule fired: {}", f.evidence);
        }
        let (who, program, now) = (q.identity.to_string(), q.manifest.name.clone(), q.now_ms);
        let frozen = writer
            .commit(move |tx| record(tx, &who, &program, &firings, now).map_err(ApiError::from))
            .await?;
        if let Some(f) = frozen {
            freezes.set(f.target.clone(), true, f.time_ms);
            freezes.admit(&f.target, q.at)?;
        }
    }
    Ok(policy)
}

/// Audits each firing (`anomaly.fired`: identity, program, rule, action, evidence) and applies
/// a `freeze` firing as a freeze of the identity at this party (`frozen`, by [`ACTOR`]), in the
/// caller's transaction. Returns the freeze applied, if one was, for the caller to hold in
/// memory once this commits.
pub fn record(
    tx: &dyn Sql,
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

#[cfg(test)]
mod tests {
    use quorumvm_core::circuit::{Action, WINDOW};

    use super::*;

    fn manifest(policy: &str) -> Manifest {
        let source = format!(
            "program p\nversion 1\npolicy rate 100 per minute\n{policy}input x in 0..1000\noutput x\n"
        );
        quorumvm_compiler::compile(&source, "p").unwrap().manifest
    }

    #[test]
    fn a_throttle_cuts_the_rate_limit_from_the_query_it_fires_on() {
        let watched = manifest("policy watch near 50% throttle\n");
        let anomalies = Anomalies::default();
        let same = |who: &str, t: u64| anomalies.observe(who, &watched, &[500], t);
        let fired_at = (0..4 * WINDOW as u64)
            .find(|&t| {
                let o = same("eve", t * 1_000);
                let throttle = o.firings.iter().any(|f| f.action == Action::Throttle);
                if !throttle {
                    assert_eq!(o.policy.rate_limit, 100, "unthrottled before it fires");
                }
                throttle
            })
            .expect("repeating one query trips `near`");
        let after = same("eve", (fired_at + 1) * 1_000);
        assert_eq!(
            after.policy.rate_limit, 10,
            "a tenth, while the throttle holds"
        );
        assert_eq!(anomalies.fired_total(), 1);
        assert_eq!(
            same("bob", 0).policy.rate_limit,
            100,
            "another identity is not"
        );

        // A program without rules is admitted under its own policy, watched by nobody.
        let plain = manifest("");
        for t in 0..4 * WINDOW as u64 {
            let o = anomalies.observe("eve", &plain, &[500], t * 1_000);
            assert!(o.firings.is_empty());
            assert_eq!(o.policy.rate_limit, 100);
        }
    }
}
