//! Container services end to end, as an unprivileged user: images from a
//! local OCI layout (built here from busybox-static with umoci), an
//! `oci-archive` of it and a private registry it is pushed to, the store,
//! unpacking in a user namespace, and real runc through a root-owned
//! setuid copy of `locald-shim`. `locald up` runs as the test user, and
//! writes to a private journald at the default socket path.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use locald_tests::images::{archive, build_busybox_layout, missing_tools, Layout, Registry};
use locald_tests::journald::Journald;
use locald_tests::shim::{chown_tree, leftovers, preconditions, test_user};
use locald_tests::userworld::{Up, UserWorld};
use locald_tests::{free_port, pids_with, require, unique};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Everything one test needs: a user, the shim, and a scratch tree the user owns.
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
        if let Some(why) = missing_tools() {
            if require(false, &why) {
                return Ok(None);
            }
        }
        let user = test_user("locald-ctr-t1")?;
        Ok(Some(World(UserWorld::new(user, "locald-ctr-")?)))
    }

    /// A project owned by the user, with a busybox OCI layout at `./layout`.
    fn project(&self, toml: &str) -> Result<PathBuf> {
        let dir = self.project_dir()?;
        self.write(&dir.join("locald.toml"), toml)?;
        Ok(dir)
    }

    /// A project directory owned by the user with a busybox OCI layout at
    /// `./layout` and no `locald.toml` yet.
    fn project_dir(&self) -> Result<PathBuf> {
        let dir = self.base.path().join(unique("proj"));
        fs::create_dir(&dir)?;
        build_busybox_layout(&dir.join("layout"))?;
        chown_tree(&dir, (self.user.uid, self.user.gid))?;
        Ok(dir)
    }

    /// Writes the user's `$XDG_CONFIG_HOME/locald/config.toml`.
    fn user_config(&self, toml: &str) -> Result<()> {
        let dir = self.base.path().join("config/locald");
        fs::create_dir_all(&dir)?;
        chown_tree(&dir, (self.user.uid, self.user.gid))?;
        self.write(&dir.join("config.toml"), toml)
    }

    /// The user's containers of the project in `dir` (tests run at once
    /// share the user, so only this project's ids count).
    fn containers(&self, dir: &Path) -> Result<Vec<String>> {
        let text = fs::read_to_string(dir.join("locald.toml"))?;
        let name = text
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .map(|n| n.trim_matches('"').to_owned())
            .context("project name")?;
        let key = locald::runtime::claim::project_key(&name, &dir.canonicalize()?);
        let mine = locald::runtime::container::container_id(&key, "");
        Ok(self
            .all_containers()?
            .into_iter()
            .filter(|id| id.starts_with(&mine))
            .collect())
    }

    /// `locald-shim list` as the user: the ids of their containers.
    fn all_containers(&self) -> Result<Vec<String>> {
        let out = Command::new("setpriv")
            .arg(format!("--reuid={}", self.user.uid))
            .arg(format!("--regid={}", self.user.gid))
            .arg("--init-groups")
            .arg(&self.shim.path)
            .arg("list")
            .output()?;
        if !out.status.success() {
            bail!("locald-shim list: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: serde_json::Value =
            serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        Ok(v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|c| c["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default())
    }
}

fn wait_gone(marker: &str) -> Result<()> {
    let end = Instant::now() + Duration::from_secs(10);
    while !pids_with(marker).is_empty() {
        if Instant::now() > end {
            bail!("processes with {marker} are still there");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

#[test]
fn an_image_service_runs_from_an_oci_layout_and_leaves_nothing_behind() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let marker = unique("ctr-web");
    let dir = w.project(&format!(
        r#"[project]
name = "{}"

[services.web]
image = "oci:./layout:v1"
command = ["/bin/busybox", "sh", "-c", "echo web-says-$LOCALD_TEST; cat /etc/locald-test-marker; touch /tmp/ok && echo tmp-writable; echo x > /etc/written && echo root-writable; /bin/busybox sleep 1000; : {marker}"]

[services.ro]
image = "oci:./layout:v1"
read_only = true
command = ["/bin/busybox", "sh", "-c", "echo y > /etc/nope 2>/dev/null || echo ro-refused; touch /tmp/ok && echo ro-tmp-writable; /bin/busybox sleep 1000; : {marker}"]
"#,
        unique("ctr")
    ))?;
    let up = Up::start(&w, &dir)?;
    up.wait_for("web-says-1", 1, Duration::from_secs(60))?;
    up.wait_for("second layer", 1, Duration::from_secs(5))?;
    up.wait_for("tmp-writable", 1, Duration::from_secs(5))?;
    up.wait_for("root-writable", 1, Duration::from_secs(5))?;
    up.wait_for("ro-refused", 1, Duration::from_secs(30))?;
    up.wait_for("ro-tmp-writable", 1, Duration::from_secs(5))?;
    assert_eq!(w.containers(&dir)?.len(), 2, "two containers");
    assert_eq!(pids_with(&marker).len(), 2);
    // The container wrote into its own copy, never into the shared rootfs.
    let shared = w.base.path().join("data/locald/rootfs");
    let written: Vec<_> = fs::read_dir(&shared)?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("etc/written").exists())
        .collect();
    assert!(written.is_empty(), "the shared rootfs was changed");
    let out = up.stop()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    wait_gone(&marker)?;
    assert!(w.containers(&dir)?.is_empty(), "no runc state left");
    Ok(())
}

#[test]
fn a_container_waits_for_a_healthy_dependency_and_restarts_after_a_crash() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let port = free_port();
    let marker = unique("ctr-db");
    let dir = w.project(&format!(
        r#"[project]
name = "{}"

[services.db]
image = "oci:./layout:v1"
command = ["/bin/busybox", "sh", "-c", "mkdir -p /tmp/www; /bin/busybox httpd -f -p {port} -h /tmp/www; : {marker}"]
health = {{ tcp = {port}, interval = "100ms" }}

# Healthy only when a file exists *inside* the container: the probe must
# run there (through locald-shim exec), not on the host.
[services.probe]
image = "oci:./layout:v1"
read_only = true
command = ["/bin/busybox", "sh", "-c", "/bin/busybox sleep 1; touch /tmp/ready-{marker}; echo probe-ready; /bin/busybox sleep 1000; : {marker}"]
health = {{ command = ["/bin/busybox", "test", "-f", "/tmp/ready-{marker}"], interval = "100ms" }}

[services.web]
image = "oci:./layout:v1"
command = ["/bin/busybox", "sh", "-c", "echo web-start; /bin/busybox sleep 0.3; exit 3"]
depends_on = ["db", "probe"]
restart_delay = "100ms"
"#,
        unique("ctr")
    ))?;
    let up = Up::start(&w, &dir)?;
    up.wait_for("web-start", 3, Duration::from_secs(60))?;
    let text = up.text();
    let healthy = text.find("db").context("db mentioned")?;
    let first_web = text.find("web-start").context("web started")?;
    assert!(healthy < first_web, "db first:\n{text}");
    let probed = text.find("probe-ready").context("probe ran")?;
    assert!(
        probed < first_web,
        "web waited for the in-container probe:\n{text}"
    );
    assert!(
        !Path::new(&format!("/tmp/ready-{marker}")).exists(),
        "the probe's file is the container's, not the host's"
    );
    // `: MARKER` ends the two services' own scripts; the health probes
    // (`locald-shim exec … test -f /tmp/ready-MARKER`) may be running too
    // and are not what is counted.
    assert_eq!(
        pids_with(&format!(": {marker}")).len(),
        2,
        "db and probe run once throughout"
    );
    let out = up.stop()?;
    assert!(out.status.success());
    wait_gone(&marker)?;
    assert!(w.containers(&dir)?.is_empty(), "no runc state left");
    Ok(())
}

#[test]
fn after_locald_is_killed_the_next_start_has_one_copy_of_each_container() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let marker = unique("ctr-kill");
    let dir = w.project(&format!(
        r#"[project]
name = "{}"

[services.web]
image = "oci:./layout:v1"
command = ["/bin/busybox", "sh", "-c", "echo web-up; /bin/busybox sleep 1000; : {marker}"]
"#,
        unique("ctr")
    ))?;
    let up = Up::start(&w, &dir)?;
    up.wait_for("web-up", 1, Duration::from_secs(60))?;
    up.kill_hard();
    assert_eq!(
        pids_with(&marker).len(),
        1,
        "the container outlives a killed locald"
    );

    let up = Up::start(&w, &dir)?;
    up.wait_for("web-up", 1, Duration::from_secs(60))?;
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(pids_with(&marker).len(), 1, "exactly one copy");
    assert_eq!(w.containers(&dir)?.len(), 1);
    up.stop()?;
    wait_gone(&marker)?;
    assert!(w.containers(&dir)?.is_empty());
    Ok(())
}

#[test]
fn killing_the_shim_never_orphans_runc_or_the_container() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let marker = unique("ctr-shimkill");
    let dir = w.project(&format!(
        r#"[project]
name = "{}"

[services.web]
image = "oci:./layout:v1"
read_only = true
command = ["/bin/busybox", "sh", "-c", "echo web-up; /bin/busybox sleep 1000; : {marker}"]
restart_delay = "100ms"
"#,
        unique("ctr")
    ))?;
    let up = Up::start(&w, &dir)?;
    up.wait_for("web-up", 1, Duration::from_secs(60))?;
    let first = pids_with(&marker);
    assert_eq!(first.len(), 1);
    // The shim's own process (the caller may signal it; runc it may not).
    let shims: Vec<i32> = pids_with("locald-shim run --bundle")
        .into_iter()
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| c.contains(&w.base.path().display().to_string()))
        })
        .collect();
    assert_eq!(shims.len(), 1, "one shim for the one container");
    kill(Pid::from_raw(shims[0]), Signal::SIGKILL)?;
    // locald sees the shim end, deletes the container by id, and restarts it.
    up.wait_for("web-up", 2, Duration::from_secs(30))?;
    let end = Instant::now() + Duration::from_secs(10);
    while pids_with(&marker).iter().any(|p| first.contains(p)) {
        if Instant::now() > end {
            bail!("the first container outlived its killed shim");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(pids_with(&marker).len(), 1, "exactly the restarted copy");
    assert_eq!(w.containers(&dir)?.len(), 1);
    up.stop()?;
    wait_gone(&marker)?;
    assert!(w.containers(&dir)?.is_empty());
    Ok(())
}

/// The host pid `locald up` printed for `service` ("SERVICE running pid N").
fn running_pid(text: &str, service: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let rest = l.trim_start().strip_prefix("locald ")?.trim_start();
        let pid = rest
            .strip_prefix(service)?
            .trim_start()
            .strip_prefix("running pid ")?;
        Some(pid.trim().to_owned())
    })
}

