//! The HTTP side: one gate in front of every request, then six routes.
//!
//! The gate, in order (any local user can reach 127.0.0.1, and any web page
//! the user visits can make the browser send requests there):
//! 1. `Host` must be `127.0.0.1:PORT` or `localhost:PORT`, else 400 — a
//!    DNS-rebinding page reaches us under its own host name.
//! 2. Under `/api/`, the per-run token must come as the `X-Locald-Token`
//!    header or the `token` query parameter (the `EventSource` API cannot
//!    set headers): missing is 401, wrong is 403, compared in constant time.
//! 3. A state-changing request must be a POST whose `Origin` is this page's
//!    own and whose body is JSON, else 405/403/415.
//!
//! Every answer carries a strict Content-Security-Policy (scripts and styles
//! from this origin only, no inline code, no eval), `nosniff`, no framing
//! and no referrer. Static files are compiled into the binary.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::journal;
use super::model::Hub;

/// The body every response has.
pub type Body = UnsyncBoxBody<Bytes, Infallible>;

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON_SVG: &str = include_str!("assets/icon.svg");

/// The policy every response carries.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
frame-ancestors 'none'";

/// Largest action request body.
const MAX_BODY: usize = 8 * 1024;
/// How often an idle event stream gets a comment, so proxies and the
/// browser see it alive and a page that went away is noticed.
const KEEPALIVE: Duration = Duration::from_secs(15);

/// What every request needs to know.
pub struct Server {
    /// The per-run secret.
    pub token: String,
    /// The port we listen on, for the `Host` and `Origin` checks.
    pub port: u16,
    /// The model and its events.
    pub hub: Arc<Hub>,
    /// The bus connection.
    pub conn: zbus::Connection,
    /// The daemon on it, as last checked.
    pub daemon: Arc<super::model::DaemonRef>,
    /// `journalctl --namespace`, for tests.
    pub namespace: Option<String>,
}

fn full(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed_unsync());
    *r.status_mut() = status;
    if let Ok(v) = HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

fn json_response(status: StatusCode, v: &serde_json::Value) -> Response<Body> {
    full(status, "application/json", v.to_string())
}

fn error(status: StatusCode, message: &str) -> Response<Body> {
    json_response(
        status,
        &json!({ "error": { "name": "Http", "message": message } }),
    )
}

fn secure(mut r: Response<Body>) -> Response<Body> {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    r
}

/// `a == b` in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = s.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The query string as a map; a malformed pair makes the whole query bad.
pub fn query(q: Option<&str>) -> Option<HashMap<String, String>> {
    let mut map = HashMap::new();
    for pair in q.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        map.insert(decode(k)?, decode(v)?);
    }
    Some(map)
}

impl Server {
    /// Whether `host` (a `Host` header) names this server on loopback.
    pub fn host_ok(&self, host: &str) -> bool {
        let port = self.port.to_string();
        ["127.0.0.1", "localhost"]
            .iter()
            .any(|h| host.strip_prefix(h).and_then(|r| r.strip_prefix(':')) == Some(port.as_str()))
    }

    /// The gate's verdict on the token of `req`: `None` when it passes.
    fn token_check(
        &self,
        req: &Request<Incoming>,
        q: &HashMap<String, String>,
    ) -> Option<Response<Body>> {
        let given = req
            .headers()
            .get("x-locald-token")
            .map(|v| v.as_bytes().to_vec())
            .or_else(|| q.get("token").map(|t| t.as_bytes().to_vec()));
        match given {
            None => Some(error(
                StatusCode::UNAUTHORIZED,
                "this needs the dashboard's token",
            )),
            Some(t) if same(&t, self.token.as_bytes()) => None,
            Some(_) => Some(error(StatusCode::FORBIDDEN, "wrong token")),
        }
    }

    /// Answers one request.
    pub async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Body>, Infallible> {
        Ok(secure(self.route(req).await))
    }

    async fn route(&self, req: Request<Incoming>) -> Response<Body> {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default();
        if !self.host_ok(host) {
            return error(
                StatusCode::BAD_REQUEST,
                "wrong Host: open the page as 127.0.0.1 or localhost",
            );
        }
        let path = req.uri().path().to_owned();
        if !path.starts_with("/api/") {
            if req.method() != Method::GET && req.method() != Method::HEAD {
                return error(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "static files are read with GET",
                );
            }
            let cached = |r: Response<Body>| r;
            return cached(match path.as_str() {
                "/" | "/index.html" => full(StatusCode::OK, "text/html; charset=utf-8", INDEX_HTML),
                "/app.js" => full(StatusCode::OK, "text/javascript; charset=utf-8", APP_JS),
                "/app.css" => full(StatusCode::OK, "text/css; charset=utf-8", APP_CSS),
                "/icon.svg" => full(StatusCode::OK, "image/svg+xml", ICON_SVG),
                _ => error(StatusCode::NOT_FOUND, "no such page"),
            });
        }
        let Some(q) = query(req.uri().query()) else {
            return error(StatusCode::BAD_REQUEST, "malformed query");
        };
        if let Some(refused) = self.token_check(&req, &q) {
            return refused;
        }
        match (req.method().clone(), path.as_str()) {
            (Method::GET, "/api/state") => json_response(
                StatusCode::OK,
                &serde_json::to_value(self.hub.snapshot()).unwrap_or_default(),
            ),
            (Method::GET, "/api/events") => self.events(),
            (Method::GET, "/api/logs") => match journal::Query::parse(&q) {
                Err(e) => error(StatusCode::BAD_REQUEST, &e),
                Ok(q) => match journal::history(&q, self.namespace.as_deref()).await {
                    Ok(lines) => json_response(StatusCode::OK, &json!({ "lines": lines })),
                    Err(e) => error(StatusCode::BAD_GATEWAY, &e),
                },
            },
            (Method::POST, "/api/action") => self.action(req).await,
            (_, "/api/action") => error(StatusCode::METHOD_NOT_ALLOWED, "actions are POSTed"),
            (_, "/api/state" | "/api/events" | "/api/logs") => {
                error(StatusCode::METHOD_NOT_ALLOWED, "this is read with GET")
            }
            _ => error(StatusCode::NOT_FOUND, "no such call"),
        }
    }

