//! The `*.localhost` reverse proxy: one loopback port for every service
//! that has a port.
//!
//! `http://SERVICE.PROJECT.localhost:PROXY/` goes to the service's main
//! port (`port`, else the first of `ports`) on 127.0.0.1, and
//! `http://PROJECT.localhost:PROXY/` to the project's service marked
//! `default = true` (or its only service with a port). Names match without
//! regard to case, as host names do. Routes come from the engine's
//! snapshots at each request, so a service that comes, goes or changes port
//! needs nothing more. A service that is not up yet (pending, building,
//! starting, backing off) or does not accept the connection yet gets a
//! small "starting…" page that reloads itself every second; an unknown host
//! gets 404 with the projects that are up. `Connection: Upgrade` requests
//! (WebSocket) are passed through: once the service answers 101, bytes are
//! copied both ways.
//!
//! The daemon serves it, and so does `locald up` when the port is free
//! (the daemon's takes precedence). The port is 7780 by default,
//! `LOCALD_PROXY_PORT` changes it and `0` turns the proxy off; it binds
//! 127.0.0.1 only. `docs/urls.md` shows how to get port 80 without root.
//!
//! Loopback is shared by every local user, so the proxy trusts no port by
//! its number ([`crate::listeners`]):
//! - a request goes only to a listener that is the service's own (its uid,
//!   one of its processes holds the socket); a port another user squatted
//!   while the service restarted, or a `127.0.0.1` left free by a server on
//!   `::1` only, gets the "starting…" page with who holds it — never their
//!   content under the user's origin (a server on `::1` only is reached
//!   there);
//! - connections are capped in total and per connecting user (found from
//!   the kernel's socket table), headers must arrive within 10 s and an
//!   idle keep-alive connection is closed after as long, and the total
//!   stays far below the open-file limit, so a flood of idle connections
//!   cannot take the descriptors the engine needs to start services;
//! - every page is built from escaped parts (a Host header is text).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::engine::Engine;
use crate::event::{ProjectSnapshot, ServiceSnapshot, ServiceState};
use crate::listeners::{self, Attribution, Holder, Owner};
use crate::lock;

/// Longest a client may take to send a request's headers, and longest a
/// keep-alive connection may sit idle between requests.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest the proxy waits to connect to a service on loopback.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the proxy waits for a service's response headers (a dev
/// server's first compile can be slow).
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(300);
/// Connections at most, whatever the open-file limit allows.
const MAX_CONNECTIONS: usize = 1024;
/// Descriptors never used by the proxy: the engine's, to start services.
const RESERVED_FDS: usize = 512;

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Its port is taken.
    #[error("cannot listen on 127.0.0.1:{port}: {}", match holder {
        Some(h) => format!("the port is held by {}", h.describe()),
        None => source.to_string(),
    })]
    Bind {
        /// The port.
        port: u16,
        /// Who holds it, when that can be known and is not us.
        holder: Option<Holder>,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl ProxyError {
    /// Another user holds the port: whoever opens a `*.localhost` URL on
    /// it reaches *their* server, which the user must be told loudly.
    pub fn held_by_another_user(&self) -> bool {
        matches!(
            self,
            ProxyError::Bind {
                holder: Some(Holder::OtherUser { .. }),
                ..
            }
        )
    }
}

/// The proxy's port when `LOCALD_PROXY_PORT` does not say otherwise.
pub const DEFAULT_PORT: u16 = 7780;

type Body = BoxBody<Bytes, hyper::Error>;

/// The port to serve on: `LOCALD_PROXY_PORT`, else [`DEFAULT_PORT`];
/// `None` when turned off (`0`, `off`).
pub fn configured_port() -> Option<u16> {
    match std::env::var("LOCALD_PROXY_PORT") {
        Err(_) => Some(DEFAULT_PORT),
        Ok(v) if v.trim() == "0" || v.trim().eq_ignore_ascii_case("off") => None,
        Ok(v) => match v.trim().parse::<u16>() {
            Ok(p) => Some(p),
            Err(_) => {
                tracing::warn!(
                    "LOCALD_PROXY_PORT=`{v}` is not a port; using {DEFAULT_PORT} (0 turns the proxy off)"
                );
                Some(DEFAULT_PORT)
            }
        },
    }
}

pub use locald_core::urls::url;

/// Binds the proxy on 127.0.0.1:`port` and serves it for `engine` until
/// the returned task is aborted. Errs when the port cannot be bound,
/// naming who holds it when another user does.
pub async fn serve(engine: Engine, port: u16) -> Result<tokio::task::JoinHandle<()>, ProxyError> {
    let listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(l) => l,
        Err(source) => {
            let owner = Owner::current();
            let holder = listeners::listeners(port).ok().and_then(|t| {
                let to = SocketAddr::from(([127, 0, 0, 1], port));
                match listeners::check_owner(&t, to, &owner) {
                    Err(uid) => Some(Holder::OtherUser { uid }),
                    Ok(_) => None,
                }
            });
            return Err(ProxyError::Bind {
                port,
                holder,
                source,
            });
        }
    };
    engine.set_url_port(port);
    let proxy = Arc::new(Proxy {
        engine,
        port,
        owner: Owner::current(),
        verified: Mutex::new(HashMap::new()),
        said: Mutex::new(HashMap::new()),
        limits: Limits::new(max_connections(), listeners::Accounts::read()),
    });
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                // EMFILE and the like: do not spin.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let local = stream
                .local_addr()
                .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], port)));
            // Who connects: the owner of the other end of this loopback
            // connection, from the kernel's socket table.
            let uid = listeners::connection_owner(peer, local);
            let Some(slot) = proxy.limits.admit(uid) else {
                drop(stream);
                continue;
            };
            let proxy = proxy.clone();
            tokio::spawn(async move {
                let slot = Arc::new(slot);
                let held = slot.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let proxy = proxy.clone();
                    let slot = held.clone();
                    async move { Ok::<_, Infallible>(proxy.handle(req, slot).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(64 * 1024)
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
                drop(slot);
            });
        }
    }))
}

