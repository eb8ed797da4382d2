//! Engine errors as named D-Bus errors: the one place where an
//! [`EngineError`] becomes a `dev.locald.Error.*` reply.

use locald_api::Error;

use crate::config::LoadError;
use crate::engine::EngineError;

/// The error and its sources on one line, as `{:#}` would print it.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Converts an engine error into the named error a caller gets.
pub fn to_dbus(e: EngineError) -> Error {
    match &e {
        EngineError::Config(load) => match load {
            // The first line is file:line:column: message, which editors
            // link; the rest is the report `locald check` prints.
            LoadError::Invalid(c) => Error::ConfigInvalid(c.summary_and_report()),
            LoadError::NotFound { .. } => Error::ConfigNotFound(chain(&e)),
            LoadError::NotADirectory { .. } => Error::NotADirectory(chain(&e)),
            LoadError::Read { .. } | LoadError::Refused(_) => Error::ReadFailed(chain(&e)),
        },
        EngineError::NoSuchProject(_) => Error::NoSuchProject(chain(&e)),
        EngineError::NoSuchService { .. } => Error::NoSuchService(chain(&e)),
        EngineError::NoBuild { .. } => Error::NoBuild(chain(&e)),
        EngineError::BuildFailed { .. } => Error::BuildFailed(chain(&e)),
        EngineError::NameTaken { .. } | EngineError::Busy { .. } => Error::NameTaken(chain(&e)),
        EngineError::Renamed { .. } => Error::ProjectRenamed(chain(&e)),
        EngineError::ShuttingDown => Error::ShuttingDown(chain(&e)),
        EngineError::NoImage { .. } => Error::NoImage(chain(&e)),
        EngineError::Pull { .. } => Error::PullFailed(chain(&e)),
        EngineError::Ports(_) => Error::NoFreePort(chain(&e)),
        EngineError::ImageStore(_) | EngineError::NoImageStore(_) | EngineError::ImageUsers(_) => {
            Error::ImageStoreFailed(chain(&e))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use zbus::DBusError;

    use super::*;
    use crate::config::Config;

    #[test]
    fn config_error_keeps_location() {
        let bad = Config::parse(
            std::path::Path::new("/p/locald.toml"),
            "[services.web]\ncomand = \"x\"\n",
        )
        .err()
        .map(LoadError::Invalid);
        let Some(bad) = bad else {
            panic!("a misspelt key must be rejected");
        };
        let e = to_dbus(EngineError::Config(bad));
        assert_eq!(e.name().as_str(), "dev.locald.Error.ConfigInvalid");
        let text = e.description().unwrap_or_default().to_owned();
        assert!(text.starts_with("/p/locald.toml:2:1: "), "{text}");
        assert!(text.contains("= hint: did you mean `command`?"), "{text}");
    }

    #[test]
    fn names_are_specific() {
        let cases = [
            (
                EngineError::NoSuchProject("x".into()),
                "dev.locald.Error.NoSuchProject",
            ),
            (
                EngineError::NoSuchService {
                    project: "p".into(),
                    service: "s".into(),
                },
                "dev.locald.Error.NoSuchService",
            ),
            (
                EngineError::Config(LoadError::NotADirectory {
                    path: PathBuf::from("/etc/passwd"),
                }),
                "dev.locald.Error.NotADirectory",
            ),
            (EngineError::ShuttingDown, "dev.locald.Error.ShuttingDown"),
            (
                EngineError::NoImage {
                    project: "p".into(),
                    service: "s".into(),
                },
                "dev.locald.Error.NoImage",
            ),
            (
                EngineError::NoImageStore("no home".into()),
                "dev.locald.Error.ImageStoreFailed",
            ),
        ];
        for (e, name) in cases {
            assert_eq!(to_dbus(e).name().as_str(), name);
        }
    }
}
