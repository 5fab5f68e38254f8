//! `GET /metrics`: Prometheus text, from counters kept with atomics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::State as AxumState;
use axum::response::Response;
use quorumvm_server::metrics;
use quorumvm_server::metrics::counter;

use crate::State;

#[derive(Default)]
pub struct Metrics {
    pub evals_ok: AtomicU64,
    pub evals_failed: AtomicU64,
    pub evals_denied: AtomicU64,
    pub eval_retries: AtomicU64,
    pub eval_rounds: AtomicU64,
    /// Sum of the latencies of successful evaluations, in microseconds.
    pub eval_micros: AtomicU64,
    pub inconsistent_shares: AtomicU64,
    pub kit_batches_stored: AtomicU64,
    pub kit_batches_failed: AtomicU64,
    /// Custodians proven to deviate ([`crate::suspects`]).
    pub custodians_suspected: AtomicU64,
    pub reshares_committed: AtomicU64,
    pub reshares_failed: AtomicU64,
}

impl Metrics {
    pub fn render(&self, out: &mut String) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        counter(
            out,
            "quorumvm_evals_total",
            "Evaluations answered with 200.",
            get(&self.evals_ok),
        );
        counter(
            out,
            "quorumvm_evals_failed_total",
            "Admitted evaluations that failed.",
            get(&self.evals_failed),
        );
        counter(
            out,
            "quorumvm_evals_denied_total",
            "Evaluations refused by budget or rate limit.",
            get(&self.evals_denied),
        );
        counter(
            out,
            "quorumvm_eval_retries_total",
            "Evaluations retried on a smaller quorum after a custodian failed.",
            get(&self.eval_retries),
        );
        counter(
            out,
            "quorumvm_eval_rounds_total",
            "Communication rounds of successful evaluations (rounds per evaluation = this / quorumvm_evals_total).",
            get(&self.eval_rounds),
        );
        counter(
            out,
            "quorumvm_eval_latency_microseconds_total",
            "Summed latency of successful evaluations.",
            get(&self.eval_micros),
        );
        counter(
            out,
            "quorumvm_inconsistent_shares_total",
            "Output shares that disagreed with the rest.",
            get(&self.inconsistent_shares),
        );
        counter(
            out,
            "quorumvm_kit_batches_stored_total",
            "Preprocessing batches stored by every custodian.",
            get(&self.kit_batches_stored),
        );
        counter(
            out,
            "quorumvm_kit_batches_failed_total",
            "Preprocessing batches abandoned.",
            get(&self.kit_batches_failed),
        );
        counter(
            out,
            "quorumvm_custodians_suspected_total",
            "Custodians proven by failed checks to have deviated.",
            get(&self.custodians_suspected),
        );
        counter(
            out,
            "quorumvm_reshares_total",
            "Refreshes of the shares every custodian verified (the cluster moved to a new epoch).",
            get(&self.reshares_committed),
        );
        counter(
            out,
            "quorumvm_reshares_failed_total",
            "Refreshes of the shares abandoned (every custodian stayed at its epoch).",
            get(&self.reshares_failed),
        );
    }
}

pub async fn serve(AxumState(state): AxumState<Arc<State>>) -> Response {
    let mut out = String::new();
    state.metrics.render(&mut out);
    counter(
        &mut out,
        "quorumvm_anomaly_firings_total",
        "Anomaly rules of the policies that fired on the requests admitted here.",
        state.anomalies.fired_total(),
    );
    let roster = state.custodians.roster();
    let per_custodian = |value: fn(&crate::custodians::Custodian) -> bool| {
        roster
            .all
            .iter()
            .map(|c| (format!("{{custodian=\"{}\"}}", c.index()), value(c) as u64))
            .collect::<Vec<_>>()
    };
    metrics::gauge(
        &mut out,
        "quorumvm_custodian_live",
        "1 if the custodian answers its health checks.",
        &per_custodian(|c| c.is_live()),
    );
    metrics::gauge(
        &mut out,
        "quorumvm_custodian_suspect",
        "1 if the custodian is proven to have deviated and left out of quorums until cleared.",
        &per_custodian(|c| c.is_suspect()),
    );
    metrics::gauge(
        &mut out,
        "quorumvm_share_epoch",
        "The cluster's share epoch (refreshes certified), and each custodian's.",
        &std::iter::once((String::new(), state.epochs.current()))
            .chain(
                roster
                    .all
                    .iter()
                    .map(|c| (format!("{{custodian=\"{}\"}}", c.index()), c.epoch())),
            )
            .collect::<Vec<_>>(),
    );
    let kits: Vec<(String, u64)> = state
        .registry
        .all()
        .iter()
        .filter(|v| v.is_active())
        .map(|v| {
            (
                format!(
                    "{{package=\"{}\",name=\"{}\"}}",
                    v.package_id, v.manifest.name
                ),
                v.kits.lock().expect("kits lock").available(),
            )
        })
        .collect();
    metrics::gauge(
        &mut out,
        "quorumvm_kits_available",
        "Preprocessed kits ready per active version.",
        &kits,
    );
    let w = state.storage.stats();
    metrics::counter(
        &mut out,
        "quorumvm_ledger_commits_total",
        "Group commits (one fsync each).",
        w.commits,
    );
    metrics::counter(
        &mut out,
        "quorumvm_ledger_jobs_total",
        "Writes committed in those groups.",
        w.jobs,
    );
    metrics::response(out)
}
