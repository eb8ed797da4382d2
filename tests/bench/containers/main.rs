//! `containers-bench`: the pull and start benchmarks of issue 10, measured
//! side by side in one run, in interleaved rounds, reported as medians.
//!
//! - **pull**: the unpack benchmark's image (three gzip layers, ~2 MiB
//!   compressed) and the small busybox image, from a private
//!   `docker-registry` on 127.0.0.1, into a fresh store each round:
//!   locald's [`Images::fetch`] (in this process: there is no pull command
//!   to run yet) vs `skopeo copy docker://… oci:…` (a process: its start is
//!   in its figure). Target ≤ 1.0×.
//! - **start**: from starting a one-service project to its first output
//!   line, the busybox image from a local OCI layout:
//!   `locald up` (the image already in the store and unpacked, as on every
//!   start but the first; the `oci:` layout is still re-read each start),
//!   both as services run by default (the container gets its own writable
//!   copy of the image's files) and with `read_only = true` (on the shared
//!   files), vs `podman run --rm --network=none oci:LAYOUT:TAG` (the same
//!   source; podman re-reads it too, and gives the container an overlay)
//!   — target ≤ 0.5× — and vs bare `runc run` of a bundle prepared once
//!   from locald's unpacked rootfs and the config locald writes (read-only
//!   root), the floor — target ≤ 1.3×. Also shown, not in a ratio: `podman
//!   run` of the image already in podman's store, and first starts (import
//!   and unpack; podman's pull into its store).
//!
//! Run it as root (podman and runc run as root; locald runs through a
//! root-owned setuid copy of the shim, as root or, with `--user`, also as
//! that user). `run.sh` beside this builds everything and calls it.
//!
//! ```text
//! containers-bench --locald PATH --shim PATH [--rounds N] [--dir DIR] [--user NAME] [--only pull|start]
//! ```

use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use locald::image::{no_progress, Credentials, ImageRef, Images, RegistryClient, Store};
use locald::shim_client::BundleSpec;
use locald::user_config::UserConfig;
use locald_tests::images::{build_busybox_layout, Registry};
use locald_tests::shim::{chown_tree, test_user, TestUser};
use locald_tests::unpack::{bench_image, write_oci_layout};

struct Args {
    locald: PathBuf,
    shim: PathBuf,
    rounds: usize,
    dir: PathBuf,
    user: Option<String>,
    only: Option<String>,
}

const USAGE: &str = "usage: containers-bench --locald PATH --shim PATH [--rounds N] [--dir DIR] \
                     [--user NAME] [--only pull|start]";

fn parse_args() -> Result<Args> {
    let mut a = Args {
        locald: PathBuf::new(),
        shim: PathBuf::new(),
        rounds: 7,
        dir: PathBuf::from("/var/tmp"),
        user: None,
        only: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = || it.next().context(USAGE);
        match arg.as_str() {
            "--locald" => a.locald = value()?.into(),
            "--shim" => a.shim = value()?.into(),
            "--rounds" => a.rounds = value()?.parse()?,
            "--dir" => a.dir = value()?.into(),
            "--user" => a.user = Some(value()?),
            "--only" => a.only = Some(value()?),
            _ => bail!(USAGE),
        }
    }
    ensure!(a.locald.is_file(), "--locald PATH: the built locald binary");
    ensure!(
        a.shim.is_file(),
        "--shim PATH: a root-owned setuid locald-shim"
    );
    ensure!(a.rounds > 0, "--rounds must be positive");
    ensure!(
        matches!(a.only.as_deref(), None | Some("pull" | "start")),
        "--only pull or --only start"
    );
    ensure!(
        nix::unistd::geteuid().is_root(),
        "run as root (podman and runc run as root)"
    );
    Ok(a)
}

/// One measured figure per round, then its median and best.
#[derive(Default)]
struct Series {
    name: String,
    samples: Vec<Duration>,
}

impl Series {
    fn new(name: impl Into<String>) -> Series {
        Series {
            name: name.into(),
            samples: Vec::new(),
        }
    }

    fn median(&self) -> f64 {
        let mut v = self.samples.clone();
        v.sort();
        ms(v[v.len() / 2])
    }

    fn best(&self) -> f64 {
        self.samples.iter().min().map_or(f64::NAN, |d| ms(*d))
    }

