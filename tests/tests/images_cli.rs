//! `locald-ctl images`, `pull` and `prune` against a real daemon on a
//! private bus, with its own image store, config and runtime directory:
//! images from OCI layouts built here with umoci, and from a private
//! `docker-registry` fed by skopeo. What the store holds is checked on disk,
//! not only through locald's own answers. The daemon runs as root (the
//! tests create a setuid shim), so it has no subordinate ids and every
//! unpacked file is its own.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use locald_api::{Error, Manager1Proxy};
use locald_tests::dbus::{ctl, wait_states, Daemon, DaemonSetup, TestBus};
use locald_tests::images::{build_busybox_layout, missing_tools, Layout, Registry};
use locald_tests::shim::{install_shim, preconditions, InstalledShim};
use locald_tests::{require, unique};
use serde_json::Value;

/// A daemon with a store, config and runtime directory of its own.
struct World {
    bus: TestBus,
    base: tempfile::TempDir,
    env: Vec<(String, String)>,
    daemon: Option<Daemon>,
}

impl World {
    /// `shim`: the setuid shim image services run through; `None` leaves
    /// the daemon without one (image services then fail before pulling).
    fn start(shim: Option<&InstalledShim>, insecure: &[&str]) -> World {
        let bus = TestBus::start();
        let base = tempfile::Builder::new()
            .prefix("locald-icli-")
            .tempdir()
            .expect("tempdir");
        for d in ["data", "config/locald", "run", "home"] {
            fs::create_dir_all(base.path().join(d)).expect("mkdir");
        }
        fs::set_permissions(base.path().join("run"), fs::Permissions::from_mode(0o700))
            .expect("chmod");
        let quoted: Vec<String> = insecure.iter().map(|r| format!("{r:?}")).collect();
        fs::write(
            base.path().join("config/locald/config.toml"),
            format!("insecure_registries = [{}]\n", quoted.join(", ")),
        )
        .expect("config.toml");
        let dir = |d: &str| base.path().join(d).display().to_string();
        let shim_path = shim.map_or_else(
            || base.path().join("no-shim").display().to_string(),
            |s| s.path.display().to_string(),
        );
        let env = vec![
            ("XDG_DATA_HOME".to_owned(), dir("data")),
            ("XDG_CONFIG_HOME".to_owned(), dir("config")),
            ("XDG_RUNTIME_DIR".to_owned(), dir("run")),
            ("HOME".to_owned(), dir("home")),
            ("LOCALD_SHIM".to_owned(), shim_path),
        ];
        let daemon = Daemon::start_with(
            &bus,
            DaemonSetup {
                env: env.clone(),
                ..DaemonSetup::default()
            },
        );
        World {
            bus,
            base,
            env,
            daemon: Some(daemon),
        }
    }

    /// Kills the daemon and starts a new one with `self.env`, on the same
    /// state.
    fn kill_and_start_daemon(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.kill_hard();
        }
        self.daemon = Some(Daemon::start_with(
            &self.bus,
            DaemonSetup {
                state_dir: Some(self.bus.dir().join("state")),
                env: self.env.clone(),
                ..DaemonSetup::default()
            },
        ));
    }

    fn store(&self) -> PathBuf {
        self.base.path().join("data/locald")
    }

    fn blob(&self, digest: &str) -> PathBuf {
        self.store()
            .join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    }

    fn rootfs(&self, digest: &str) -> PathBuf {
        self.store()
            .join("rootfs")
            .join(digest.trim_start_matches("sha256:"))
    }

    /// A project directory with this `locald.toml`.
    fn project(&self, toml: &str) -> PathBuf {
        let dir = self.base.path().join(unique("proj"));
        fs::create_dir(&dir).expect("mkdir");
        fs::write(dir.join("locald.toml"), toml).expect("locald.toml");
        dir.canonicalize().expect("canonical")
    }

    /// `locald-ctl ARGS` in `cwd`, which must succeed; its stdout.
    fn ctl_ok(&self, cwd: &Path, args: &[&str]) -> String {
        let out = ctl(&self.bus, cwd, args);
        assert_eq!(out.code, 0, "locald-ctl {args:?} failed: {out:?}");
        out.stdout
    }

    /// `images --json`, parsed.
    fn images(&self) -> Vec<Value> {
        let text = self.ctl_ok(self.base.path(), &["images", "--json"]);
        serde_json::from_str::<Value>(&text)
            .expect("images --json is JSON")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Polls `images --json` until `done` says so.
    fn wait_images(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let end = Instant::now() + Duration::from_secs(90);
        loop {
            let images = self.images();
            if done(&images) {
                return images;
            }
            assert!(
                Instant::now() < end,
                "images never showed {what}: {images:#?}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log(&self) -> String {
        self.daemon.as_ref().map(Daemon::log).unwrap_or_default()
    }
}

/// The entry for `reference` (as `images` records it) in `images`.
fn entry<'a>(images: &'a [Value], reference: &str) -> Option<&'a Value> {
    images.iter().find(|i| i["reference"] == reference)
}

