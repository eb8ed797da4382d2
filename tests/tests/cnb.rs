//! Buildpacks builds end to end, as an unprivileged user: the fixture
//! builder (`tests/fixtures/cnb/`, a builder of our own with a stand-in
//! lifecycle: public builders cannot be downloaded here) as an OCI layout in
//! the project, `locald build` and `locald up` running its creator in a
//! container through a root-owned setuid copy of `locald-shim`, the exported
//! image checked with `skopeo` and `umoci`, and the service started from it
//! answering its health check.
//!
//! The "file exists" failure of a reused layers directory (seed 002 §3.3)
//! is reproduced against the fixture itself in `cnb_fixture.rs`
//! (`restore_into_a_reused_layers_dir_fails_with_file_exists`); here three
//! consecutive builds with a warm cache prove locald never reuses one.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use locald_tests::cnb;
use locald_tests::journald::Journald;
use locald_tests::shim::{chown_tree, preconditions, test_user};
use locald_tests::userworld::{Up, UserWorld};
use locald_tests::{free_port, pids_with, require, unique};

/// A user, the shim, and a scratch tree the user owns.
struct World(UserWorld);

impl std::ops::Deref for World {
    type Target = UserWorld;
    fn deref(&self) -> &UserWorld {
        &self.0
    }
}

impl World {
    fn new() -> Result<Option<World>> {
        if !preconditions() {
            return Ok(None);
        }
        if let Some(why) = cnb::missing_tools() {
            if require(false, &why) {
                return Ok(None);
            }
        }
        let user = test_user("locald-cnb-t1")?;
        Ok(Some(World(UserWorld::new(user, "locald-cnb-")?)))
    }

    /// A project owned by the user: the fixture builder at `./builder`
    /// (tags `builder` and `run`), `hello.txt`, and `locald.toml`.
    fn project(&self, toml: &str) -> Result<PathBuf> {
        let dir = self.base.path().join(unique("proj"));
        fs::create_dir(&dir)?;
        cnb::make_builder(&dir.join("builder"), &[])?;
        fs::write(dir.join("hello.txt"), "hello from the cnb test\n")?;
        fs::write(dir.join("locald.toml"), toml)?;
        chown_tree(&dir, (self.user.uid, self.user.gid))?;
        Ok(dir)
    }

    fn build(&self, dir: &Path, args: &[&str]) -> Result<(bool, String)> {
        let mut a = vec!["build"];
        a.extend_from_slice(args);
        let d = dir.display().to_string();
        let out = self
            .locald(&a)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("locald build {d}"))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((out.status.success(), text))
    }
}

fn project_toml(name: &str, port: u16, extra: &str) -> String {
    format!(
        r#"[project]
name = "{name}"

[services.web]
build = {{ builder = "oci:./builder:builder", run_image = "oci:./builder:run"{extra} }}
env = {{ PORT = "{port}" }}
health = {{ http = "http://127.0.0.1:{port}/hello.txt", interval = "200ms" }}
"#
    )
}

fn manifest(dir: &Path) -> Result<serde_json::Value> {
    let p = dir.join(".locald/services/web/artifacts/manifest.json");
    Ok(serde_json::from_slice(
        &fs::read(&p).with_context(|| p.display().to_string())?,
    )?)
}