#[test]
fn a_container_services_lines_are_in_journald_with_every_field_and_its_image() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let Some(mut journal) = Journald::start_or_skip("container journald fields")? else {
        return Ok(());
    };
    let project = unique("ctr-journal");
    let marker = unique("ctr-journal-sleep");
    let dir = w.project(&format!(
        r#"[project]
name = "{project}"

[services.web]
image = "oci:./layout:v1"
command = ["/bin/busybox", "sh", "-c", "echo out-line; echo err-line >&2; /bin/busybox sleep 1000; : {marker}"]
stderr_priority = "warning"
"#
    ))?;
    let digest = Layout {
        dir: dir.join("layout"),
    }
    .digest("v1")?;
    // locald finds journald at its default path, as on a user's machine.
    let mut cmd = journal.command_with_default_paths("setpriv");
    cmd.args(w.locald_args(&["up", &dir.display().to_string()]));
    let up = Up::spawn(cmd, &dir)?;
    up.wait_for("err-line", 1, Duration::from_secs(60))?;
    let pid = running_pid(&up.text(), "web").context("the pid locald printed")?;
    // The container's own init (the shell running the command), not the
    // shim or runc.
    assert_eq!(
        pids_with(&marker),
        vec![pid.parse::<i32>()?],
        "the pid locald reports"
    );

    let by_project = [("LOCALD_PROJECT", project.as_str())];
    journal.wait_for_count(&by_project, 2, Duration::from_secs(10))?;
    let entries = journal.synced_query(&by_project)?;
    let fields = |message: &str| -> Result<BTreeMap<&'static str, String>> {
        let e = entries
            .iter()
            .find(|e| e.field("MESSAGE") == message)
            .with_context(|| format!("no entry {message:?} in {entries:#?}"))?;
        Ok([
            "MESSAGE",
            "PRIORITY",
            "SYSLOG_IDENTIFIER",
            "SYSLOG_PID",
            "LOCALD_PROJECT",
            "LOCALD_SERVICE",
            "LOCALD_PHASE",
            "LOCALD_STREAM",
            "LOCALD_PID",
            "LOCALD_IMAGE",
            "_UID",
        ]
        .into_iter()
        .map(|f| (f, e.field(f)))
        .collect())
    };
    let expected = |message: &str, priority: &str, stream: &str| {
        BTreeMap::from([
            ("MESSAGE", message.to_owned()),
            ("PRIORITY", priority.to_owned()),
            ("SYSLOG_IDENTIFIER", "web".to_owned()),
            ("SYSLOG_PID", pid.clone()),
            ("LOCALD_PROJECT", project.clone()),
            ("LOCALD_SERVICE", "web".to_owned()),
            ("LOCALD_PHASE", "run".to_owned()),
            ("LOCALD_STREAM", stream.to_owned()),
            ("LOCALD_PID", pid.clone()),
            ("LOCALD_IMAGE", digest.clone()),
            ("_UID", w.user.uid.to_string()),
        ])
    };
    assert_eq!(fields("out-line")?, expected("out-line", "6", "stdout"));
    assert_eq!(fields("err-line")?, expected("err-line", "4", "stderr"));
    assert!(up.stop()?.status.success());
    wait_gone(&marker)?;
    assert!(w.containers(&dir)?.is_empty(), "no runc state left");
    Ok(())
}