fn projects(image: &Value) -> Vec<String> {
    image["projects"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect()
}

/// The blobs of a layout image: its manifest, config and layers.
fn blobs_of(layout: &Layout, tag: &str) -> BTreeSet<String> {
    let manifest = layout.digest(tag).expect("digest");
    let m = layout.json_blob(&manifest).expect("manifest");
    let mut out: BTreeSet<String> = layout
        .layers(&manifest)
        .expect("layers")
        .into_iter()
        .collect();
    out.insert(m["config"]["digest"].as_str().expect("config").to_owned());
    out.insert(manifest);
    out
}

/// Skips (outside CI) without root, runc, umoci, skopeo or the registry.
fn tools() -> bool {
    if let Some(why) = missing_tools() {
        return !require(false, &why);
    }
    true
}

#[test]
fn images_shows_what_projects_use_and_prune_removes_only_what_no_project_that_is_up_uses() {
    if !preconditions() || !tools() {
        return;
    }
    let shim = install_shim().expect("install the shim");
    let w = World::start(Some(&shim), &[]);
    let layout = build_busybox_layout(&w.base.path().join("layout")).expect("layout");
    let layout_dir = layout.dir.canonicalize().expect("canonical");
    let reference = |tag: &str| format!("oci:{}:{tag}", layout_dir.display());
    let project = |name: &str, tag: &str| {
        w.project(&format!(
            r#"[project]
name = "{name}"

[services.web]
image = "{}"
command = ["/bin/busybox", "sleep", "600"]
"#,
            reference(tag)
        ))
    };
    let a = project(&unique("icli-a"), "v1");
    let b = project(&unique("icli-b"), "base");

    // A first start pulls (here: imports) with progress on the bus.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    // zbus's objects are dropped within the runtime.
    let _enter = rt.enter();
    let conn = rt.block_on(w.bus.connect());
    let manager = rt.block_on(async {
        Manager1Proxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .expect("proxy")
    });
    let mut progress = rt
        .block_on(manager.receive_pull_progress())
        .expect("subscribe");

    w.ctl_ok(&a, &["up"]);
    w.ctl_ok(&b, &["up"]);
    let images = w.wait_images("both images in use", |i| {
        [("v1", &a), ("base", &b)].iter().all(|(tag, dir)| {
            entry(i, &reference(tag)).is_some_and(|e| {
                projects(e) == [dir.display().to_string()] && e["unpacked"] == true
            })
        })
    });
    wait_states(&w.bus, &b, &["running"], Duration::from_secs(30));
    let v1 = entry(&images, &reference("v1")).expect("v1");
    assert_eq!(v1["digest"], layout.digest("v1").expect("digest"));
    assert!(v1["size"].as_u64().unwrap_or(0) > 100_000, "{v1}");
    assert!(
        v1["fetched_at"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{v1}"
    );
    let first_start = rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), progress.next())
            .await
            .ok()
            .flatten()
    });
    let signal = first_start.expect("PullProgress while the first start imported the image");
    let args = signal.args().expect("args");
    assert_eq!(*args.service(), "web");
    assert!(args.reference().starts_with("oci:"), "{}", args.reference());

    let v1_digest = layout.digest("v1").expect("digest");
    let base_digest = layout.digest("base").expect("digest");
    let (v1_blobs, base_blobs) = (blobs_of(&layout, "v1"), blobs_of(&layout, "base"));
    let only_v1: Vec<&String> = v1_blobs.difference(&base_blobs).collect();
    assert_eq!(only_v1.len(), 3, "manifest, config, the marker layer");
    assert!(
        base_blobs.intersection(&v1_blobs).count() == 1,
        "the busybox layer is shared"
    );
    for d in v1_blobs.iter().chain(&base_blobs) {
        assert!(w.blob(d).is_file(), "{d} stored");
    }
    assert!(w.rootfs(&v1_digest).join("bin/busybox").is_file());

    // Nothing to prune while both projects are up.
    let out = w.ctl_ok(&a, &["prune"]);
    assert!(out.contains("nothing to remove"), "{out}");

    w.ctl_ok(&a, &["down"]);
    let images = w.images();
    assert!(
        projects(entry(&images, &reference("v1")).expect("still stored")).is_empty(),
        "down forgets the project as a user: {images:#?}"
    );
    let table = w.ctl_ok(&a, &["images"]);
    assert!(table.contains("1 used by no project that is up"), "{table}");

    let out = w.ctl_ok(&b, &["prune"]);
    assert!(
        out.contains(&format!("removed 1 image: {}", reference("v1"))),
        "{out}"
    );
    assert!(out.contains("3 blobs and 1 unpacked tree removed"), "{out}");
    for d in &only_v1 {
        assert!(!w.blob(d).exists(), "{d} removed");
    }
    for d in &base_blobs {
        assert!(w.blob(d).is_file(), "{d} of the project still up kept");
    }
    assert!(!w.rootfs(&v1_digest).exists(), "the unpacked tree is gone");
    assert!(w.rootfs(&base_digest).join("bin/busybox").is_file());
    let left: Vec<String> = fs::read_dir(w.store().join("rootfs"))
        .expect("rootfs dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.') || n.starts_with(".rm-") || n.starts_with(".tmp-"))
        .collect();
    assert_eq!(left, [base_digest.trim_start_matches("sha256:")]);
    let images = w.images();
    assert_eq!(images.len(), 1, "{images:#?}");
    assert!(entry(&images, &reference("base")).is_some());
    let out = w.ctl_ok(&b, &["prune"]);
    assert!(out.contains("nothing to remove"), "{out}");
    wait_states(&w.bus, &b, &["running"], Duration::from_secs(1));
}

