//! Who may call: only connections of the daemon's own uid.
//!
//! A session bus already admits only its user, but a bus configured more
//! loosely (or `--bus-address` pointing elsewhere) must not let another user
//! start processes as ours. The bus daemon is asked for the sender's uid
//! (`GetConnectionUnixUser`), which it learned from the socket's credentials,
//! so the caller cannot lie about it. Unique names are never reused on a bus,
//! so the answer is cached per name until the name leaves the bus. The check
//! runs in one place, the [`Guarded`](super::guard::Guarded) wrapper around
//! every object, for methods and property reads alike; a refusal is
//! `org.freedesktop.DBus.Error.AccessDenied`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use zbus::fdo::{self, DBusProxy};
use zbus::message::Header;
use zbus::names::BusName;
use zbus::Connection;

use super::{lock, Shared};

/// Checks callers' uids against the daemon's.
pub(crate) struct Access {
    uid: u32,
    dbus: DBusProxy<'static>,
    known: Mutex<HashMap<String, u32>>,
}

impl Access {
    pub(crate) async fn new(conn: &Connection) -> zbus::Result<Self> {
        Ok(Self {
            uid: nix::unistd::getuid().as_raw(),
            dbus: DBusProxy::new(conn).await?,
            known: Mutex::new(HashMap::new()),
        })
    }

    /// Refuses the call unless its sender runs as the daemon's uid.
    pub(crate) async fn check(&self, header: &Header<'_>) -> fdo::Result<()> {
        let Some(sender) = header.sender() else {
            return Err(fdo::Error::AccessDenied("the call has no sender".into()));
        };
        let cached = lock(&self.known).get(sender.as_str()).copied();
        let uid = match cached {
            Some(uid) => uid,
            None => {
                let uid = self
                    .dbus
                    .get_connection_unix_user(BusName::from(sender.to_owned()))
                    .await
                    .map_err(|e| {
                        fdo::Error::AccessDenied(format!("cannot learn the caller's uid: {e}"))
                    })?;
                lock(&self.known).insert(sender.to_string(), uid);
                uid
            }
        };
        if uid == self.uid {
            Ok(())
        } else {
            Err(fdo::Error::AccessDenied(format!(
                "caller runs as uid {uid}; this locald serves uid {} only",
                self.uid
            )))
        }
    }

    fn forget(&self, name: &str) {
        lock(&self.known).remove(name);
    }
}

/// Forgets what is known about a connection once it leaves the bus: its
/// cached uid and its log subscriptions. Returns when the daemon's own
/// connection is gone (the stream ends).
pub(crate) async fn forget_departed(shared: Arc<Shared>) {
    let mut changes = match shared.access.dbus.receive_name_owner_changed().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(
                "cannot follow NameOwnerChanged; subscriptions of departed clients stay: {e}"
            );
            return;
        }
    };
    while let Some(signal) = changes.next().await {
        let Ok(args) = signal.args() else { continue };
        if args.new_owner().is_none() {
            let name = args.name().as_str();
            if name.starts_with(':') {
                shared.access.forget(name);
                shared.logs.forget_sender(name);
            }
        }
    }
}
