//! Building native-protocol entries: field encoding, syslog priorities, the
//! `<N>` level prefix and splitting lines longer than journald's `LineMax`.
//!
//! Everything here is pure so that it can be tested without a journald; the
//! socket side lives in `native.rs`.

use crate::event::LogLine;

/// journald's default `LineMax=` (48 KiB): the longest line it keeps in one
/// entry on its stream protocol. Longer lines are split in as many entries,
/// so a line from locald looks the same as one systemd would have logged.
pub const DEFAULT_LINE_MAX: usize = 48 * 1024;

/// The field that marks an entry whose line did not end there (see
/// `docs/logging.md`).
pub const LINE_BREAK_FIELD: &str = "LOCALD_LINE_BREAK";

pub use locald_core::priority::{ParsePriorityError, Priority};

/// Strips a leading `<N>` syslog level prefix, as systemd does for service
/// output with `SyslogLevelPrefix=yes`: `<` then one to three digits then
/// `>`, with a value 0..=7 (leading zeros allowed, facility bits not). A
/// line without a valid prefix is returned unchanged.
pub fn strip_level_prefix(line: &[u8]) -> (Option<Priority>, &[u8]) {
    if line.first() != Some(&b'<') {
        return (None, line);
    }
    let Some(end) = line.iter().take(5).position(|&b| b == b'>') else {
        return (None, line);
    };
    let digits = &line[1..end];
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return (None, line);
    }
    let value = digits
        .iter()
        .fold(0u32, |v, d| v * 10 + u32::from(d - b'0'));
    match u8::try_from(value).ok().and_then(Priority::new) {
        Some(p) => (Some(p), &line[end + 1..]),
        None => (None, line),
    }
}

/// Appends one field in the native protocol. Values with a newline, or that
/// are not UTF-8, use the length-prefixed form (`NAME\n<le64 length><bytes>\n`),
/// which carries any bytes; others the plain `NAME=value\n`.
pub fn put_field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') || std::str::from_utf8(value).is_err() {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// Appends a field whose value is known to be plain text without newlines
/// (enum names), skipping the checks.
fn put_plain(buf: &mut Vec<u8>, name: &str, value: &str) {
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'=');
    buf.extend_from_slice(value.as_bytes());
    buf.push(b'\n');
}

/// Appends a numeric field without going through `fmt` (this runs for
/// every line).
fn put_number(buf: &mut Vec<u8>, name: &str, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    buf.extend_from_slice(name.as_bytes());
    buf.push(b'=');
    buf.extend_from_slice(&digits[i..]);
    buf.push(b'\n');
}

/// Splits `bytes` into pieces of at most `max` bytes. A cut that would fall
/// inside a UTF-8 sequence moves back to the sequence's start (by at most
/// three bytes), so that text stays readable piece by piece; the pieces
/// always concatenate to the input.
pub fn split_line(bytes: &[u8], max: usize) -> impl Iterator<Item = &[u8]> {
    let max = max.max(4);
    let mut rest = bytes;
    let mut first = true;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            // An empty line is still one entry.
            return std::mem::take(&mut first).then_some(&b""[..]);
        }
        first = false;
        let mut end = rest.len().min(max);
        if end < rest.len() {
            let mut back = end;
            while back > end - 3 && rest[back] & 0xC0 == 0x80 {
                back -= 1;
            }
            // Only move if we landed on the start of a multi-byte sequence.
            if back < end && rest[back] & 0xC0 == 0xC0 {
                end = back;
            }
        }
        let (piece, tail) = rest.split_at(end);
        rest = tail;
        Some(piece)
    })
}

/// Why an entry's line does not end with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineBreak {
    /// The line ends here (no marker field).
    End,
    /// The line was longer than `LineMax`; the next entry of the same
    /// service, phase and stream continues it.
    LineMax,
    /// The line came without a newline: the process exited (or the reader
    /// had to cut it).
    Partial,
}

impl LineBreak {
    /// The marker value, as systemd names its `_LINE_BREAK=` values.
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            LineBreak::End => None,
            LineBreak::LineMax => Some("line-max"),
            LineBreak::Partial => Some("partial"),
        }
    }
}