fn run(cmd: &mut Command) -> Result<String> {
    let out: Output = cmd.stdin(Stdio::null()).output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn build_skip_rebuild_with_warm_cache_and_a_valid_image() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let dir = w.project(&project_toml(&unique("cnb"), free_port(), ""))?;

    // First build: the five phases, the buildpacks creating their layers.
    let t0 = Instant::now();
    let (ok, out) = w.build(&dir, &[])?;
    let cold = t0.elapsed();
    assert!(ok, "first build failed:\n{out}");
    for banner in [
        "===> ANALYZING",
        "===> DETECTING",
        "===> RESTORING",
        "===> BUILDING",
        "===> EXPORTING",
    ] {
        assert!(out.contains(banner), "no {banner}:\n{out}");
    }
    assert!(out.contains("creating cached layer 'deps'"), "{out}");
    let m = manifest(&dir)?;
    assert_eq!(m["kind"], "cnb");
    assert!(
        m["source_hash"].as_str().is_some_and(|h| h.len() == 64),
        "{m}"
    );
    assert!(
        m["builder_image_digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{m}"
    );
    assert!(
        m["cnb"]["run_image_digest"]
            .as_str()
            .is_some_and(|d| d.starts_with("sha256:")),
        "{m}"
    );
    assert_eq!(m["cnb"]["platform_api"], "0.13");
    assert_eq!(m["cnb"]["process_types"], serde_json::json!(["web"]));
    assert_eq!(m["cnb"]["default_process"], "web");
    // Nothing of the build is left but the artifact, and the cache in the
    // user's private build directory.
    assert_eq!(left_behind(&dir)?, ["artifacts", "artifacts.lock"]);
    assert_eq!(private_left(&w, &dir)?, ["cache"]);
    // The sources were never written to.
    assert_eq!(
        fs::read_to_string(dir.join("hello.txt"))?,
        "hello from the cnb test\n"
    );

    // The exported image is an OCI layout other tools read.
    let layout = dir.join(".locald/services/web/artifacts/oci-layout");
    let inspect = run(Command::new("skopeo").args([
        "inspect",
        "--config",
        &format!("oci:{}:latest", layout.display()),
    ]))?;
    assert!(
        inspect.contains("io.buildpacks.build.metadata"),
        "{inspect}"
    );
    let scratch = tempfile::tempdir()?;
    let copy = scratch.path().join("layout");
    run(Command::new("cp").arg("-a").arg(&layout).arg(&copy))?;
    run(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:latest", copy.display()),
        &scratch.path().join("bundle").display().to_string(),
    ]))?;
    assert!(scratch
        .path()
        .join("bundle/rootfs/workspace/hello.txt")
        .exists());
    assert!(fs::symlink_metadata(scratch.path().join("bundle/rootfs/cnb/process/web")).is_ok());

    // Unchanged: skipped, no container.
    let t1 = Instant::now();
    let (ok, out) = w.build(&dir, &[])?;
    let noop = t1.elapsed();
    assert!(ok && out.contains("Build up to date"), "{out}");
    assert!(
        !out.contains("===>"),
        "a skipped build ran the creator:\n{out}"
    );

    // A source change rebuilds, with the cache restored; twice more, so a
    // third warm build proves the layers directory is never reused.
    for i in 2..=4 {
        w.write(&dir.join("hello.txt"), &format!("hello again {i}\n"))?;
        let (ok, out) = w.build(&dir, &[])?;
        assert!(ok, "build {i} failed:\n{out}");
        assert!(out.contains("source changed"), "{out}");
        assert!(
            out.contains("reusing cached layer 'deps'"),
            "build {i}:\n{out}"
        );
        assert!(!out.contains("file exists"), "{out}");
    }
    eprintln!("cold build {cold:?}, no-op build {noop:?}");
    Ok(())
}

