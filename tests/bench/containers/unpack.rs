//! `unpack-bench`: the layer-unpack benchmark of issue 10.
//!
//! Builds one image as an OCI layout — a busybox rootfs (the binary and its
//! applets as hard links), a few MB of files in many directories, and a
//! layer that overwrites, whites out and makes a directory opaque — and
//! unpacks it, in rounds, with locald (`image::unpack::unpack`, through the
//! `locald internal-unpack` helper) and with `umoci unpack --rootless`,
//! interleaved, each into a fresh directory. Prints the median and best
//! time of each and the ratio of the medians (target ≤ 1.0×). GNU `tar -x`
//! of the same blobs, one after the other (no whiteouts, no containment, no
//! owners), is printed as the floor: umoci also hashes every file into an
//! mtree manifest, which the ratio to it includes.
//!
//! ```text
//! unpack-bench --locald target/release/locald [--rounds N] [--user NAME] [--sync] [--dir DIR]
//! ```
//!
//! With `--user`, both run as that user through `setpriv` (locald then maps
//! the user's subordinate ids with newuidmap and chowns every file, as it
//! would for a real user); otherwise as the caller. All layers are gzip,
//! since umoci 0.4 reads no zstd. `--sync` makes locald `syncfs` at the end,
//! as the store does; umoci never syncs, so the default leaves it out.
//! `--dir` puts the image and the unpacked trees somewhere else than
//! `/var/tmp` (`/dev/shm` takes the disk out of the comparison).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use locald::image::unpack::Layer;
use locald_tests::unpack::{bench_image as image, write_oci_layout, UnpackOutcome, UnpackRequest};

struct Args {
    locald: PathBuf,
    rounds: usize,
    user: Option<String>,
    sync: bool,
    dir: PathBuf,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        locald: PathBuf::new(),
        rounds: 7,
        user: None,
        sync: false,
        dir: PathBuf::from("/var/tmp"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--locald" => a.locald = it.next().context("--locald PATH")?.into(),
            "--rounds" => a.rounds = it.next().context("--rounds N")?.parse()?,
            "--user" => a.user = Some(it.next().context("--user NAME")?),
            "--sync" => a.sync = true,
            "--dir" => a.dir = it.next().context("--dir DIR")?.into(),
            _ => bail!(
                "usage: unpack-bench --locald PATH [--rounds N] [--user NAME] [--sync] [--dir DIR]"
            ),
        }
    }
    ensure!(a.locald.is_file(), "--locald PATH: the built locald binary");
    ensure!(a.rounds > 0, "--rounds must be positive");
    Ok(a)
}

fn as_user(user: Option<&str>, program: &Path) -> Command {
    match user {
        None => Command::new(program),
        Some(u) => {
            let mut c = Command::new("setpriv");
            c.args([
                &format!("--reuid={u}"),
                &format!("--regid={u}"),
                "--init-groups",
                "--",
            ])
            .arg(program);
            c
        }
    }
}

