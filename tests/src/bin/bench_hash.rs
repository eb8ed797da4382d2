//! `locald-bench-hash TREE`: the source-hash benchmark of issue 5.
//!
//! On a large tree that is a git repository with everything committed it
//! prints, in one run:
//! (a) the warm no-op check (`needs_rebuild` with a warm stat cache and an
//!     up-to-date artifact, i.e. what "Build up to date" costs) against
//!     `git status --porcelain` on the same tree;
//! (b) a first full hash (empty stat cache, file contents in the page cache)
//!     against `b3sum` over the same files (`xargs -0 b3sum`);
//! each as a ratio, with the core count. Runs are interleaved and the
//! median is reported, because the machine is shared.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, ensure, Context, Result};
use locald::build::hash::hash_tree;
use locald::build::{needs_rebuild, BuildOptions, FileKind, HashScope, Reason, StatCache};
use locald::config::{BuildSpec, CnbBuild};

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn time<T>(f: impl FnOnce() -> Result<T>) -> Result<(Duration, T)> {
    let t = Instant::now();
    let out = f()?;
    Ok((t.elapsed(), out))
}

fn git_status(tree: &Path) -> Result<()> {
    let out = Command::new("git")
        .arg("-C")
        .arg(tree)
        .args(["status", "--porcelain"])
        .output()
        .context("running git status")?;
    ensure!(out.status.success(), "git status failed");
    ensure!(
        out.stdout.is_empty(),
        "the tree is not clean, git status says:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    Ok(())
}

fn b3sum(tree: &Path, list: &[u8]) -> Result<()> {
    let mut child = Command::new("xargs")
        .args(["-0", "b3sum", "--no-names"])
        .current_dir(tree)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("running xargs b3sum")?;
    child.stdin.take().context("stdin")?.write_all(list)?;
    ensure!(child.wait()?.success(), "b3sum failed");
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [tree] = args.as_slice() else {
        bail!("usage: locald-bench-hash TREE");
    };
    let tree = PathBuf::from(tree).canonicalize()?;
    let runs_noop = 9;
    let runs_full = 5;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());

    // (b) first, so the stat cache of (a) does not matter to it.
    let scope = HashScope::tree(&tree);
    let warm = hash_tree(&scope, &mut StatCache::in_memory())?;
    let files: Vec<&locald::build::FileEntry> = warm
        .files
        .iter()
        .filter(|f| f.kind != FileKind::Symlink)
        .collect();
    let mut list = Vec::new();
    for f in &files {
        list.extend_from_slice(std::os::unix::ffi::OsStrExt::as_bytes(f.path.as_os_str()));
        list.push(0);
    }
    b3sum(&tree, &list)?; // warm the page cache the same way for both
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    let mut bytes = 0;
    for _ in 0..runs_full {
        let (t, h) = time(|| Ok(hash_tree(&scope, &mut StatCache::in_memory())?))?;
        ensure!(
            h.digest == warm.digest,
            "the tree changed during the benchmark"
        );
        bytes = h.stats.bytes_hashed;
        ours.push(t);
        theirs.push(time(|| b3sum(&tree, &list))?.0);
    }
    let (full_ours, full_b3) = (median(ours), median(theirs));

    // (a) an up-to-date service whose artifact was built from this tree.
    let spec = BuildSpec::Cnb(CnbBuild {
        builder: "bench/builder:1".into(),
        buildpacks: vec![],
        path: tree.clone(),
        env: vec![],
        run_image: None,
        process: None,
        pull: locald::config::PullPolicy::IfNotPresent,
        layout: tree.join(".locald/services/bench/artifacts/oci-layout"),
    });
    let opts = BuildOptions::new(&tree, "bench", spec, false)?;
    let d = needs_rebuild(&opts, None)?;
    if d.rebuild() {
        let staging = opts.service_layout().stage()?;
        std::fs::create_dir_all(staging.oci_layout_dir())?;
        let now = SystemTime::now();
        let files = d.source.as_ref().map(|s| s.files.as_slice());
        staging.commit(&d.manifest(&opts, now, now)?, files)?;
    }
    std::thread::sleep(Duration::from_millis(50));
    needs_rebuild(&opts, None)?; // settles racy entries, warms the cache file
    git_status(&tree)?;
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..runs_noop {
        let (t, d) = time(|| Ok(needs_rebuild(&opts, None)?))?;
        ensure!(
            d.reason == Reason::UpToDate,
            "expected up to date, got: {d}"
        );
        let stats = d.source.as_ref().map(|s| s.stats).unwrap_or_default();
        ensure!(stats.hashed == 0, "the no-op check read files: {stats:?}");
        ours.push(t);
        theirs.push(time(|| git_status(&tree))?.0);
    }
    let (noop_ours, noop_git) = (median(ours), median(theirs));

    let noop_ratio = noop_ours.as_secs_f64() / noop_git.as_secs_f64();
    let full_ratio = full_ours.as_secs_f64() / full_b3.as_secs_f64();
    println!("tree: {}", tree.display());
    println!(
        "cores: {cores}; files: {} ({} regular), {:.0} MiB hashed",
        warm.files.len(),
        files.len(),
        bytes as f64 / (1 << 20) as f64
    );
    println!(
        "(a) no-op check, warm:   locald {:8.1} ms   git status --porcelain {:8.1} ms   ratio {:.2}x (target <= 1.0x) {}",
        ms(noop_ours),
        ms(noop_git),
        noop_ratio,
        if noop_ratio <= 1.0 { "ok" } else { "MISSED" }
    );
    println!(
        "(b) full hash, no cache: locald {:8.1} ms   b3sum                  {:8.1} ms   ratio {:.2}x (target <= 1.2x) {}",
        ms(full_ours),
        ms(full_b3),
        full_ratio,
        if full_ratio <= 1.2 { "ok" } else { "MISSED" }
    );
    println!("medians of {runs_noop} (a) and {runs_full} (b) interleaved runs");
    Ok(())
}
