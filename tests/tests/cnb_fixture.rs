//! The CNB fixture builder (`tests/fixtures/cnb/`) run for real, without
//! locald: `make-builder.sh` writes the builder, and its stand-in `creator`
//! runs in a container made from the builder's root file system (`umoci
//! unpack` as root, then a private mount namespace and `chroot`, with the
//! app, layers, cache, platform and layout directories bind-mounted where
//! the creator is told they are, and the image's own environment and user
//! from umoci's bundle config). The exported image is checked with tools
//! nobody here wrote (`skopeo inspect`, `umoci unpack`), and its processes
//! are started through the launcher the way a container runtime would.
//!
//! Needs root (mounts and chroot); skipped with a reason otherwise, failed
//! under `CI=true`.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use locald_tests::cnb::{self, RUN_IMAGE};
use serde_json::Value;

/// The output image's reference, and where the creator writes it.
const IMAGE: &str = "locald.local/fixture/app";
const IMAGE_PATH: &str = "locald.local/fixture/app/latest";
const BANNERS: [&str; 5] = [
    "===> ANALYZING",
    "===> DETECTING",
    "===> RESTORING",
    "===> BUILDING",
    "===> EXPORTING",
];
const GREETING: &str = "hello from the fixture app";

/// Mounts the directories into ROOTFS and runs the rest of the arguments
/// there as USERSPEC with exactly the environment given (`env -i`). With
/// RO=1 the root is read-only with a tmpfs on /tmp, as locald runs images.
const IN_CONTAINER: &str = r#"
set -e
R=$1 A=$2 L=$3 C=$4 O=$5 P=$6 U=$7
shift 8
if [ "$RO" = 1 ]; then
    mount --bind "$R" "$R"
    mount -o remount,bind,ro "$R"
    mount -t tmpfs tmpfs "$R/tmp"
fi
mount --bind /dev/null "$R/dev/null"
mount -t proc proc "$R/proc"
[ -z "$A" ] || mount --bind "$A" "$R/workspace"
[ -z "$L" ] || mount --bind "$L" "$R/layers"
[ -z "$C" ] || mount --bind "$C" "$R/cache"
[ -z "$O" ] || mount --bind "$O" "$R/layout-repo"
[ -z "$P" ] || mount --bind "$P" "$R/platform"
exec 2>&1
exec chroot --userspec="$U" "$R" /usr/bin/env -i "$@"
"#;

/// A root file system unpacked by umoci, with the process umoci's bundle
/// config describes (the image's Env, User resolved in its /etc/passwd,
/// Entrypoint).
struct Bundle {
    rootfs: PathBuf,
    env: Vec<String>,
    uid: u32,
    gid: u32,
    args: Vec<String>,
    read_only: bool,
}

impl Bundle {
    fn unpack(layout: &Path, tag: &str, dir: &Path) -> Bundle {
        run_ok(Command::new("umoci").args([
            "unpack",
            "--image",
            &format!("{}:{tag}", layout.display()),
            &dir.display().to_string(),
        ]));
        let config: Value =
            serde_json::from_slice(&fs::read(dir.join("config.json")).expect("config.json"))
                .expect("bundle config");
        let process = &config["process"];
        let strings = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        };
        let rootfs = dir.join("rootfs");
        fs::write(rootfs.join("dev/null"), "").expect("dev/null mount point");
        Bundle {
            rootfs,
            env: strings(&process["env"]),
            uid: process["user"]["uid"].as_u64().expect("uid") as u32,
            gid: process["user"]["gid"].as_u64().expect("gid") as u32,
            args: strings(&process["args"]),
            read_only: false,
        }
    }

    fn env_value(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find_map(|e| e.strip_prefix(name)?.strip_prefix('='))
    }

    /// A command running `argv` in this root file system with `mounts`
    /// (app, layers, cache, layout dir, platform; None for none) as
    /// `userspec`, with the image's environment plus `extra_env`.
    fn command(
        &self,
        mounts: [Option<&Path>; 5],
        userspec: &str,
        extra_env: &[String],
        argv: &[&str],
    ) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.env("RO", if self.read_only { "1" } else { "0" })
            .args(["--mount", "--", "sh", "-c", IN_CONTAINER, "sh"])
            .arg(&self.rootfs);
        for m in mounts {
            cmd.arg(m.map(Path::as_os_str).unwrap_or_default());
        }
        cmd.arg(userspec)
            .arg("--")
            .args(&self.env)
            .args(extra_env)
            .args(argv)
            .stdin(Stdio::null());
        cmd
    }
}

fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn chown(path: &Path, uid: u32, gid: u32) {
    run_ok(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{uid}:{gid}"))
            .arg(path),
    );
}

/// The builder made, unpacked, and the directories a platform provides.
struct Fixture {
    dir: tempfile::TempDir,
    layout: PathBuf,
    builder: Bundle,
    app: PathBuf,
    cache: PathBuf,
    layout_dir: PathBuf,
    platform: PathBuf,
}

/// What one creator run printed (stdout and stderr, in order) and its exit
/// code.
struct Run {
    code: i32,
    output: String,
}

impl Fixture {
    fn new() -> Option<Fixture> {
        let missing = cnb::missing_tools();
        if locald_tests::require(missing.is_none(), missing.as_deref().unwrap_or("")) {
            return None;
        }
        if locald_tests::require(
            nix::unistd::geteuid().is_root(),
            "the CNB fixture test runs the creator in a chroot with bind mounts: run it as root",
        ) {
            return None;
        }
        let dir = tempfile::Builder::new()
            .prefix("locald-cnb-fixture-")
            .tempdir()
            .expect("tempdir");
        let layout = dir.path().join("builder-layout");
        cnb::make_builder(&layout, &[]).expect("make-builder.sh");
        let builder = Bundle::unpack(&layout, "builder", &dir.path().join("builder"));
        let (uid, gid) = (builder.uid, builder.gid);

        let app = dir.path().join("app");
        fs::create_dir(&app).expect("app");
        fs::write(app.join("hello.txt"), format!("{GREETING}\n")).expect("hello.txt");
        fs::write(app.join("worker.sh"), "echo \"worker ran in $PWD\"\n").expect("worker.sh");
        let cache = dir.path().join("cache");
        let layout_dir = dir.path().join("layout-repo");
        let platform = dir.path().join("platform");
        for d in [&cache, &layout_dir, &platform.join("env")] {
            fs::create_dir_all(d).expect("mkdir");
        }
        cnb::place_run_image(&layout, &layout_dir, RUN_IMAGE).expect("run image");
        for d in [&app, &cache, &layout_dir] {
            chown(d, uid, gid);
        }
        Some(Fixture {
            dir,
            layout,
            builder,
            app,
            cache,
            layout_dir,
            platform,
        })
    }

    /// A fresh layers directory, owned by `owner` (uid, gid).
    fn layers(&self, name: &str, owner: (u32, u32)) -> PathBuf {
        let d = self.dir.path().join(name);
        fs::create_dir(&d).expect("layers dir");
        chown(&d, owner.0, owner.1);
        d
    }

    /// Runs the creator as `userspec` with the platform's usual inputs
    /// (Platform API 0.13, layout export) and `extra` flags.
    fn creator(&self, layers: &Path, userspec: &str, extra: &[&str]) -> Run {
        let uid = self.builder.env_value("CNB_USER_ID").expect("CNB_USER_ID");
        let gid = self
            .builder
            .env_value("CNB_GROUP_ID")
            .expect("CNB_GROUP_ID");
        let mut argv = vec![
            "/cnb/lifecycle/creator",
            "-app",
            "/workspace",
            "-layers",
            "/layers",
            "-cache-dir",
            "/cache",
            "-platform",
            "/platform",
            "-layout",
            "-layout-dir",
            "/layout-repo",
            "-run-image",
            RUN_IMAGE,
            "-uid",
            uid,
            "-gid",
            gid,
        ];
        argv.extend_from_slice(extra);
        argv.push(IMAGE);
        self.run_creator_argv(layers, userspec, &platform_env(), &argv)
    }

