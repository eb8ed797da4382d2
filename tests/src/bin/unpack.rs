//! `locald-test-unpack`: runs locald's layer unpack (the library's
//! `unpack`, with the `locald` binary as its helper) as whoever runs it —
//! the tests start it as an unprivileged user through `setpriv`. Reads an
//! [`UnpackRequest`] as JSON on stdin and prints an [`UnpackOutcome`]; with
//! `--remove`, reads a [`RemoveRequest`] and removes that rootfs instead.

use std::io::Read;
use std::process::ExitCode;

use locald_tests::unpack::{run_remove, run_request, RemoveRequest, UnpackOutcome, UnpackRequest};

fn main() -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("locald-test-unpack: reading stdin: {e}");
        return ExitCode::from(2);
    }
    let outcome = if std::env::args().any(|a| a == "--remove") {
        match serde_json::from_slice::<RemoveRequest>(&input) {
            Ok(r) => run_remove(&r),
            Err(e) => {
                eprintln!("locald-test-unpack: bad request: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        match serde_json::from_slice::<UnpackRequest>(&input) {
            Ok(r) => run_request(&r),
            Err(e) => {
                eprintln!("locald-test-unpack: bad request: {e}");
                return ExitCode::from(2);
            }
        }
    };
    match serde_json::to_string(&outcome) {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("locald-test-unpack: {e}");
            return ExitCode::from(2);
        }
    }
    match outcome {
        UnpackOutcome::Ok(_) => ExitCode::SUCCESS,
        UnpackOutcome::Err { .. } => ExitCode::FAILURE,
    }
}
