//! Names of locald's systemd units and slices: `locald-<project>-<service>
//! .service` in `locald-<project>.slice`, with systemd's escaping, so a
//! client (`locald-ctl logs`) finds a service's unit without asking the
//! daemon.

/// `locald-<project>-<unit>.service`, each part escaped.
pub fn unit_name(project: &str, unit: &str) -> String {
    format!("locald-{}-{}.service", escape(project), escape(unit))
}

/// `locald-<project>.slice`, the project escaped.
pub fn slice_name(project: &str) -> String {
    format!("locald-{}.slice", escape(project))
}

/// The project a [`slice_name`] is named after.
pub fn project_of_slice(slice: &str) -> Option<String> {
    unescape(slice.strip_prefix("locald-")?.strip_suffix(".slice")?)
}

/// The reverse of [`escape`]; `None` for what `escape` never makes.
pub fn unescape(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'-' => out.push(b'/'),
            b'\\' => {
                let hex = s.get(i + 2..i + 4)?;
                if b.get(i + 1) != Some(&b'x') {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// systemd's unit name escaping (`systemd-escape`): `/` becomes `-`;
/// `-`, `\`, a leading `.` and anything outside `[A-Za-z0-9:_.]` become
/// `\xNN`.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for (i, b) in s.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b':' | b'_' | b'.' => out.push(b as char),
            _ => out.push_str(&format!("\\x{b:02x}")),
        }
    }
    out
}