    fn run_creator_argv(
        &self,
        layers: &Path,
        userspec: &str,
        env: &[String],
        argv: &[&str],
    ) -> Run {
        let out = self
            .builder
            .command(
                [
                    Some(&self.app),
                    Some(layers),
                    Some(&self.cache),
                    Some(&self.layout_dir),
                    Some(&self.platform),
                ],
                userspec,
                env,
                argv,
            )
            .output()
            .expect("run the creator");
        Run {
            code: out.status.code().unwrap_or(-1),
            output: String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        }
    }

    fn build_user(&self) -> String {
        format!("{}:{}", self.builder.uid, self.builder.gid)
    }

    fn output_image(&self) -> PathBuf {
        self.layout_dir.join(IMAGE_PATH)
    }
}

fn platform_env() -> Vec<String> {
    vec![
        "CNB_PLATFORM_API=0.13".into(),
        "CNB_EXPERIMENTAL_MODE=warn".into(),
    ]
}

fn assert_ok(run: &Run, what: &str) {
    assert_eq!(run.code, 0, "{what} failed:\n{}", run.output);
}

/// The five phase banners, each once, in the lifecycle's order.
fn assert_banners(output: &str) {
    let mut last = 0;
    for banner in BANNERS {
        let at = output
            .find(banner)
            .unwrap_or_else(|| panic!("no {banner:?} in:\n{output}"));
        assert!(at >= last, "{banner:?} out of order in:\n{output}");
        assert_eq!(
            output.matches(banner).count(),
            1,
            "{banner:?} twice in:\n{output}"
        );
        last = at;
    }
}

fn skopeo_inspect(path: &Path, config: bool) -> Value {
    let mut cmd = Command::new("skopeo");
    cmd.arg("inspect");
    if config {
        cmd.arg("--config");
    }
    cmd.arg(format!("oci:{}:latest", path.display()));
    serde_json::from_str(&run_ok(&mut cmd)).expect("skopeo inspect output")
}

fn label_json(labels: &Value, key: &str) -> Value {
    let text = labels[key]
        .as_str()
        .unwrap_or_else(|| panic!("no label {key} in {labels}"));
    serde_json::from_str(text).unwrap_or_else(|e| panic!("label {key} is not JSON ({e}): {text}"))
}

