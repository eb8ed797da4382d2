//! `locald-ctl`: the command-line client of the locald daemon.
//!
//! Every command is a D-Bus call through the proxies of `locald-api`; the
//! only thing read locally is which project contains the current directory
//! (and `check`, which validates a file without the daemon). Exit codes: 0
//! ok, 1 failure (including an unreachable daemon), 2 usage or config error.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

mod build;
mod cli;
mod client;
mod clock;
mod dashboard;
mod images;
mod logs;
mod status;
mod wait;
mod watch;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};
use client::{Client, CtlError};

fn main() -> ExitCode {
    // Every command only talks to the daemon or journalctl and prints: a
    // reader that went away (`| head`) ends it quietly, not with a panic.
    locald_core::term::end_quietly_on_closed_pipe();
    let cli = Cli::parse();
    match cli.command {
        Command::Completions { shell } => return completions(shell),
        Command::Man => return man_page(),
        Command::Check { ref dir } => return check(dir.as_deref()),
        Command::Logs {
            ref service,
            follow,
            ref phase,
            ref since,
            ref until,
            lines,
            timestamps,
            output,
            json,
            ref journal_namespace,
        } => {
            let (project, services) = match logs_project(cli.project.as_deref()) {
                Ok(found) => found,
                Err(code) => return code,
            };
            return logs::run(&logs::LogsArgs {
                project,
                services,
                service: service.clone(),
                follow,
                phase: phase.clone(),
                since: since.clone(),
                until: until.clone(),
                lines,
                output: logs_output(json, timestamps, output),
                namespace: journal_namespace.clone(),
            });
        }
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("locald-ctl: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => e.report(),
    }
}

/// `completions SHELL`: the script clap writes for `shell`, on stdout.
fn completions(shell: clap_complete::Shell) -> ExitCode {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cmd, "locald-ctl", &mut out);
    // A closed pipe (`| head`) is not worth a panic.
    let _ = std::io::stdout().write_all(&out);
    ExitCode::SUCCESS
}

/// `man`: the manual page in roff, rendered from the same definition as
/// `--help` (`man_page_matches_docs` keeps `docs/man/locald-ctl.1` in step).
fn man_page() -> ExitCode {
    let man = clap_mangen::Man::new(Cli::command());
    let mut out = Vec::new();
    if let Err(e) = man.render(&mut out) {
        eprintln!("locald-ctl: cannot render the man page: {e}");
        return ExitCode::FAILURE;
    }
    let _ = std::io::stdout().write_all(&out);
    ExitCode::SUCCESS
}

/// The project `logs` reads and its services: from `--project` (`flag`),
/// else from the project file, since the journal has its lines whether or
/// not the daemon runs. A project that cannot be found is a usage error
/// (exit code 2), reported here.
fn logs_project(flag: Option<&str>) -> Result<(String, Vec<String>), ExitCode> {
    match flag {
        Some(p) => Ok((p.to_owned(), Vec::new())),
        None => match locald_core::project::identity(Path::new(".")) {
            Ok(id) => Ok((id.name, id.services)),
            Err(e) => {
                eprintln!("locald-ctl: {}", locald_core::error_chain(&e));
                Err(ExitCode::from(2))
            }
        },
    }
}

/// How `logs` prints: `--json` and `--timestamps` are shorthands for an
/// `--output` format (clap lets only one of the three through).
fn logs_output(json: bool, timestamps: bool, output: Option<logs::Output>) -> logs::Output {
    match (json, timestamps) {
        (true, _) => logs::Output::Json,
        (_, true) => logs::Output::Short,
        _ => output.unwrap_or_default(),
    }
}

async fn run(cli: Cli) -> Result<ExitCode, CtlError> {
    let client = Client::connect(cli.bus_address.as_deref(), cli.project.clone()).await?;
    match cli.command {
        Command::Up {
            dir,
            watch,
            wait,
            timeout,
        } => {
            let project = client.up(dir.as_deref(), watch).await?;
            if wait {
                wait::wait(&client, &project, timeout.into()).await
            } else {
                Ok(ExitCode::SUCCESS)
            }
        }
        Command::Down { dir } => {
            let project = client.resolve(dir.as_deref()).await?;
            client
                .manager
                .down(&project)
                .await
                .map_err(CtlError::call)?;
            println!("{project} is down");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => status::status(&client, json).await,
        Command::Start { service } => client.service_call("start", &service).await,
        Command::Stop { service } => client.service_call("stop", &service).await,
        Command::Restart { service } => client.service_call("restart", &service).await,
        Command::Build {
            service,
            force,
            pull,
        } => build::build(&client, service, force, pull).await,
        Command::Images { json } => images::images(&client, json).await,
        Command::Pull { service, force } => images::pull(&client, service, force).await,
        Command::Prune => images::prune(&client).await,
        Command::Watch => watch::watch(&client).await,
        Command::Reload => client.reload().await,
        Command::Dashboard {
            port,
            no_open,
            url_file,
            journal_namespace,
        } => {
            dashboard::run(
                client,
                dashboard::Options {
                    port,
                    open: !no_open,
                    url_file,
                    namespace: journal_namespace,
                },
            )
            .await
        }
        Command::Check { .. }
        | Command::Logs { .. }
        | Command::Completions { .. }
        | Command::Man => Ok(ExitCode::SUCCESS),
    }
}

/// `check [DIR]`: validates the project file locally, no daemon needed,
/// with the engine's own checker: `locald check` (beside this program, else
/// on `PATH`) runs in this process's place, so its report and exit code are
/// this command's.
fn check(dir: Option<&std::path::Path>) -> ExitCode {
    use std::os::unix::process::CommandExt;
    let dir = dir.map_or_else(|| std::path::PathBuf::from("."), ToOwned::to_owned);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("locald")))
        .filter(|p| p.is_file());
    let locald = beside.unwrap_or_else(|| std::path::PathBuf::from("locald"));
    let e = std::process::Command::new(&locald)
        .arg("check")
        .arg(&dir)
        .exec();
    eprintln!(
        "locald-ctl: cannot run {} to check the project ({e}); install locald",
        locald.display()
    );
    ExitCode::from(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_shorthands_name_an_output_format() {
        assert_eq!(logs_output(true, false, None), logs::Output::Json);
        assert_eq!(logs_output(false, true, None), logs::Output::Short);
        assert_eq!(
            logs_output(false, false, Some(logs::Output::ShortIso)),
            logs::Output::ShortIso
        );
        assert_eq!(logs_output(false, false, None), logs::Output::Plain);
    }

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    /// `docs/man/locald-ctl.1` is generated from the CLI definition; this
    /// fails when they drift. Regenerate with
    /// `LOCALD_BLESS=1 cargo test -p locald-ctl man_page`.
    #[test]
    fn man_page_matches_docs() {
        let mut out = Vec::new();
        clap_mangen::Man::new(Cli::command())
            .render(&mut out)
            .expect("render man page");
        let file =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/man/locald-ctl.1");
        if std::env::var_os("LOCALD_BLESS").is_some() {
            std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir docs/man");
            std::fs::write(&file, &out).expect("write man page");
            return;
        }
        let stored = std::fs::read(&file).unwrap_or_default();
        assert!(
            stored == out,
            "{} is out of date: LOCALD_BLESS=1 cargo test -p locald-ctl man_page",
            file.display()
        );
    }
}
