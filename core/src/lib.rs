//! QuorumVM core: the arithmetic every party agrees on.
//!
//! This crate knows nothing of I/O, clocks or randomness sources: callers hand in an RNG where
//! one is needed. It builds for native hosts and for `wasm32` guests and the browser alike.

#[cfg(test)]
mod adversary;
pub mod circuit;
#[cfg(any(test, feature = "test-dealer"))]
pub mod dealer;
pub mod decode;
pub mod eval;
pub mod field;
pub mod fixed;
pub mod mac;
pub mod preprocess;
pub mod redeal;
pub mod reshare;
pub mod rounds;
pub mod session;
pub mod shamir;
pub mod share_check;
pub mod shares;

pub use circuit::{Circuit, Gate, Manifest, WireId};
pub use field::Fp;
pub use fixed::Decimal;