    /// The event stream: a snapshot, then every change, as Server-Sent Events.
    fn events(&self) -> Response<Body> {
        let (snapshot, rx) = self.hub.subscribe();
        let first = format!("data: {snapshot}\n\n");
        let state = (Some(first), rx);
        let s = stream::unfold(state, |(first, mut rx)| async move {
            if let Some(f) = first {
                return Some((Ok(Frame::data(Bytes::from(f))), (None, rx)));
            }
            let text = match tokio::time::timeout(KEEPALIVE, rx.recv()).await {
                Err(_) => ": keepalive\n\n".to_owned(),
                Ok(Ok(json)) => format!("data: {json}\n\n"),
                // Too slow to keep up: the page reloads its state.
                Ok(Err(RecvError::Lagged(_))) => "data: {\"type\":\"resync\"}\n\n".to_owned(),
                Ok(Err(RecvError::Closed)) => return None,
            };
            Some((Ok(Frame::data(Bytes::from(text))), (None, rx)))
        });
        let mut r = Response::new(BodyExt::boxed_unsync(StreamBody::new(s)));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        r
    }

    async fn action(&self, req: Request<Incoming>) -> Response<Body> {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .unwrap_or_default();
        let own = origin
            .strip_prefix("http://")
            .is_some_and(|host| self.host_ok(host));
        if !own {
            return error(
                StatusCode::FORBIDDEN,
                "actions come from the dashboard's own page",
            );
        }
        let json_body = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|c| c.to_str().ok())
            .is_some_and(|c| {
                c.split(';')
                    .next()
                    .is_some_and(|m| m.trim() == "application/json")
            });
        if !json_body {
            return error(StatusCode::UNSUPPORTED_MEDIA_TYPE, "actions are JSON");
        }
        let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => return error(StatusCode::PAYLOAD_TOO_LARGE, "request too large"),
        };
        let Ok(a) = serde_json::from_slice::<Action>(&body) else {
            return error(
                StatusCode::BAD_REQUEST,
                "an action is {action, project, service?, force?}",
            );
        };
        self.run_action(a).await
    }

    async fn run_action(&self, a: Action) -> Response<Body> {
        let manager = match self.daemon.get() {
            Some(d) => locald_api::Manager1Proxy::builder(&self.conn)
                .destination(d)
                .map(|b| b.cache_properties(zbus::proxy::CacheProperties::No)),
            None => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "no locald of yours is running",
                )
            }
        };
        let manager = match manager {
            Ok(b) => b.build().await,
            Err(e) => Err(e),
        };
        let m = match manager {
            Ok(m) => m,
            Err(e) => return error(StatusCode::BAD_GATEWAY, &e.to_string()),
        };
        let m = &m;
        let service = a.service.as_deref().unwrap_or_default();
        let needs_service = matches!(a.action.as_str(), "start" | "stop" | "restart" | "build");
        if needs_service && service.is_empty() {
            return error(StatusCode::BAD_REQUEST, "this action needs a service");
        }
        let result: Result<serde_json::Value, locald_api::Error> = match a.action.as_str() {
            "start" => m
                .start_service(&a.project, service)
                .await
                .map(|()| json!({})),
            "stop" => m
                .stop_service(&a.project, service)
                .await
                .map(|()| json!({})),
            "restart" => m
                .restart_service(&a.project, service)
                .await
                .map(|()| json!({})),
            "build" => m
                .build(&a.project, service, a.force)
                .await
                .map(|b| json!({ "build": b })),
            "reload" => m.reload(&a.project).await.map(|r| json!({ "reload": r })),
            "down" => m.down(&a.project).await.map(|()| json!({})),
            _ => return error(StatusCode::BAD_REQUEST, "unknown action"),
        };
        match result {
            Ok(v) => json_response(StatusCode::OK, &json!({ "ok": v })),
            Err(e) => {
                let status = if e.is_unreachable() {
                    StatusCode::BAD_GATEWAY
                } else {
                    StatusCode::UNPROCESSABLE_ENTITY
                };
                let message = e.message();
                json_response(
                    status,
                    &json!({ "error": {
                        "name": e.short_name(),
                        // A config error's first line is file:line:column: message.
                        "message": message.lines().next().unwrap_or_default(),
                        "report": e.config_report(),
                    }}),
                )
            }
        }
    }
}

/// A request to act, as the page POSTs it.
#[derive(Debug, Deserialize)]
struct Action {
    action: String,
    project: String,
    service: Option<String>,
    #[serde(default)]
    force: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode_or_fail_whole() {
        let q = query(Some("token=a%2Bb&project=shop&x=1+2")).expect("ok");
        assert_eq!(q["token"], "a+b");
        assert_eq!(q["x"], "1 2");
        assert!(query(Some("a=%zz")).is_none());
        assert!(query(Some("a=%ff")).is_none(), "not UTF-8");
        assert!(query(Some("a=%2")).is_none());
        assert!(query(None).is_some_and(|q| q.is_empty()));
    }

    #[test]
    fn tokens_compare_whole() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
        assert!(!same(b"", b"a"));
    }
}
