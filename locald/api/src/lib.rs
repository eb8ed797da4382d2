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
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

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
///
/// The [`zbus::DBusError`] impl is written by hand rather than derived: the
/// derive names every [`Error::ZBus`] `org.freedesktop.zbus.Error`, which
/// would hide a standard error such as
/// `org.freedesktop.DBus.Error.AccessDenied` behind zbus's own name. Here a
/// standard error keeps its name on the wire and in [`Error::short_name`].
#[derive(Debug)]
pub enum Error {
    /// A transport or protocol error, or a standard `org.freedesktop.DBus.Error.*`
    /// (e.g. `AccessDenied` for a caller of another uid), or an error another
    /// program named; it goes out under that error's own name.
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
    /// The service runs no image (`Pull` of a host service).
    NoImage(String),
    /// Pulling or importing an image failed (the registry refused, a blob
    /// did not match its digest, the layout is missing, …).
    PullFailed(String),
    /// The image store could not be used (listing, pruning, or there is no
    /// store).
    ImageStoreFailed(String),
    /// No free TCP port could be found for a service's `port = "auto"`.
    NoFreePort(String),
}

/// The name zbus gives errors that have no D-Bus name of their own.
const ZBUS_ERROR_NAME: &str = "org.freedesktop.zbus.Error";

impl Error {
    /// The full `dev.locald.Error.*` name and the text of a locald error;
    /// `None` for [`Error::ZBus`].
    fn named(&self) -> Option<(&'static str, &str)> {
        let (name, text) = match self {
            Error::ZBus(_) => return None,
            Error::ConfigInvalid(t) => ("dev.locald.Error.ConfigInvalid", t),
            Error::ConfigNotFound(t) => ("dev.locald.Error.ConfigNotFound", t),
            Error::NotADirectory(t) => ("dev.locald.Error.NotADirectory", t),
            Error::ReadFailed(t) => ("dev.locald.Error.ReadFailed", t),
            Error::NoSuchProject(t) => ("dev.locald.Error.NoSuchProject", t),
            Error::NoSuchService(t) => ("dev.locald.Error.NoSuchService", t),
            Error::NoBuild(t) => ("dev.locald.Error.NoBuild", t),
            Error::BuildFailed(t) => ("dev.locald.Error.BuildFailed", t),
            Error::NameTaken(t) => ("dev.locald.Error.NameTaken", t),
            Error::ProjectRenamed(t) => ("dev.locald.Error.ProjectRenamed", t),
            Error::ShuttingDown(t) => ("dev.locald.Error.ShuttingDown", t),
            Error::InvalidArgument(t) => ("dev.locald.Error.InvalidArgument", t),
            Error::NoImage(t) => ("dev.locald.Error.NoImage", t),
            Error::PullFailed(t) => ("dev.locald.Error.PullFailed", t),
            Error::ImageStoreFailed(t) => ("dev.locald.Error.ImageStoreFailed", t),
            Error::NoFreePort(t) => ("dev.locald.Error.NoFreePort", t),
        };
        Some((name, text.as_str()))
    }

    /// The locald error of a full `dev.locald.Error.*` name, else `None`.
    fn from_name(name: &str, text: String) -> Option<Self> {
        let short = name.strip_prefix(ERROR_PREFIX)?;
        Some(match short {
            "ConfigInvalid" => Error::ConfigInvalid(text),
            "ConfigNotFound" => Error::ConfigNotFound(text),
            "NotADirectory" => Error::NotADirectory(text),
            "ReadFailed" => Error::ReadFailed(text),
            "NoSuchProject" => Error::NoSuchProject(text),
            "NoSuchService" => Error::NoSuchService(text),
            "NoBuild" => Error::NoBuild(text),
            "BuildFailed" => Error::BuildFailed(text),
            "NameTaken" => Error::NameTaken(text),
            "ProjectRenamed" => Error::ProjectRenamed(text),
            "ShuttingDown" => Error::ShuttingDown(text),
            "InvalidArgument" => Error::InvalidArgument(text),
            "NoImage" => Error::NoImage(text),
            "PullFailed" => Error::PullFailed(text),
            "ImageStoreFailed" => Error::ImageStoreFailed(text),
            "NoFreePort" => Error::NoFreePort(text),
            _ => return None,
        })
    }

    /// The text that goes in an error reply: the message alone, without
    /// the name (the reply carries that in its header).
    fn reply_text(&self) -> String {
        use zbus::DBusError;
        match self {
            Error::ZBus(zbus::Error::MethodError(_, Some(text), _)) => text.clone(),
            Error::ZBus(zbus::Error::FDO(f)) => match &**f {
                zbus::fdo::Error::ZBus(inner) => inner.to_string(),
                named => named
                    .description()
                    .map_or_else(|| named.to_string(), str::to_owned),
            },
            Error::ZBus(e) => e.to_string(),
            named => named.named().map(|(_, t)| t.to_owned()).unwrap_or_default(),
        }
    }
}