/// How many connections the proxy takes at once: [`MAX_CONNECTIONS`], or
/// fewer when the open-file limit is low (each proxied connection holds two
/// descriptors, and [`RESERVED_FDS`] stay the engine's).
fn max_connections() -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| {
            usize::try_from(soft).unwrap_or(usize::MAX)
        });
    (soft.saturating_sub(RESERVED_FDS) / 2).clamp(16, MAX_CONNECTIONS)
}

/// The proxy's state shared by its connections.
struct Proxy {
    engine: Engine,
    port: u16,
    owner: Owner,
    /// The address and listener inode already checked for a service, by
    /// (main pid, port): the descriptor scan runs once per listener.
    verified: Mutex<HashMap<(u32, u16), (SocketAddr, u64)>>,
    /// The last refusal logged for (main pid, port): a starting page that
    /// reloads every second logs it once.
    said: Mutex<HashMap<(u32, u16), Holder>>,
    limits: Limits,
}

/// Connection caps. Half of the places are the user's own (the uid this
/// proxy runs as); the other half is shared by everyone else, each account
/// at most an eighth of all places. An account is a uid together with its
/// subordinate uids (`/etc/subuid`): a user cannot multiply their share by
/// connecting from processes of their subordinate ids.
struct Limits {
    own: Arc<Semaphore>,
    shared: Arc<Semaphore>,
    per_account: Arc<Mutex<HashMap<Option<u32>, usize>>>,
    each: usize,
    accounts: listeners::Accounts,
}

/// One admitted connection; gives its places back when dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    account: Option<u32>,
    per_account: Arc<Mutex<HashMap<Option<u32>, usize>>>,
}

impl Limits {
    fn new(total: usize, accounts: listeners::Accounts) -> Limits {
        let own = total / 2;
        Limits {
            own: Arc::new(Semaphore::new(own)),
            shared: Arc::new(Semaphore::new(total - own)),
            per_account: Arc::new(Mutex::new(HashMap::new())),
            each: (total / 8).max(2),
            accounts,
        }
    }

