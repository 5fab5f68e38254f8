//! Hostile and broken plugins are refused or stopped with clear errors, and none of them
//! disturbs a session of the good plugin running beside them. Plugin versions swap without
//! touching running sessions, and precompiled artifacts are cached.

use std::sync::Arc;
use std::time::Duration;

use quorumvm_core::Fp;
use quorumvm_core::circuit::{Circuit, Gate};
use quorumvm_core::dealer::{deal_kits, share_values};
use quorumvm_core::session::{Kit, Setup, Step};
use quorumvm_core::shamir::Threshold;
use quorumvm_core::shares::open_outputs;
use quorumvm_guests::EVALUATOR;
use quorumvm_sandbox::{
    EngineKind, EvaluatorPlugin, Limits, PluginError, PluginSession, PluginSlot, Sandbox,
    SandboxConfig,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
use wit_parser::Resolve;

const EVALUATOR_WIT: &str = include_str!("../../../wit/evaluator.wit");

/// Limits tight enough that a runaway plugin is stopped quickly.
const TIGHT: Limits = Limits {
    memory_bytes: 16 << 20,
    fuel: 20_000_000,
    deadline: Duration::from_millis(500),
};

/// A core module implementing the evaluator ABI by hand, with `begin`'s body given; turned
/// into a component for `world` of `wit` (pushed after the evaluator's own WIT).
fn component(begin_body: &str, imports: &str, wit: Option<(&str, &str)>) -> Vec<u8> {
    let wat = format!(
        r#"(module
          {imports}
          (memory (export "memory") 1)
          (global $heap (mut i32) (i32.const 1024))
          (func (export "cabi_realloc") (param i32 i32 i32 i32) (result i32)
            (local $p i32)
            (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get 2) (i32.const 1)))
                                   (i32.sub (i32.const 0) (local.get 2))))
            (global.set $heap (i32.add (local.get $p) (local.get 3)))
            (block $ok (loop $grow
              (br_if $ok (i32.le_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536))))
              (drop (memory.grow (i32.const 1)))
              (br $grow)))
            (local.get $p))
          ;; `setup` flattens to 16 i32s (lists are pointer and length): the most that go flat.
          (func (export "quorumvm:evaluator/session@0.1.0#begin")
            (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)
            {begin_body})
          (func (export "quorumvm:evaluator/session@0.1.0#advance") (param i32 i32) (result i32)
            unreachable))"#
    );
    let mut module = wat::parse_str(&wat).unwrap();
    let mut resolve = Resolve::default();
    let evaluator = resolve.push_str("evaluator.wit", EVALUATOR_WIT).unwrap();
    let (pkg, world) = match wit {
        Some((text, world)) => (resolve.push_str("extra.wit", text).unwrap(), world),
        None => (evaluator, "evaluator-plugin"),
    };
    let world = resolve.select_world(&[pkg], Some(world)).unwrap();
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8).unwrap();
    ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .unwrap()
        .encode()
        .unwrap()
}

/// `(x + 7)²` of a private x: one layer.
fn square() -> Circuit {
    Circuit {
        gates: vec![
            Gate::PrivateInput(0),
            Gate::Const(7),
            Gate::Add(0, 1),
            Gate::Mul(2, 2),
        ],
        outputs: vec![3],
    }
}

/// Begins a 2-of-3 evaluation of (x+7)^2 at x = 3 on all three custodians.
fn begin_square(plugin: &Arc<EvaluatorPlugin>) -> (Vec<PluginSession>, Vec<Step>) {
    let t = Threshold::new(2, 3).unwrap();
    let mut rng = StdRng::seed_from_u64(3);
    let triples = deal_kits(&square(), &[], t, &mut rng);
    let xs = share_values(&[Fp::from(3)], t, &mut rng);
    let mut sessions = vec![];
    let mut steps = vec![];
    for me in 1..=3u32 {
        let mut s = plugin.session().unwrap();
        steps.push(
            s.begin(&Setup {
                circuit: square(),
                me,
                quorum: vec![1, 2, 3],
                threshold: 2,
                secrets: vec![],
                inputs: vec![],
                private_inputs: xs[me as usize - 1].clone(),
                kit: triples[me as usize - 1].clone(),
            })
            .unwrap(),
        );
        sessions.push(s);
    }
    (sessions, steps)
}

