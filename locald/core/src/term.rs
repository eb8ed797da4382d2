//! The terminal face of `locald up`: output lines prefixed by their service
//! (and marked when they come from a build), state changes as they happen,
//! an image's layers as they are pulled for a first start, coloured on a
//! TTY and plain under `NO_COLOR` or a pipe.
//!
//! Also the conventions every command line of locald keeps, in one place
//! for `locald` and `locald-ctl`: colour only on a terminal and without
//! `NO_COLOR` ([`color_for`]), and a quiet end when the reader of stdout
//! goes away ([`end_quietly_on_closed_pipe`], [`Terminal::output_closed`]).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::{IsTerminal, Write};
use std::sync::Mutex;

use tokio::sync::Notify;

use crate::event::{BuildResult, Event, LogLine, Phase, ServiceSnapshot, ServiceState};
use crate::output::{BoxFuture, LogSink};

const PALETTE: [u8; 6] = [36, 33, 35, 32, 34, 31];

/// Whether to colour what goes to `stream` (stdout, stderr): only when it is
/// a terminal and `NO_COLOR` is unset or empty (<https://no-color.org>).
pub fn color_for(stream: &impl IsTerminal) -> bool {
    wants_color(
        stream.is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn wants_color(is_terminal: bool, no_color: Option<&OsStr>) -> bool {
    is_terminal && no_color.is_none_or(OsStr::is_empty)
}

/// Ends the process quietly, as `cat` or `grep` do, when it writes to a pipe
/// whose reader went away (`locald check | head -c1`). Rust ignores
/// SIGPIPE, so every `println!` would fail with EPIPE and panic (exit 101);
/// with SIGPIPE's default action the kernel ends the process instead, and
/// the shell sees the usual 141.
///
/// Call it first thing in `main`, before any thread exists, and only for
/// commands that leave nothing behind when killed: the daemon and `locald
/// up` run services (and `locald build` a build) that a sudden death would
/// orphan; they keep SIGPIPE ignored and watch their output instead
/// ([`Terminal::output_closed`]).
pub fn end_quietly_on_closed_pipe() {
    // SAFETY: restoring the default disposition installs no handler code;
    // called before other threads exist, nothing races with it.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `web running pid 1234`, `db failed (exited with status 1)`: a state
/// change as `locald up` prints it; the reason only when it says more than
/// the state (a stopped service's reason is "stopped").
fn state_text(service: &ServiceSnapshot) -> String {
    let mut t = format!("{} {}", service.name, service.state);
    if !service.reason.is_empty() && service.reason != service.state.as_str() {
        t.push_str(&format!(" ({})", service.reason));
    }
    if service.state == ServiceState::Running {
        if let Some(pid) = service.main_pid {
            t.push_str(&format!(" pid {pid}"));
        }
    }
    t
}

/// `27.0 MB`, `512 B`, `1.1 GB`: a byte count for people (decimal units,
/// as registries and `docker` show sizes).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["kB", "MB", "GB", "TB", "PB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 999.95 && unit + 1 < UNITS.len() {
        v /= 1000.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// One report of a layer being pulled, as [`pull_text`] reads it.
struct PullStep<'a> {
    reference: &'a str,
    index: u32,
    layers: u32,
    done: u64,
    total: u64,
    cached: bool,
}

/// How many quarters of `total` are `done` (0 to 4).
fn quarter(done: u64, total: u64) -> u64 {
    if total == 0 {
        4
    } else {
        (u128::from(done.min(total)) * 4 / u128::from(total)) as u64
    }
}

/// What `locald up` prints for a pull report, if anything: the start of a
/// layer, each further quarter of a large one, and its end; layers already
/// stored say nothing. `last` is the quarter printed before for the layer.
fn pull_text(service: &str, p: &PullStep<'_>, last: Option<u64>) -> Option<String> {
    /// Layers below this size print only their start and end.
    const QUARTERS_FROM: u64 = 4 << 20;
    if p.cached {
        return None;
    }
    let layer = format!("layer {}/{}", p.index + 1, p.layers);
    let size = human_bytes(p.total);
    if p.done >= p.total {
        return Some(format!("{service} pulled {layer} ({size})"));
    }
    let q = quarter(p.done, p.total);
    match last {
        None => Some(format!(
            "{service} pulling {} {layer} ({size})",
            p.reference
        )),
        Some(l) if q > l && p.total >= QUARTERS_FROM => Some(format!(
            "{service} {layer}: {}% ({} of {size})",
            q * 25,
            human_bytes(p.done)
        )),
        Some(_) => None,
    }
}

/// Prints to stdout.
pub struct Terminal {
    color: bool,
    width: usize,
    names: Vec<String>,
    out: Mutex<()>,
    /// Last state and reason printed per service, to print changes only.
    shown: Mutex<HashMap<String, (ServiceState, String)>>,
    /// Per service and layer being pulled, the last quarter printed.
    pulls: Mutex<HashMap<(String, String), u64>>,
    /// Woken when stdout turns out to be a pipe nobody reads any more.
    closed: Notify,
}

impl Terminal {
    /// A printer for services with these names (to align and colour them).
    pub fn new(names: &[String]) -> Self {
        Self::with_color(names, color_for(&std::io::stdout()))
    }

    /// Same, with colour chosen by the caller.
    pub fn with_color(names: &[String], color: bool) -> Self {
        let width = names.iter().map(|n| n.len()).max().unwrap_or(4) + ":build".len();
        Self {
            color,
            width,
            names: names.to_vec(),
            out: Mutex::new(()),
            shown: Mutex::default(),
            pulls: Mutex::default(),
            closed: Notify::new(),
        }
    }

    fn paint(&self, service: &str, text: &str) -> String {
        if !self.color {
            return text.to_owned();
        }
        let i = self.names.iter().position(|n| n == service).unwrap_or(0);
        format!("\x1b[{}m{text}\x1b[0m", PALETTE[i % PALETTE.len()])
    }

    fn emit(&self, bytes: &[u8]) {
        let _guard = self
            .out
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = std::io::stdout().lock();
        if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
            // Any other error (a full disk behind a redirect) loses a line,
            // not the services.
            if e.kind() == std::io::ErrorKind::BrokenPipe {
                self.closed.notify_one();
            }
        }
    }

    /// Completes once a write to stdout failed because its reader went away
    /// (`locald up | head`): nobody sees the output any more, and `up`
    /// stops its services as on Ctrl-C rather than run them unseen.
    pub async fn output_closed(&self) {
        self.closed.notified().await;
    }

    /// Formats one output line.
    pub fn format_line(&self, line: &LogLine) -> Vec<u8> {
        let tag = match line.phase {
            Phase::Build => format!("{}:build", line.service),
            Phase::Run => line.service.to_string(),
        };
        let prefix = self.paint(&line.service, &format!("{tag:>w$} |", w = self.width));
        let mut buf = Vec::with_capacity(prefix.len() + line.line.len() + 2);
        buf.extend_from_slice(prefix.as_bytes());
        buf.push(b' ');
        buf.extend_from_slice(&line.line);
        buf.push(b'\n');
        buf
    }

    /// Prints an event worth a line; returns whether it printed.
    pub fn event(&self, ev: &Event) -> bool {
        let text = match ev {
            Event::ServiceChanged { service, .. } => {
                let now = (service.state, service.reason.clone());
                let mut shown = self
                    .shown
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if shown.get(&service.name) == Some(&now) {
                    return false;
                }
                shown.insert(service.name.clone(), now);
                state_text(service)
            }
            Event::PullProgress {
                service,
                reference,
                layer,
                index,
                layers,
                done,
                total,
                cached,
                ..
            } => {
                let mut pulls = self
                    .pulls
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                let step = PullStep {
                    reference,
                    index: *index,
                    layers: *layers,
                    done: *done,
                    total: *total,
                    cached: *cached,
                };
                let key = (service.clone(), layer.clone());
                let Some(text) = pull_text(service, &step, pulls.get(&key).copied()) else {
                    return false;
                };
                if step.done >= step.total {
                    pulls.remove(&key);
                } else {
                    pulls.insert(key, quarter(step.done, step.total));
                }
                text
            }
            // Steps of a multi-step build (a buildpacks lifecycle's phases):
            // "web Building: step 3/5 – Restoring cache". Step 0 is the
            // preparation before the first phase, not worth a line.
            Event::BuildProgress {
                service,
                step,
                total,
                label,
                ..
            } if *step > 0 && *total > 3 => {
                format!("{service} Building: step {step}/{total} – {label}")
            }
            Event::BuildFinished {
                service, record, ..
            } => match record.result {
                BuildResult::Succeeded => format!("{service} build succeeded ({})", record.reason),
                BuildResult::Skipped => format!("{service} {}", record.reason),
                BuildResult::Failed => format!("{service} build failed: {}", record.reason),
                BuildResult::Running => return false,
            },
            _ => return false,
        };
        // Reasons, labels and references come from outside (a registry's
        // message, a build's output): escapes shown, never obeyed.
        let text = crate::text::sanitize(&text);
        let line = format!("{:>w$} {}\n", "locald", text, w = self.width + 1);
        let line = if self.color {
            format!("\x1b[2m{}\x1b[0m\n", line.trim_end())
        } else {
            line
        };
        self.emit(line.as_bytes());
        true
    }

    /// Prints a message from locald itself.
    pub fn note(&self, text: &str) {
        let text = crate::text::sanitize(text);
        let line = format!("{:>w$} {}\n", "locald", text, w = self.width + 1);
        self.emit(line.as_bytes());
    }
}

impl LogSink for Terminal {
    fn write<'a>(&'a self, line: &'a LogLine) -> BoxFuture<'a, ()> {
        let bytes = self.format_line(line);
        self.emit(&bytes);
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(wants_color(true, None));
        assert!(wants_color(true, Some(OsStr::new(""))));
        assert!(!wants_color(true, Some(OsStr::new("1"))));
        assert!(!wants_color(false, None));
    }

    #[test]
    fn byte_counts_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(999), "999 B");
        assert_eq!(human_bytes(1000), "1.0 kB");
        assert_eq!(human_bytes(27_049_123), "27.0 MB");
        assert_eq!(human_bytes(999_960), "1.0 MB");
        assert_eq!(human_bytes(1_100_000_000), "1.1 GB");
        assert_eq!(human_bytes(u64::MAX), "18446.7 PB");
    }

    #[test]
    fn pull_lines_say_start_quarters_and_end_of_new_layers() {
        let step = |done, total, cached| PullStep {
            reference: "redis:7",
            index: 1,
            layers: 3,
            done,
            total,
            cached,
        };
        let big = 40_000_000;
        assert_eq!(
            pull_text("cache", &step(0, big, false), None).as_deref(),
            Some("cache pulling redis:7 layer 2/3 (40.0 MB)")
        );
        assert_eq!(
            pull_text("cache", &step(4_000_000, big, false), Some(0)),
            None
        );
        assert_eq!(
            pull_text("cache", &step(20_000_000, big, false), Some(0)).as_deref(),
            Some("cache layer 2/3: 50% (20.0 MB of 40.0 MB)")
        );
        assert_eq!(
            pull_text("cache", &step(21_000_000, big, false), Some(2)),
            None
        );
        assert_eq!(
            pull_text("cache", &step(big, big, false), Some(3)).as_deref(),
            Some("cache pulled layer 2/3 (40.0 MB)")
        );
        // Small layers: start and end only; stored layers: nothing.
        assert_eq!(pull_text("cache", &step(600, 1000, false), Some(0)), None);
        assert_eq!(pull_text("cache", &step(big, big, true), None), None);
    }

    #[test]
    fn pull_progress_prints_through_the_terminal() {
        let t = Terminal::with_color(&["cache".into()], false);
        let ev = |done, cached| Event::PullProgress {
            project: "p".into(),
            service: "cache".into(),
            reference: "oci:./layout:v1".into(),
            layer: "sha256:ab".into(),
            index: 0,
            layers: 1,
            done,
            total: 100,
            cached,
        };
        assert!(t.event(&ev(0, false)));
        assert!(!t.event(&ev(50, false)), "small layers skip the quarters");
        assert!(t.event(&ev(100, false)));
        assert!(!t.event(&ev(100, true)));
    }

    /// Regression (#19 item 6): a registry's error body went verbatim into
    /// a reason, and `locald up` printed `ESC ] 0 ; … BEL` (a new window
    /// title) and `ESC [ 2 J` (a cleared screen) into the terminal.
    #[test]
    fn outside_text_in_state_lines_is_escaped() {
        let t = Terminal::with_color(&["web".to_owned()], false);
        let mut svc = ServiceSnapshot::new("web");
        svc.state = ServiceState::Error;
        svc.reason = "registry said: \u{1b}]0;PWNED-TITLE\u{7}\u{1b}[2J".into();
        let text = state_text(&svc);
        let shown = crate::text::sanitize(&text);
        assert!(!shown.contains('\u{1b}'), "{shown}");
        assert!(
            shown.contains("\\x1b]0;PWNED-TITLE\\x07\\x1b[2J"),
            "{shown}"
        );
        assert!(t.event(&Event::ServiceChanged {
            project: "p".into(),
            service: svc,
        }));
    }

    #[test]
    fn state_lines_do_not_repeat_the_state() {
        let mut s = ServiceSnapshot::new("web");
        s.state = ServiceState::Stopped;
        s.reason = "stopped".into();
        assert_eq!(state_text(&s), "web stopped");
        s.state = ServiceState::Failed;
        s.reason = "exited with status 1".into();
        assert_eq!(state_text(&s), "web failed (exited with status 1)");
        s.state = ServiceState::Running;
        s.reason.clear();
        s.main_pid = Some(1234);
        assert_eq!(state_text(&s), "web running pid 1234");
    }
}