    /// A place for a connection from `uid` (`None`: unknown), or `None`
    /// when its account or its pool is full (the connection is then
    /// closed at once).
    fn admit(&self, uid: Option<u32>) -> Option<Slot> {
        let account = uid.map(|u| self.accounts.account_of(u));
        let pool = if account == Some(self.accounts.me()) {
            &self.own
        } else {
            &self.shared
        };
        let permit = pool.clone().try_acquire_owned().ok()?;
        let mut m = lock(&self.per_account);
        let n = m.entry(account).or_insert(0);
        // The own pool is the user's alone: no per-account cap in it.
        if account != Some(self.accounts.me()) && *n >= self.each {
            return None;
        }
        *n += 1;
        Some(Slot {
            _permit: permit,
            account,
            per_account: self.per_account.clone(),
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = lock(&self.per_account);
        if let Some(n) = m.get_mut(&self.account) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.account);
            }
        }
    }
}

/// Where a host name leads.
enum Route<'a> {
    /// A service of a project.
    Service(&'a ProjectSnapshot, &'a ServiceSnapshot),
    /// Nothing: why, for the 404 page.
    Unknown(String),
}

/// `SERVICE.PROJECT.localhost` or `PROJECT.localhost`, port and trailing
/// dot ignored.
fn route<'a>(projects: &'a [ProjectSnapshot], host: &str) -> Route<'a> {
    let host = host.trim();
    let host = match host.rsplit_once(':') {
        Some((h, p)) if p.chars().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let Some(rest) = host.strip_suffix(".localhost") else {
        return Route::Unknown(format!("`{host}` is not a *.localhost name"));
    };
    let labels: Vec<&str> = rest.split('.').collect();
    let (service, project) = match labels.as_slice() {
        [p] => (None, *p),
        [s, p] => (Some(*s), *p),
        _ => return Route::Unknown(format!("`{host}` is not SERVICE.PROJECT.localhost")),
    };
    let Some(proj) = projects
        .iter()
        .find(|p| p.name.eq_ignore_ascii_case(project))
    else {
        return Route::Unknown(format!("no project `{project}` is up"));
    };
    let with_port = || {
        proj.services
            .iter()
            .filter(|s| s.ports.contains_key("PORT"))
    };
    let svc = match service {
        Some(s) => proj
            .services
            .iter()
            .find(|x| x.name.eq_ignore_ascii_case(s)),
        None => proj.services.iter().find(|s| s.url_default).or_else(|| {
            let mut it = with_port();
            match (it.next(), it.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }),
    };
    match svc {
        Some(s) => Route::Service(proj, s),
        None => Route::Unknown(match service {
            Some(s) => format!("project `{}` has no service `{s}`", proj.name),
            None => format!(
                "project `{}` has no service marked `default = true`; use SERVICE.{}.localhost",
                proj.name,
                proj.name.to_ascii_lowercase()
            ),
        }),
    }
}

impl Proxy {
    async fn handle(&self, mut req: Request<Incoming>, slot: Arc<Slot>) -> Response<Body> {
        let host = req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let projects = self.engine.projects();
        let (project, service) = match route(&projects, &host) {
            Route::Unknown(why) => return not_found(&why, &projects, self.port),
            Route::Service(p, s) => (p, s),
        };
        let Some(&port) = service.ports.get("PORT") else {
            return page(
                StatusCode::NOT_FOUND,
                &format!("{}/{} has no port", project.name, service.name),
                &escape("Give it `port = \"auto\"` in locald.toml to reach it here."),
                false,
            );
        };
        if !matches!(service.state, ServiceState::Running | ServiceState::Healthy) {
            return starting(project, service, None);
        }
        let to = match self.target(service, port).await {
            Ok(to) => to,
            Err(holder) => return starting(project, service, Some((port, holder))),
        };
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(to)).await;
        let Ok(Ok(tcp)) = connected else {
            return starting(project, service, None);
        };
        let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
        else {
            return starting(project, service, None);
        };
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        let wants_upgrade = req.headers().contains_key(hyper::header::UPGRADE);
        let client_side = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
        let sent = tokio::time::timeout(UPSTREAM_TIMEOUT, sender.send_request(req)).await;
        let mut resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                return page(
                    StatusCode::BAD_GATEWAY,
                    &format!("{}/{} did not answer", project.name, service.name),
                    &escape(&e.to_string()),
                    false,
                )
            }
            Err(_) => {
                return page(
                    StatusCode::GATEWAY_TIMEOUT,
                    &format!("{}/{} did not answer", project.name, service.name),
                    &escape(&format!(
                        "no response within {}",
                        humantime::format_duration(UPSTREAM_TIMEOUT)
                    )),
                    false,
                )
            }
        };
        if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
            if let Some(client_side) = client_side {
                let service_side = hyper::upgrade::on(&mut resp);
                tokio::spawn(async move {
                    // The connection's place is held while the upgraded
                    // stream lives.
                    let _slot = slot;
                    if let (Ok(a), Ok(b)) = (client_side.await, service_side.await) {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(a),
                            &mut TokioIo::new(b),
                        )
                        .await;
                    }
                });
            }
        }
        resp.map(BodyExt::boxed)
    }

    /// Where the service listens on `port`, if the listener there is its
    /// own; who holds the port otherwise.
    async fn target(&self, service: &ServiceSnapshot, port: u16) -> Result<SocketAddr, Holder> {
        let Some(main) = service.main_pid else {
            return Err(Holder::Nobody);
        };
        let key = (main, port);
        let known = lock(&self.verified).get(&key).copied();
        let owner = self.owner.clone();
        let checked = tokio::task::spawn_blocking(move || {
            let table = listeners::listeners(port).unwrap_or_default();
            // Where the listener already seen is still the one a connection
            // reaches (same inode, still trusted), nothing is scanned again.
            if let Some((to, inode)) = known {
                if listeners::receiver(&table, to)
                    .is_some_and(|l| l.inode == inode && owner.trusts(l.uid))
                {
                    return Ok((to, inode, None));
                }
            }
            let pids = listeners::service_processes(main);
            let (to, who) = listeners::check_service(&table, port, &owner, &pids, false)?;
            let inode = listeners::receiver(&table, to).map_or(0, |l| l.inode);
            Ok((to, inode, Some(who)))
        })
        .await
        .unwrap_or(Err(Holder::Nobody));
        match checked {
            Ok((to, inode, who)) => {
                lock(&self.verified).insert(key, (to, inode));
                if let Some(Attribution::Other { pid }) = who {
                    // The user's own (or root's) listener, but not the
                    // service's: forwarded — the uid is the boundary — and
                    // said once per listener.
                    tracing::warn!(
                        "{}: port {port} is served by {}, not by one of its processes; forwarding to it",
                        service.name,
                        Holder::OtherProcess { pid }.describe()
                    );
                }
                Ok(to)
            }
            Err(holder) => {
                lock(&self.verified).remove(&key);
                let mut said = lock(&self.said);
                if !matches!(holder, Holder::Nobody) && said.get(&key) != Some(&holder) {
                    tracing::warn!(
                        "not forwarding to port {port} for {}: it is held by {}",
                        service.name,
                        holder.describe()
                    );
                    said.insert(key, holder.clone());
                }
                Err(holder)
            }
        }
    }
}

