//! `ports.json`: the ports locald chose for services that asked for
//! `port = "auto"`, remembered per project instance and service so a
//! service keeps its port across restarts, reloads, daemon restarts (even
//! after `kill -9`) and `locald up` sessions, and two projects never get the
//! same one.
//!
//! The file lives in the state directory (`$XDG_STATE_HOME/locald`, or the
//! daemon's `--state-dir`), apart from `projects.json`: that file is the
//! daemon's list of projects to bring back, which a foreground `locald up`
//! must not write, while ports are shared by every locald of the user. One
//! writer at a time across processes: `ports.lock` is held with `flock`
//! while the file is read, changed and written back (atomically, through
//! [`crate::fsutil::write_atomic`]).
//!
//! A new port comes from the kernel (bind `127.0.0.1:0`), skipping any that
//! another project remembers. A remembered port is checked to be free (bind
//! `0.0.0.0:PORT`, which fails while anything listens on it on any IPv4
//! address) before it is used again; the caller stops what an earlier run of
//! the project left running first, so the service's own old process never
//! makes its port look taken. A port another program took meanwhile is
//! replaced by a new one, and the file says so from then on.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::OpenOptions;
use std::net::TcpListener;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::config::Config;
use crate::fsutil::{private_dir, read_state, write_atomic, STATE_LIMIT};

const VERSION: u32 = 1;

/// Why ports could not be assigned.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The kernel gave no port that is not already someone's.
    #[error("no free TCP port on 127.0.0.1 for service `{service}`")]
    NoFreePort {
        /// The service that asked.
        service: String,
        /// The last bind error, if binding itself failed.
        #[source]
        source: Option<std::io::Error>,
    },
}

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Saved {
    version: u32,
    /// By project key (name and directory hash).
    projects: BTreeMap<String, SavedProject>,
}

#[derive(Debug, Default, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SavedProject {
    /// The project directory; an entry whose directory is gone is dropped.
    path: PathBuf,
    /// Service → port key (`port` or the name in `ports`) → number.
    services: BTreeMap<String, BTreeMap<String, u16>>,
}

/// The remembered ports of one user. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PortBook {
    /// The state directory; `None` remembers nothing (no home directory).
    dir: Option<PathBuf>,
}

/// Ports a running project already uses, by (service, port key): kept as
/// they are, without a freeness check (their own process holds them).
pub type InUse = HashMap<(String, String), u16>;

impl PortBook {
    /// The book in `dir` (created 0700 if missing); `None` keeps nothing
    /// between runs.
    pub fn new(dir: Option<PathBuf>) -> PortBook {
        PortBook { dir }
    }

    /// The ports a project uses now, for [`assign`](Self::assign) on reload.
    pub fn in_use(config: &Config) -> InUse {
        config
            .services
            .iter()
            .flat_map(|(s, svc)| {
                svc.ports
                    .iter()
                    .filter(|p| p.auto && p.number != 0)
                    .map(|p| ((s.clone(), p.key().to_owned()), p.number))
            })
            .collect()
    }

    /// Gives every auto port of `config` a number, then applies them
    /// ([`Config::apply_ports`]). `key` is the project instance's key.
    /// Blocking: call from a blocking thread.
    ///
    /// Problems with the file itself (unreadable, corrupt, a read-only
    /// disk) are logged and the ports are chosen without it; only finding
    /// no free port at all is an error.
    pub fn assign(&self, key: &str, config: &mut Config, in_use: &InUse) -> Result<(), PortError> {
        let wants_auto = config
            .services
            .values()
            .any(|s| s.ports.iter().any(|p| p.auto));
        if !wants_auto {
            config.apply_ports();
            return Ok(());
        }
        let locked = self.dir.as_deref().and_then(|d| match open_locked(d) {
            Ok(l) => Some((d.join("ports.json"), l)),
            Err(e) => {
                tracing::warn!(
                    "cannot use {} to remember ports: {e}; ports are chosen afresh",
                    d.display()
                );
                None
            }
        });
        let mut saved = locked
            .as_ref()
            .map(|(path, _)| load(path))
            .unwrap_or_default();
        saved.projects.retain(|k, p| k == key || p.path.is_dir());
        let mine = saved.projects.remove(key).unwrap_or_default();
        let mut taken: HashSet<u16> = saved
            .projects
            .values()
            .flat_map(|p| p.services.values().flat_map(|m| m.values().copied()))
            .collect();
        taken.extend(
            config
                .services
                .values()
                .flat_map(|s| s.ports.iter().filter(|p| !p.auto).map(|p| p.number)),
        );
        let mut entry = SavedProject {
            path: config.root.clone(),
            services: BTreeMap::new(),
        };
        for (name, svc) in config.services.iter_mut() {
            for port in svc.ports.iter_mut().filter(|p| p.auto) {
                let k = (name.clone(), port.key().to_owned());
                let remembered = mine.services.get(name).and_then(|m| m.get(port.key()));
                let number = match (in_use.get(&k), remembered) {
                    (Some(n), _) if !taken.contains(n) => *n,
                    (_, Some(n)) if !taken.contains(n) && is_free(*n) => *n,
                    _ => fresh(&taken).map_err(|source| PortError::NoFreePort {
                        service: name.clone(),
                        source,
                    })?,
                };
                taken.insert(number);
                port.number = number;
                entry
                    .services
                    .entry(name.clone())
                    .or_default()
                    .insert(port.key().to_owned(), number);
            }
        }
        let changed = entry != mine;
        saved.projects.insert(key.to_owned(), entry);
        if let (Some((path, _lock)), true) = (&locked, changed) {
            saved.version = VERSION;
            match serde_json::to_vec_pretty(&saved) {
                Ok(data) => {
                    if let Err(e) = write_atomic(path, &data) {
                        tracing::warn!("cannot remember ports in {}: {e}", path.display());
                    }
                }
                Err(e) => tracing::warn!("cannot encode ports: {e}"),
            }
        }
        config.apply_ports();
        Ok(())
    }
}

