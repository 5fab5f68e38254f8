//! What the anomaly rules cost per query, the price every request pays at every server:
//! `cargo bench -p quorumvm-policy --bench anomaly`.
//!
//! The credit score's 10 visible inputs, random within their ranges (ordinary traffic: nothing
//! fires), all four rules watched, over 1,000 identities (so the window of each is full and the
//! map is warm); against the same queries with no rule, which is not tracked at all.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use quorumvm_core::circuit::{Action, Rule, ValueDecl, Watch};
use quorumvm_policy::Watcher;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const IDENTITIES: usize = 1_000;

fn decls() -> Vec<ValueDecl> {
    let ranges: [(&str, i128); 10] = [
        ("income", 25_000_000),
        ("age", 100),
        ("years_employed", 60),
        ("debt_ratio", 100),
        ("credit_lines", 50),
        ("late_payments", 100),
        ("utilization", 100),
        ("inquiries", 50),
        ("savings", 100_000_000),
        ("homeowner", 1),
    ];
    ranges
        .iter()
        .map(|&(name, max)| ValueDecl {
            name: name.into(),
            scale: 0,
            min: 0,
            max,
        })
        .collect()
}

fn observe(c: &mut Criterion) {
    let decls = decls();
    let rules = [
        Rule::Sweep { length: 12 },
        Rule::Edges { percent: 50 },
        Rule::NearDuplicates { percent: 50 },
        Rule::Rate { factor: 5 },
    ]
    .map(|rule| Watch {
        rule,
        action: Action::Freeze,
    });
    let names: Vec<String> = (0..IDENTITIES).map(|i| format!("caller-{i}")).collect();
    let mut rng = StdRng::seed_from_u64(7);
    let queries: Vec<Vec<i128>> = (0..4_096)
        .map(|_| decls.iter().map(|d| rng.gen_range(d.min..=d.max)).collect())
        .collect();
    for (label, watch) in [("four rules", &rules[..]), ("no rule", &[][..])] {
        let mut watcher = Watcher::new();
        let mut now = 0u64;
        // Warm: every identity's window full.
        for (i, q) in queries.iter().cycle().take(IDENTITIES * 40).enumerate() {
            now += 10;
            watcher.observe(
                &names[i % IDENTITIES],
                "credit_score",
                watch,
                q,
                &decls,
                now,
            );
        }
        let mut i = 0usize;
        c.bench_function(&format!("observe one query, {label}"), |b| {
            b.iter(|| {
                i += 1;
                now += 10;
                let fired = watcher.observe(
                    &names[i % IDENTITIES],
                    "credit_score",
                    watch,
                    &queries[i % queries.len()],
                    &decls,
                    now,
                );
                black_box(fired)
            })
        });
    }
}

criterion_group!(benches, observe);
criterion_main!(benches);