#[test]
fn a_container_service_runs_an_image_from_a_local_registry_pulled_once() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let registry = Registry::start()?;
    let dir = w.project_dir()?;
    let layout = Layout {
        dir: dir.join("layout"),
    };
    let digest = layout.digest("v1")?;
    let reference = registry.push(&layout.dir, "v1", "locald-test/busybox")?;
    // Only the registry has the image now.
    fs::remove_dir_all(&layout.dir)?;
    w.user_config(&format!("insecure_registries = [\"{}\"]\n", registry.addr))?;
    let marker = unique("ctr-registry");
    w.write(
        &dir.join("locald.toml"),
        &format!(
            r#"[project]
name = "{}"

[services.web]
image = "{reference}"
command = ["/bin/busybox", "sh", "-c", "echo registry-image $LOCALD_TEST $LOCALD_IMAGE; cat /etc/locald-test-marker; /bin/busybox sleep 1000; : {marker}"]
"#,
            unique("ctr")
        ),
    )?;

    let up = Up::start(&w, &dir)?;
    up.wait_for(
        &format!("registry-image 1 {digest}"),
        1,
        Duration::from_secs(60),
    )?;
    up.wait_for("second layer", 1, Duration::from_secs(5))?;
    assert!(up.stop()?.status.success());
    wait_gone(&marker)?;
    let pulled = registry.blob_gets("locald/");
    // The config and the two layers.
    assert_eq!(pulled, 3, "blob downloads:\n{}", registry.log());

    // A second start uses the stored image: nothing is downloaded again.
    let up = Up::start(&w, &dir)?;
    up.wait_for("registry-image 1", 1, Duration::from_secs(60))?;
    assert!(up.stop()?.status.success());
    wait_gone(&marker)?;
    assert_eq!(registry.blob_gets("locald/"), pulled, "{}", registry.log());
    assert!(w.containers(&dir)?.is_empty(), "no runc state left");
    Ok(())
}

