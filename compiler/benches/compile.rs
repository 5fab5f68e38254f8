//! Compile time and package size of a large program: `cargo bench -p quorumvm-compiler`.
//!
//! The program has 50 inputs and 50 secrets; each of its 2,500 blocks multiplies an input by a
//! secret (a distinct pair per block), multiplies that by the previous block's product, adds a
//! constant and subtracts an input: 4 operations and a constant a block, ≈ 12,600 gates and 5,000
//! multiplications after optimization, none of which folding or CSE can remove.

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

fn program(blocks: usize) -> String {
    let mut src = String::new();
    for i in 0..50 {
        src += &format!("input x{i} in -1..1\nsecret w{i} in -1..1\n");
    }
    for i in 0..blocks {
        let (x, w) = (i % 50, (i / 50) % 50);
        src += &format!("mul m{i} = x{x} w{w}\n");
        let prev = if i == 0 {
            "x0".to_string()
        } else {
            format!("m{}", i - 1)
        };
        src += &format!(
            "mul t{i} = m{i} {prev}\nadd a{i} = t{i} {i}\nsub d{i} = a{i} x{x}\noutput d{i}\n"
        );
    }
    src
}

fn bench(c: &mut Criterion) {
    let src = program(2500);
    let p = quorumvm_compiler::compile(&src, "big").unwrap();
    let bytes = quorumvm_compiler::package::encode(&p.manifest, &p.circuit).unwrap();
    println!(
        "program: {} source lines, {} gates, {} multiplications, depth {}; package {} bytes ({:.1} bytes/gate)",
        src.lines().count(),
        p.stats.gates,
        p.stats.multiplications,
        p.stats.depth,
        bytes.len(),
        bytes.len() as f64 / p.stats.gates as f64
    );
    let mut g = c.benchmark_group("compile");
    g.sample_size(20);
    g.bench_function("dsl_to_circuit", |b| {
        b.iter(|| quorumvm_compiler::compile(black_box(&src), "big").unwrap())
    });
    g.bench_function("circuit_to_component", |b| {
        b.iter(|| quorumvm_compiler::package::encode(black_box(&p.manifest), &p.circuit).unwrap())
    });
    g.bench_function("source_to_package", |b| {
        b.iter(|| quorumvm_compiler::compile_to_package(black_box(&src), "big").unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
