//! What must hold after every schedule, checked from what the clients saw and from the
//! servers' databases once every host has stopped.

use std::collections::BTreeMap;

use quorumvm_ledger::Ledger;

use crate::schedule::{Outcome, REMOVED, SERVERS};
use crate::world::{self, World};

/// Which invariant a violation breaks: a planted bug's test names the one it must trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Invariant {
    /// Every answer is the plain evaluation's value, or an error with a JSON error body.
    Answers,
    /// No kit is handed out twice by the coordinator, nor used twice by a custodian.
    KitsOnce,
    /// Every acknowledged evaluation is in the coordinator's audit and charged exactly once at
    /// every custodian that took part; no request is charged twice anywhere.
    ChargedOnce,
    /// No identity's spending exceeds its budget at any server.
    Budgets,
    /// Every audit chain verifies.
    AuditChains,
    /// Once the faults stop, the cluster answers a fresh request within the bound, and every
    /// server could start again.
    Liveness,
    /// Once the faults stop, every custodian is at the epoch of the last refresh of the shares
    /// the coordinator certified: a refresh cut short anywhere leaves no mix of epochs.
    Epochs,
}

#[derive(Debug, Clone)]
pub struct Violation {
    pub invariant: Invariant,
    pub detail: String,
}

/// Every violation of `outcome` in `world`.
pub fn check(outcome: &Outcome, world: &World) -> Vec<Violation> {
    let mut found = Vec::new();
    let mut violate =
        |invariant: Invariant, detail: String| found.push(Violation { invariant, detail });
    if let Some(failure) = &outcome.host_failure {
        violate(Invariant::Liveness, format!("a server stopped: {failure}"));
    } else if outcome.served_again_after.is_none() {
        violate(
            Invariant::Liveness,
            "no answer within the bound once the faults were over".into(),
        );
    }
    for (status, body) in &outcome.reshares {
        if matches!(status, Some(s) if *s != 200) && body["error"]["code"].as_str().is_none() {
            violate(
                Invariant::Answers,
                format!("a reshare answered {status:?} without a JSON error: {body}"),
            );
        }
    }
    let coordinator = Ledger::open(world.db("coordinator")).expect("the coordinator's database");
    let count = |sql: &str| -> u64 {
        coordinator
            .connection()
            .query_row(sql, [], |r| r.get(0))
            .expect("the coordinator's reshares")
    };
    let certified = count("SELECT COUNT(*) FROM reshares WHERE state = 'attested'");
    let rotated =
        count("SELECT COUNT(*) FROM reshares WHERE state = 'attested' AND rotation != ''") > 0;
    for host in &SERVERS[1..] {
        let epoch: u64 = Ledger::open(world.db(host))
            .expect("a custodian's database")
            .connection()
            .query_row("SELECT COALESCE(MAX(epoch), 0) FROM epoch", [], |r| {
                r.get(0)
            })
            .expect("a custodian's epoch");
        if epoch != certified {
            violate(
                Invariant::Epochs,
                format!("{host} is at epoch {epoch}; the coordinator certified {certified}"),
            );
        }
    }
    for s in &outcome.seen {
        match s.status {
            Some(200) => {
                let got = s.body["outputs"]["q"].as_str().unwrap_or("");
                if got != world::expected(s.x) {
                    violate(
                        Invariant::Answers,
                        format!(
                            "{} request {}: x = {} answered {got:?}, the plain value is {}",
                            s.caller,
                            s.request_id,
                            s.x,
                            world::expected(s.x)
                        ),
                    );
                }
            }
            Some(status) if s.body["error"]["code"].as_str().is_none() => violate(
                Invariant::Answers,
                format!("{status} without a JSON error: {}", s.body),
            ),
            _ => {}
        }
    }

    // By server, (identity, request id) → times charged.
    let mut charges: BTreeMap<&str, BTreeMap<(String, String), u32>> = BTreeMap::new();
    for host in SERVERS {
        let ledger = Ledger::open(world.db(host)).expect("a server's database");
        if let Err(e) = ledger.verify_chain() {
            violate(Invariant::AuditChains, format!("{host}: {e}"));
        }
        let entries = ledger.audit_entries(0, u32::MAX).expect("audit entries");
        let mut kits: BTreeMap<u64, u32> = BTreeMap::new();
        let mut spent: BTreeMap<String, u64> = BTreeMap::new();
        let charged = charges.entry(host).or_default();
        for e in &entries {
            let details: serde_json::Value =
                serde_json::from_str(&e.details).expect("details are JSON");
            match e.kind.as_str() {
                "eval.accepted" => {
                    let request = details["request"].as_str().unwrap_or_default();
                    *charged
                        .entry((e.actor.clone(), request.to_string()))
                        .or_default() += 1;
                    *spent.entry(e.actor.clone()).or_default() += 1;
                }
                "eval.retried" => {}
                _ => continue,
            }
            if let Some(kit) = details["kit"].as_u64() {
                *kits.entry(kit).or_default() += 1;
            }
        }
        for ((identity, request), n) in charged.iter().filter(|(_, n)| **n > 1) {
            violate(
                Invariant::ChargedOnce,
                format!("{host} charged request {request} of `{identity}` {n} times"),
            );
        }
        for (kit, n) in kits.iter().filter(|(_, n)| **n > 1) {
            violate(
                Invariant::KitsOnce,
                format!("{host}: kit {kit} used {n} times"),
            );
        }
        for (identity, n) in spent.iter().filter(|(_, n)| **n > world::BUDGET) {
            violate(
                Invariant::Budgets,
                format!("{host} accepted {n} evaluations of `{identity}`, over its budget"),
            );
        }
        let over: Vec<(String, i64)> = ledger
            .connection()
            .prepare("SELECT identity, spent FROM budget_spent WHERE spent > ?1")
            .and_then(|mut s| {
                s.query_map([world::BUDGET as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect()
            })
            .expect("budgets");
        for (identity, spent) in over {
            violate(
                Invariant::Budgets,
                format!("{host} records `{identity}` as spending {spent}, over its budget"),
            );
        }
    }
    for s in outcome.seen.iter().filter(|s| s.status == Some(200)) {
        let key = (s.caller.to_string(), s.request_id.clone());
        if charges["coordinator"].get(&key) != Some(&1) {
            violate(
                Invariant::ChargedOnce,
                format!(
                    "answered request {} is not charged once in the coordinator's audit",
                    s.request_id
                ),
            );
        }
        let members = s.body["custodians"].as_array().cloned().unwrap_or_default();
        for member in members.iter().filter_map(|m| m.as_u64()) {
            // After the rotation of a plan removed custodian `REMOVED`, the machines above it
            // answer one index lower: the request was charged at the one or the other.
            let host = SERVERS[member as usize];
            let renumbered = (rotated && member >= u64::from(REMOVED))
                .then(|| SERVERS.get(member as usize + 1).copied())
                .flatten();
            let charged_at = |host: &str| charges[host].get(&key) == Some(&1);
            if !charged_at(host) && !renumbered.is_some_and(charged_at) {
                violate(
                    Invariant::ChargedOnce,
                    format!(
                        "answered request {} is not charged once at {host}, which took part",
                        s.request_id
                    ),
                );
            }
        }
    }
    found
}