#[test]
fn a_container_service_runs_from_an_oci_archive() -> Result<()> {
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let dir = w.project_dir()?;
    let layout = dir.join("layout");
    let digest = Layout {
        dir: layout.clone(),
    }
    .digest("v1")?;
    archive(&layout, "v1", &dir.join("image.tar"))?;
    // Only the archive has the image now.
    fs::remove_dir_all(&layout)?;
    chown_tree(&dir, (w.user.uid, w.user.gid))?;
    let marker = unique("ctr-archive");
    w.write(
        &dir.join("locald.toml"),
        &format!(
            r#"[project]
name = "{}"

[services.web]
image = "oci-archive:./image.tar:v1"
command = ["/bin/busybox", "sh", "-c", "echo archive-image $LOCALD_TEST $LOCALD_IMAGE; cat /etc/locald-test-marker; /bin/busybox sleep 1000; : {marker}"]
"#,
            unique("ctr")
        ),
    )?;
    let up = Up::start(&w, &dir)?;
    up.wait_for(
        &format!("archive-image 1 {digest}"),
        1,
        Duration::from_secs(60),
    )?;
    up.wait_for("second layer", 1, Duration::from_secs(5))?;
    assert_eq!(w.containers(&dir)?.len(), 1, "one container");
    assert!(up.stop()?.status.success());
    wait_gone(&marker)?;
    assert!(w.containers(&dir)?.is_empty(), "no runc state left");
    Ok(())
}

#[test]
fn a_container_that_ignores_sigterm_is_killed_at_its_stop_timeout_and_leaves_no_state() -> Result<()>
{
    let Some(w) = World::new()? else {
        return Ok(());
    };
    let marker = unique("ctr-stubborn");
    let dir = w.project(&format!(
        r#"[project]
name = "{}"

[services.web]
image = "oci:./layout:v1"
command = ["/bin/busybox", "sh", "-c", "trap '' TERM; echo ignoring-term; while :; do /bin/busybox sleep 1; done; : {marker}"]
stop_timeout = "2s"
"#,
        unique("ctr")
    ))?;
    let up = Up::start(&w, &dir)?;
    up.wait_for("ignoring-term", 1, Duration::from_secs(60))?;
    let ids = w.containers(&dir)?;
    assert_eq!(ids.len(), 1, "one container");

    let asked = Instant::now();
    let out = up.stop()?;
    let took = asked.elapsed();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        took >= Duration::from_millis(1900),
        "stopped after {took:?}: SIGTERM was ignored, so only SIGKILL at the timeout ends it\n{text}"
    );
    // Well before the default 10 s: the service's own timeout counts.
    assert!(
        took < Duration::from_secs(7),
        "stopped after {took:?}\n{text}"
    );
    assert!(text.contains("web stopped"), "{text}");
    wait_gone(&marker)?;
    assert!(w.containers(&dir)?.is_empty(), "no runc state left");
    assert_eq!(leftovers(w.user.uid, &ids[0]), Vec::<PathBuf>::new());
    Ok(())
}