fn run_locald(a: &Args, work: &Path, layers: &[Layer], round: usize) -> Result<Duration> {
    let req = UnpackRequest {
        helper: a.locald.clone(),
        rootfs: work.join(format!("locald-{round}")),
        layers: layers.to_vec(),
        caller_only: false,
        sync: a.sync,
    };
    let input = serde_json::to_vec(&req)?;
    let start = Instant::now();
    let out = if a.user.is_some() {
        // Built beside this binary by unpack.sh.
        let exe = std::env::current_exe()?;
        let bin = exe.with_file_name("locald-test-unpack");
        let mut child = as_user(a.user.as_deref(), &bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()?;
        std::io::Write::write_all(&mut child.stdin.take().context("stdin")?, &input)?;
        let out = child.wait_with_output()?;
        serde_json::from_slice(&out.stdout).context("locald-test-unpack output")?
    } else {
        locald_tests::unpack::run_request(&req)
    };
    let t = start.elapsed();
    match out {
        UnpackOutcome::Ok(_) => Ok(t),
        UnpackOutcome::Err { message, .. } => bail!("locald: {message}"),
    }
}

fn run_umoci(a: &Args, work: &Path, layout: &Path, round: usize) -> Result<Duration> {
    let bundle = work.join(format!("umoci-{round}"));
    let start = Instant::now();
    let out = as_user(a.user.as_deref(), Path::new("/usr/bin/umoci"))
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:bench", layout.display()))
        .arg(&bundle)
        .output()?;
    let t = start.elapsed();
    ensure!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(t)
}

fn run_tar(a: &Args, work: &Path, layers: &[Layer], round: usize) -> Result<Duration> {
    let dir = work.join(format!("tar-{round}"));
    std::fs::create_dir(&dir)?;
    chown_to(a.user.as_deref(), &dir)?;
    let start = Instant::now();
    for l in layers {
        let out = as_user(a.user.as_deref(), Path::new("/usr/bin/tar"))
            .args(["-xzf"])
            .arg(&l.path)
            .args(["--no-same-owner", "-C"])
            .arg(&dir)
            .output()?;
        ensure!(
            out.status.success(),
            "tar: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(start.elapsed())
}

fn chown_to(user: Option<&str>, p: &Path) -> Result<()> {
    if let Some(u) = user {
        let st = Command::new("chown").args(["-R", u]).arg(p).status()?;
        ensure!(st.success(), "chown -R {u} {}", p.display());
    }
    Ok(())
}

fn stats(v: &mut [Duration]) -> (f64, f64) {
    v.sort();
    (ms(v[v.len() / 2]), ms(v[0]))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<()> {
    let a = parse_args()?;
    let tmp = tempfile::Builder::new()
        .prefix("unpack-bench-")
        .tempdir_in(&a.dir)?;
    let layout = tmp.path().join("layout");
    let image = image()?;
    let entries: usize = image.iter().map(|(t, _)| count_entries(&t.bytes())).sum();
    let unpacked: usize = image.iter().map(|(t, _)| t.bytes().len()).sum();
    let layers = write_oci_layout(&layout, "bench", &image)?;
    let packed: u64 = layers
        .iter()
        .map(|l| std::fs::metadata(&l.path).map_or(0, |m| m.len()))
        .sum();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work)?;
    std::fs::set_permissions(&work, std::fs::Permissions::from_mode(0o700))?;
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755))?;
    chown_to(a.user.as_deref(), tmp.path())?;

    println!(
        "unpack benchmark: {} gzip layers, {entries} entries, {:.1} MiB of tar ({:.1} MiB compressed), \
         as {}, in {}, {} rounds{}",
        layers.len(),
        unpacked as f64 / f64::from(1 << 20),
        packed as f64 / f64::from(1 << 20),
        a.user.as_deref().unwrap_or("the caller"),
        a.dir.display(),
        a.rounds,
        if a.sync { ", locald syncs" } else { "" }
    );
    // One warm-up of each (page cache, binaries), not counted.
    run_locald(&a, &work, &layers, 1000)?;
    run_umoci(&a, &work, &layout, 1000)?;
    run_tar(&a, &work, &layers, 1000)?;
    let (mut ours, mut theirs, mut floor) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..a.rounds {
        ours.push(run_locald(&a, &work, &layers, round)?);
        theirs.push(run_umoci(&a, &work, &layout, round)?);
        floor.push(run_tar(&a, &work, &layers, round)?);
        println!(
            "round {round}: locald {:.1} ms, umoci {:.1} ms, tar {:.1} ms",
            ms(ours[round]),
            ms(theirs[round]),
            ms(floor[round])
        );
        // Clean up between rounds (not timed), so the disk does not fill.
        for e in std::fs::read_dir(&work)? {
            std::fs::remove_dir_all(e?.path())?;
        }
    }
    let (om, ob) = stats(&mut ours);
    let (tm, tb) = stats(&mut theirs);
    let (fm, fb) = stats(&mut floor);
    println!("                    median      best");
    println!("locald unpack   {om:9.1} ms {ob:8.1} ms");
    println!("umoci unpack    {tm:9.1} ms {tb:8.1} ms");
    println!("tar -x (floor)  {fm:9.1} ms {fb:8.1} ms");
    println!(
        "ratio locald/umoci: {:.2}x median, {:.2}x best (target <= 1.0x); locald/tar: {:.2}x median",
        om / tm,
        ob / tb,
        om / fm
    );
    Ok(())
}

fn count_entries(tar: &[u8]) -> usize {
    let mut a = tar::Archive::new(tar);
    a.entries().map(|e| e.count()).unwrap_or(0)
}
