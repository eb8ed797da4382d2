//! `locald-ctl`: the command-line client of the locald daemon.

fn main() -> std::process::ExitCode {
    eprintln!("locald-ctl: the daemon control plane is not built yet; use `locald up`");
    std::process::ExitCode::from(1)
}
