//! The command line, as clap sees it; also the source of the man page and
//! the shell completions.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Control the locald daemon: bring projects up and down, see and follow
/// their services, build and restart them, manage their images.
///
/// The project is the one containing the current directory unless
/// `--project` names one. Exit status: 0 ok, 1 failure, 2 usage or
/// configuration error.
#[derive(Debug, Parser)]
#[command(name = "locald-ctl", version, propagate_version = true)]
pub struct Cli {
    /// Act on the project of this name instead of the current directory's.
    #[arg(short, long, global = true, value_name = "NAME")]
    pub project: Option<String>,

    /// Talk to the daemon on this D-Bus address instead of the session bus.
    #[arg(long, global = true, value_name = "ADDR", env = "LOCALD_BUS_ADDRESS")]
    pub bus_address: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hand the project in DIR (default: the current directory) to the daemon and return.
    Up {
        /// A directory inside the project.
        dir: Option<PathBuf>,
        /// Watch every service's sources and rebuild and restart it on a
        /// change, as if each had `watch = true`, until the project goes down.
        #[arg(long)]
        watch: bool,
        /// Return once every service is ready (healthy, or running when it
        /// has no health check, or exited successfully): 0; or once one
        /// has failed: 1, with its reason. For scripts and CI.
        #[arg(long)]
        wait: bool,
        /// How long --wait waits before it gives up (exit 1).
        #[arg(long, value_name = "DURATION", default_value = "2m", requires = "wait")]
        timeout: humantime::Duration,
    },
    /// Stop every service of the project and forget it.
    Down {
        /// A directory inside the project.
        dir: Option<PathBuf>,
    },
    /// Show each service: state, pid, port, URL, uptime, restarts, runtime, CPU, memory, last build, reason.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Start a stopped or failed service.
    Start {
        /// Service name.
        service: String,
    },
    /// Stop a service; it stays stopped until started.
    Stop {
        /// Service name.
        service: String,
    },
    /// Restart a service, running its build again.
    Restart {
        /// Service name.
        service: String,
    },
    /// Build one service, or every service that has a build.
    Build {
        /// Service name; default: every service with a build.
        service: Option<String>,
        /// Build even when the sources have not changed.
        #[arg(long)]
        force: bool,
        /// First ask the registry for newer images (a buildpacks build's
        /// builder and run image); a new digest rebuilds.
        #[arg(long)]
        pull: bool,
    },
    /// List the images in your store: size on disk, which projects that are up use them.
    Images {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Pull one service's image now, or every image service's.
    ///
    /// A registry is asked what the tag names now and only what is not
    /// stored is downloaded; a local layout or archive is imported again. A
    /// running service keeps its image until it restarts.
    Pull {
        /// Service name; default: every service with an image.
        service: Option<String>,
        /// Verify every stored blob of the image first and fetch damaged ones again.
        #[arg(long)]
        force: bool,
    },
    /// Remove the images no project that is up uses, with their unpacked trees.
    Prune,
    /// Follow state changes and builds live, until interrupted.
    Watch,
    /// Show build and run output from the journal (no daemon needed).
    Logs {
        /// Only this service.
        service: Option<String>,
        /// Keep printing new lines.
        #[arg(short, long)]
        follow: bool,
        /// Only build or only run output.
        #[arg(long, value_parser = ["build", "run"])]
        phase: Option<String>,
        /// Lines since this time (journalctl syntax: "-10m", "today", "2026-11-22 10:00").
        #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
        since: Option<String>,
        /// Lines until this time (same syntax as --since).
        #[arg(long, allow_hyphen_values = true, value_name = "TIME")]
        until: Option<String>,
        /// Only the last N lines (of those --since/--until select).
        #[arg(short = 'n', long = "lines")]
        lines: Option<u64>,
        /// Start each line with the time it was written, as journalctl does (`-o short`).
        #[arg(long, conflicts_with_all = ["output", "json"])]
        timestamps: bool,
        /// How to print: the times are journalctl's formats of the same names.
        #[arg(
            short,
            long,
            value_enum,
            value_name = "FORMAT",
            conflicts_with = "json"
        )]
        output: Option<crate::logs::Output>,
        /// Print the journal entries as JSON, one per line (`-o json`).
        #[arg(long)]
        json: bool,
        /// Read a journal namespace (journalctl --namespace).
        #[arg(long, env = "LOCALD_JOURNAL_NAMESPACE", hide = true)]
        journal_namespace: Option<String>,
    },
    /// Serve a web page on 127.0.0.1 that shows every project live and drives it.
    ///
    /// Prints `http://127.0.0.1:PORT/#token=…` as its first line and serves
    /// until interrupted; the token is new on every run and the page sends
    /// it with every request. With a desktop session and without
    /// `--no-open`, the page is opened in the browser.
    Dashboard {
        /// The port on 127.0.0.1; 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Do not open the page in a browser.
        #[arg(long)]
        no_open: bool,
        /// Also write the URL to this file (created 0600, replaced atomically).
        #[arg(long, value_name = "FILE")]
        url_file: Option<PathBuf>,
        /// Read a journal namespace (journalctl --namespace).
        #[arg(long, env = "LOCALD_JOURNAL_NAMESPACE", hide = true)]
        journal_namespace: Option<String>,
    },
    /// Re-read locald.toml; only services whose config changed are touched.
    Reload,
    /// Check the locald.toml of DIR (default: the current directory) without running anything.
    Check {
        /// A directory inside the project.
        dir: Option<PathBuf>,
    },
    /// Print a shell completion script.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff).
    #[command(hide = true)]
    Man,
}
