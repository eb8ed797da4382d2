//! Container services end to end, as an unprivileged user: images from a
//! local OCI layout (built here from busybox-static with umoci), the store,
//! unpacking in a user namespace, and real runc through a root-owned
//! setuid copy of `locald-shim`. `locald up` runs as the test user.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use locald_tests::images::{build_busybox_layout, missing_tools};
use locald_tests::shim::{
    chown_tree, install_shim, preconditions, test_user, InstalledShim, TestUser,
};
use locald_tests::{bin, free_port, pids_with, require, unique};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Everything one test needs: a user, the shim, and a scratch tree the user owns.
struct World {
    user: TestUser,
    shim: InstalledShim,
    base: tempfile::TempDir,
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
        let shim = install_shim()?;
        let base = tempfile::Builder::new()
            .prefix("locald-ctr-")
            .tempdir_in("/tmp")?;
        fs::set_permissions(base.path(), fs::Permissions::from_mode(0o755))?;
        for d in ["run", "data", "home"] {
            let p = base.path().join(d);
            fs::create_dir(&p)?;
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700))?;
        }
        chown_tree(base.path(), (user.uid, user.gid))?;
        Ok(Some(World { user, shim, base }))
    }

    /// A project owned by the user, with a busybox OCI layout at `./layout`.
    fn project(&self, toml: &str) -> Result<PathBuf> {
        let dir = self.base.path().join(unique("proj"));
        fs::create_dir(&dir)?;
        build_busybox_layout(&dir.join("layout"))?;
        fs::write(dir.join("locald.toml"), toml)?;
        chown_tree(&dir, (self.user.uid, self.user.gid))?;
        Ok(dir)
    }

    /// `locald ARGS` as the user, with its own runtime and data directories
    /// and the test's shim.
    fn locald(&self, args: &[&str]) -> Command {
        let mut c = Command::new("setpriv");
        c.arg(format!("--reuid={}", self.user.uid))
            .arg(format!("--regid={}", self.user.gid))
            .arg("--init-groups")
            .arg("env")
            .arg(format!(
                "XDG_RUNTIME_DIR={}",
                self.base.path().join("run").display()
            ))
            .arg(format!(
                "XDG_DATA_HOME={}",
                self.base.path().join("data").display()
            ))
            .arg(format!("HOME={}", self.base.path().join("home").display()))
            .arg(format!("LOCALD_SHIM={}", self.shim.path.display()))
            .arg("NO_COLOR=1")
            .arg(bin("locald"))
            .args(args);
        c
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

/// `locald up DIR` in the background, its output into a file.
struct Up {
    child: Child,
    out: PathBuf,
}

impl Up {
    fn start(w: &World, dir: &Path) -> Result<Up> {
        let out = dir.with_extension("out");
        let f = fs::File::create(&out)?;
        let child = w
            .locald(&["up", &dir.display().to_string()])
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()?;
        Ok(Up { child, out })
    }

    fn text(&self) -> String {
        fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn wait_for(&self, what: &str, n: usize, timeout: Duration) -> Result<()> {
        let end = Instant::now() + timeout;
        while self.text().matches(what).count() < n {
            if Instant::now() > end {
                bail!("never saw {what:?} {n} times; output:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn stop(mut self) -> Result<Output> {
        let _ = kill(Pid::from_raw(self.child.id() as i32), Signal::SIGINT);
        let end = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait()?.is_none() {
            if Instant::now() > end {
                let _ = self.child.kill();
                bail!("locald up did not stop; output:\n{}", self.text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let status = self.child.wait()?;
        Ok(Output {
            status,
            stdout: self.text().into_bytes(),
            stderr: Vec::new(),
        })
    }

    fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
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
    assert_eq!(
        pids_with(&marker).len(),
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
