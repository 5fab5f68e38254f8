//! `GET /metrics`: counters kept with atomics, rendered in the Prometheus text format.

use std::sync::atomic::{AtomicU64, Ordering};

use quorumvm_ledger::WriterStats;
use quorumvm_server::metrics::{self, gauge};

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Sessions admitted (their kit taken) and run.
    pub sessions_started: AtomicU64,
    pub sessions_completed: AtomicU64,
    pub sessions_failed: AtomicU64,
    /// Round messages sent to peers (one per peer per layer), evaluations and preprocessing.
    pub rounds_sent: AtomicU64,
    /// Authenticated round messages taken into the mailbox.
    pub rounds_received: AtomicU64,
    pub kits_generated: AtomicU64,
    pub kits_consumed: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// The exposition text. `kits` is every active version's unused kit count; `anomalies`
    /// how many anomaly rules fired here.
    pub fn render(
        &self,
        index: u32,
        writer: WriterStats,
        kits: &[(String, u64)],
        anomalies: u64,
    ) -> String {
        let mut out = String::new();
        let counters: [(&str, &str, u64); 9] = [
            (
                "sessions_started_total",
                "Evaluation sessions admitted and started.",
                self.sessions_started.load(Ordering::Relaxed),
            ),
            (
                "sessions_completed_total",
                "Evaluation sessions that returned output shares.",
                self.sessions_completed.load(Ordering::Relaxed),
            ),
            (
                "sessions_failed_total",
                "Evaluation sessions started that failed (timeout, abort, peer error).",
                self.sessions_failed.load(Ordering::Relaxed),
            ),
            (
                "rounds_sent_total",
                "Round messages sent to peers.",
                self.rounds_sent.load(Ordering::Relaxed),
            ),
            (
                "rounds_received_total",
                "Authenticated round messages received from peers.",
                self.rounds_received.load(Ordering::Relaxed),
            ),
            (
                "kits_generated_total",
                "Preprocessed kits generated and stored.",
                self.kits_generated.load(Ordering::Relaxed),
            ),
            (
                "kits_consumed_total",
                "Kits taken by evaluation sessions.",
                self.kits_consumed.load(Ordering::Relaxed),
            ),
            (
                "anomaly_firings_total",
                "Anomaly rules of the policies that fired on the queries seen here.",
                anomalies,
            ),
            (
                "ledger_commits_total",
                "Group commits of the ledger writer (one fsync each).",
                writer.commits,
            ),
        ];
        for (name, help, value) in counters {
            counter(
                &mut out,
                &format!("quorumvm_custodian_{name}"),
                help,
                &[(format!("{{custodian=\"{index}\"}}"), value)],
            );
        }
        // Package ids are hex: nothing to escape.
        let kits: Vec<(String, u64)> = kits
            .iter()
            .map(|(package_id, count)| {
                (
                    format!("{{custodian=\"{index}\",package_id=\"{package_id}\"}}"),
                    *count,
                )
            })
            .collect();
        gauge(
            &mut out,
            "quorumvm_custodian_kits_available",
            "Unused kits held, per active version.",
            &kits,
        );
        out
    }
}

fn counter(out: &mut String, name: &str, help: &str, values: &[(String, u64)]) {
    metrics::labelled(out, name, help, "counter", values);
}
