//! Bus names, interface names and object paths.
//!
//! Project and service names become object-path labels with systemd's
//! escaping (`bus_label_escape`): every byte that is not an ASCII letter, or
//! a digit after the first position, becomes `_xx` in lowercase hex; the
//! empty string becomes `_`. So `my-app` is `my_2dapp`, as in
//! `/org/freedesktop/systemd1/unit/dbus_2eservice`.

use zbus::zvariant::OwnedObjectPath;

/// The well-known name the daemon owns.
pub const BUS_NAME: &str = "dev.locald.Locald1";
/// The manager object; also the root of the ObjectManager tree.
pub const MANAGER_PATH: &str = "/dev/locald/Locald1";
/// The manager interface.
pub const MANAGER_INTERFACE: &str = "dev.locald.Manager1";
/// The interface of a project object.
pub const PROJECT_INTERFACE: &str = "dev.locald.Project1";
/// The interface of a service object.
pub const SERVICE_INTERFACE: &str = "dev.locald.Service1";
/// The prefix of every locald error name (with the trailing dot).
pub const ERROR_PREFIX: &str = "dev.locald.Error.";
/// Under this path prefix live the project objects, and under each project its services.
pub const PROJECT_PATH_PREFIX: &str = "/dev/locald/Locald1/project";

/// Escapes a name into one object-path label, like systemd's `bus_label_escape`.
pub fn escape_label(s: &str) -> String {
    if s.is_empty() {
        return "_".to_owned();
    }
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        if b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()) {
            out.push(char::from(b));
        } else {
            out.push('_');
            out.push(hex(b >> 4));
            out.push(hex(b & 0xf));
        }
    }
    out
}

fn hex(n: u8) -> char {
    char::from(b"0123456789abcdef"[usize::from(n & 0xf)])
}

/// Reverses [`escape_label`]; `None` when the label is not a valid escape.
pub fn unescape_label(label: &str) -> Option<String> {
    if label == "_" {
        return Some(String::new());
    }
    let bytes = label.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'_' {
            let hi = char::from(*bytes.get(i + 1)?).to_digit(16)?;
            let lo = char::from(*bytes.get(i + 2)?).to_digit(16)?;
            out.push(u8::try_from(hi * 16 + lo).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn path(s: String) -> OwnedObjectPath {
    // Every label is escaped to [A-Za-z0-9_]+, so the path is always valid.
    OwnedObjectPath::try_from(s).unwrap_or_else(|_| OwnedObjectPath::default())
}

/// The object path of a project: `/dev/locald/Locald1/project/<escaped name>`.
pub fn project_path(project: &str) -> OwnedObjectPath {
    path(format!("{PROJECT_PATH_PREFIX}/{}", escape_label(project)))
}

/// The object path of a service: `<project path>/<escaped service name>`.
pub fn service_path(project: &str, service: &str) -> OwnedObjectPath {
    path(format!(
        "{PROJECT_PATH_PREFIX}/{}/{}",
        escape_label(project),
        escape_label(service)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd() {
        assert_eq!(escape_label("dbus.service"), "dbus_2eservice");
        assert_eq!(escape_label("my-app"), "my_2dapp");
        assert_eq!(escape_label("9lives"), "_39lives");
        assert_eq!(escape_label("a9"), "a9");
        assert_eq!(escape_label("a_b"), "a_5fb");
        assert_eq!(escape_label(""), "_");
        assert_eq!(escape_label("é"), "_c3_a9");
    }

    #[test]
    fn unescape_reverses_escape() {
        for s in ["", "web", "my-app", "9lives", "a_b", "é/x y", "_"] {
            assert_eq!(unescape_label(&escape_label(s)).as_deref(), Some(s));
        }
        assert_eq!(unescape_label("_zz"), None);
        assert_eq!(unescape_label("_4"), None);
    }

    #[test]
    fn paths_are_valid_and_nested() {
        assert_eq!(
            project_path("my-app").as_str(),
            "/dev/locald/Locald1/project/my_2dapp"
        );
        assert_eq!(
            service_path("my-app", "web.1").as_str(),
            "/dev/locald/Locald1/project/my_2dapp/web_2e1"
        );
    }
}
