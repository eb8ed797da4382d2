//! `locald-shim`: the setuid-root runc shim. Placeholder until its issue lands.

fn main() -> std::process::ExitCode {
    eprintln!("locald-shim: not built yet");
    std::process::ExitCode::from(1)
}
