//! `locald-test-unpack`: runs locald's layer unpack (the library's
//! `unpack`, with the `locald` binary as its helper) as whoever runs it —
//! the tests start it as an unprivileged user through `setpriv`. Reads an
//! [`UnpackRequest`] as JSON on stdin and prints an [`UnpackOutcome`].

use std::io::Read;
use std::process::ExitCode;

use locald_tests::unpack::{run_request, UnpackOutcome, UnpackRequest};

fn main() -> ExitCode {
    let mut input = Vec::new();
    if let Err(e) = std::io::stdin().read_to_end(&mut input) {
        eprintln!("locald-test-unpack: reading stdin: {e}");
        return ExitCode::from(2);
    }
    let req: UnpackRequest = match serde_json::from_slice(&input) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("locald-test-unpack: bad request: {e}");
            return ExitCode::from(2);
        }
    };
    let outcome = run_request(&req);
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