#[test]
fn a_failing_buildpack_keeps_the_last_artifact_and_a_builder_change_rebuilds() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let name = unique("cnb");
    let port = free_port();
    let dir = w.project(&project_toml(&name, port, ""))?;
    // The builder layout is in the project: leave it out of the sources, so
    // what changes below is only the images.
    w.write(
        &dir.join("project.toml"),
        "[build]\nexclude = [\"builder\"]\n",
    )?;
    let (ok, out) = w.build(&dir, &[])?;
    assert!(ok, "{out}");
    let good = manifest(&dir)?;

    // bin/build fails on purpose with BP_HELLO_FAIL in the platform env.
    w.write(
        &dir.join("locald.toml"),
        &project_toml(&name, port, r#", env = { BP_HELLO_FAIL = "true" }"#),
    )?;
    let (ok, out) = w.build(&dir, &[])?;
    assert!(!ok, "the build should fail:\n{out}");
    assert!(out.contains("bin/build failed"), "{out}");
    assert_eq!(manifest(&dir)?, good, "the last good artifact stays");

    // A new builder digest (another run image name in its metadata) rebuilds.
    w.write(&dir.join("locald.toml"), &project_toml(&name, port, ""))?;
    let (ok, out) = w.build(&dir, &[])?;
    assert!(ok && out.contains("Build up to date"), "{out}");
    let builder = dir.join("builder");
    fs::remove_dir_all(&builder)?;
    let status = Command::new(cnb::fixture_dir().join("make-builder.sh"))
        .arg(&builder)
        .env(
            "FIXTURE_RUN_IMAGE",
            "registry.locald.test/fixture/other-run:1",
        )
        .stdout(Stdio::null())
        .status()?;
    assert!(status.success());
    chown_tree(&builder, (w.user.uid, w.user.gid))?;
    let (ok, out) = w.build(&dir, &[])?;
    assert!(ok, "{out}");
    assert!(out.contains("builder image changed"), "{out}");

    // A new run image digest rebuilds too.
    run(Command::new("umoci").args([
        "config",
        "--image",
        &format!("{}:run", builder.display()),
        "--config.env",
        "RUN_IMAGE_CHANGED=1",
    ]))?;
    chown_tree(&builder, (w.user.uid, w.user.gid))?;
    let (ok, out) = w.build(&dir, &[])?;
    assert!(ok, "{out}");
    assert!(out.contains("run image changed"), "{out}");
    let (ok, out) = w.build(&dir, &[])?;
    assert!(ok && out.contains("Build up to date"), "{out}");
    Ok(())
}

fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

#[test]
fn up_builds_once_and_runs_the_default_process_until_healthy() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let port = free_port();
    let dir = w.project(&project_toml(&unique("cnb"), port, ""))?;
    let up = Up::start(&w, &dir)?;
    up.wait_for("Restoring cache", 1, Duration::from_secs(120))?;
    up.wait_for("healthy", 1, Duration::from_secs(120))?;
    let body = http_get(port, "/hello.txt").context("no answer")?;
    assert!(body.contains("hello from the cnb test"), "{body}");
    let text = String::from_utf8_lossy(&up.stop()?.stdout).into_owned();
    assert!(text.contains("===> EXPORTING"), "{text}");

    // Up again: the artifact is current, no build runs.
    let up = Up::start(&w, &dir)?;
    up.wait_for("healthy", 1, Duration::from_secs(60))?;
    let text = String::from_utf8_lossy(&up.stop()?.stdout).into_owned();
    assert!(!text.contains("===> ANALYZING"), "rebuilt:\n{text}");
    assert!(text.contains("Build up to date"), "{text}");
    Ok(())
}

#[test]
fn project_toml_exclude_env_and_a_local_buildpack() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let port = free_port();
    let dir = w.project(&project_toml(
        &unique("cnb"),
        port,
        r#", process = "extra""#,
    ))?;
    let bp = dir.join("bp");
    fs::create_dir_all(bp.join("bin"))?;
    fs::write(
        bp.join("buildpack.toml"),
        "api = \"0.9\"\n[buildpack]\nid = \"locald-test/extra\"\nversion = \"0.0.1\"\n[[stacks]]\nid = \"*\"\n",
    )?;
    fs::write(bp.join("bin/detect"), "#!/usr/bin/env bash\nexit 0\n")?;
    fs::write(
        bp.join("bin/build"),
        r#"#!/usr/bin/env bash
set -euo pipefail
echo "---> extra buildpack: EXTRA_FROM_PROJECT=$(cat "$CNB_PLATFORM_DIR/env/EXTRA_FROM_PROJECT")"
cat >"$CNB_LAYERS_DIR/launch.toml" <<'TOML'
[[processes]]
type = "extra"
command = ["bash", "-c", "echo extra-process-ran; exec hello-web"]
TOML
"#,
    )?;
    for f in ["bin/detect", "bin/build"] {
        fs::set_permissions(bp.join(f), fs::Permissions::from_mode(0o755))?;
    }
    fs::write(
        dir.join("project.toml"),
        r#"[_]
schema-version = "0.2"

[build]
exclude = ["secret.txt", "builder"]

[[build.buildpacks]]
id = "locald-fixture/hello"

[[build.buildpacks]]
uri = "./bp"

[[build.env]]
name = "EXTRA_FROM_PROJECT"
value = "yes-it-is"
"#,
    )?;
    fs::write(dir.join("secret.txt"), "do not ship\n")?;
    chown_tree(&dir, (w.user.uid, w.user.gid))?;

    let (ok, out) = w.build(&dir, &[])?;
    assert!(ok, "{out}");
    assert!(out.contains("EXTRA_FROM_PROJECT=yes-it-is"), "{out}");
    let m = manifest(&dir)?;
    assert_eq!(
        m["cnb"]["process_types"],
        serde_json::json!(["web", "extra"]),
        "{m}"
    );

    // The excluded file is neither in the image nor a reason to rebuild.
    let scratch = tempfile::tempdir()?;
    let copy = scratch.path().join("layout");
    run(Command::new("cp")
        .arg("-a")
        .arg(dir.join(".locald/services/web/artifacts/oci-layout"))
        .arg(&copy))?;
    run(Command::new("umoci").args([
        "unpack",
        "--image",
        &format!("{}:latest", copy.display()),
        &scratch.path().join("bundle").display().to_string(),
    ]))?;
    let ws = scratch.path().join("bundle/rootfs/workspace");
    assert!(ws.join("hello.txt").exists());
    assert!(!ws.join("secret.txt").exists(), "secret.txt was shipped");
    w.write(&dir.join("secret.txt"), "still not shipped\n")?;
    let (ok, out) = w.build(&dir, &[])?;
    assert!(ok && out.contains("Build up to date"), "{out}");

    // The chosen process type runs.
    let up = Up::start(&w, &dir)?;
    up.wait_for("extra-process-ran", 1, Duration::from_secs(60))?;
    up.wait_for("healthy", 1, Duration::from_secs(60))?;
    up.stop()?;
    Ok(())
}

