//! The locald D-Bus contract, shared by the daemon, `locald-ctl` and the
//! tests: bus and object names, the `#[proxy]` traits, the shapes of property
//! values and the named errors.
//!
//! Nothing here knows how the daemon works; it only says what goes over the
//! wire. The daemon implements these interfaces in `locald::dbus`; clients
//! import this crate and never the daemon's internals.
//!
//! The object tree follows systemd's `org.freedesktop.systemd1`:
//!
//! - [`MANAGER_PATH`] (`/dev/locald/Locald1`): `dev.locald.Manager1` and
//!   `org.freedesktop.DBus.ObjectManager` for everything below it;
//! - [`project_path`]: one `dev.locald.Project1` object per project that is up;
//! - [`service_path`]: one `dev.locald.Service1` object per service.
#![deny(missing_docs)]

mod names;
// The `#[proxy]` macro generates signal-stream types and builders without
// doc comments; the traits themselves are documented.
#[allow(missing_docs)]
mod proxies;
mod wire;

pub use names::*;
pub use proxies::*;
pub use wire::*;

/// Re-exported so clients use the same zbus the proxies were generated for.
pub use zbus;

/// A named D-Bus error of locald: every failure a method can report, under
/// `dev.locald.Error.*`. The text is a one-line, human-readable message.
#[derive(zbus::DBusError, Debug)]
#[zbus(prefix = "dev.locald.Error")]
pub enum Error {
    /// A transport or protocol error, or a standard `org.freedesktop.DBus.Error.*`
    /// (e.g. `AccessDenied` for a caller of another uid).
    #[zbus(error)]
    ZBus(zbus::Error),
    /// `locald.toml` is invalid. The first line is `file:line:column:
    /// message`, for editors to link; the lines after it are the full
    /// report as `locald check` prints it: the offending line, a caret under
    /// the spot, and a hint ([`Error::config_report`]).
    ConfigInvalid(String),
    /// No `locald.toml` in the directory or any parent.
    ConfigNotFound(String),
    /// The path given is not a directory.
    NotADirectory(String),
    /// A file could not be read.
    ReadFailed(String),
    /// No project of that name is up.
    NoSuchProject(String),
    /// The project has no such service.
    NoSuchService(String),
    /// The service has no build.
    NoBuild(String),
    /// The build failed.
    BuildFailed(String),
    /// A project of that name is already up from another directory.
    NameTaken(String),
    /// The file now names the project differently; `down` it and `up` again.
    ProjectRenamed(String),
    /// The daemon is shutting down.
    ShuttingDown(String),
    /// An argument is malformed (e.g. a relative directory).
    InvalidArgument(String),
}

impl Error {
    /// The short D-Bus error name without the prefix, e.g. `NoSuchProject`,
    /// or the full name for errors outside `dev.locald.Error`.
    pub fn short_name(&self) -> String {
        use zbus::DBusError;
        let name = self.name().to_string();
        name.strip_prefix(ERROR_PREFIX)
            .map(str::to_owned)
            .unwrap_or(name)
    }

    /// The human-readable text of the error.
    pub fn message(&self) -> String {
        use zbus::DBusError;
        match self {
            Error::ZBus(e) => e.to_string(),
            other => other.description().unwrap_or_default().to_owned(),
        }
    }

    /// For `ConfigInvalid`, the full report after the first line, as
    /// `locald check` prints it; `None` for other errors, or when the
    /// daemon sent only the one line.
    pub fn config_report(&self) -> Option<&str> {
        match self {
            Error::ConfigInvalid(text) => text
                .split_once('\n')
                .map(|(_, report)| report)
                .filter(|r| !r.trim().is_empty()),
            _ => None,
        }
    }

    /// The daemon could not be reached: no bus, nobody owns the name, or
    /// activation failed.
    pub fn is_unreachable(&self) -> bool {
        match self {
            Error::ZBus(e) => is_unreachable(e),
            _ => false,
        }
    }
}

/// Whether a zbus error means the daemon is not there (rather than that it
/// refused the call).
pub fn is_unreachable(e: &zbus::Error) -> bool {
    use zbus::fdo::Error as F;
    match e {
        zbus::Error::InputOutput(_) | zbus::Error::Address(_) | zbus::Error::Handshake(_) => true,
        zbus::Error::FDO(f) => matches!(
            **f,
            F::ServiceUnknown(_)
                | F::NameHasNoOwner(_)
                | F::NoServer(_)
                | F::Disconnected(_)
                | F::SpawnFailed(_)
                | F::SpawnExecFailed(_)
                | F::SpawnChildExited(_)
                | F::SpawnChildSignaled(_)
                | F::SpawnServiceNotFound(_)
                | F::SpawnNoMemory(_)
                | F::SpawnFailedToSetup(_)
                | F::SpawnConfigInvalid(_)
                | F::SpawnFileInvalid(_)
                | F::SpawnPermissionsInvalid(_)
                | F::NoReply(_)
        ),
        zbus::Error::MethodError(name, _, _) => {
            let n = name.as_str();
            n == "org.freedesktop.DBus.Error.ServiceUnknown"
                || n == "org.freedesktop.DBus.Error.NameHasNoOwner"
                || n == "org.freedesktop.systemd1.NoSuchUnit"
                || n.starts_with("org.freedesktop.DBus.Error.Spawn")
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_report_is_what_follows_the_first_line() {
        let e = Error::ConfigInvalid("/p/locald.toml:2:1: bad\nerror: bad\n  --> …".into());
        assert_eq!(e.config_report(), Some("error: bad\n  --> …"));
        let one_line = Error::ConfigInvalid("/p/locald.toml:2:1: bad".into());
        assert_eq!(one_line.config_report(), None);
        assert_eq!(Error::NoBuild("a\nb".into()).config_report(), None);
    }
}
