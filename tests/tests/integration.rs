//! The integration tests, one module per area, linked as one binary (as
//! ripgrep's are): one link instead of thirty, and tests of every area run
//! side by side on the test threads. Each module starts the real
//! components it needs (processes, a private bus, journald namespaces,
//! runc through the setuid shim, a registry) and cleans up; `tests/README.md`
//! lists what the suite needs and starts.
//!
//! The tests that boot a systemd user manager under `systemd-nspawn` are a
//! binary of their own (`systemd.rs`): they are heavy, and each boots its
//! own machine.

mod build_cli;
mod cnb;
mod cnb_fixture;
mod config;
mod containers;
mod ctl_output;
mod dashboard;
mod dbus;
mod dbus_access;
mod foreground;
mod images;
mod images_cli;
mod incremental;
mod journal;
mod journal_e2e;
mod packaging;
mod ports;
mod procfile;
mod shim;
mod supervisor;
mod trust_engine;
mod trust_files;
mod trust_surfaces;
mod unit_exec;
mod unpack;
mod unpack_remove;
mod urls;
mod watch;