#[test]
fn a_failing_build_logs_every_line_to_journald_as_the_build_phase() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let Some(mut journal) = Journald::start_or_skip("cnb build journald fields")? else {
        return Ok(());
    };
    let project = unique("cnb-journal");
    let dir = w.project(&project_toml(
        &project,
        free_port(),
        r#", env = { BP_HELLO_FAIL = "true" }"#,
    ))?;
    let mut cmd = journal.command_with_default_paths("setpriv");
    cmd.args(w.locald_args(&["build"]));
    let out = cmd.current_dir(&dir).stdin(Stdio::null()).output()?;
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    let q = [
        ("LOCALD_PROJECT", project.as_str()),
        ("LOCALD_PHASE", "build"),
    ];
    journal.wait_for_count(&q, 8, Duration::from_secs(10))?;
    let entries = journal.synced_query(&q)?;
    let failing = entries
        .iter()
        .find(|e| e.field("MESSAGE").contains("failing this build on purpose"))
        .with_context(|| format!("no buildpack line in {entries:#?}"))?;
    assert_eq!(failing.field("LOCALD_SERVICE"), "web");
    let id = failing.field("LOCALD_BUILD_ID");
    assert_eq!(id.len(), 16, "{failing:?}");
    for banner in ["===> ANALYZING", "===> BUILDING"] {
        assert!(
            entries
                .iter()
                .any(|e| e.field("MESSAGE") == banner && e.field("LOCALD_BUILD_ID") == id),
            "{banner} not logged with build {id}"
        );
    }
    Ok(())
}

