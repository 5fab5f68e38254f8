//! Builds `guest/evaluator` for `wasm32-unknown-unknown` and turns the core module into a
//! component with `wit-component`.
//!
//! `wasm32-unknown-unknown`, not `wasm32-wasip2`: a wasip2 build links the WASI adapter and so
//! imports WASI interfaces even when the code uses none, and the plugin must import nothing.
//! The nested cargo uses a target directory of its own (a nested build in the outer one would
//! wait forever on its lock), the `guest` profile, and remapped paths, so that the bytes do not
//! depend on where the repository or the cargo home is: they are reproducible.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.join("../..").canonicalize().unwrap();
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("guests");
    for watched in [
        "guest/evaluator",
        "core/src",
        "core/Cargo.toml",
        "wit/evaluator.wit",
        "Cargo.lock",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(watched).display());
    }
    let module = build(&root, &target_dir, "quorumvm-evaluator-guest");
    let component = wit_component::ComponentEncoder::default()
        .module(&module)
        .and_then(|e| e.validate(true).encode())
        .unwrap_or_else(|e| panic!("componentizing the evaluator failed: {e:#}"));
    std::fs::write(out.join("evaluator.wasm"), component).unwrap();
}

fn build(root: &Path, target_dir: &Path, package: &str) -> Vec<u8> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let cargo_home = std::env::var("CARGO_HOME")
        .ok()
        .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.cargo")))
        .unwrap_or_default();
    let flags = [
        format!("--remap-path-prefix={}=/quorumvm", root.display()),
        format!("--remap-path-prefix={cargo_home}=/cargo"),
    ]
    .join("\x1f");
    let status = Command::new(cargo)
        .current_dir(root)
        .args([
            "build",
            "--quiet",
            "--target",
            "wasm32-unknown-unknown",
            "--profile",
            "guest",
        ])
        .args(["-p", package, "--target-dir"])
        .arg(target_dir)
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_BUILD_RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("CARGO_ENCODED_RUSTFLAGS", flags)
        .status()
        .expect("run cargo for the guest");
    assert!(
        status.success(),
        "building {package} for wasm32-unknown-unknown failed; if the target is missing, run \
         `rustup target add wasm32-unknown-unknown` (rust-toolchain.toml lists it)"
    );
    let file = package.replace('-', "_") + ".wasm";
    std::fs::read(target_dir.join("wasm32-unknown-unknown/guest").join(file)).unwrap()
}