#[test]
fn fixture_builder_has_a_real_builders_labels_user_and_files() {
    let Some(f) = Fixture::new() else { return };
    let inspect = skopeo_inspect_tag(&f.layout, "builder");
    let labels = &inspect["Labels"];
    let md = label_json(labels, "io.buildpacks.builder.metadata");
    let platform_apis = &md["lifecycle"]["apis"]["platform"]["supported"];
    for api in ["0.12", "0.13"] {
        assert!(
            platform_apis.as_array().unwrap().iter().any(|v| v == api),
            "platform API {api} missing from {md}"
        );
    }
    assert_eq!(md["stack"]["runImage"]["image"], RUN_IMAGE, "{md}");
    assert_eq!(md["images"][0]["image"], RUN_IMAGE, "{md}");
    let ids: Vec<&str> = md["buildpacks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b["id"].as_str())
        .collect();
    assert_eq!(ids, ["locald-fixture/hello", "locald-fixture/worker"]);
    assert!(
        md["description"].as_str().unwrap().contains("fixture"),
        "the builder says it is a fixture: {md}"
    );
    assert!(labels["io.buildpacks.stack.id"].is_string(), "{labels}");
    let order = label_json(labels, "io.buildpacks.buildpack.order");
    assert_eq!(order[0]["group"][1]["optional"], true, "{order}");
    // Every buildpack's layer diffID is a layer of the image.
    let config: Value = serde_json::from_str(&run_ok(Command::new("skopeo").args([
        "inspect",
        "--config",
        &format!("oci:{}:builder", f.layout.display()),
    ])))
    .unwrap();
    let diff_ids = config["rootfs"]["diff_ids"].as_array().unwrap();
    let bp_layers = label_json(labels, "io.buildpacks.buildpack.layers");
    for (id, versions) in bp_layers.as_object().unwrap() {
        for (version, info) in versions.as_object().unwrap() {
            assert!(
                diff_ids.contains(&info["layerDiffID"]),
                "{id}@{version}: {} is not a layer of the builder",
                info["layerDiffID"]
            );
        }
    }

    // The CNB user: the image's User, CNB_USER_ID/CNB_GROUP_ID, and an entry
    // in the image's own passwd and group (umoci resolved "cnb" through them).
    assert_eq!(config["config"]["User"], "cnb");
    assert_eq!(f.builder.env_value("CNB_USER_ID"), Some("1000"));
    assert_eq!(f.builder.env_value("CNB_GROUP_ID"), Some("1000"));
    assert_eq!((f.builder.uid, f.builder.gid), (1000, 1000));
    let root = &f.builder.rootfs;
    let passwd = fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd.lines().any(|l| l.starts_with("cnb:x:1000:1000:")),
        "{passwd}"
    );
    let group = fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(
        group.lines().any(|l| l.starts_with("cnb:x:1000:")),
        "{group}"
    );

    for file in [
        "cnb/order.toml",
        "cnb/run.toml",
        "cnb/lifecycle/creator",
        "cnb/lifecycle/launcher",
        "cnb/lifecycle/lifecycle.toml",
        "cnb/buildpacks/locald-fixture_hello/0.1.0/buildpack.toml",
        "cnb/buildpacks/locald-fixture_hello/0.1.0/bin/detect",
        "cnb/buildpacks/locald-fixture_hello/0.1.0/bin/build",
        "cnb/buildpacks/locald-fixture_worker/0.1.0/bin/build",
        "bin/bash",
        "bin/busybox",
    ] {
        assert!(root.join(file).is_file(), "{file} missing from the builder");
    }
    // Where a platform mounts its directories (the root may be read-only);
    // the CNB user writes all but /platform.
    for dir in [
        "workspace",
        "layers",
        "cache",
        "launch-cache",
        "layout-repo",
        "platform",
    ] {
        let meta = fs::metadata(root.join(dir)).unwrap_or_else(|e| panic!("/{dir}: {e}"));
        assert!(meta.is_dir(), "/{dir}");
        let owner = meta.uid();
        assert_eq!(
            owner,
            if dir == "platform" { 0 } else { 1000 },
            "/{dir}'s owner"
        );
    }
    let lifecycle_toml = fs::read_to_string(root.join("cnb/lifecycle/lifecycle.toml")).unwrap();
    assert!(
        lifecycle_toml.contains(r#"supported = ["0.12", "0.13"]"#),
        "{lifecycle_toml}"
    );

    // The run image: busybox and bash, its own (different) user, stack id.
    let run = skopeo_inspect_tag(&f.layout, "run");
    assert_eq!(
        run["Labels"]["io.buildpacks.stack.id"],
        labels["io.buildpacks.stack.id"]
    );
}

fn skopeo_inspect_tag(layout: &Path, tag: &str) -> Value {
    serde_json::from_str(&run_ok(
        Command::new("skopeo").args(["inspect", &format!("oci:{}:{tag}", layout.display())]),
    ))
    .expect("skopeo inspect output")
}

#[test]
fn creator_builds_caches_and_exports_a_runnable_layout() {
    let Some(f) = Fixture::new() else { return };
    let user = (f.builder.uid, f.builder.gid);

    // 1. As root, the way `pack` runs a layout export: the creator makes the
    // (root-owned) layers directory the CNB user's and drops to -uid/-gid.
    let layers1 = f.layers("layers-1", (0, 0));
    let first = f.creator(&layers1, "0:0", &[]);
    assert_ok(&first, "the first build");
    assert_banners(&first.output);
    assert_contains(&first, "creating cached layer 'deps'");
    assert_contains(&first, "Adding cache layer 'locald-fixture/hello:deps'");
    assert_contains(&first, "Setting default process type 'web'");
    let owner = fs::metadata(layers1.join("config/metadata.toml")).expect("metadata.toml");
    assert_eq!(owner.uid(), user.0, "the build ran as the CNB user");
    let app = assert_exported_image(&f);

    // 2. As the CNB user (as locald runs it through the shim), a fresh layers
    // directory and the same cache: the buildpack finds its cached layer.
    let layers2 = f.layers("layers-2", user);
    let second = f.creator(&layers2, &f.build_user(), &[]);
    assert_ok(&second, "the second build");
    assert_banners(&second.output);
    assert_contains(
        &second,
        "Restoring data for \"locald-fixture/hello:deps\" from cache",
    );
    assert_contains(&second, "reusing cached layer 'deps'");
    assert_contains(&second, "Reusing cache layer 'locald-fixture/hello:deps'");

    // 3. A third consecutive build, warm cache, fresh layers: passes too.
    let layers3 = f.layers("layers-3", user);
    let third = f.creator(&layers3, &f.build_user(), &["-process-type", "worker"]);
    assert_ok(&third, "the third build");
    assert_contains(&third, "reusing cached layer 'deps'");
    let config = skopeo_inspect(&f.output_image(), true);
    assert_eq!(
        config["config"]["Entrypoint"][0], "/cnb/process/worker",
        "-process-type"
    );

    assert_processes_run(&app);
}

/// The first build's image, as skopeo and umoci read it; returns it
/// unpacked, to run on a read-only root.
fn assert_exported_image(f: &Fixture) -> Bundle {
    let image = f.output_image();
    let inspect = skopeo_inspect(&image, false);
    let build_md = label_json(&inspect["Labels"], "io.buildpacks.build.metadata");
    let field = |list: &Value, key: &str| -> Vec<String> {
        list.as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v[key].as_str().map(str::to_owned))
            .collect()
    };
    assert_eq!(
        field(&build_md["processes"], "type"),
        ["web", "worker"],
        "{build_md}"
    );
    assert_eq!(build_md["buildpack-default-process-type"], "web");
    assert_eq!(
        field(&build_md["buildpacks"], "id"),
        ["locald-fixture/hello", "locald-fixture/worker"]
    );
    let lifecycle_md = label_json(&inspect["Labels"], "io.buildpacks.lifecycle.metadata");
    assert_eq!(
        lifecycle_md["runImage"]["image"], RUN_IMAGE,
        "{lifecycle_md}"
    );
    let web_layer = &lifecycle_md["buildpacks"][0]["layers"]["web"];
    assert_eq!(web_layer["data"]["greeting"], GREETING, "{lifecycle_md}");
    let config = skopeo_inspect(&image, true);
    assert_eq!(config["config"]["Entrypoint"][0], "/cnb/process/web");
    assert_eq!(config["config"]["WorkingDir"], "/workspace");
    assert_eq!(config["config"]["User"], "cnbrun", "the run image's user");
    let index: Value =
        serde_json::from_slice(&fs::read(image.join("index.json")).unwrap()).unwrap();
    let annotations = &index["manifests"][0]["annotations"];
    assert_eq!(annotations["org.opencontainers.image.ref.name"], "latest");

    let mut app = Bundle::unpack(&image, "latest", &f.dir.path().join("app-image"));
    app.read_only = true;
    let link = fs::read_link(app.rootfs.join("cnb/process/web")).expect("process symlink");
    assert_eq!(link, Path::new("/cnb/lifecycle/launcher"));
    for file in [
        "workspace/hello.txt",
        "layers/config/metadata.toml",
        "cnb/lifecycle/launcher",
    ] {
        assert!(
            app.rootfs.join(file).is_file(),
            "{file} missing from the app image"
        );
    }
    assert!(
        !app.rootfs.join("layers/locald-fixture_hello/deps").exists(),
        "a cache-only layer is not in the image"
    );
    assert_eq!(app.args, ["/cnb/process/web"]);
    app
}