#[test]
fn locald_up_prints_the_layers_it_pulls_for_a_first_start() {
    if !preconditions() || !tools() {
        return;
    }
    let shim = install_shim().expect("install the shim");
    let base = tempfile::Builder::new()
        .prefix("locald-icli-up-")
        .tempdir()
        .expect("tempdir");
    for d in ["data", "run", "home", "project"] {
        fs::create_dir_all(base.path().join(d)).expect("mkdir");
    }
    fs::set_permissions(base.path().join("run"), fs::Permissions::from_mode(0o700)).expect("chmod");
    let project = base.path().join("project");
    build_busybox_layout(&project.join("layout")).expect("layout");
    fs::write(
        project.join("locald.toml"),
        format!(
            r#"[project]
name = "{}"

[services.web]
image = "oci:./layout:v1"
command = ["/bin/busybox", "sh", "-c", "echo web-is-up; /bin/busybox sleep 600"]
"#,
            unique("icli-up")
        ),
    )
    .expect("locald.toml");
    let out_path = base.path().join("up.out");
    let out = fs::File::create(&out_path).expect("output file");
    let mut child = std::process::Command::new(locald_tests::bin("locald"))
        .arg("up")
        .arg(&project)
        .env("XDG_DATA_HOME", base.path().join("data"))
        .env("XDG_RUNTIME_DIR", base.path().join("run"))
        .env("XDG_CONFIG_HOME", base.path().join("home"))
        .env("HOME", base.path().join("home"))
        .env("LOCALD_SHIM", &shim.path)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("clone"))
        .stderr(out)
        .spawn()
        .expect("locald up");
    let text = || fs::read_to_string(&out_path).unwrap_or_default();
    let end = Instant::now() + Duration::from_secs(60);
    while !text().contains("web-is-up") {
        if Instant::now() > end || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            panic!("web never came up:\n{}", text());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = child.wait();
    let text = text();
    for line in [
        "web pulling oci:./layout:v1 layer 1/2",
        "web pulled layer 1/2",
        "web pulled layer 2/2",
    ] {
        assert!(text.contains(line), "no {line:?} in:\n{text}");
    }
    let pulled = text.find("web pulled layer 2/2").unwrap_or(usize::MAX);
    assert!(pulled < text.find("web-is-up").unwrap_or(0), "{text}");
}