    fn print(&self) {
        println!(
            "  {:<52} {:9.1} ms {:9.1} ms",
            self.name,
            self.median(),
            self.best()
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn ratio(what: &str, ours: &Series, theirs: &Series, target: f64) {
    let r = ours.median() / theirs.median();
    println!(
        "  ratio {what}: {r:.2}x median, {:.2}x best (target <= {target}x){}",
        ours.best() / theirs.best(),
        if r <= target {
            ""
        } else {
            "  ** over target **"
        }
    );
}

fn header() {
    println!("  {:<52} {:>12} {:>12}", "", "median", "best");
}

// ---------------------------------------------------------------- pull

async fn locald_pull(addr: &str, reference: &str, store: &Path, project: &Path) -> Result<()> {
    let config = UserConfig {
        insecure_registries: vec![addr.to_owned()],
        path: None,
    };
    let images = Images::new(
        Store::open(store)?,
        RegistryClient::new(&config, Credentials::none())?,
    );
    let r = ImageRef::parse(reference)?;
    let fetched = images.fetch(&r, project, no_progress()).await?;
    ensure!(!fetched.copied.is_empty(), "locald copied nothing");
    Ok(())
}

fn skopeo_pull(reference: &str, dest: &Path) -> Result<()> {
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{reference}"))
        .arg(format!("oci:{}:bench", dest.display()))
        .stdin(Stdio::null())
        .output()?;
    ensure!(
        out.status.success(),
        "skopeo copy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The size of a layout's blobs in MiB.
fn blobs_mib(layout: &Path) -> Result<f64> {
    let mut total = 0u64;
    for e in std::fs::read_dir(layout.join("blobs/sha256"))? {
        total += e?.metadata()?.len();
    }
    Ok(total as f64 / f64::from(1 << 20))
}

fn pull_bench(
    a: &Args,
    work: &Path,
    registry: &Registry,
    images: &[(String, String)],
) -> Result<()> {
    let rt = tokio::runtime::Runtime::new()?;
    let scratch = work.join("pull");
    std::fs::create_dir_all(&scratch)?;
    println!(
        "\npull from a local registry ({}), fresh store each round, {} rounds",
        registry.addr, a.rounds
    );
    header();
    for (label, reference) in images {
        let mut ours = Series::new(format!("locald Images::fetch, {label}"));
        let mut theirs = Series::new(format!("skopeo copy docker:// oci:, {label}"));
        // A warm-up of each (binaries, page cache), not counted.
        for round in 0..=a.rounds {
            let store = scratch.join(format!("store-{round}"));
            let t = Instant::now();
            rt.block_on(locald_pull(&registry.addr, reference, &store, work))?;
            let ours_t = t.elapsed();
            let dest = scratch.join(format!("skopeo-{round}"));
            let t = Instant::now();
            skopeo_pull(reference, &dest)?;
            let theirs_t = t.elapsed();
            if round > 0 {
                ours.samples.push(ours_t);
                theirs.samples.push(theirs_t);
            }
            std::fs::remove_dir_all(&store)?;
            std::fs::remove_dir_all(&dest)?;
        }
        ours.print();
        theirs.print();
        ratio(&format!("locald/skopeo, {label}"), &ours, &theirs, 1.0);
    }
    Ok(())
}

// --------------------------------------------------------------- start

/// The marker line every contender's container prints first.
const FIRST_LINE: &str = "bench-first-line";

/// How long from spawning `cmd` to a stdout line containing
/// [`FIRST_LINE`]. Then the contender is asked to end with SIGINT
/// (`locald up` keeps running after its service ended; podman and runc
/// end by themselves) and waited for, untimed.
fn first_line(mut cmd: Command, what: &str) -> Result<Duration> {
    let start = Instant::now();
    let mut child: Child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut stdout = BufReader::new(child.stdout.take().context("stdout")?);
    let mut seen = Vec::new();
    let mut first = None;
    let mut line = String::new();
    while stdout.read_line(&mut line)? > 0 {
        if line.contains(FIRST_LINE) {
            first = Some(start.elapsed());
            break;
        }
        seen.push(std::mem::take(&mut line));
    }
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    // Drain both pipes so nothing blocks on a full one while it stops.
    let mut rest = String::new();
    let _ = stdout.read_to_string(&mut rest);
    let out = child.wait_with_output()?;
    let Some(first) = first else {
        bail!(
            "{what} printed no {FIRST_LINE:?} ({}):\n{}{rest}\n{}",
            out.status,
            seen.concat(),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    Ok(first)
}

/// Who runs `locald up`, and where its directories are.
struct LocaldRunner {
    label: String,
    user: Option<TestUser>,
    base: PathBuf,
    project: PathBuf,
}

impl LocaldRunner {
    /// A project (the busybox layout and a one-service `locald.toml`,
    /// `read_only` or with the container's own writable copy of the image)
    /// and XDG directories under `base`, owned by `user` if given.
    fn new(
        label: &str,
        base: PathBuf,
        user: Option<TestUser>,
        read_only: bool,
    ) -> Result<LocaldRunner> {
        let project = base.join("project");
        std::fs::create_dir_all(&project)?;
        for d in ["run", "data", "home", "config"] {
            std::fs::create_dir_all(base.join(d))?;
            std::fs::set_permissions(base.join(d), std::fs::Permissions::from_mode(0o700))?;
        }
        build_busybox_layout(&project.join("layout"))?;
        std::fs::write(
            project.join("locald.toml"),
            format!(
                "[project]\nname = \"bench-start\"\n\n[services.web]\n\
                 image = \"oci:./layout:v1\"\n\
                 read_only = {read_only}\n\
                 command = [\"/bin/busybox\", \"echo\", \"{FIRST_LINE}\"]\n"
            ),
        )?;
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755))?;
        if let Some(u) = &user {
            chown_tree(&base, (u.uid, u.gid))?;
        }
        Ok(LocaldRunner {
            label: label.to_owned(),
            user,
            base,
            project,
        })
    }

    fn command(&self, a: &Args) -> Command {
        let mut c = match &self.user {
            Some(u) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={}", u.uid))
                    .arg(format!("--regid={}", u.gid))
                    .args(["--init-groups", "--"])
                    .arg(&a.locald);
                c
            }
            None => Command::new(&a.locald),
        };
        c.env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("XDG_RUNTIME_DIR", self.base.join("run"))
            .env("XDG_DATA_HOME", self.base.join("data"))
            .env("XDG_CONFIG_HOME", self.base.join("config"))
            .env("HOME", self.base.join("home"))
            .env("LOCALD_SHIM", &a.shim)
            .env("NO_COLOR", "1")
            .arg("up")
            .arg(&self.project);
        c
    }

    /// The rootfs locald unpacked the image into (after a first start).
    fn rootfs(&self) -> Result<PathBuf> {
        let dir = self.base.join("data/locald/rootfs");
        std::fs::read_dir(&dir)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                !p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            })
            .with_context(|| format!("no rootfs in {}", dir.display()))
    }
}

/// podman's run root: short (podman refuses one over 50 bytes), removed
/// at the end.
fn podman_runroot() -> PathBuf {
    PathBuf::from(format!("/run/containers-bench-{}", std::process::id()))
}

/// podman with its own store in the work directory and the lower ulimits
/// the build machines need (root there lacks CAP_SYS_RESOURCE; the hard
/// nofile limit is below podman's default).
fn podman(work: &Path) -> Command {
    let mut c = Command::new("podman");
    c.env("CONTAINERS_CONF", work.join("containers.conf"))
        .arg("--root")
        .arg(work.join("podman"))
        .arg("--runroot")
        .arg(podman_runroot());
    c
}

fn podman_run(work: &Path, image: &str) -> Command {
    let mut c = podman(work);
    // The image's Entrypoint is `/bin/sh -c`: replace it, as locald's
    // `command` does.
    c.args([
        "run",
        "--rm",
        "--network=none",
        "--entrypoint=/bin/busybox",
        image,
    ])
    .args(["echo", FIRST_LINE]);
    c
}

/// A bundle for bare `runc run`: locald's rootfs and the config locald
/// writes for it (read-only root, the same tmpfs mounts), minus the shim.
fn runc_bundle(work: &Path, rootfs: &Path) -> Result<PathBuf> {
    let mut spec = BundleSpec::for_current_user(
        rootfs,
        vec!["/bin/busybox".into(), "echo".into(), FIRST_LINE.into()],
    )?
    .readonly_root(true);
    for tmp in ["/tmp", "/run", "/var/tmp"] {
        spec = spec.tmpfs(tmp);
    }
    Ok(spec.write(&work.join("runc-bundle"))?)
}

fn runc_run(bundle: &Path, round: usize) -> Command {
    let mut c = Command::new("runc");
    c.args(["run", "--bundle"])
        .arg(bundle)
        .arg(format!("containers-bench-{}-{round}", std::process::id()));
    c
}

fn start_bench(a: &Args, work: &Path) -> Result<()> {
    std::fs::write(
        work.join("containers.conf"),
        "[containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1024:1024\"]\n",
    )?;
    let mut runners = vec![
        LocaldRunner::new("locald up, root", work.join("locald-root"), None, false)?,
        LocaldRunner::new(
            "locald up, root, read_only",
            work.join("locald-root-ro"),
            None,
            true,
        )?,
    ];
    if let Some(name) = &a.user {
        let user = test_user(name)?;
        runners.push(LocaldRunner::new(
            &format!("locald up, {name} (setuid shim)"),
            work.join("locald-user"),
            Some(user.clone()),
            false,
        )?);
        runners.push(LocaldRunner::new(
            &format!("locald up, {name}, read_only"),
            work.join("locald-user-ro"),
            Some(user),
            true,
        )?);
    }
    let layout = runners[0].project.join("layout");
    let oci = format!("oci:{}:v1", layout.display());

    println!(
        "\nstart of a one-service project -> its first output line, busybox image from \
         an OCI layout, {} rounds",
        a.rounds
    );
    // First starts: import and unpack (locald), pull into storage (podman).
    let mut cold = Vec::new();
    for r in &runners {
        let t = first_line(r.command(a), &r.label)?;
        cold.push((format!("{}, first start", r.label), t));
    }
    let t = first_line(podman_run(work, &oci), "podman run")?;
    cold.push(("podman run oci:, first run".into(), t));
    let pulled = podman(work)
        .args(["pull", "--quiet", &oci])
        .stderr(Stdio::null())
        .output()?;
    ensure!(pulled.status.success(), "podman pull {oci}");
    let stored = String::from_utf8(pulled.stdout)?.trim().to_owned();
    let bundle = runc_bundle(work, &runners[0].rootfs()?)?;

    let mut locald: Vec<Series> = runners.iter().map(|r| Series::new(&r.label)).collect();
    let mut pod = Series::new(format!("podman run --rm --network=none {}", "oci:…"));
    let mut pod_stored = Series::new("podman run, image in podman's store");
    let mut runc = Series::new("runc run (the floor)");
    for round in 0..a.rounds {
        for (i, r) in runners.iter().enumerate() {
            locald[i].samples.push(first_line(r.command(a), &r.label)?);
        }
        pod.samples
            .push(first_line(podman_run(work, &oci), "podman run oci:")?);
        pod_stored.samples.push(first_line(
            podman_run(work, &stored),
            "podman run (stored)",
        )?);
        runc.samples
            .push(first_line(runc_run(&bundle, round), "runc run")?);
    }
    header();
    for (name, t) in &cold {
        println!("  {name:<52} {:9.1} ms", ms(*t));
    }
    for s in &locald {
        s.print();
    }
    pod.print();
    pod_stored.print();
    runc.print();
    for s in &locald {
        ratio(&format!("{} / podman", s.name), s, &pod, 0.5);
        ratio(&format!("{} / runc", s.name), s, &runc, 1.3);
    }
    Ok(())
}

fn main() -> Result<()> {
    let a = parse_args()?;
    // Lowercase: podman names an image from an `oci:` path, and a name
    // must be lowercase.
    let tmp = tempfile::Builder::new()
        .prefix(&format!("containers-bench-{}", std::process::id()))
        .rand_bytes(0)
        .tempdir_in(&a.dir)?;
    let work = tmp.path();
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755))?;
    println!(
        "containers benchmark in {}, {} rounds, medians",
        a.dir.display(),
        a.rounds
    );

    if a.only.as_deref() != Some("start") {
        let big = work.join("big");
        write_oci_layout(&big, "bench", &bench_image()?)?;
        let small = work.join("small");
        build_busybox_layout(&small)?;
        let registry = Registry::start()?;
        let images = [
            (
                format!("3 layers, {:.1} MiB", blobs_mib(&big)?),
                registry.push(&big, "bench", "bench/big")?,
            ),
            (
                format!("busybox, {:.1} MiB", blobs_mib(&small)?),
                registry.push(&small, "v1", "bench/small")?,
            ),
        ];
        pull_bench(&a, work, &registry, &images)?;
    }
    if a.only.as_deref() != Some("pull") {
        let started = start_bench(&a, work);
        // Its images in its own store, through podman (which unmounts what
        // it mounted); not `system reset`, which also drops the machine's
        // podman networks.
        let _ = podman(work)
            .args(["rmi", "--all", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(podman_runroot());
        started?;
    }
    Ok(())
}
