//! Test images and a private registry, for the image tests and for anything
//! else that needs a real image (the container runtime's tests).
//!
//! - [`build_busybox_layout`] builds a small OCI image layout with `umoci`
//!   from the host's `busybox-static`: tag `base` (one layer: busybox and
//!   its `sh` link), tag `v1` (a second layer on top with a marker file and
//!   an entrypoint), and tag `multi`, an image index whose entry for this
//!   machine is `v1` and whose other entry (for another architecture) is
//!   `base`. Blobs are made world-readable (umoci writes them 0600) so an
//!   unprivileged test user can import the layout.
//! - [`Registry`] runs Debian's `docker-registry` (distribution 2.8) on
//!   127.0.0.1 with a free port and a temporary storage directory; it is
//!   killed and its storage removed on drop. [`Registry::push`] copies a
//!   tag with `skopeo`; [`Registry::blob_data`] is where a blob lives in
//!   its storage (to corrupt it); [`Registry::blob_gets`] counts the blob
//!   downloads a user agent made, from the registry's access log.
//! - [`archive`] writes an `oci-archive` with `skopeo`.

use std::fs;
use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Tools the image tests need, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/umoci", "umoci"),
    ("/usr/bin/skopeo", "skopeo"),
    ("/usr/bin/docker-registry", "docker-registry"),
    ("/bin/busybox", "busybox-static"),
];

/// Why the image tests cannot run here, if they cannot.
pub fn missing_tools() -> Option<String> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(path, pkg)| format!("{path} (apt-get install {pkg})"))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "missing {}; tests/setup-debian.sh installs them",
            missing.join(", ")
        )
    })
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn umoci(args: &[&str]) -> Result<String> {
    run(Command::new("umoci").args(args))
}

/// The OCI name of this machine's architecture (`amd64`, `arm64`).
pub fn this_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// A layout built by [`build_busybox_layout`].
pub struct Layout {
    /// The layout directory.
    pub dir: PathBuf,
}

impl Layout {
    /// The descriptor in `index.json` tagged `tag`.
    pub fn descriptor(&self, tag: &str) -> Result<Value> {
        let index: Value = serde_json::from_slice(&fs::read(self.dir.join("index.json"))?)?;
        index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|d| d["annotations"]["org.opencontainers.image.ref.name"] == tag)
            .cloned()
            .with_context(|| format!("no tag {tag} in {}", self.dir.display()))
    }

    /// The digest `tag` names in `index.json`.
    pub fn digest(&self, tag: &str) -> Result<String> {
        Ok(self.descriptor(tag)?["digest"]
            .as_str()
            .context("digest")?
            .to_owned())
    }

    /// A blob of the layout, parsed as JSON.
    pub fn json_blob(&self, digest: &str) -> Result<Value> {
        let hex = digest.strip_prefix("sha256:").context("sha256 digest")?;
        Ok(serde_json::from_slice(&fs::read(
            self.dir.join("blobs/sha256").join(hex),
        )?)?)
    }

    /// The layer digests of the image manifest `digest`, lowest first.
    pub fn layers(&self, manifest_digest: &str) -> Result<Vec<String>> {
        let m = self.json_blob(manifest_digest)?;
        Ok(m["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|l| l["digest"].as_str().map(str::to_owned))
            .collect())
    }
}

/// Builds the busybox layout at `dir` (which must not exist): tags `base`,
/// `v1` and `multi` as the module doc says.
pub fn build_busybox_layout(dir: &Path) -> Result<Layout> {
    let work = dir.with_extension("work");
    let layout = dir.to_str().context("utf-8 path")?;
    let bundle = work.to_str().context("utf-8 path")?;
    umoci(&["init", "--layout", layout])?;
    umoci(&["new", "--image", &format!("{layout}:base")])?;

    umoci(&[
        "unpack",
        "--rootless",
        "--image",
        &format!("{layout}:base"),
        bundle,
    ])?;
    let rootfs = work.join("rootfs");
    fs::create_dir_all(rootfs.join("bin"))?;
    fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh"))?;
    umoci(&["repack", "--image", &format!("{layout}:base"), bundle])?;
    fs::remove_dir_all(&work)?;

    umoci(&[
        "config",
        "--image",
        &format!("{layout}:base"),
        "--tag",
        "v1",
        "--config.entrypoint",
        "/bin/sh",
        "--config.cmd=-c",
        "--config.cmd=cat /etc/locald-test-marker",
        "--config.env",
        "LOCALD_TEST=1",
    ])?;
    umoci(&[
        "unpack",
        "--rootless",
        "--image",
        &format!("{layout}:v1"),
        bundle,
    ])?;
    fs::create_dir_all(work.join("rootfs/etc"))?;
    fs::write(work.join("rootfs/etc/locald-test-marker"), "second layer\n")?;
    umoci(&["repack", "--image", &format!("{layout}:v1"), bundle])?;
    fs::remove_dir_all(&work)?;

    let l = Layout {
        dir: dir.to_owned(),
    };
    add_index(&l, "multi", &[("v1", this_arch()), ("base", other_arch())])?;
    make_readable(dir)?;
    Ok(l)
}