/// Finishes the one layer of (x+7)^2 and reconstructs.
fn finish_square(mut sessions: Vec<PluginSession>, steps: Vec<Step>) -> Fp {
    let outbox: Vec<(u32, Vec<Fp>)> = steps
        .into_iter()
        .enumerate()
        .map(|(i, s)| match s {
            Step::Send(v) => (i as u32 + 1, v),
            Step::Done(_) => panic!("depth 1"),
        })
        .collect();
    let answers: Vec<(u32, Vec<Fp>)> = sessions
        .iter_mut()
        .enumerate()
        .map(|(i, s)| {
            let me = i as u32 + 1;
            let msgs: Vec<_> = outbox.iter().filter(|(x, _)| *x != me).cloned().collect();
            match s.advance(&msgs).unwrap() {
                Step::Done(v) => (me, v),
                Step::Send(_) => panic!("depth 1"),
            }
        })
        .collect();
    open_outputs(&answers, 2, 1).unwrap().values[0]
}

fn sandbox(kind: EngineKind) -> Sandbox {
    Sandbox::with_config(SandboxConfig {
        engine: kind,
        ..SandboxConfig::default()
    })
    .unwrap()
}

#[test]
fn runaway_plugins_are_stopped_and_others_carry_on() {
    for kind in [EngineKind::Cranelift, EngineKind::Winch, EngineKind::Pulley] {
        let sb = sandbox(kind);
        let good = Arc::new(EvaluatorPlugin::load(&sb, EVALUATOR, TIGHT).unwrap());
        let (sessions, steps) = begin_square(&good);

        let looping = component("(loop $l (br $l)) unreachable", "", None);
        let bad = Arc::new(EvaluatorPlugin::load(&sb, &looping, TIGHT).unwrap());
        let mut s = bad.session().unwrap();
        let started = std::time::Instant::now();
        let err = s.begin(&dummy_setup()).unwrap_err();
        let text = err.to_string();
        println!(
            "{kind:?}: an endless loop stopped after {:?}: {text}",
            started.elapsed()
        );
        assert!(matches!(err, PluginError::Trapped(_)), "{kind:?}: {text}");
        assert!(
            text.contains("out of fuel") || text.contains("interrupted at the"),
            "{kind:?}: {text}"
        );

        // With fuel to spare, the wall-clock deadline is the backstop (not under Winch, which
        // has no epochs: there fuel is the only bound).
        if kind.has_epochs() {
            let generous = Limits {
                fuel: u64::MAX / 2,
                deadline: Duration::from_millis(100),
                ..TIGHT
            };
            let bad = Arc::new(EvaluatorPlugin::load(&sb, &looping, generous).unwrap());
            let started = std::time::Instant::now();
            let err = bad.session().unwrap().begin(&dummy_setup()).unwrap_err();
            println!(
                "{kind:?}: with unlimited fuel, stopped after {:?}: {err}",
                started.elapsed()
            );
            assert!(
                err.to_string()
                    .contains("interrupted at the 100ms deadline"),
                "{kind:?}: {err}"
            );
        }

        let growing = component(
            "(loop $l (drop (memory.grow (i32.const 16))) (br $l)) unreachable",
            "",
            None,
        );
        let bad = Arc::new(EvaluatorPlugin::load(&sb, &growing, TIGHT).unwrap());
        let err = bad.session().unwrap().begin(&dummy_setup()).unwrap_err();
        assert!(err.to_string().contains("grow"), "{kind:?}: {err}");

        // The good sessions, begun before the misbehaviour, finish correctly.
        assert_eq!(finish_square(sessions, steps), Fp::from(100), "{kind:?}");
    }
}

fn dummy_setup() -> Setup {
    Setup {
        circuit: square(),
        me: 1,
        quorum: vec![1, 2],
        threshold: 2,
        secrets: vec![],
        inputs: vec![],
        private_inputs: vec![Fp::ONE],
        kit: Kit {
            triples: vec![],
            masks: vec![],
            secret_macs: vec![],
            key: Fp::ZERO,
        },
    }
}