#[test]
fn pull_from_a_registry_reports_progress_and_is_a_no_op_the_second_time() {
    if !tools() {
        return;
    }
    let registry = Registry::start().expect("registry");
    let dir = tempfile::Builder::new()
        .prefix("locald-icli-layout-")
        .tempdir()
        .expect("tempdir");
    let layout = build_busybox_layout(&dir.path().join("layout")).expect("layout");
    let pushed = registry
        .push(&layout.dir, "v1", "test/busybox")
        .expect("push");
    // No shim: the image service fails at start, before pulling anything.
    let w = World::start(None, &[&registry.addr]);
    let name = unique("icli-pull");
    let p = w.project(&format!(
        r#"[project]
name = "{name}"

[services.cache]
image = "{pushed}"

[services.web]
command = "sleep 600"
"#
    ));
    w.ctl_ok(&p, &["up"]);
    wait_states(&w.bus, &p, &["failed", "running"], Duration::from_secs(30));
    assert!(w.images().is_empty(), "nothing was pulled yet");

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let conn = w.bus.connect().await;
        let manager = Manager1Proxy::builder(&conn)
            .cache_properties(zbus::proxy::CacheProperties::No)
            .build()
            .await
            .expect("proxy");

        // The first pull transfers every blob and reports each layer.
        let mut progress = manager.receive_pull_progress().await.expect("subscribe");
        let first = manager.pull(&name, "cache", false).await.expect("pull");
        assert!(first.previous.is_empty(), "{first:?}");
        assert!(first.blobs >= 4 && first.bytes > 100_000, "{first:?}");
        assert_eq!(first.reference, pushed);
        let layers = layout
            .layers(&layout.digest("v1").expect("digest"))
            .expect("layers");
        let mut finished = BTreeSet::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(10);
        while finished.len() < layers.len() {
            let Ok(Some(signal)) = tokio::time::timeout_at(end, progress.next()).await else {
                panic!("missing PullProgress for some layers: saw {finished:?} of {layers:?}");
            };
            let a = signal.args().expect("args");
            assert_eq!(
                (a.project().as_str(), a.service().as_str()),
                (name.as_str(), "cache")
            );
            assert_eq!(*a.layers() as usize, layers.len());
            if a.done() == a.total() {
                assert!(!a.cached(), "nothing was stored before");
                finished.insert(a.layer().to_string());
            }
        }
        assert_eq!(finished, layers.iter().cloned().collect());
        let gets = registry.blob_gets("locald/");
        assert!(gets >= layers.len(), "{gets}");

        // The second asks the registry, finds the same digest, moves nothing.
        let second = manager.pull(&name, "cache", false).await.expect("pull");
        assert!(second.up_to_date(), "{second:?}");
        assert_eq!(second.digest, first.digest);
        assert_eq!(
            registry.blob_gets("locald/"),
            gets,
            "no blob downloaded again"
        );
        let mut cached = 0;
        while let Ok(Some(signal)) =
            tokio::time::timeout(Duration::from_millis(500), progress.next()).await
        {
            let a = signal.args().expect("args");
            assert!(
                a.cached(),
                "only stored layers are reported: {:?}",
                a.layer()
            );
            cached += 1;
        }
        assert_eq!(cached, layers.len());

        // A service without an image, and one that does not exist.
        match manager.pull(&name, "web", false).await {
            Err(Error::NoImage(text)) => assert!(text.contains("has no image"), "{text}"),
            other => panic!("expected NoImage, got {other:?}"),
        }
        match manager.pull(&name, "nope", false).await {
            Err(Error::NoSuchService(_)) => {}
            other => panic!("expected NoSuchService, got {other:?}"),
        }
    });

    let out = w.ctl_ok(&p, &["pull", "cache"]);
    assert!(
        out.contains(&format!("✓ cache: {pushed} is up to date")),
        "{out}"
    );
    let all = w.ctl_ok(&p, &["pull"]);
    assert_eq!(all.lines().count(), 1, "only the image service: {all}");
    let out = ctl(&w.bus, &p, &["pull", "web"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("has no image [NoImage]"), "{out:?}");

    // A stored layer damaged on disk: --force finds it and fetches it again.
    let layer = layout
        .layers(&layout.digest("v1").expect("digest"))
        .expect("layers")[1]
        .clone();
    let blob = w.blob(&layer);
    fs::set_permissions(&blob, fs::Permissions::from_mode(0o644)).expect("chmod");
    // The same size, one byte changed: only hashing it again tells.
    let mut data = fs::read(&blob).expect("read");
    if let Some(last) = data.last_mut() {
        *last ^= 0xff;
    }
    fs::write(&blob, &data).expect("damage");
    let out = w.ctl_ok(&p, &["pull", "cache"]);
    assert!(
        out.contains("is up to date"),
        "without --force nothing is read: {out}"
    );
    let out = w.ctl_ok(&p, &["pull", "cache", "--force"]);
    assert!(out.contains("1 damaged blob fetched again"), "{out}");
    assert_eq!(
        locald_tests::images::sha256_hex(&fs::read(&blob).expect("read")).expect("sha256"),
        layer.trim_start_matches("sha256:")
    );

    let images = w.images();
    assert_eq!(images.len(), 1, "{images:#?}");
    assert_eq!(projects(&images[0]), [p.display().to_string()]);
    assert_eq!(images[0]["unpacked"], false);
}