/// Encodes one journal entry for one piece of `line`.
pub fn encode_entry(
    buf: &mut Vec<u8>,
    line: &LogLine,
    message: &[u8],
    priority: Priority,
    brk: LineBreak,
) {
    buf.clear();
    put_field(buf, "MESSAGE", message);
    put_number(buf, "PRIORITY", u64::from(priority.value()));
    put_field(buf, "SYSLOG_IDENTIFIER", line.service.as_bytes());
    put_field(buf, "LOCALD_PROJECT", line.project.as_bytes());
    put_field(buf, "LOCALD_SERVICE", line.service.as_bytes());
    put_plain(buf, "LOCALD_PHASE", line.phase.as_str());
    put_plain(buf, "LOCALD_STREAM", line.stream.as_str());
    if let Some(image) = &line.image {
        put_field(buf, "LOCALD_IMAGE", image.as_bytes());
    }
    if let Some(id) = &line.build_id {
        put_field(buf, "LOCALD_BUILD_ID", id.as_bytes());
    }
    if let Some(pid) = line.pid {
        put_number(buf, "LOCALD_PID", u64::from(pid));
        // Lets `journalctl -o short` show `web[1234]` rather than locald's pid.
        put_number(buf, "SYSLOG_PID", u64::from(pid));
    }
    if let Some(v) = brk.as_str() {
        put_plain(buf, LINE_BREAK_FIELD, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn level_prefix_is_parsed_like_systemd() {
        assert_eq!(
            strip_level_prefix(b"<3>boom"),
            (Some(Priority::ERR), &b"boom"[..])
        );
        assert_eq!(
            strip_level_prefix(b"<007>x"),
            (Some(Priority::DEBUG), &b"x"[..])
        );
        assert_eq!(
            strip_level_prefix(b"<0>"),
            (Some(Priority::EMERG), &b""[..])
        );
        for unchanged in [
            &b"<8>x"[..],
            b"<13>x",
            b"<>x",
            b"<a>x",
            b"<0003>x",
            b"x<3>",
            b"<3",
        ] {
            assert_eq!(strip_level_prefix(unchanged), (None, unchanged));
        }
    }

    #[test]
    fn priority_parses_numbers_and_names() {
        assert_eq!("3".parse(), Ok(Priority::ERR));
        assert_eq!("warning".parse(), Ok(Priority::WARNING));
        assert_eq!("Error".parse(), Ok(Priority::ERR));
        assert!("8".parse::<Priority>().is_err());
        assert!("loud".parse::<Priority>().is_err());
    }

    #[test]
    fn plain_and_binary_fields() {
        let mut b = Vec::new();
        put_field(&mut b, "A", b"x y");
        assert_eq!(b, b"A=x y\n");
        b.clear();
        put_field(&mut b, "A", b"x\ny");
        assert_eq!(b, b"A\n\x03\0\0\0\0\0\0\0x\ny\n");
        b.clear();
        put_field(&mut b, "A", b"\xff");
        assert_eq!(b, b"A\n\x01\0\0\0\0\0\0\0\xff\n");
    }

    #[test]
    fn numbers_are_written_in_decimal() {
        let mut b = Vec::new();
        put_number(&mut b, "N", 0);
        put_number(&mut b, "N", 4_294_967_295);
        assert_eq!(b, b"N=0\nN=4294967295\n");
    }

    #[test]
    fn split_keeps_bytes_and_utf8_sequences() {
        let line = "é".repeat(10); // 20 bytes of two-byte sequences
        let pieces: Vec<_> = split_line(line.as_bytes(), 5).collect();
        assert!(pieces.iter().all(|p| std::str::from_utf8(p).is_ok()));
        assert_eq!(pieces.concat(), line.as_bytes());
        let raw = vec![0xffu8; 11];
        let pieces: Vec<_> = split_line(&raw, 5).collect();
        assert_eq!(
            pieces.iter().map(|p| p.len()).collect::<Vec<_>>(),
            [5, 5, 1]
        );
        assert_eq!(split_line(b"", 5).collect::<Vec<_>>(), [&b""[..]]);
    }
}