/// Opens and locks `DIR/ports.lock`, creating the directory privately.
fn open_locked(dir: &Path) -> Result<Flock<std::fs::File>, String> {
    private_dir(dir).map_err(|e| crate::error_chain(&e))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join("ports.lock"))
        .map_err(|e| format!("ports.lock: {e}"))?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, e)| format!("ports.lock: {e}"))
}

/// Reads the book; a file that is not one is set aside and reported, and
/// the answer is empty (ports are then chosen afresh).
fn load(path: &Path) -> Saved {
    let why = match read_state(path, STATE_LIMIT) {
        Ok(None) => return Saved::default(),
        Ok(Some(bytes)) => match serde_json::from_slice::<Saved>(&bytes) {
            Ok(s) if s.version == VERSION => return s,
            Ok(s) => format!("unknown version {}", s.version),
            Err(e) => format!("not a ports document: {e}"),
        },
        Err(e) => crate::error_chain(&e),
    };
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let mut to = path.as_os_str().to_owned();
    to.push(format!(".corrupt-{}", stamp.replace(':', "")));
    match std::fs::rename(path, &to) {
        Ok(()) => tracing::warn!(
            "the remembered ports in {} could not be read ({why}); kept as {} and chosen afresh",
            path.display(),
            PathBuf::from(to).display()
        ),
        Err(e) => tracing::warn!(
            "the remembered ports in {} could not be read ({why}) nor moved aside ({e})",
            path.display()
        ),
    }
    Saved::default()
}

