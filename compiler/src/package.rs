//! Encodes a compiled program as a program package: one WebAssembly component that exports the
//! `quorumvm:program/package` interface of `wit/program.wit` and imports nothing.
//!
//! The compiler writes the component itself, so building a package needs no Rust toolchain and
//! works in a browser. The core module inside is tiny: one memory whose single data segment
//! holds the manifest and the circuit already laid out in the component model's canonical ABI,
//! and two functions that each return a constant pointer to their record. `wit-component` then
//! wraps the module, typing its exports by the WIT, into a component any runtime can lift.

use quorumvm_core::circuit::{Action, Circuit, Gate, Manifest, Rule, ValueDecl, Watch};
use wasm_encoder::{
    CodeSection, ConstExpr, DataSection, ExportKind, ExportSection, Function, FunctionSection,
    MemorySection, MemoryType, Module, TypeSection, ValType,
};
use wit_component::{ComponentEncoder, StringEncoding, embed_component_metadata};
use wit_parser::Resolve;

/// The WIT contract every package implements.
pub const PROGRAM_WIT: &str = include_str!("../../wit/program.wit");
/// The exported interface, as the component model names it.
pub const PACKAGE_INTERFACE: &str = "quorumvm:program/definition@0.1.0";
pub const WORLD: &str = "program-package";

#[derive(Debug, thiserror::Error)]
#[error("could not encode the package component: {0}")]
pub struct EncodeError(String);

/// A growing image of linear memory starting at `base`, with canonical-ABI writers.
struct Image {
    base: u32,
    bytes: Vec<u8>,
}

impl Image {
    /// Reserves `size` zeroed bytes at the next address aligned to `align`.
    fn alloc(&mut self, size: usize, align: usize) -> u32 {
        let mut addr = self.base as usize + self.bytes.len();
        addr = addr.div_ceil(align) * align;
        self.bytes.resize(addr - self.base as usize + size, 0);
        addr as u32
    }

    fn put(&mut self, addr: u32, data: &[u8]) {
        let at = (addr - self.base) as usize;
        self.bytes[at..at + data.len()].copy_from_slice(data);
    }

    fn u32(&mut self, addr: u32, v: u32) {
        self.put(addr, &v.to_le_bytes());
    }

    fn u64(&mut self, addr: u32, v: u64) {
        self.put(addr, &v.to_le_bytes());
    }

    /// `record int128 { lo: u64, hi: s64 }`: size 16, align 8.
    fn int128(&mut self, addr: u32, v: i128) {
        self.u64(addr, v as u64);
        self.u64(addr + 8, (v >> 64) as u64);
    }

    /// A `string` or `list<T>` is `(ptr: u32, len: u32)` at `addr`.
    fn slice_ref(&mut self, addr: u32, ptr: u32, len: usize) {
        self.u32(addr, ptr);
        self.u32(addr + 4, len as u32);
    }

    fn string(&mut self, addr: u32, s: &str) {
        let ptr = self.alloc(s.len(), 1);
        self.put(ptr, s.as_bytes());
        self.slice_ref(addr, ptr, s.len());
    }

    /// Writes `items` as a `list<T>` whose elements are `size` bytes aligned to `align`.
    fn list<T>(
        &mut self,
        addr: u32,
        items: &[T],
        size: usize,
        align: usize,
        mut write: impl FnMut(&mut Image, u32, &T),
    ) {
        let ptr = self.alloc(size * items.len(), align);
        for (i, item) in items.iter().enumerate() {
            write(self, ptr + (i * size) as u32, item);
        }
        self.slice_ref(addr, ptr, items.len());
    }

    /// `record value-decl { name: string, scale: u8, min: int128, max: int128 }`: size 48.
    fn value_decl(&mut self, addr: u32, d: &ValueDecl) {
        self.string(addr, &d.name);
        self.put(addr + 8, &[d.scale]);
        self.int128(addr + 16, d.min);
        self.int128(addr + 32, d.max);
    }

    /// `record watch { rule: variant rule (u8 case, u32 payload at 4), action: enum (u8) }`:
    /// size 12, align 4.
    fn watch(&mut self, addr: u32, w: &Watch) {
        let (case, parameter): (u8, u32) = match w.rule {
            Rule::Rate { factor } => (0, factor),
            Rule::Edges { percent } => (1, percent),
            Rule::NearDuplicates { percent } => (2, percent),
            Rule::Sweep { length } => (3, length),
        };
        self.put(addr, &[case]);
        self.u32(addr + 4, parameter);
        let action: u8 = match w.action {
            Action::Audit => 0,
            Action::Throttle => 1,
            Action::Freeze => 2,
        };
        self.put(addr + 8, &[action]);
    }

