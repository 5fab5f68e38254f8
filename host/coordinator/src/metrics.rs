//! `GET /metrics`: Prometheus text, from counters kept with atomics.

use std::sync::atomic::{AtomicU64, Ordering};

use quorumvm_server::metrics::counter;

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
    }
}
