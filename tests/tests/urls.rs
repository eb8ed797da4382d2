//! The `*.localhost` proxy on real sockets: a daemon serving the proxy on a
//! test port routes by Host to two services (and `PROJECT.localhost` to the
//! `default = true` one), passes a WebSocket upgrade through, shows the
//! "starting…" page while a slow build runs, and answers 404 for an unknown
//! host; `locald-ctl status` prints each service's URL.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use locald_tests::dbus::{ctl, have_dbus_daemon, status_json, Daemon, DaemonSetup, TestBus};
use locald_tests::{free_port, require, unique, TestProject};

const WS: &str = r#"import os, socket, hashlib, base64
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('127.0.0.1', int(os.environ['PORT'])))
s.listen()
while True:
    c, _ = s.accept()
    d = b''
    while b'\r\n\r\n' not in d:
        x = c.recv(4096)
        if not x:
            break
        d += x
    if b'\r\n\r\n' not in d:
        c.close()
        continue
    key = [l.split(b':', 1)[1].strip() for l in d.split(b'\r\n') if l.lower().startswith(b'sec-websocket-key')][0]
    acc = base64.b64encode(hashlib.sha1(key + b'258EAFA5-E914-47DA-95CA-C5AB0DC85B11').digest())
    c.sendall(b'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ' + acc + b'\r\n\r\n')
    while True:
        x = c.recv(4096)
        if not x:
            break
        c.sendall(x)
    c.close()
"#;

fn get(proxy: u16, host: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", proxy)).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .expect("send");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_proxy_routes_by_host_upgrades_websockets_and_shows_starting_and_404() {
    if require(
        have_dbus_daemon(),
        "dbus-daemon is not installed (tests/setup-debian.sh installs it)",
    ) {
        return;
    }
    let proxy = free_port();
    let bus = TestBus::start();
    let _daemon = Daemon::start_with(
        &bus,
        DaemonSetup {
            env: vec![("LOCALD_PROXY_PORT".into(), proxy.to_string())],
            ..Default::default()
        },
    );
    let name = unique("urls");
    let p = TestProject::new(&format!(
        r#"[project]
name = "{name}"

[services.api]
port = "auto"
command = "exec python3 -m http.server $PORT --bind 127.0.0.1 --directory pub-api"
health = {{ tcp = "auto", interval = "100ms" }}
stop_timeout = "1s"

[services.web]
port = "auto"
default = true
command = "exec python3 -m http.server $PORT --bind 127.0.0.1 --directory pub-web"
health = {{ http = "/", interval = "100ms" }}
stop_timeout = "1s"

[services.ws]
port = "auto"
command = ["python3", "ws.py"]
health = {{ tcp = "auto", interval = "100ms" }}
stop_timeout = "1s"

[services.slow]
port = "auto"
build = "sleep 5"
command = "exec python3 -m http.server $PORT --bind 127.0.0.1"
stop_timeout = "1s"
"#
    ));
    p.write("pub-api/who.txt", "I am api\n");
    p.write("pub-web/who.txt", "I am web\n");
    p.write("ws.py", WS);
    let up = ctl(&bus, p.path(), &["up"]);
    assert_eq!(up.code, 0, "{up:?}");

    // While the slow build runs: the starting page, reloading itself.
    let slow = format!("slow.{name}.localhost:{proxy}");
    wait_until(Duration::from_secs(5), "the slow build", || {
        get(proxy, &slow, "/").1.contains("building")
    });
    let (code, page) = get(proxy, &slow, "/");
    assert_eq!(code, 503, "{page}");
    assert!(page.contains("starting"), "{page}");
    assert!(page.contains("http-equiv=\"refresh\""), "{page}");

    // Two services by Host, and the project's default.
    let api = format!("api.{name}.localhost:{proxy}");
    wait_until(Duration::from_secs(15), "api through the proxy", || {
        get(proxy, &api, "/who.txt").0 == 200
    });
    assert!(get(proxy, &api, "/who.txt").1.contains("I am api"));
    let web = format!("web.{name}.localhost:{proxy}");
    wait_until(Duration::from_secs(15), "web through the proxy", || {
        get(proxy, &web, "/who.txt").0 == 200
    });
    assert!(get(proxy, &web, "/who.txt").1.contains("I am web"));
    let (code, body) = get(
        proxy,
        &format!("{}.localhost", name.to_uppercase()),
        "/who.txt",
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("I am web"), "{body}");

    // Unknown hosts.
    let (code, body) = get(proxy, &format!("nope.{name}.localhost"), "/");
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("no service `nope`"), "{body}");
    assert_eq!(get(proxy, "elsewhere.localhost", "/").0, 404);
    assert_eq!(get(proxy, "example.com", "/").0, 404);

    // A WebSocket upgrade, then bytes both ways.
    let ws = format!("ws.{name}.localhost:{proxy}");
    wait_until(Duration::from_secs(15), "ws healthy", || {
        status_json(&bus, p.path())["services"][2]["state"] == "healthy"
    });
    let mut s = TcpStream::connect(("127.0.0.1", proxy)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET /chat HTTP/1.1\r\nHost: {ws}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .expect("send");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).expect("read the 101 head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "{head}");
    s.write_all(b"\x81\x04ping").expect("frame");
    let mut echo = [0u8; 6];
    s.read_exact(&mut echo).expect("echo");
    assert_eq!(&echo, b"\x81\x04ping");

    // status prints the URLs.
    let table = ctl(&bus, p.path(), &["status"]);
    assert!(
        table
            .stdout
            .contains(&format!("http://api.{name}.localhost:{proxy}/")),
        "{}",
        table.stdout
    );
    let json = status_json(&bus, p.path());
    assert_eq!(
        json["services"][0]["url"],
        format!("http://api.{name}.localhost:{proxy}/")
    );
    assert_eq!(ctl(&bus, p.path(), &["down"]).code, 0);
}