/// Prune removes files: on a bus opened to other users, only the daemon's
/// own uid may call it, or list and pull.
#[test]
fn another_user_cannot_list_pull_or_prune() {
    let root = nix::unistd::getuid().is_root();
    let setpriv = std::process::Command::new("setpriv")
        .arg("--help")
        .output()
        .is_ok();
    if require(
        root && setpriv && locald_tests::dbus::have_dbus_daemon(),
        "needs root, setpriv and dbus-daemon to act as a second user",
    ) {
        return;
    }
    let other = locald_tests::shim::test_user("locald-dbus-t2").expect("second user");
    let bus = TestBus::start_with(true);
    let base = tempfile::tempdir().expect("tempdir");
    let _daemon = Daemon::start_with(
        &bus,
        DaemonSetup {
            env: vec![(
                "XDG_DATA_HOME".to_owned(),
                base.path().display().to_string(),
            )],
            ..DaemonSetup::default()
        },
    );
    for (method, args) in [
        ("ListImages", vec![]),
        ("Prune", vec![]),
        ("Pull", vec!["string:p", "string:s", "boolean:false"]),
    ] {
        let out = std::process::Command::new("setpriv")
            .arg(format!("--reuid={}", other.uid))
            .arg(format!("--regid={}", other.gid))
            .arg("--clear-groups")
            .arg("dbus-send")
            .arg(format!("--bus={}", bus.address()))
            .args(["--print-reply", "--type=method_call"])
            .arg(format!("--dest={}", locald_api::BUS_NAME))
            .arg(locald_api::MANAGER_PATH)
            .arg(format!("{}.{method}", locald_api::MANAGER_INTERFACE))
            .args(&args)
            .output()
            .expect("dbus-send");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("org.freedesktop.DBus.Error.AccessDenied"),
            "{method} as uid {}: {err}",
            other.uid
        );
    }
}

/// A "registry" that answers `/v2/` and then every request with an error
/// whose message drives a terminal: a new window title, a cleared screen.
const HOSTILE_REGISTRY: &str = r#"import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        if self.path == '/v2/':
            body = b'{}'
            self.send_response(200)
        else:
            body = json.dumps({'errors': [{'code': 'MANIFEST_UNKNOWN',
                'message': '\x1b]0;PWNED-TITLE\x07\x1b[2Jgone'}]}).encode()
            self.send_response(404)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_HEAD = do_GET
http.server.HTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"#;

