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
use locald::image::unpack::{Compression, Layer};
use locald_tests::unpack::{write_oci_layout, Tar, UnpackOutcome, UnpackRequest};

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

/// Deterministic text-like content (compresses about as well as source
/// files and configs do).
struct Words(u64);

impl Words {
    fn fill(&mut self, len: usize) -> Vec<u8> {
        const W: &[&str] = &[
            "the", "service", "config", "locald", "layer", "image", "rootfs", "while", "return",
            "fn", "let", "mut", "struct", "impl", "error", "path", "file", "0x3f", "42", "{", "}",
            "value", "option", "self", "match", "=>", "Some", "None", "String", "Vec",
        ];
        let mut out = Vec::with_capacity(len + 16);
        while out.len() < len {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            out.extend_from_slice(W[(self.0 % W.len() as u64) as usize].as_bytes());
            out.push(if matches!(self.0 % 11, 0) {
                b'\n'
            } else {
                b' '
            });
        }
        out.truncate(len);
        out
    }
}

/// The benchmark image: busybox, then data, then changes.
fn image() -> Result<Vec<(Tar, Compression)>> {
    let busybox =
        std::fs::read("/bin/busybox").context("/bin/busybox (apt install busybox-static)")?;
    let list = Command::new("/bin/busybox").arg("--list-full").output()?;
    let applets = String::from_utf8(list.stdout)?;
    let mut l1 = Tar::default();
    l1.dir_owned("./", 0o755, (0, 0));
    for d in [
        "bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "tmp", "var", "home",
    ] {
        l1.dir(d);
    }
    l1.file_owned("bin/busybox", 0o755, (0, 0), &busybox);
    for a in applets.lines().filter(|a| *a != "bin/busybox") {
        l1.hardlink(a, "bin/busybox");
    }
    l1.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
    )
    .file("etc/group", b"root:x:0:\nuser:x:1000:\n")
    .dir_owned("home/user", 0o750, (1000, 1000));

    let mut words = Words(0x9e37_79b9_7f4a_7c15);
    let mut l2 = Tar::default();
    for d in 0..40 {
        let dir = format!("srv/app/mod{d:02}");
        l2.dir(&dir);
        for f in 0..50 {
            let len = 200 + ((d * 50 + f) * 37) % 3000;
            l2.file_owned(
                &format!("{dir}/file{f:02}.txt"),
                0o644,
                (1000, 1000),
                &words.fill(len),
            );
        }
    }
    for i in 0..4 {
        l2.file(&format!("srv/assets/blob{i}.bin"), &words.fill(512 << 10));
    }
    l2.dir("srv/cache");
    for i in 0..100 {
        l2.file(&format!("srv/cache/entry{i:03}"), &words.fill(1000));
    }

    let mut l3 = Tar::default();
    l3.dir("srv/app/mod00")
        .file("srv/app/mod00/.wh.file00.txt", b"");
    for d in 1..10 {
        l3.file(&format!("srv/app/mod{d:02}/file01.txt"), &words.fill(4000));
    }
    l3.dir("srv/cache")
        .file("srv/cache/.wh..wh..opq", b"")
        .file("srv/cache/fresh", b"new")
        .hardlink("srv/app/readme", "srv/app/mod05/file05.txt")
        .symlink("srv/current", "app")
        .file_owned("usr/bin/tool", 0o4755, (0, 0), &words.fill(50 << 10));
    Ok(vec![
        (l1, Compression::Gzip),
        (l2, Compression::Gzip),
        (l3, Compression::Gzip),
    ])
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
