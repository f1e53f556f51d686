//! Connectors and mappings without the server: signature vectors, decoding, every mapping's
//! test cases, and the errors operators see.

mod cli;
mod common;
mod connectors;
mod mapping_cases;
mod mapping_errors;
mod signatures;
