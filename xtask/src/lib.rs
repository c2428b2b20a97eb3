//! The part of xtask other crates use: `kit`, what the demo, the bench and tracer's
//! integration tests share. (The `cargo xtask` commands themselves are the binary's, main.rs.)
//! xtask depends on no other crate of the workspace, so tracer can take it as a
//! dev-dependency without a cycle.
pub mod kit;