/// The exported processes start through the launcher, as the run image's
/// user, with the image's environment, on a read-only root: the worker
/// runs, the web process answers over HTTP.
fn assert_processes_run(app: &Bundle) {
    let userspec = format!("{}:{}", app.uid, app.gid);
    let worker = run_ok(&mut app.command([None; 5], &userspec, &[], &["/cnb/process/worker"]));
    assert!(worker.contains("worker ran in /workspace"), "{worker}");

    let port = locald_tests::free_port();
    let entrypoint: Vec<&str> = app.args.iter().map(String::as_str).collect();
    let web = app
        .command([None; 5], &userspec, &[format!("PORT={port}")], &entrypoint)
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("start the web process");
    let _web = KillOnDrop(web);
    let body = http_get(port, "/hello.txt", Duration::from_secs(10));
    assert!(body.contains(GREETING), "GET /hello.txt answered {body:?}");
}

fn assert_contains(run: &Run, needle: &str) {
    assert!(
        run.output.contains(needle),
        "{needle:?} not in:\n{}",
        run.output
    );
}

#[test]
fn restore_into_a_reused_layers_dir_fails_with_file_exists() {
    // Seed 002 §3.3: "file exists" during restore comes from reusing a
    // layers directory; a platform must give each build a fresh one.
    let Some(f) = Fixture::new() else { return };
    let user = (f.builder.uid, f.builder.gid);
    let layers = f.layers("layers", user);
    assert_ok(&f.creator(&layers, &f.build_user(), &[]), "the first build");
    let again = f.creator(&layers, &f.build_user(), &[]);
    assert_eq!(again.code, 42, "a restore error:\n{}", again.output);
    assert_contains(&again, "file exists");
    assert_contains(&again, "ERROR: failed to restore");
    assert!(!again.output.contains("===> BUILDING"), "{}", again.output);
}

