//! The connection to the daemon, finding the project to act on, and turning
//! failures into messages and exit codes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use zbus::fdo::DBusProxy;
use zbus::names::{BusName, OwnedUniqueName, UniqueName};
use zbus::proxy::CacheProperties;
use zbus::Connection;

use locald_api::{Error, Manager1Proxy, BUS_NAME};
use locald_core::text::sanitize;

/// The hint printed whenever the daemon cannot be reached.
pub const START_HINT: &str =
    "cannot reach the daemon: start it with `systemctl --user start locald`";

/// Why a command failed, and so which exit code it gets.
#[derive(Debug)]
pub enum CtlError {
    /// No bus, or nobody owns `dev.locald.Locald1` and activation did not start it.
    Unreachable(String),
    /// The daemon answered with an error.
    Call(Error),
    /// A usage or configuration problem found here (exit 2).
    Usage(String),
    /// Any other failure (exit 1).
    Failed(String),
}

impl CtlError {
    /// Classifies an error from a call.
    pub fn call(e: Error) -> Self {
        if e.is_unreachable() {
            CtlError::Unreachable(e.message())
        } else {
            CtlError::Call(e)
        }
    }

    /// The message alone, for a line that is not the command's end.
    pub fn text(&self) -> String {
        match self {
            CtlError::Unreachable(t) | CtlError::Usage(t) | CtlError::Failed(t) => t.clone(),
            CtlError::Call(e) => e.message(),
        }
    }

    /// Classifies a zbus error (property reads, signal streams).
    pub fn zbus(e: zbus::Error) -> Self {
        Self::call(Error::from(e))
    }

    /// Prints the error and returns the exit code.
    pub fn report(self) -> ExitCode {
        match self {
            CtlError::Unreachable(detail) => {
                eprintln!("locald-ctl: {START_HINT}");
                if !detail.is_empty() {
                    eprintln!("  ({})", sanitize(&detail));
                }
                ExitCode::from(1)
            }
            CtlError::Call(e) => {
                let name = e.short_name();
                if let Some(report) = e.config_report() {
                    // The daemon's report of a broken locald.toml, as
                    // `locald check` prints it (it ends without a newline).
                    // It quotes the file's line: each line escaped.
                    let lines: Vec<_> = report.split('\n').map(sanitize).collect();
                    eprintln!("{}", lines.join("\n"));
                    return ExitCode::from(exit_code_of(&name));
                }
                eprintln!("locald-ctl: {} [{name}]", sanitize(&e.message()));
                ExitCode::from(exit_code_of(&name))
            }
            CtlError::Usage(text) => {
                eprintln!("locald-ctl: {}", sanitize(&text));
                ExitCode::from(2)
            }
            CtlError::Failed(text) => {
                eprintln!("locald-ctl: {}", sanitize(&text));
                ExitCode::from(1)
            }
        }
    }
}

/// 2 for errors the user fixes in their config or command line, else 1.
pub fn exit_code_of(error_short_name: &str) -> u8 {
    match error_short_name {
        "ConfigInvalid" | "ConfigNotFound" | "NotADirectory" | "InvalidArgument" => 2,
        _ => 1,
    }
}

/// Which projects a command looks at.
pub enum Selection {
    /// The one of this name.
    Name(String),
    /// The one whose directory this is.
    Dir(PathBuf),
    /// Every project.
    All,
}

/// A connection to the daemon and the project override from `--project`.
pub struct Client {
    /// The bus connection.
    pub conn: Connection,
    /// The daemon: the unique name that owned `dev.locald.Locald1` when it
    /// was checked to be the caller's (see [`trusted_owner`]). Every call
    /// goes here, not to the well-known name, so no other owner the name
    /// may get meanwhile ever receives one.
    pub daemon: OwnedUniqueName,
    /// `dev.locald.Manager1` of that daemon.
    pub manager: Manager1Proxy<'static>,
    project: Option<String>,
}

