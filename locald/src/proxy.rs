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

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

use crate::engine::Engine;
use crate::event::{ProjectSnapshot, ServiceSnapshot, ServiceState};

/// The proxy's port when `LOCALD_PROXY_PORT` does not say otherwise.
pub const DEFAULT_PORT: u16 = 7780;

/// The port this process serves the proxy on; 0 when it does not.
static SERVING: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// The URL of `service` when this process serves the proxy and the service
/// has a port; empty otherwise.
pub fn service_url(project: &str, service: &str, has_port: bool) -> String {
    match SERVING.load(std::sync::atomic::Ordering::Relaxed) {
        0 => String::new(),
        _ if !has_port => String::new(),
        port => url(project, service, port),
    }
}

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

/// The URL of a service (with a port) behind the proxy on `proxy`.
pub fn url(project: &str, service: &str, proxy: u16) -> String {
    let host = format!(
        "{}.{}.localhost",
        service.to_ascii_lowercase(),
        project.to_ascii_lowercase()
    );
    if proxy == 80 {
        format!("http://{host}/")
    } else {
        format!("http://{host}:{proxy}/")
    }
}

/// Binds the proxy on 127.0.0.1:`port` and serves it for `engine` until
/// the returned task is aborted. Errs when the port cannot be bound.
pub async fn serve(engine: Engine, port: u16) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    SERVING.store(port, std::sync::atomic::Ordering::Relaxed);
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // EMFILE and the like: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let engine = engine.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let engine = engine.clone();
                    async move { Ok::<_, Infallible>(handle(&engine, port, req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades()
                    .await;
            });
        }
    }))
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

async fn handle(engine: &Engine, proxy: u16, mut req: Request<Incoming>) -> Response<Body> {
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_owned)
        .or_else(|| req.uri().authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let projects = engine.projects();
    let (project, service) = match route(&projects, &host) {
        Route::Unknown(why) => return not_found(&why, &projects, proxy),
        Route::Service(p, s) => (p, s),
    };
    let Some(&port) = service.ports.get("PORT") else {
        return page(
            StatusCode::NOT_FOUND,
            &format!("{}/{} has no port", project.name, service.name),
            "Give it `port = \"auto\"` in locald.toml to reach it here.",
            false,
        );
    };
    if !matches!(service.state, ServiceState::Running | ServiceState::Healthy) {
        return starting(project, service);
    }
    let Ok(tcp) = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).await else {
        return starting(project, service);
    };
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await
    else {
        return starting(project, service);
    };
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let wants_upgrade = req.headers().contains_key(hyper::header::UPGRADE);
    let client_side = wants_upgrade.then(|| hyper::upgrade::on(&mut req));
    let mut resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            return page(
                StatusCode::BAD_GATEWAY,
                &format!("{}/{} did not answer", project.name, service.name),
                &format!("{e}"),
                false,
            )
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_side) = client_side {
            let service_side = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                if let (Ok(a), Ok(b)) = (client_side.await, service_side.await) {
                    let _ =
                        tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b))
                            .await;
                }
            });
        }
    }
    resp.map(BodyExt::boxed)
}

fn starting(project: &ProjectSnapshot, service: &ServiceSnapshot) -> Response<Body> {
    let state = service.state.as_str();
    let why = if service.reason.is_empty() {
        state.to_owned()
    } else {
        format!("{state}: {}", service.reason)
    };
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        &format!("{}/{} is starting…", project.name, service.name),
        &why,
        true,
    )
}

fn not_found(why: &str, projects: &[ProjectSnapshot], proxy: u16) -> Response<Body> {
    let mut list = String::new();
    for p in projects {
        for s in p.services.iter().filter(|s| s.ports.contains_key("PORT")) {
            let u = url(&p.name, &s.name, proxy);
            list.push_str(&format!("<li><a href=\"{u}\">{}</a></li>", escape(&u)));
        }
    }
    let body = if list.is_empty() {
        format!("{why}. No service with a port is up.")
    } else {
        format!("{why}. Services up:</p><ul>{list}</ul><p>")
    };
    page(StatusCode::NOT_FOUND, "Not found", &body, false)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A small HTML page; `reload` makes it ask again every second.
fn page(status: StatusCode, title: &str, text: &str, reload: bool) -> Response<Body> {
    let refresh = if reload {
        "<meta http-equiv=\"refresh\" content=\"1\">"
    } else {
        ""
    };
    // `text` of the 404 page carries its own markup (built from escaped parts).
    let text = if status == StatusCode::NOT_FOUND && text.contains("<ul>") {
        text.to_owned()
    } else {
        escape(text)
    };
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">{refresh}<title>{t}</title></head><body><h1>{t}</h1><p>{text}</p><p><small>locald</small></p></body></html>\n",
        t = escape(title)
    );
    let mut r = Response::new(Full::new(Bytes::from(html)).map_err(|n| match n {}).boxed());
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
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

    #[test]
    fn urls() {
        assert_eq!(url("Shop", "api", 7780), "http://api.shop.localhost:7780/");
        assert_eq!(url("shop", "api", 80), "http://api.shop.localhost/");
    }
}