/// Regression (#19 item 6): a registry's error body went verbatim into a
/// service's reason, and `locald-ctl status` and `pull` printed
/// `ESC ] 0 ; PWNED-TITLE BEL ESC [ 2 J` into the user's terminal. Text
/// from outside is shown with its escapes written out.
#[test]
fn a_registrys_escape_sequences_are_shown_not_obeyed() {
    if !preconditions() || !tools() {
        return;
    }
    let port = locald_tests::free_port();
    let registry = locald_tests::KillOnDrop(
        std::process::Command::new("/usr/bin/python3")
            .args(["-c", HOSTILE_REGISTRY, &port.to_string()])
            .spawn()
            .expect("registry"),
    );
    let addr = format!("127.0.0.1:{port}");
    let end = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        assert!(Instant::now() < end, "the registry never listened");
        std::thread::sleep(Duration::from_millis(20));
    }
    let shim = install_shim().expect("install the shim");
    let w = World::start(Some(&shim), &[&addr]);
    let p = w.project(&format!(
        "[project]\nname = \"{}\"\n\n[services.cache]\nimage = \"{addr}/evil/app:1\"\n",
        unique("icli-esc")
    ));
    w.ctl_ok(&p, &["up"]);
    wait_states(&w.bus, &p, &["failed"], Duration::from_secs(30));
    let pull = ctl(&w.bus, &p, &["pull", "cache"]);
    let status = ctl(&w.bus, &p, &["status"]);
    drop(registry);
    for (what, out) in [("pull", &pull), ("status", &status)] {
        let text = format!("{}{}", out.stdout, out.stderr);
        assert!(
            !text.contains('\u{1b}'),
            "{what} printed a raw ESC: {text:?}"
        );
        assert!(
            !text.contains('\u{7}'),
            "{what} printed a raw BEL: {text:?}"
        );
        assert!(
            text.contains(r"\x1b]0;PWNED-TITLE\x07\x1b[2Jgone"),
            "{what} shows the text escaped: {text}"
        );
    }
}

/// Regression (#19 item 8): an unpack killed part-way left its temporary
/// tree (`rootfs/.tmp-<digest>-<pid>-<n>`, 192k inodes in the report)
/// until someone ran `prune`. The daemon's start (and every unpack) now
/// removes what a dead process left, and only that.
#[test]
fn a_daemon_start_removes_what_killed_unpacks_left() {
    if !tools() {
        return;
    }
    let base = tempfile::Builder::new()
        .prefix("locald-icli-sweep-")
        .tempdir()
        .expect("tempdir");
    let rootfs = base.path().join("data/locald/rootfs");
    fs::create_dir_all(&rootfs).expect("mkdir");
    for d in [base.path().join("data/locald"), rootfs.clone()] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o700)).expect("chmod");
    }
    // A pid above the kernel's limit: no process has it, or ever will.
    let dead = fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|m| m.trim().parse::<u64>().ok())
        .map_or(4_194_305, |m| m + 1);
    let hex = "ab".repeat(32);
    let stale = rootfs.join(format!(".tmp-{hex}-{dead}-1"));
    let aside = rootfs.join(format!(".rm-{hex}-{dead}-2"));
    let live = rootfs.join(format!(".tmp-{hex}-{}-3", std::process::id()));
    for t in [&stale, &aside, &live] {
        fs::create_dir_all(t.join("usr/bin")).expect("mkdir");
        for i in 0..200 {
            fs::write(t.join(format!("usr/bin/f{i}")), "x").expect("write");
        }
    }
    let mut w = World::start(None, &[]);
    // The world's daemon uses its own data dir: restart it on this one.
    for (k, v) in w.env.iter_mut() {
        if k == "XDG_DATA_HOME" {
            *v = base.path().join("data").display().to_string();
        }
    }
    w.kill_and_start_daemon();
    let end = Instant::now() + Duration::from_secs(20);
    while (stale.exists() || aside.exists()) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !stale.exists(),
        "the dead unpack's tree is gone\n{}",
        w.log()
    );
    assert!(
        !aside.exists(),
        "the dead prune's tree is gone\n{}",
        w.log()
    );
    assert!(live.join("usr/bin/f0").exists(), "a live process's is kept");
}