impl zbus::DBusError for Error {
    fn name(&self) -> zbus::names::ErrorName<'_> {
        use zbus::names::ErrorName;
        match self {
            Error::ZBus(zbus::Error::FDO(f)) => f.name(),
            Error::ZBus(zbus::Error::MethodError(name, _, _)) => ErrorName::from(name),
            Error::ZBus(_) => ErrorName::from_static_str_unchecked(ZBUS_ERROR_NAME),
            named => ErrorName::from_static_str_unchecked(
                named.named().map_or(ZBUS_ERROR_NAME, |(n, _)| n),
            ),
        }
    }

    fn description(&self) -> Option<&str> {
        match self {
            Error::ZBus(zbus::Error::FDO(f)) => f.description(),
            Error::ZBus(e) => e.description(),
            named => named.named().map(|(_, t)| t),
        }
    }

    fn create_reply(&self, call: &zbus::message::Header<'_>) -> zbus::Result<zbus::Message> {
        zbus::Message::error(call, self.name())?.build(&(self.reply_text(),))
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use zbus::DBusError;
        write!(f, "{}: {}", self.name(), self.reply_text())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::ZBus(e) => Some(e),
            _ => None,
        }
    }
}

impl From<zbus::Error> for Error {
    /// A reply named `dev.locald.Error.*` becomes its variant; anything else
    /// stays [`Error::ZBus`] and keeps its own name.
    fn from(e: zbus::Error) -> Self {
        use zbus::DBusError;
        let named = match &e {
            zbus::Error::MethodError(name, text, _) => {
                Self::from_name(name.as_str(), text.clone().unwrap_or_default())
            }
            zbus::Error::FDO(f) => Self::from_name(
                f.name().as_str(),
                f.description().unwrap_or_default().to_owned(),
            ),
            _ => None,
        };
        named.unwrap_or(Error::ZBus(e))
    }
}

impl From<zbus::fdo::Error> for Error {
    fn from(e: zbus::fdo::Error) -> Self {
        Self::from(zbus::Error::from(e))
    }
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
    use zbus::DBusError;

    use super::*;

    /// Sends `e` as a reply would go out and reads it back as a client does.
    fn round_trip(e: &Error) -> Error {
        let call = zbus::Message::method_call(MANAGER_PATH, "Up")
            .and_then(|b| b.build(&()))
            .expect("a method call");
        let reply = e.create_reply(&call.header()).expect("an error reply");
        Error::from(zbus::Error::from(reply))
    }

    #[test]
    fn every_name_survives_the_wire() {
        let text = || "what went wrong".to_owned();
        let locald = [
            Error::ConfigInvalid(text()),
            Error::ConfigNotFound(text()),
            Error::NotADirectory(text()),
            Error::ReadFailed(text()),
            Error::NoSuchProject(text()),
            Error::NoSuchService(text()),
            Error::NoBuild(text()),
            Error::BuildFailed(text()),
            Error::NameTaken(text()),
            Error::ProjectRenamed(text()),
            Error::ShuttingDown(text()),
            Error::InvalidArgument(text()),
            Error::NoImage(text()),
            Error::PullFailed(text()),
            Error::ImageStoreFailed(text()),
            Error::NoFreePort(text()),
        ];
        for e in &locald {
            let name = e.name().to_string();
            assert!(name.starts_with(ERROR_PREFIX), "{name}");
            let back = round_trip(e);
            assert_eq!(back.name().as_str(), name);
            assert_eq!(std::mem::discriminant(&back), std::mem::discriminant(e));
            assert_eq!(back.short_name(), name[ERROR_PREFIX.len()..]);
            assert_eq!(back.message(), "what went wrong");
        }

        let standard = [
            (
                zbus::fdo::Error::AccessDenied(text()),
                "org.freedesktop.DBus.Error.AccessDenied",
            ),
            (
                zbus::fdo::Error::InvalidArgs(text()),
                "org.freedesktop.DBus.Error.InvalidArgs",
            ),
            (
                zbus::fdo::Error::UnknownMethod(text()),
                "org.freedesktop.DBus.Error.UnknownMethod",
            ),
        ];
        for (f, name) in standard {
            let e = Error::from(f);
            assert_eq!(e.name().as_str(), name, "sent under its own name");
            assert_eq!(e.description(), Some("what went wrong"));
            let back = round_trip(&e);
            assert_eq!(back.name().as_str(), name, "read back under its own name");
            assert_eq!(back.short_name(), name);
            assert_eq!(back.description(), Some("what went wrong"));
        }

        let foreign =
            zbus::names::OwnedErrorName::try_from("org.example.Error.Odd").expect("valid name");
        let call = zbus::Message::method_call(MANAGER_PATH, "Up")
            .and_then(|b| b.build(&()))
            .expect("a method call");
        let reply = zbus::Message::error(&call.header(), &foreign)
            .and_then(|b| b.build(&("odd",)))
            .expect("reply");
        let e = Error::from(zbus::Error::from(reply));
        assert_eq!(e.name().as_str(), "org.example.Error.Odd");
        assert_eq!(round_trip(&e).name().as_str(), "org.example.Error.Odd");
        assert_eq!(round_trip(&e).description(), Some("odd"));

        let plain = Error::ZBus(zbus::Error::InvalidReply);
        assert_eq!(plain.name().as_str(), "org.freedesktop.zbus.Error");
        assert_eq!(
            round_trip(&plain).name().as_str(),
            "org.freedesktop.zbus.Error"
        );
    }

    #[test]
    fn config_report_is_what_follows_the_first_line() {
        let e = Error::ConfigInvalid("/p/locald.toml:2:1: bad\nerror: bad\n  --> …".into());
        assert_eq!(e.config_report(), Some("error: bad\n  --> …"));
        let one_line = Error::ConfigInvalid("/p/locald.toml:2:1: bad".into());
        assert_eq!(one_line.config_report(), None);
        assert_eq!(Error::NoBuild("a\nb".into()).config_report(), None);
    }
}