/// The owner of `dev.locald.Locald1`, if it is the caller or root: asked of
/// the bus (`GetNameOwner`, then `GetConnectionUnixUser`, which the bus
/// daemon answers from the owner's credentials). On a bus shared between
/// users, another user can take the name while the caller's daemon is not
/// running and would receive the caller's `Up('/home/…')` and answer with
/// whatever it likes; such an owner is refused. With `activate`, a name
/// nobody owns is activated first (as any call would); without, `Ok(None)`.
pub async fn trusted_owner(
    conn: &Connection,
    activate: bool,
) -> Result<Option<OwnedUniqueName>, CtlError> {
    let dbus = DBusProxy::new(conn).await.map_err(CtlError::zbus)?;
    let name = BusName::try_from(BUS_NAME).map_err(|e| CtlError::zbus(e.into()))?;
    let owner = match dbus.get_name_owner(name.clone()).await {
        Ok(o) => o,
        Err(zbus::fdo::Error::NameHasNoOwner(_)) if activate => {
            dbus.start_service_by_name(
                BUS_NAME
                    .try_into()
                    .map_err(|e: zbus::names::Error| CtlError::zbus(e.into()))?,
                0,
            )
            .await
            .map_err(|e| CtlError::Unreachable(e.to_string()))?;
            dbus.get_name_owner(name)
                .await
                .map_err(|e| CtlError::Unreachable(e.to_string()))?
        }
        Err(zbus::fdo::Error::NameHasNoOwner(_)) => return Ok(None),
        Err(e) => return Err(CtlError::Unreachable(e.to_string())),
    };
    check_owner(&dbus, owner.as_ref()).await?;
    Ok(Some(owner))
}

/// Refuses `owner` (a new owner of `dev.locald.Locald1`, seen by a client
/// that follows the daemon across restarts) unless its uid is the caller's
/// or root's.
pub async fn check_owner(dbus: &DBusProxy<'_>, owner: UniqueName<'_>) -> Result<(), CtlError> {
    let uid = dbus
        .get_connection_unix_user(BusName::from(owner))
        .await
        .map_err(|e| CtlError::Unreachable(e.to_string()))?;
    let me = rustix::process::getuid().as_raw();
    if uid != me && uid != 0 {
        return Err(CtlError::Failed(format!(
            "{BUS_NAME} on this bus is owned by uid {uid}, not by you (uid {me}): that is not your locald, and nothing was sent to it; stop it, or use a bus of your own (another user can take the name on a shared bus while your daemon is not running)"
        )));
    }
    Ok(())
}

impl Client {
    /// Connects to the bus at `address`, else the session bus.
    pub async fn connect(address: Option<&str>, project: Option<String>) -> Result<Self, CtlError> {
        let builder = match address {
            Some(a) => zbus::connection::Builder::address(a),
            None => zbus::connection::Builder::session(),
        };
        let conn = match builder {
            Ok(b) => b.build().await,
            Err(e) => Err(e),
        }
        .map_err(|e| CtlError::Unreachable(e.to_string()))?;
        // The name is activated (through systemd, where it is installed)
        // when nobody owns it, and its owner checked before anything is
        // sent to it.
        let daemon = trusted_owner(&conn, true)
            .await?
            .ok_or_else(|| CtlError::Unreachable(format!("nobody owns {BUS_NAME}")))?;
        // No property cache: it would cost a GetAll and a match rule on
        // every start, and most commands make one call.
        let manager = Manager1Proxy::builder(&conn)
            .destination(daemon.clone())
            .map_err(CtlError::zbus)?
            .cache_properties(CacheProperties::No)
            .build()
            .await
            .map_err(CtlError::zbus)?;
        Ok(Self {
            conn,
            daemon,
            manager,
            project,
        })
    }

    /// The project to act on: `--project`, else the one that is up from the
    /// directory containing `dir` (default: the current directory).
    pub async fn resolve(&self, dir: Option<&Path>) -> Result<String, CtlError> {
        if let Some(p) = &self.project {
            return Ok(p.clone());
        }
        let root = project_root(dir)?;
        let projects = self.manager.list_projects().await.map_err(CtlError::call)?;
        projects
            .into_iter()
            .find(|p| Path::new(&p.path) == root)
            .map(|p| p.name)
            .ok_or_else(|| {
                CtlError::Failed(format!(
                    "the project in {} is not up; run `locald-ctl up` there first",
                    root.display()
                ))
            })
    }