#[test]
fn creator_refuses_what_the_platform_spec_does_not_allow_or_it_does_not_do() {
    let Some(f) = Fixture::new() else { return };
    let layers = f.layers("layers", (f.builder.uid, f.builder.gid));
    let user = f.build_user();

    let unknown = f.creator(&layers, &user, &["-no-such-flag"]);
    assert_eq!(unknown.code, 2, "{}", unknown.output);
    assert_contains(&unknown, "flag provided but not defined: -no-such-flag");

    let no_api = f.run_creator_argv(&layers, &user, &[], &["/cnb/lifecycle/creator", IMAGE]);
    assert_eq!(no_api.code, 11, "{}", no_api.output);
    assert_contains(&no_api, "CNB_PLATFORM_API");

    let old_api = f.run_creator_argv(
        &layers,
        &user,
        &["CNB_PLATFORM_API=0.11".into()],
        &["/cnb/lifecycle/creator", IMAGE],
    );
    assert_eq!(old_api.code, 11, "{}", old_api.output);

    // Layout export is experimental: without CNB_EXPERIMENTAL_MODE it fails.
    let experimental = f.run_creator_argv(
        &layers,
        &user,
        &["CNB_PLATFORM_API=0.13".into()],
        &[
            "/cnb/lifecycle/creator",
            "-layout",
            "-layout-dir",
            "/layout-repo",
            IMAGE,
        ],
    );
    assert_eq!(experimental.code, 1, "{}", experimental.output);
    assert_contains(&experimental, "experimental features are disabled");

    // -insecure-registry exists from Platform API 0.13 on.
    let env12 = [
        "CNB_PLATFORM_API=0.12".into(),
        "CNB_EXPERIMENTAL_MODE=warn".into(),
    ];
    let insecure = f.run_creator_argv(
        &layers,
        &user,
        &env12,
        &[
            "/cnb/lifecycle/creator",
            "-insecure-registry",
            "127.0.0.1:5000",
            IMAGE,
        ],
    );
    assert_eq!(insecure.code, 2, "{}", insecure.output);

    // A real lifecycle option the fixture does not implement: refused, not
    // ignored.
    let daemon = f.creator(&layers, &user, &["-daemon"]);
    assert_eq!(daemon.code, 1, "{}", daemon.output);
    assert_contains(&daemon, "not supported by the locald fixture lifecycle");

    let two_images = f.creator(&layers, &user, &["other/image"]);
    assert_eq!(two_images.code, 3, "{}", two_images.output);
}

/// Kills a process group (a command started with `process_group(0)`) on
/// drop: the whole tree, whatever uid its processes changed to.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.0.wait();
    }
}

fn http_get(port: u16, path: &str, timeout: Duration) -> String {
    let end = Instant::now() + timeout;
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            if s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
                .is_ok()
            {
                let mut body = String::new();
                if s.read_to_string(&mut body).is_ok() && !body.is_empty() {
                    return body;
                }
            }
        }
        assert!(Instant::now() < end, "nothing answered on port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
