//! The `locald` binary: parses arguments, sets up logging and signals, and
//! hands over to the library.
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use locald::config::LoadError;
use locald::foreground::{self, UpOutcome};
use locald_core::paths::Paths;

/// Local-development service manager.
#[derive(Parser)]
#[command(name = "locald", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build and run a project in the foreground until Ctrl-C.
    Up {
        /// Project directory (or any directory inside it).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Watch every service's sources and rebuild and restart it on a
        /// change, as if each had `watch = true`.
        #[arg(long)]
        watch: bool,
    },
    /// Check a project's locald.toml (or Procfile) without running anything.
    Check {
        /// Project directory (or any directory inside it).
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Build a project's services in the foreground, without the daemon.
    ///
    /// Skips a build whose inputs did not change ("Build up to date").
    Build {
        /// The service to build (default: every service that has a build).
        service: Option<String>,
        /// Build even if up to date.
        #[arg(long)]
        force: bool,
        /// Project directory (or any directory inside it).
        #[arg(long, short = 'C', default_value = ".")]
        dir: PathBuf,
    },
    /// Print the JSON Schema of locald.toml.
    Schema,
    /// Serve every project of this user on D-Bus (what `locald.service` runs).
    Daemon(locald::daemon::DaemonArgs),
    /// Unpack image layers in a user namespace (run by locald itself; reads
    /// its request on stdin).
    #[command(name = "internal-unpack", hide = true)]
    InternalUnpack,
}

fn main() -> ExitCode {
    // The first process of a service's systemd unit: before clap (its
    // arguments are the service's) and while there is one thread (it forks).
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|a| a == locald::runtime::unit_exec::SUBCOMMAND)
    {
        return locald::runtime::unit_exec::main(&args[2..]);
    }
    let cli = Cli::parse();
    // Commands that only print end quietly on a closed pipe; `up` and
    // `build` run processes a sudden death would orphan (see the helper).
    if matches!(cli.command, Cmd::Check { .. } | Cmd::Schema) {
        locald::term::end_quietly_on_closed_pipe();
    }
    // The daemon sets up its own log (the journal when there is one).
    if !matches!(cli.command, Cmd::Daemon(_)) {
        init_logging();
    }
    match cli.command {
        // Before anything starts a thread: it takes the notify variables out
        // of the environment.
        Cmd::Daemon(args) => locald::daemon::main(args),
        // Single-threaded until here, as entering a user namespace needs.
        Cmd::InternalUnpack => locald::image::unpack::helper_main(),
        Cmd::Check { dir } => check(&dir),
        Cmd::Schema => {
            print!("{}", locald::config::json_schema());
            ExitCode::SUCCESS
        }
        Cmd::Build {
            service,
            force,
            dir,
        } => build(&dir, service.as_deref(), force),
        Cmd::Up { dir, watch } => up(&dir, watch),
    }
}

/// `locald check [DIR]`.
fn check(dir: &Path) -> ExitCode {
    match foreground::check(dir) {
        Ok(c) => {
            for w in c.warnings() {
                eprintln!("warning: {w}");
            }
            // Not an error: the daemon's PATH may differ from this shell's.
            for (name, s) in &c.services {
                if let Some(p) = s.missing_program() {
                    eprintln!(
                        "warning: service `{name}`: `{p}` is not found in PATH; it will be marked failed when started"
                    );
                }
            }
            let n = c.services.len();
            println!(
                "{}: ok, project `{}` with {n} service{}",
                c.file.display(),
                c.name,
                if n == 1 { "" } else { "s" }
            );
            ExitCode::SUCCESS
        }
        Err(e) => config_error(&e),
    }
}

/// `locald build [SERVICE] [--force] [-C DIR]`.
fn build(dir: &Path, service: Option<&str>, force: bool) -> ExitCode {
    let config = match foreground::check(dir) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    if let Some(s) = service {
        match config.services.get(s) {
            None => {
                eprintln!("locald: project `{}` has no service `{s}`", config.name);
                return ExitCode::from(2);
            }
            Some(svc) if svc.build.is_none() => {
                eprintln!("locald: service `{s}` has no build");
                return ExitCode::from(2);
            }
            Some(_) => {}
        }
    }
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    if rt.block_on(foreground::build(
        &config,
        service,
        force,
        foreground::journal_sinks(),
        Paths::from_env(),
    )) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `locald up [DIR] [--watch]`.
fn up(dir: &Path, watch: bool) -> ExitCode {
    let config = match foreground::check(dir) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    let Some(rt) = runtime() else {
        return ExitCode::FAILURE;
    };
    match rt.block_on(foreground::up(
        &config,
        foreground::journal_sinks(),
        watch,
        Paths::from_env(),
    )) {
        Ok(UpOutcome::Stopped) => ExitCode::SUCCESS,
        Ok(UpOutcome::Failed(reason)) => {
            eprintln!("locald: {reason}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("locald: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The tokio runtime of `up` and `build`; `None` (said) when it cannot be.
fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Runtime::new() {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("locald: cannot start the runtime: {e}");
            None
        }
    }
}

fn config_error(e: &LoadError) -> ExitCode {
    match e {
        // Rendered with the file's line, a caret and a hint.
        LoadError::Invalid(_) => eprintln!("{e}"),
        _ => eprintln!("locald: {}", locald::error_chain(e)),
    }
    ExitCode::from(2)
}

fn init_logging() {
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("LOCALD_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(locald::term::color_for(&std::io::stderr()))
        .try_init();
}