    /// Like [`resolve`](Self::resolve), but `None` instead of an error when
    /// the current directory is in no project.
    pub async fn resolve_optional(&self) -> Result<Option<String>, CtlError> {
        if self.project.is_some() {
            return self.resolve(None).await.map(Some);
        }
        match project_root(None) {
            Ok(_) => self.resolve(None).await.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// What `status` shows, decided without a call: `--project`, else the
    /// directory of the current project, else everything.
    pub fn selection(&self) -> Selection {
        match (&self.project, project_root(None)) {
            (Some(name), _) => Selection::Name(name.clone()),
            (None, Ok(root)) => Selection::Dir(root),
            (None, Err(_)) => Selection::All,
        }
    }

    /// `up [DIR] [--watch]`; returns the project's name.
    pub async fn up(&self, dir: Option<&Path>, watch: bool) -> Result<String, CtlError> {
        let dir = absolute(dir)?;
        let text = dir
            .to_str()
            .ok_or_else(|| CtlError::Usage(format!("{} is not valid UTF-8", dir.display())))?;
        match self.manager.up(text).await {
            Ok(path) => {
                let name = locald_api::Project1Proxy::builder(&self.conn)
                    .destination(self.daemon.clone())
                    .and_then(|b| b.path(path))
                    .map_err(CtlError::zbus)?
                    .cache_properties(CacheProperties::No)
                    .build()
                    .await
                    .map_err(CtlError::zbus)?
                    .name()
                    .await
                    .map_err(CtlError::zbus)?;
                if watch {
                    self.manager
                        .set_watch(&name, true)
                        .await
                        .map_err(CtlError::call)?;
                    println!("{name} is up and watched; `locald-ctl status` shows its services");
                } else {
                    println!("{name} is up; `locald-ctl status` shows its services");
                }
                Ok(name)
            }
            // A broken locald.toml comes with the daemon's full report,
            // printed by `CtlError::report`.
            Err(e) => Err(CtlError::call(e)),
        }
    }

    /// `start|stop|restart SERVICE`.
    pub async fn service_call(&self, verb: &str, service: &str) -> Result<ExitCode, CtlError> {
        let project = self.resolve(None).await?;
        let result = match verb {
            "start" => self.manager.start_service(&project, service).await,
            "stop" => self.manager.stop_service(&project, service).await,
            _ => self.manager.restart_service(&project, service).await,
        };
        result.map_err(CtlError::call)?;
        let done = match verb {
            "start" => "started",
            "stop" => "stopped",
            _ => "restarted",
        };
        println!("{project}/{service} {done}");
        Ok(ExitCode::SUCCESS)
    }

    /// `reload`.
    pub async fn reload(&self) -> Result<ExitCode, CtlError> {
        let project = self.resolve(None).await?;
        let r = self
            .manager
            .reload(&project)
            .await
            .map_err(CtlError::call)?;
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(", ")
            }
        };
        println!("{project} reloaded");
        println!("  added:     {}", list(&r.added));
        println!("  removed:   {}", list(&r.removed));
        println!("  changed:   {}", list(&r.changed));
        println!("  unchanged: {}", list(&r.unchanged));
        Ok(ExitCode::SUCCESS)
    }
}

fn absolute(dir: Option<&Path>) -> Result<PathBuf, CtlError> {
    let dir = dir.map_or_else(|| PathBuf::from("."), ToOwned::to_owned);
    std::path::absolute(&dir).map_err(|e| CtlError::Usage(format!("{}: {e}", dir.display())))
}

/// The directory of the `locald.toml` that governs `dir`, canonical.
fn project_root(dir: Option<&Path>) -> Result<PathBuf, CtlError> {
    let given = dir;
    let dir = absolute(dir)?;
    let file = locald_core::project::find_project_file(&dir).map_err(|e| {
        let mut text = locald_core::error_chain(&e);
        // `down hello` where `hello` is a project's name, not a directory.
        if let Some(name) = given.filter(|g| !dir.exists() && g.components().count() == 1) {
            let name = name.display();
            text.push_str(&format!(
                "; to name a project rather than a directory: `locald-ctl -p {name} …`"
            ));
        }
        CtlError::Usage(text)
    })?;
    Ok(file.parent().map_or(file.clone(), ToOwned::to_owned))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_exit_2() {
        assert_eq!(exit_code_of("ConfigInvalid"), 2);
        assert_eq!(exit_code_of("NotADirectory"), 2);
        assert_eq!(exit_code_of("NoSuchProject"), 1);
        assert_eq!(exit_code_of("org.freedesktop.DBus.Error.AccessDenied"), 1);
    }
}