/// The "starting…" page; `held` says that the port is held by someone
/// other than the service.
fn starting(
    project: &ProjectSnapshot,
    service: &ServiceSnapshot,
    held: Option<(u16, Holder)>,
) -> Response<Body> {
    let state = service.state.as_str();
    let why = match held {
        Some((port, h)) => format!(
            "{state}: port {port} is held by {}, not by {}; locald does not forward to it",
            h.describe(),
            service.name
        ),
        None if service.reason.is_empty() => state.to_owned(),
        None => format!("{state}: {}", service.reason),
    };
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("{}/{} is starting…", project.name, service.name),
        &escape(&why),
        true,
    )
}

fn not_found(why: &str, projects: &[ProjectSnapshot], proxy: u16) -> Response<Body> {
    let mut list = String::new();
    for p in projects {
        for s in p.services.iter().filter(|s| s.ports.contains_key("PORT")) {
            let u = escape(&url(&p.name, &s.name, proxy));
            list.push_str(&format!("<li><a href=\"{u}\">{u}</a></li>"));
        }
    }
    let why = escape(why);
    let body = if list.is_empty() {
        format!("{why}. No service with a port is up.")
    } else {
        format!("{why}. Services up:</p><ul>{list}</ul><p>")
    };
    page(StatusCode::NOT_FOUND, "Not found", &body, false)
}

