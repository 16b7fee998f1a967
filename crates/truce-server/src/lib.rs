//! The parts of the server that are pure functions of their input, as a library
//! so the fuzz targets (`fuzz/`, `crates/truce-fuzz`) can call them. The binary
//! (`main.rs`) uses them too.

pub mod wire;
