//! Admitting one evaluation: rate limit, budget and audit entry, in one transaction.

use quorumvm_core::circuit::Policy;
use quorumvm_ledger::{Ledger, LedgerError, NewEntry, Sql, audit, sql_params};
use serde_json::json;

use crate::{Budget, PolicyError, RateLimit, TokenBucket};

/// One evaluation request, as the coordinator sees it after authentication.
#[derive(Debug, Clone, Copy)]
pub struct EvalRequest<'a> {
    pub identity: &'a str,
    /// The program that budgets and buckets are kept for: its name, so that a new version
    /// does not reset what an identity has spent (the serving version's policy sets the
    /// limits).
    pub program: &'a str,
    /// Echoed in the audit entry, so an answer can be matched to its entry.
    pub request_id: &'a str,
    /// Further fields for the audit entry's details (an object, or `Null` for none), e.g. a
    /// custodian's session and kit.
    pub context: &'a serde_json::Value,
    pub policy: &'a Policy,
    pub now_ms: u64,
}

/// An admitted evaluation: what the identity has left, and its audit entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    pub remaining_budget: u64,
    pub audit_seq: u64,
}

/// Decides whether `req` may run. In one transaction it takes a token from the bucket, charges
/// the budget and appends `eval.accepted`, or appends `eval.denied` with the reason: a crash can
/// never leave a charge unaudited, nor an audited evaluation uncharged. Refusals are committed
/// too (the denial is audited) and returned as [`PolicyError::RateLimited`] or
/// [`PolicyError::BudgetExhausted`].
///
/// A request refused by the rate limit costs nothing. A request refused for budget has still
/// taken its token: it is a request like any other, and an identity with no budget left must not
/// be able to fill the audit log faster than the rate limit allows.
///
/// The entry names identity, program and request id, never inputs or outputs. Each call waits
/// for one fsync of its own; a server calls [`admit_in`] through a [`quorumvm_ledger::Writer`]
/// instead, which shares one fsync among the requests that arrive together.
pub fn admit_eval(ledger: &mut Ledger, req: &EvalRequest<'_>) -> Result<Admitted, PolicyError> {
    ledger.transaction(|tx| admit_in(tx, req))?
}