#[test]
fn stopping_up_mid_build_stops_the_container_and_keeps_the_last_artifact() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let port = free_port();
    let dir = w.project(&project_toml(&unique("cnb"), port, ""))?;
    let (ok, out) = w.build(&dir, &[])?;
    assert!(ok, "{out}");
    let good = manifest(&dir)?;

    // A buildpack that takes its time, added with project.toml.
    let marker = unique("cnb-slow");
    let bp = dir.join("slow");
    fs::create_dir_all(bp.join("bin"))?;
    fs::write(
        bp.join("buildpack.toml"),
        "api = \"0.9\"\n[buildpack]\nid = \"locald-test/slow\"\nversion = \"1.0.0\"\n[[stacks]]\nid = \"*\"\n",
    )?;
    fs::write(bp.join("bin/detect"), "#!/usr/bin/env bash\nexit 0\n")?;
    fs::write(
        bp.join("bin/build"),
        format!(
            "#!/usr/bin/env bash\necho slow-buildpack-sleeping\nbash -c 'sleep 60; : {marker}'\n"
        ),
    )?;
    for f in ["bin/detect", "bin/build"] {
        fs::set_permissions(bp.join(f), fs::Permissions::from_mode(0o755))?;
    }
    fs::write(
        dir.join("project.toml"),
        "[[build.buildpacks]]\nid = \"locald-fixture/hello\"\n[[build.buildpacks]]\nuri = \"slow\"\n",
    )?;
    chown_tree(&dir, (w.user.uid, w.user.gid))?;

    let up = Up::start(&w, &dir)?;
    up.wait_for("slow-buildpack-sleeping", 1, Duration::from_secs(60))?;
    assert_eq!(pids_with(&marker).len(), 1, "the build is running");
    up.stop()?;
    let end = Instant::now() + Duration::from_secs(10);
    while !pids_with(&marker).is_empty() {
        assert!(
            Instant::now() < end,
            "the build container outlived locald up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(manifest(&dir)?, good, "the last good artifact stays");
    assert_eq!(left_behind(&dir)?, ["artifacts", "artifacts.lock"]);
    assert_eq!(private_left(&w, &dir)?, ["cache"]);

    // Without the slow buildpack the sources are the last build's again.
    fs::remove_file(dir.join("project.toml"))?;
    fs::remove_dir_all(&bp)?;
    let (ok, out) = w.build(&dir, &[])?;
    assert!(ok && out.contains("Build up to date"), "{out}");
    Ok(())
}

#[test]
fn an_explicit_command_wins_over_the_process_types_and_runs_through_the_launcher() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let port = free_port();
    let toml = project_toml(&unique("cnb"), port, "").replace(
        "env = {",
        "command = [\"bash\", \"-c\", \"echo command-wins-$HELLO_WEB_ROOT; exec hello-web\"]\nenv = {",
    );
    let dir = w.project(&toml)?;
    let up = Up::start(&w, &dir)?;
    // HELLO_WEB_ROOT comes from the buildpack's launch env: the command ran
    // through the launcher, with the buildpacks' environment.
    up.wait_for("command-wins-/", 1, Duration::from_secs(120))?;
    up.wait_for("healthy", 1, Duration::from_secs(60))?;
    let body = http_get(port, "/hello.txt").context("no answer")?;
    assert!(body.contains("hello from the cnb test"), "{body}");
    up.stop()?;
    Ok(())
}

#[test]
fn port_auto_reaches_the_buildpacks_process_as_port() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let dir = w.project(&format!(
        r#"[project]
name = "{}"

[services.web]
build = {{ builder = "oci:./builder:builder", run_image = "oci:./builder:run" }}
port = "auto"
health = {{ http = "/hello.txt", interval = "200ms" }}
"#,
        unique("cnb")
    ))?;
    let up = Up::start(&w, &dir)?;
    up.wait_for("healthy", 1, Duration::from_secs(120))?;
    up.stop()?;
    Ok(())
}

fn names_in(dir: &Path) -> Result<Vec<String>> {
    let mut left: Vec<String> = fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    Ok(left)
}

/// What a build left in the project's `.locald/services/web/`.
fn left_behind(project: &Path) -> Result<Vec<String>> {
    names_in(&project.join(".locald/services/web"))
}

/// What a build left in the user's private build directory of `web`
/// (`$HOME/.cache/locald/builds/<key>/web/`).
fn private_left(w: &UserWorld, project: &Path) -> Result<Vec<String>> {
    let builds = w.base.path().join("home/.cache/locald/builds");
    let keys = names_in(&builds)?;
    let name = fs::read_to_string(project.join("locald.toml"))?
        .lines()
        .find_map(|l| {
            l.strip_prefix("name = ")
                .map(|n| n.trim_matches('"').to_owned())
        })
        .unwrap_or_default();
    let key = keys
        .iter()
        .find(|k| k.starts_with(&format!("{name}-")))
        .ok_or_else(|| anyhow::anyhow!("no build directory of {name} in {keys:?}"))?;
    names_in(&builds.join(key).join("web"))
}
