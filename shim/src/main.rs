//! `locald-shim`: see the library crate (`shim/src/lib.rs`) and
//! `shim/SECURITY.md`. The binary only hands over to [`locald_shim::cli::main`],
//! which hardens the process before it looks at anything else.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

fn main() -> std::process::ExitCode {
    locald_shim::cli::main()
}