/// Text as HTML: every character that means something in markup escaped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A small HTML page around `body`, which the caller built from escaped
/// parts; `reload` makes it ask again every second.
fn page(status: StatusCode, title: &str, body: &str, reload: bool) -> Response<Body> {
    let refresh = if reload {
        "<meta http-equiv=\"refresh\" content=\"1\">"
    } else {
        ""
    };
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">{refresh}<title>{t}</title></head><body><h1>{t}</h1><p>{body}</p><p><small>locald</small></p></body></html>\n",
        t = escape(title)
    );
    let mut r = Response::new(Full::new(Bytes::from(html)).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    r.headers_mut().insert(
        hyper::header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    if reload {
        r.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(name: &str, port: Option<u16>, default: bool) -> ServiceSnapshot {
        let mut s = ServiceSnapshot::new(name);
        if let Some(p) = port {
            s.ports.insert("PORT".into(), p);
        }
        s.url_default = default;
        s
    }

    fn projects() -> Vec<ProjectSnapshot> {
        vec![ProjectSnapshot {
            name: "Shop".into(),
            path: "/p".into(),
            services: vec![
                snap("api", Some(1), false),
                snap("web", Some(2), true),
                snap("db", None, false),
            ],
        }]
    }

    fn name(r: Route<'_>) -> String {
        match r {
            Route::Service(_, s) => s.name.clone(),
            Route::Unknown(why) => format!("unknown: {why}"),
        }
    }

    #[test]
    fn hosts_route_to_services() {
        let p = projects();
        assert_eq!(name(route(&p, "api.shop.localhost:7780")), "api");
        assert_eq!(name(route(&p, "API.Shop.localhost.")), "api");
        assert_eq!(name(route(&p, "shop.localhost")), "web");
        assert!(name(route(&p, "x.shop.localhost")).contains("no service `x`"));
        assert!(name(route(&p, "other.localhost")).contains("no project"));
        assert!(name(route(&p, "example.com")).contains("not a *.localhost"));
        assert!(name(route(&p, "a.b.c.localhost")).starts_with("unknown"));
    }

    async fn body_text(r: Response<Body>) -> String {
        let b = r.into_body().collect().await.expect("body").to_bytes();
        String::from_utf8_lossy(&b).into_owned()
    }

    #[tokio::test]
    async fn the_404_page_never_reflects_markup_from_the_host_header() {
        let p = projects();
        let host = "x<script>alert(1)</script>.shop.localhost";
        let Route::Unknown(why) = route(&p, host) else {
            panic!("routed");
        };
        let html = body_text(not_found(&why, &p, 7780)).await;
        assert!(!html.contains("<script>"), "{html}");
        assert!(html.contains("&lt;script&gt;"), "{html}");
        assert!(
            html.contains("<ul><li><a href=\"http://api.shop.localhost:7780/\">"),
            "{html}"
        );
        // The markup-free case too.
        let html = body_text(not_found(&why, &[], 7780)).await;
        assert!(!html.contains("<script>"), "{html}");
    }

    #[test]
    fn connections_are_capped_per_account_with_a_pool_for_the_user() {
        // uid 1000 runs the proxy; 1001 has the subordinate ids 100000..165536.
        let accounts = listeners::Accounts::from_ranges(1000, vec![(100_000, 65_536, 1001)]);
        let l = Limits::new(32, accounts);
        // Another account: at most 32/8 = 4, whichever of its uids connects.
        let a: Vec<Slot> = [1001, 100_001, 100_002, 165_535]
            .iter()
            .filter_map(|&u| l.admit(Some(u)))
            .collect();
        assert_eq!(a.len(), 4);
        assert!(
            l.admit(Some(100_003)).is_none(),
            "subordinate ids count as 1001"
        );
        assert!(l.admit(Some(1001)).is_none(), "per-account cap");
        // The user's own pool is untouched by the others.
        let mine: Vec<Slot> = (0..16).filter_map(|_| l.admit(Some(1000))).collect();
        assert_eq!(mine.len(), 16);
        assert!(l.admit(Some(1000)).is_none(), "own pool full");
        drop(a);
        assert!(l.admit(Some(1001)).is_some(), "places come back");
    }

    #[test]
    fn urls() {
        assert_eq!(url("Shop", "api", 7780), "http://api.shop.localhost:7780/");
        assert_eq!(url("shop", "api", 80), "http://api.shop.localhost/");
    }
}