#[test]
fn plugins_with_imports_are_rejected_at_load() {
    let wasi = "package wasi:clocks@0.2.0;\ninterface wall-clock { now: func() -> u64; }\n\
                world importer { import wall-clock; export quorumvm:evaluator/session@0.1.0; }";
    let bytes = component(
        "(drop (call $now)) unreachable",
        r#"(import "wasi:clocks/wall-clock@0.2.0" "now" (func $now (result i64)))"#,
        Some((wasi, "importer")),
    );
    let err = EvaluatorPlugin::load(&sandbox(EngineKind::Cranelift), &bytes, TIGHT)
        .err()
        .unwrap();
    assert!(matches!(err, PluginError::HasImports(_)), "{err}");
    assert!(
        err.to_string().contains("wasi:clocks/wall-clock@0.2.0"),
        "{err}"
    );
}

#[test]
fn wrong_bytes_and_wrong_exports_are_rejected() {
    let sb = sandbox(EngineKind::Cranelift);
    for junk in [&b"not wasm"[..], b"\0asm\x01\0\0\0"] {
        let err = EvaluatorPlugin::load(&sb, junk, TIGHT).err().unwrap();
        assert!(matches!(err, PluginError::NotAComponent(_)), "{err}");
    }
    // A program package is a fine component, but not an evaluator.
    let (_, package) = quorumvm_compiler::compile_to_package("input x\noutput x\n", "p").unwrap();
    let err = EvaluatorPlugin::load(&sb, &package, TIGHT).err().unwrap();
    assert!(matches!(err, PluginError::WrongExports(_)), "{err}");
    assert!(
        err.to_string().contains("quorumvm:evaluator/session@0.1.0"),
        "{err}"
    );
}

#[test]
fn a_bad_setup_is_refused_by_the_plugin() {
    let sb = sandbox(EngineKind::Cranelift);
    let plugin = Arc::new(EvaluatorPlugin::load(&sb, EVALUATOR, TIGHT).unwrap());
    let err = plugin.session().unwrap().begin(&dummy_setup()).unwrap_err();
    assert!(matches!(err, PluginError::Refused(_)), "{err}");
    assert!(
        err.to_string()
            .contains("the kit runs out at multiplication gate 0"),
        "{err}"
    );
    // Advancing before beginning is refused too, not a trap.
    let err = plugin.session().unwrap().advance(&[]).unwrap_err();
    assert!(err.to_string().contains("call begin first"), "{err}");
}

#[test]
fn a_new_plugin_version_serves_new_sessions_while_old_ones_finish() {
    let sb = sandbox(EngineKind::Cranelift);
    let slot = PluginSlot::new(EvaluatorPlugin::load(&sb, EVALUATOR, TIGHT).unwrap());
    let v1 = slot.current();
    let (old_sessions, old_steps) = begin_square(&v1);
    // Version 2: the same code with a custom section appended (another digest).
    let mut v2_bytes = EVALUATOR.to_vec();
    v2_bytes.extend_from_slice(&[0, 6, 5, b'v', b'e', b'r', b'-', b'2']);
    let previous = slot.replace(EvaluatorPlugin::load(&sb, &v2_bytes, TIGHT).unwrap());
    assert_eq!(previous.digest(), v1.digest());
    drop((v1, previous));
    let v2 = slot.current();
    assert_ne!(v2.digest(), old_sessions[0].plugin_digest());
    let (new_sessions, new_steps) = begin_square(&v2);
    assert!(
        new_sessions
            .iter()
            .all(|s| s.plugin_digest() == v2.digest())
    );
    assert_eq!(finish_square(old_sessions, old_steps), Fp::from(100));
    assert_eq!(finish_square(new_sessions, new_steps), Fp::from(100));
}

#[test]
fn precompiled_artifacts_are_cached_by_content_and_engine() {
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-cache");
    let _ = std::fs::remove_dir_all(&dir);
    let sb = Sandbox::with_config(SandboxConfig {
        cache_dir: Some(dir.clone()),
        ..SandboxConfig::default()
    })
    .unwrap();
    let first = Arc::new(EvaluatorPlugin::load(&sb, EVALUATOR, TIGHT).unwrap());
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
    let digest_hex: String = first.digest().iter().map(|b| format!("{b:02x}")).collect();
    assert!(
        name.starts_with(&digest_hex) && name.ends_with(".cwasm"),
        "{name}"
    );
    // Loaded again from the artifact: the same behaviour.
    let second = Arc::new(EvaluatorPlugin::load(&sb, EVALUATOR, TIGHT).unwrap());
    for p in [first, second] {
        let (s, st) = begin_square(&p);
        assert_eq!(finish_square(s, st), Fp::from(100));
    }
}