    /// `record manifest`: size 88, align 8.
    fn manifest(&mut self, m: &Manifest) -> u32 {
        let at = self.alloc(88, 8);
        self.string(at, &m.name);
        self.u32(at + 8, m.version);
        for (offset, decls) in [(12, &m.inputs), (20, &m.secrets), (28, &m.outputs)] {
            self.list(at + offset, decls, 48, 8, Image::value_decl);
        }
        self.u64(at + 40, m.policy.cost_per_eval);
        self.u64(at + 48, m.policy.budget_per_identity);
        self.u32(at + 56, m.policy.rate_limit);
        self.u32(at + 60, m.policy.rate_window_secs);
        self.u32(at + 64, m.depth);
        self.list(at + 68, &m.private_inputs, 48, 8, Image::value_decl);
        self.list(at + 76, &m.policy.watch, 12, 4, Image::watch);
        at
    }

    /// `variant gate`: discriminant u8 at 0, payload at 8 (its widest case, `scale`, is a
    /// `tuple<u32, int128>` of 24 bytes): size 32, align 8.
    fn gate(&mut self, addr: u32, g: &Gate) {
        let pair = |img: &mut Image, a: u32, b: u32| {
            img.u32(addr + 8, a);
            img.u32(addr + 12, b);
        };
        let case: u8 = match g {
            Gate::Input(i) => {
                self.u32(addr + 8, *i);
                0
            }
            Gate::Secret(i) => {
                self.u32(addr + 8, *i);
                1
            }
            Gate::Const(c) => {
                self.int128(addr + 8, *c);
                2
            }
            Gate::Add(a, b) => {
                pair(self, *a, *b);
                3
            }
            Gate::Sub(a, b) => {
                pair(self, *a, *b);
                4
            }
            Gate::Neg(a) => {
                self.u32(addr + 8, *a);
                5
            }
            Gate::Scale(a, k) => {
                self.u32(addr + 8, *a);
                self.int128(addr + 16, *k);
                6
            }
            Gate::Mul(a, b) => {
                pair(self, *a, *b);
                7
            }
            Gate::Dot(terms) => {
                self.list(addr + 8, terms, 8, 4, |img, at, &(a, b)| {
                    img.u32(at, a);
                    img.u32(at + 4, b);
                });
                8
            }
            Gate::PrivateInput(i) => {
                self.u32(addr + 8, *i);
                9
            }
        };
        self.put(addr, &[case]);
    }

    /// `record circuit { gates: list<gate>, outputs: list<u32> }`: size 16, align 4.
    fn circuit(&mut self, c: &Circuit) -> u32 {
        let at = self.alloc(16, 4);
        self.list(at, &c.gates, 32, 8, Image::gate);
        self.list(at + 8, &c.outputs, 4, 4, |img, a, &w| img.u32(a, w));
        at
    }
}

/// The core module: memory with the data image, and the two exports returning pointers.
fn core_module(manifest: &Manifest, circuit: &Circuit) -> Vec<u8> {
    // Address 0 stays unused so that no valid pointer is null.
    let mut image = Image {
        base: 8,
        bytes: Vec::new(),
    };
    let manifest_at = image.manifest(manifest);
    let circuit_at = image.circuit(circuit);
    let pages = (image.base as u64 + image.bytes.len() as u64)
        .div_ceil(65536)
        .max(1);

    let mut types = TypeSection::new();
    types.ty().function([], [ValType::I32]);
    let mut functions = FunctionSection::new();
    functions.function(0);
    functions.function(0);
    let mut memories = MemorySection::new();
    memories.memory(MemoryType {
        minimum: pages,
        maximum: Some(pages),
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    exports.export(
        &format!("{PACKAGE_INTERFACE}#get-manifest"),
        ExportKind::Func,
        0,
    );
    exports.export(
        &format!("{PACKAGE_INTERFACE}#get-circuit"),
        ExportKind::Func,
        1,
    );
    let mut code = CodeSection::new();
    for at in [manifest_at, circuit_at] {
        let mut f = Function::new([]);
        f.instructions().i32_const(at as i32).end();
        code.function(&f);
    }
    let mut data = DataSection::new();
    data.active(
        0,
        &ConstExpr::i32_const(image.base as i32),
        image.bytes.iter().copied(),
    );

    let mut module = Module::new();
    module
        .section(&types)
        .section(&functions)
        .section(&memories)
        .section(&exports)
        .section(&code)
        .section(&data);
    module.finish()
}

/// Writes the unsigned package component for a compiled program. The output depends only on
/// the manifest and circuit, so the CLI and the browser produce the same bytes.
pub fn encode(manifest: &Manifest, circuit: &Circuit) -> Result<Vec<u8>, EncodeError> {
    let err = |e: anyhow::Error| EncodeError(format!("{e:#}"));
    let mut resolve = Resolve::default();
    let pkg = resolve.push_str("program.wit", PROGRAM_WIT).map_err(err)?;
    let world = resolve.select_world(&[pkg], Some(WORLD)).map_err(err)?;
    let mut module = core_module(manifest, circuit);
    embed_component_metadata(&mut module, &resolve, world, StringEncoding::UTF8).map_err(err)?;
    ComponentEncoder::default()
        .validate(true)
        .module(&module)
        .map_err(err)?
        .encode()
        .map_err(err)
}