fn other_arch() -> &'static str {
    if this_arch() == "s390x" {
        "riscv64"
    } else {
        "s390x"
    }
}

/// Adds an image index tagged `tag` whose entries are the manifests of the
/// given tags, each declared for linux and the given architecture.
pub fn add_index(l: &Layout, tag: &str, entries: &[(&str, &str)]) -> Result<()> {
    let mut manifests = Vec::new();
    for (from, arch) in entries {
        let mut d = l.descriptor(from)?;
        d.as_object_mut()
            .context("descriptor")?
            .remove("annotations");
        d["platform"] = json!({"os": "linux", "architecture": arch});
        manifests.push(d);
    }
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": manifests,
    }))?;
    let digest = sha256_hex(&index)?;
    fs::write(l.dir.join("blobs/sha256").join(&digest), &index)?;
    let path = l.dir.join("index.json");
    let mut top: Value = serde_json::from_slice(&fs::read(&path)?)?;
    top["manifests"]
        .as_array_mut()
        .context("manifests")?
        .push(json!({
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{digest}"),
            "size": index.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }));
    fs::write(&path, serde_json::to_vec(&top)?)?;
    Ok(())
}

/// SHA-256 of `data` in hex, by `sha256sum` (a digest nobody here wrote).
pub fn sha256_hex(data: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("sha256sum")?;
    child.stdin.take().context("stdin")?.write_all(data)?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .split_whitespace()
        .next()
        .context("no digest")?
        .to_owned())
}

/// umoci writes blobs 0600 and directories 0700; open the layout to
/// everyone for reading (tests import it as unprivileged users too).
pub fn make_readable(dir: &Path) -> Result<()> {
    for entry in walk(dir)? {
        let meta = fs::symlink_metadata(&entry)?;
        let mode = if meta.is_dir() { 0o755 } else { 0o644 };
        if !meta.file_type().is_symlink() {
            fs::set_permissions(&entry, fs::Permissions::from_mode(mode))?;
        }
    }
    Ok(())
}

fn walk(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        if fs::symlink_metadata(&p)?.is_dir() {
            for e in fs::read_dir(&p)? {
                out.push(e?.path());
            }
        }
        i += 1;
    }
    Ok(out)
}

/// Writes `layout:tag` as an oci-archive at `file` (tagged `tag` inside).
pub fn archive(layout: &Path, tag: &str, file: &Path) -> Result<()> {
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{}:{tag}", layout.display()),
        &format!("oci-archive:{}:{tag}", file.display()),
    ]))?;
    Ok(())
}

/// A private `docker-registry` on 127.0.0.1.
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Its storage and config; removed on drop.
    pub dir: tempfile::TempDir,
}

impl Registry {
    /// Starts a registry on a free port and waits until `/v2/` answers.
    pub fn start() -> Result<Registry> {
        let mut last = None;
        // The free port is released before the registry binds it; another
        // process may take it in between, so try a few.
        for _ in 0..3 {
            match Registry::try_start() {
                Ok(r) => return Ok(r),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("registry did not start")))
    }

    fn try_start() -> Result<Registry> {
        let dir = tempfile::Builder::new()
            .prefix("locald-registry-")
            .tempdir()?;
        let addr = format!("127.0.0.1:{}", crate::free_port());
        let storage = dir.path().join("storage");
        fs::create_dir(&storage)?;
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\n\
                 log:\n  level: warn\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n",
                storage.display()
            ),
        )?;
        let log = fs::File::create(dir.path().join("registry.log"))?;
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting docker-registry")?;
        let mut r = Registry { child, addr, dir };
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if r.answers() {
                return Ok(r);
            }
            if let Some(status) = r.child.try_wait()? {
                bail!("docker-registry exited ({status}): {}", r.log());
            }
            if Instant::now() > end {
                bail!("docker-registry did not answer on {}: {}", r.addr, r.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(&self.addr) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n").is_err() {
            return false;
        }
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).is_ok() && buf.starts_with(b"HTTP/1.")
    }

    /// The registry's log (access log and errors).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Pushes `layout:tag` as `REPO:tag` (all manifests of an index);
    /// returns `127.0.0.1:PORT/REPO:tag`.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str) -> Result<String> {
        self.push_as(layout, tag, repo, None)
    }

    /// As [`Registry::push`], converting to a manifest `format` (`v2s2` for
    /// Docker's media types).
    pub fn push_as(
        &self,
        layout: &Path,
        tag: &str,
        repo: &str,
        format: Option<&str>,
    ) -> Result<String> {
        let dest = format!("{}/{repo}:{tag}", self.addr);
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--all", "--dest-tls-verify=false"]);
        if let Some(f) = format {
            cmd.args(["--format", f]);
        }
        cmd.arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{dest}"));
        run(&mut cmd)?;
        Ok(dest)
    }

    /// Where the registry keeps blob `digest` (`sha256:…`).
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// How many blob GETs answered 200 to clients whose user agent starts
    /// with `agent`, from the access log.
    pub fn blob_gets(&self, agent: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .filter(|l| l.contains("HTTP/1.1\" 200") || l.contains("HTTP/2.0\" 200"))
            .filter(|l| l.contains(&format!("\"{agent}")))
            .count()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