/// Nothing listens on `port` on any IPv4 address (and binding it works).
fn is_free(port: u16) -> bool {
    TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// A port the kernel hands out for `127.0.0.1:0` that nobody remembers.
fn fresh(taken: &HashSet<u16>) -> Result<u16, Option<std::io::Error>> {
    let mut last = None;
    for _ in 0..200 {
        match TcpListener::bind(("127.0.0.1", 0)).and_then(|l| l.local_addr()) {
            Ok(a) if !taken.contains(&a.port()) && is_free(a.port()) => return Ok(a.port()),
            Ok(_) => {}
            Err(e) => last = Some(e),
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, name: &str, text: &str) -> Config {
        let file = dir.join("locald.toml");
        std::fs::create_dir_all(dir).expect("mkdir");
        Config::parse(&file, &format!("[project]\nname = \"{name}\"\n{text}")).expect("config")
    }

    const TWO: &str = "[services.api]\ncommand = \"x\"\nport = \"auto\"\n[services.web]\ncommand = \"x\"\nports = { http = \"auto\", admin = 9001 }\nenv = { API = \"http://127.0.0.1:${services.api.port}/\" }\nhealth = { tcp = \"auto\" }\n";

    fn env(c: &Config, svc: &str, k: &str) -> Option<String> {
        c.services[svc]
            .env
            .iter()
            .find(|(e, _)| e == k)
            .map(|(_, v)| v.clone())
    }

    #[test]
    fn ports_are_remembered_unique_and_applied() {
        let t = tempfile::tempdir().expect("tmp");
        let book = PortBook::new(Some(t.path().join("state")));
        let mut a = config(&t.path().join("a"), "a", TWO);
        book.assign("a-1", &mut a, &InUse::new()).expect("assign");
        let api = a.services["api"].ports[0].number;
        let http = a.services["web"].ports[0].number;
        assert_ne!(api, 0);
        assert_ne!(api, http);
        assert_eq!(env(&a, "api", "PORT"), Some(api.to_string()));
        assert_eq!(env(&a, "web", "PORT"), Some(http.to_string()));
        assert_eq!(env(&a, "web", "PORT_HTTP"), Some(http.to_string()));
        assert_eq!(env(&a, "web", "PORT_ADMIN").as_deref(), Some("9001"));
        assert_eq!(
            env(&a, "web", "API"),
            Some(format!("http://127.0.0.1:{api}/"))
        );
        assert_eq!(
            a.services["web"].health.as_ref().map(|h| h.kind.clone()),
            Some(crate::config::HealthKind::Tcp(http))
        );

        // Again: the same numbers.
        let mut again = config(&t.path().join("a"), "a", TWO);
        book.assign("a-1", &mut again, &InUse::new())
            .expect("assign");
        assert_eq!(again, a);

        // Another project: other numbers.
        let mut b = config(&t.path().join("b"), "b", TWO);
        book.assign("b-1", &mut b, &InUse::new()).expect("assign");
        let mine: HashSet<u16> = [api, http].into();
        for s in b.services.values() {
            for p in s.ports.iter().filter(|p| p.auto) {
                assert!(!mine.contains(&p.number));
            }
        }
    }

    #[test]
    fn a_remembered_port_someone_else_took_is_replaced() {
        let t = tempfile::tempdir().expect("tmp");
        let book = PortBook::new(Some(t.path().join("state")));
        let text = "[services.api]\ncommand = \"x\"\nport = \"auto\"\n";
        let mut a = config(&t.path().join("a"), "a", text);
        book.assign("a-1", &mut a, &InUse::new()).expect("assign");
        let first = a.services["api"].ports[0].number;
        let _squatter = TcpListener::bind(("127.0.0.1", first)).expect("bind");
        let mut again = config(&t.path().join("a"), "a", text);
        book.assign("a-1", &mut again, &InUse::new())
            .expect("assign");
        assert_ne!(again.services["api"].ports[0].number, first);
        // Unless the project itself holds it (a reload of a running service).
        let mut reload = config(&t.path().join("a"), "a", text);
        let in_use = [(("api".to_owned(), "port".to_owned()), first)].into();
        book.assign("a-1", &mut reload, &in_use).expect("assign");
        assert_eq!(reload.services["api"].ports[0].number, first);
    }

    #[test]
    fn a_planted_symlink_or_fifo_is_never_followed() {
        let t = tempfile::tempdir().expect("tmp");
        let state = t.path().join("state");
        private_dir(&state).expect("dir");
        let target = t.path().join("elsewhere");
        std::fs::write(&target, b"keep").expect("write");
        std::os::unix::fs::symlink(&target, state.join("ports.json")).expect("symlink");
        let book = PortBook::new(Some(state.clone()));
        let text = "[services.api]\ncommand = \"x\"\nport = \"auto\"\n";
        let mut a = config(&t.path().join("a"), "a", text);
        book.assign("a-1", &mut a, &InUse::new()).expect("assign");
        assert_eq!(std::fs::read(&target).expect("read"), b"keep");
        assert!(!state.join("ports.json").is_symlink());
        // A FIFO in its place: refused without blocking.
        std::fs::remove_file(state.join("ports.json")).expect("rm");
        nix::unistd::mkfifo(
            &state.join("ports.json"),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("mkfifo");
        let mut b = config(&t.path().join("a"), "a", text);
        book.assign("a-1", &mut b, &InUse::new()).expect("assign");
        assert_ne!(b.services["api"].ports[0].number, 0);
    }

    #[test]
    fn concurrent_projects_never_share_a_port() {
        let t = tempfile::tempdir().expect("tmp");
        let state = t.path().join("state");
        let threads: Vec<_> = (0..8)
            .map(|i| {
                let root = t.path().join(format!("p{i}"));
                let book = PortBook::new(Some(state.clone()));
                std::thread::spawn(move || {
                    let mut c = config(&root, &format!("p{i}"), TWO);
                    book.assign(&format!("p{i}-1"), &mut c, &InUse::new())
                        .expect("assign");
                    c.services
                        .values()
                        .flat_map(|s| s.ports.iter().filter(|p| p.auto).map(|p| p.number))
                        .collect::<Vec<u16>>()
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in threads {
            all.extend(t.join().expect("join"));
        }
        let unique: HashSet<u16> = all.iter().copied().collect();
        assert_eq!(unique.len(), all.len(), "{all:?}");
        let saved: Saved =
            serde_json::from_slice(&std::fs::read(state.join("ports.json")).expect("read"))
                .expect("json");
        assert_eq!(saved.projects.len(), 8);
    }

    #[test]
    fn a_corrupt_book_is_set_aside() {
        let t = tempfile::tempdir().expect("tmp");
        let state = t.path().join("state");
        private_dir(&state).expect("dir");
        std::fs::write(state.join("ports.json"), b"\x00garbage").expect("write");
        let book = PortBook::new(Some(state.clone()));
        let mut a = config(
            &t.path().join("a"),
            "a",
            "[services.api]\ncommand = \"x\"\nport = \"auto\"\n",
        );
        book.assign("a-1", &mut a, &InUse::new()).expect("assign");
        assert_ne!(a.services["api"].ports[0].number, 0);
        let names: Vec<String> = std::fs::read_dir(&state)
            .expect("ls")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .collect();
        assert!(names.iter().any(|n| n.starts_with("ports.json.corrupt-")));
    }
}