/// [`admit_eval`]'s decision, made inside the caller's transaction, so that a server can run it
/// as a [`quorumvm_ledger::Writer`] job.
///
/// The inner result is the decision, to be committed whichever it is: `Ok` (charged, audited as
/// `eval.accepted`) or a refusal ([`PolicyError::RateLimited`], [`PolicyError::BudgetExhausted`],
/// audited as `eval.denied`). The outer `Err` means that nothing this call wrote may be
/// committed: a storage failure (the charge may be written without its audit entry), or a policy
/// whose rate limit is invalid ([`PolicyError::InvalidRateLimit`], found before anything is
/// written). A job returns it as its own `Err`, so that its savepoint is rolled back.
pub fn admit_in(
    tx: &dyn Sql,
    req: &EvalRequest<'_>,
) -> Result<Result<Admitted, PolicyError>, PolicyError> {
    let limit = RateLimit::new(req.policy.rate_limit, req.policy.rate_window_secs)?;
    // The budget's row lock comes first: it also serializes the bucket's read and write below
    // among processes sharing the database.
    let mut budget = Budget::load(
        tx,
        req.identity,
        req.program,
        req.policy.budget_per_identity,
    )?;
    let key = sql_params![req.identity, req.program];
    let mut bucket = match tx.query_opt(
        "SELECT level, updated_ms FROM rate_buckets WHERE identity = ?1 AND program = ?2",
        key,
    )? {
        Some(row) => TokenBucket {
            level: row
                .text(0)?
                .parse::<u128>()
                .map_err(|e| LedgerError::Column {
                    index: 0,
                    reason: format!("a bucket's level: {e}"),
                })?,
            updated_ms: row.uint(1)?,
        },
        None => TokenBucket::full(&limit, req.now_ms),
    };

    let decision = bucket
        .take(&limit, req.now_ms)
        .and_then(|()| budget.charge(req.policy.cost_per_eval));

    let level = bucket.level.to_string();
    tx.execute(
        "INSERT INTO rate_buckets (identity, program, level, updated_ms) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (identity, program)
         DO UPDATE SET level = excluded.level, updated_ms = excluded.updated_ms",
        sql_params![req.identity, req.program, &level, bucket.updated_ms],
    )?;
    budget.save(tx, req.identity, req.program)?;

    let mut details = json!({
        "identity": req.identity,
        "program": req.program,
        "request": req.request_id,
        "cost": req.policy.cost_per_eval,
        "remaining_budget": budget.remaining(),
    });
    if let serde_json::Value::Object(extra) = req.context {
        for (k, v) in extra {
            details[k] = v.clone();
        }
    }
    let kind = match &decision {
        Ok(()) => "eval.accepted",
        Err(refusal) => {
            details["reason"] = json!(match refusal {
                PolicyError::RateLimited { .. } => "rate_limit",
                _ => "budget",
            });
            details["message"] = json!(refusal.to_string());
            "eval.denied"
        }
    };
    let entry = audit::append(
        tx,
        &NewEntry {
            timestamp_ms: req.now_ms,
            actor: req.identity,
            kind,
            details: &details,
        },
    )?;
    Ok(decision.map(|()| Admitted {
        remaining_budget: budget.remaining(),
        audit_seq: entry.seq,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn open(path: &Path) -> Ledger {
        let mut ledger = Ledger::open(path).unwrap();
        ledger.apply_schema(&crate::SCHEMA).unwrap();
        ledger
    }

    fn policy(cost: u64, budget: u64, rate: u32, window_secs: u32) -> Policy {
        Policy {
            cost_per_eval: cost,
            budget_per_identity: budget,
            rate_limit: rate,
            rate_window_secs: window_secs,
            ..Policy::default()
        }
    }

    fn request<'a>(identity: &'a str, policy: &'a Policy, now_ms: u64) -> EvalRequest<'a> {
        EvalRequest {
            identity,
            program: "ab12",
            request_id: "req-1",
            context: &serde_json::Value::Null,
            policy,
            now_ms,
        }
    }

    #[test]
    fn budget_runs_out_and_stays_spent_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let p = policy(3, 10, 1000, 1);
        let mut ledger = open(&path);
        let first = admit_eval(&mut ledger, &request("alice", &p, 0)).unwrap();
        assert_eq!(first.remaining_budget, 7);
        admit_eval(&mut ledger, &request("alice", &p, 1)).unwrap();
        drop(ledger);

        let mut ledger = open(&path);
        let third = admit_eval(&mut ledger, &request("alice", &p, 2)).unwrap();
        assert_eq!(third.remaining_budget, 1);
        assert!(matches!(
            admit_eval(&mut ledger, &request("alice", &p, 3)),
            Err(PolicyError::BudgetExhausted {
                remaining: 1,
                cost: 3
            })
        ));
        // Other identities and other programs have budgets of their own.
        assert_eq!(
            admit_eval(&mut ledger, &request("bob", &p, 4))
                .unwrap()
                .remaining_budget,
            7
        );
        let other_program = EvalRequest {
            program: "cd34",
            ..request("alice", &p, 5)
        };
        assert_eq!(
            admit_eval(&mut ledger, &other_program)
                .unwrap()
                .remaining_budget,
            7
        );
    }

    #[test]
    fn the_bucket_survives_restarts_and_retry_after_is_honest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let p = policy(1, 1000, 2, 60);
        let mut ledger = open(&path);
        admit_eval(&mut ledger, &request("alice", &p, 0)).unwrap();
        admit_eval(&mut ledger, &request("alice", &p, 0)).unwrap();
        drop(ledger);

        let mut ledger = open(&path);
        let retry = match admit_eval(&mut ledger, &request("alice", &p, 1_000)) {
            Err(PolicyError::RateLimited { retry_after_secs }) => retry_after_secs,
            other => panic!("expected a rate-limit refusal, got {other:?}"),
        };
        assert_eq!(
            retry, 29,
            "one evaluation every 30 s, 1 s of which has passed"
        );
        assert!(
            admit_eval(
                &mut ledger,
                &request("alice", &p, 1_000 + (retry - 1) * 1000)
            )
            .is_err()
        );
        let admitted =
            admit_eval(&mut ledger, &request("alice", &p, 1_000 + retry * 1000)).unwrap();
        assert_eq!(admitted.remaining_budget, 997, "refusals cost no budget");
    }

    #[test]
    fn every_decision_is_audited_without_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = open(&dir.path().join("db.sqlite"));
        let p = policy(1, 1, 1, 1);
        let ok = admit_eval(&mut ledger, &request("alice", &p, 0)).unwrap();
        assert!(admit_eval(&mut ledger, &request("alice", &p, 0)).is_err());
        assert!(admit_eval(&mut ledger, &request("alice", &p, 5_000)).is_err());

        let entries = ledger.audit_entries(0, 10).unwrap();
        let kinds: Vec<_> = entries.iter().map(|e| e.kind.as_str()).collect();
        assert_eq!(kinds, ["eval.accepted", "eval.denied", "eval.denied"]);
        assert_eq!(entries[0].seq, ok.audit_seq);
        let details: Vec<serde_json::Value> = entries
            .iter()
            .map(|e| serde_json::from_str(&e.details).unwrap())
            .collect();
        assert_eq!(details[0]["request"], "req-1");
        assert_eq!(details[0]["identity"], "alice");
        assert_eq!(details[1]["reason"], "rate_limit");
        assert_eq!(details[2]["reason"], "budget");
        assert!(entries.iter().all(|e| e.actor == "alice"));
        assert_eq!(ledger.verify_chain().unwrap().entries, 3);
    }

    #[test]
    fn no_charge_without_its_audit_entry() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = open(&dir.path().join("db.sqlite"));
        let p = policy(1, 10, 100, 1);
        admit_eval(&mut ledger, &request("alice", &p, 0)).unwrap();
        // Make the audit append fail, as a full disk would, after the charge was written.
        ledger
            .connection()
            .execute_batch(
                "CREATE TRIGGER fail_audit BEFORE INSERT ON audit_log
                 BEGIN SELECT RAISE(ABORT, 'disk full'); END;",
            )
            .unwrap();
        assert!(matches!(
            admit_eval(&mut ledger, &request("alice", &p, 1)),
            Err(PolicyError::Ledger(_))
        ));
        let spent: u64 = ledger
            .connection()
            .query_row("SELECT spent FROM budget_spent", [], |r| r.get(0))
            .unwrap();
        assert_eq!(spent, 1, "the failed admission's charge was rolled back");
        ledger
            .connection()
            .execute_batch("DROP TRIGGER fail_audit")
            .unwrap();
        assert_eq!(
            admit_eval(&mut ledger, &request("alice", &p, 2))
                .unwrap()
                .remaining_budget,
            8
        );
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn concurrent_admissions_through_a_writer_spend_the_budget_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let writer = quorumvm_ledger::Writer::spawn(open(&path), "admissions");
        let p = policy(1, 10, 1000, 1);
        let tasks: Vec<_> = (0..30)
            .map(|i| {
                let writer = writer.clone();
                let p = p.clone();
                tokio::spawn(async move {
                    writer
                        .run(move |tx| {
                            let request_id = format!("req-{i}");
                            admit_in(
                                tx,
                                &EvalRequest {
                                    request_id: &request_id,
                                    ..request("alice", &p, 0)
                                },
                            )
                        })
                        .await
                })
            })
            .collect();
        let mut remaining = Vec::new();
        for task in tasks {
            match task.await.unwrap().unwrap() {
                Ok(admitted) => remaining.push(admitted.remaining_budget),
                Err(PolicyError::BudgetExhausted {
                    remaining: 0,
                    cost: 1,
                }) => {}
                Err(other) => panic!("unexpected refusal: {other}"),
            }
        }
        remaining.sort_unstable();
        assert_eq!(remaining, (0..10).collect::<Vec<_>>());
        drop(writer);

        let ledger = open(&path);
        assert_eq!(ledger.verify_chain().unwrap().entries, 30);
        let entries = ledger.audit_entries(0, 100).unwrap();
        let accepted = entries.iter().filter(|e| e.kind == "eval.accepted").count();
        let denied = entries.iter().filter(|e| e.kind == "eval.denied").count();
        assert_eq!((accepted, denied), (10, 20));
        let spent: u64 = ledger
            .connection()
            .query_row("SELECT spent FROM budget_spent", [], |r| r.get(0))
            .unwrap();
        assert_eq!(spent, 10);
    }

    #[test]
    fn an_invalid_rate_limit_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut ledger = open(&dir.path().join("db.sqlite"));
        let p = policy(1, 10, 0, 60);
        assert!(matches!(
            admit_eval(&mut ledger, &request("alice", &p, 0)),
            Err(PolicyError::InvalidRateLimit {
                count: 0,
                window_secs: 60
            })
        ));
        assert_eq!(ledger.verify_chain().unwrap().entries, 0);
    }

    /// Two coordinator replicas on one PostgreSQL database charge one identity's budget at
    /// once: exactly the budget is admitted, never more, and each admission and refusal is one
    /// entry of one chain.
    #[test]
    fn replicas_sharing_postgres_never_overspend_a_budget() {
        let server = quorumvm_ledger::postgres::testing::Server::start();
        let mut db = quorumvm_ledger::Postgres::connect(&server.url()).unwrap();
        db.apply_schema(&crate::POSTGRES_SCHEMA).unwrap();
        let replicas: Vec<_> = (0..2)
            .map(|_| {
                let url = server.url();
                std::thread::spawn(move || {
                    let mut db = quorumvm_ledger::Postgres::connect(&url).unwrap();
                    db.apply_schema(&crate::POSTGRES_SCHEMA).unwrap();
                    let p = policy(1, 50, 1_000_000, 1);
                    let mut admitted = 0;
                    for n in 0..60 {
                        let outcome = db
                            .transaction(|tx| admit_in(tx, &request("alice", &p, n)))
                            .unwrap();
                        match outcome {
                            Ok(_) => admitted += 1,
                            Err(PolicyError::BudgetExhausted { .. }) => {}
                            Err(other) => panic!("{other}"),
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: u32 = replicas.into_iter().map(|r| r.join().unwrap()).sum();
        assert_eq!(admitted, 50, "the budget is 50 units of 1");
        let spent = db
            .query_opt("SELECT spent FROM budget_spent", &[])
            .unwrap()
            .unwrap();
        assert_eq!(spent.int(0).unwrap(), 50);
        let chain = quorumvm_ledger::audit::verify_chain(&db).unwrap();
        assert_eq!(chain.entries, 120);
    }
}
