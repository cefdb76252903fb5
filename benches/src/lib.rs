//! Shared helpers for the Stormwall criterion benches (run with `cargo bench -p stormwall-benches`).
//!
//! Each bench target pits a Stormwall layer against its peer crates in the same run; see
//! `BENCHMARKS.md` for the figures and the exact commands.
