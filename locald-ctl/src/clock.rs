//! Local wall-clock time for what people read (`watch`, `logs
//! --timestamps`), formatted the way journalctl formats it: through the C
//! library's `localtime_r` and `strftime`, so `$TZ` and the system's zone
//! apply exactly as they do for journalctl. (Month names are the C
//! locale's; locald-ctl does not call `setlocale`.)

use std::ffi::CStr;
use std::time::{SystemTime, UNIX_EPOCH};

/// One instant, broken down in the local zone.
pub struct Local {
    tm: libc::tm,
    usec: u64,
}

impl Local {
    /// The instant `usec` microseconds after the epoch, or `None` if the C
    /// library cannot place it.
    pub fn from_usec(usec: u64) -> Option<Self> {
        let secs = libc::time_t::try_from(usec / 1_000_000).ok()?;
        // SAFETY: `tm` is plain data that `localtime_r` fills in; an
        // all-zero value is a valid starting point (its `tm_zone` pointer is
        // only read after `localtime_r` set it).
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        // SAFETY: both pointers are valid for the call; `localtime_r` is the
        // thread-safe variant and keeps no pointer to them.
        let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
        ok.then_some(Self {
            tm,
            usec: usec % 1_000_000,
        })
    }

    /// Now.
    pub fn now() -> Option<Self> {
        let d = SystemTime::now().duration_since(UNIX_EPOCH).ok()?;
        Self::from_usec(u64::try_from(d.as_micros()).ok()?)
    }

    /// `strftime` with `format` (`c"%H:%M:%S"`).
    pub fn format(&self, format: &CStr) -> String {
        let mut buf = [0u8; 128];
        // SAFETY: `buf` is writable for its length, `format` is a C string
        // and `tm` was filled in by `localtime_r`; strftime writes at most
        // `buf.len()` bytes and returns how many (0 when it did not fit).
        let n = unsafe {
            libc::strftime(
                buf.as_mut_ptr().cast(),
                buf.len(),
                format.as_ptr(),
                &self.tm,
            )
        };
        String::from_utf8_lossy(buf.get(..n).unwrap_or_default()).into_owned()
    }

    /// The microseconds within the second.
    pub fn micros(&self) -> u64 {
        self.usec
    }
}

/// `HH:MM:SS` now, in the local zone (empty if the clock cannot be read).
pub fn now_hms() -> String {
    Local::now().map_or_else(String::new, |t| t.format(c"%H:%M:%S"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breaks_down_and_formats_in_the_local_zone() {
        // The test process's zone is whatever the machine has, so check
        // what does not depend on it.
        let t = Local::from_usec(1_764_601_200_123_456).expect("a time");
        assert_eq!(t.micros(), 123_456);
        assert_eq!(t.format(c"%Y").len(), 4);
        assert_eq!(now_hms().len(), 8);
    }
}
