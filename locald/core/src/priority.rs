//! Syslog priorities (`PRIORITY=` in the journal): what a service's stderr
//! is logged at (`stderr_priority` in `locald.toml`) and what a `<N>` prefix
//! on a line sets.

use std::fmt;
use std::str::FromStr;

/// A syslog priority, 0 (emerg) to 7 (debug), as in journald's `PRIORITY=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Priority(u8);

impl Priority {
    /// 0: the system is unusable.
    pub const EMERG: Priority = Priority(0);
    /// 1: action must be taken immediately.
    pub const ALERT: Priority = Priority(1);
    /// 2: critical condition.
    pub const CRIT: Priority = Priority(2);
    /// 3: error.
    pub const ERR: Priority = Priority(3);
    /// 4: warning.
    pub const WARNING: Priority = Priority(4);
    /// 5: normal but significant.
    pub const NOTICE: Priority = Priority(5);
    /// 6: informational; what systemd uses for both output streams.
    pub const INFO: Priority = Priority(6);
    /// 7: debug.
    pub const DEBUG: Priority = Priority(7);

    const NAMES: [&'static str; 8] = [
        "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
    ];

    /// The priority with this number, if it is one (0..=7).
    pub fn new(value: u8) -> Option<Self> {
        (value <= 7).then_some(Priority(value))
    }

    /// The number journald stores.
    pub fn value(self) -> u8 {
        self.0
    }

    /// The name systemd uses (`err`, `info`, ...).
    pub fn name(self) -> &'static str {
        Self::NAMES[usize::from(self.0)]
    }
}

impl Default for Priority {
    fn default() -> Self {
        Priority::INFO
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A priority that is neither a number 0..=7 nor a syslog level name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid priority {value:?}: expected 0..7 or one of emerg, alert, crit, err, warning, notice, info, debug")]
pub struct ParsePriorityError {
    /// What was given.
    pub value: String,
}

impl FromStr for Priority {
    type Err = ParsePriorityError;

    /// Accepts what systemd's `SyslogLevel=` accepts: a number or a name
    /// (`error` and `warn` as aliases, as in systemd).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let found = match t.as_str() {
            "error" => Some(Priority::ERR),
            "warn" => Some(Priority::WARNING),
            "panic" => Some(Priority::EMERG),
            _ => Self::NAMES
                .iter()
                .position(|n| *n == t)
                .and_then(|i| u8::try_from(i).ok())
                .map(Priority)
                .or_else(|| t.parse::<u8>().ok().and_then(Priority::new)),
        };
        found.ok_or_else(|| ParsePriorityError {
            value: s.to_owned(),
        })
    }
}
