//! Helpers for the layer-unpacking tests (`tests/tests/unpack.rs`) and
//! benchmark (`tests/bench/containers/`): tar layers written header by
//! header (so hostile names go in as they are), layer blobs in every
//! compression, OCI image layouts for `umoci`, running locald's unpack as
//! root or as a test user, and listings of what is on disk.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use locald::image::unpack::{Compression, IdMap, Layer, Refusal, UnpackStats};
use serde::{Deserialize, Serialize};

use crate::shim::TestUser;

/// A tar stream built from raw ustar headers (PAX records for long names),
/// so names like `../../x` or `/etc/shadow` go in unchecked.
#[derive(Clone, Default)]
pub struct Tar {
    out: Vec<u8>,
}

/// One entry's header fields.
#[derive(Clone, Copy)]
pub struct Hdr<'a> {
    /// Type flag (`b'0'` file, `b'5'` directory, `b'2'` symlink, …).
    pub kind: u8,
    /// Name, as bytes.
    pub name: &'a [u8],
    /// Link target (symlinks and hard links).
    pub link: &'a [u8],
    /// Permission bits.
    pub mode: u32,
    /// Owner uid in the image.
    pub uid: u64,
    /// Owner gid in the image.
    pub gid: u64,
    /// mtime (seconds).
    pub mtime: u64,
}

/// The mtime every helper-made entry carries.
pub const MTIME: u64 = 1_600_000_000;

impl Tar {
    /// Appends an entry.
    pub fn entry(&mut self, h: Hdr<'_>, data: &[u8]) -> &mut Self {
        let mut pax: Vec<(&str, &[u8])> = Vec::new();
        if h.name.len() > 100 {
            pax.push(("path", h.name));
        }
        if h.link.len() > 100 {
            pax.push(("linkpath", h.link));
        }
        if !pax.is_empty() {
            self.pax(&pax);
        }
        let mut header = tar::Header::new_ustar();
        if let Some(u) = header.as_ustar_mut() {
            let n = h.name.len().min(100);
            u.name[..n].copy_from_slice(&h.name[..n]);
            let l = h.link.len().min(100);
            u.linkname[..l].copy_from_slice(&h.link[..l]);
        }
        header.set_entry_type(tar::EntryType::new(h.kind));
        header.set_mode(h.mode);
        header.set_uid(h.uid);
        header.set_gid(h.gid);
        header.set_mtime(h.mtime);
        header.set_size(data.len() as u64);
        if matches!(h.kind, b'3' | b'4') {
            let _ = header.set_device_major(1);
            let _ = header.set_device_minor(3);
        }
        header.set_cksum();
        self.out.extend_from_slice(header.as_bytes());
        self.data(data);
        self
    }

    fn data(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0, pad));
    }

    /// A PAX extended header for the next entry (`key=value` records).
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            let rest = k.len() + v.len() + 3;
            let mut len = rest + 1;
            while len.to_string().len() + rest != len {
                len += 1;
            }
            body.extend_from_slice(format!("{len} {k}=").as_bytes());
            body.extend_from_slice(v);
            body.push(b'\n');
        }
        let mut h = tar::Header::new_ustar();
        if let Some(u) = h.as_ustar_mut() {
            u.name[..9].copy_from_slice(b"PaxHeader");
        }
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.data(&body);
        self
    }

    fn simple(&mut self, kind: u8, name: &str, link: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(
            Hdr {
                kind,
                name: name.as_bytes(),
                link: link.as_bytes(),
                mode,
                uid: 0,
                gid: 0,
                mtime: MTIME,
            },
            data,
        )
    }

    /// A directory, 0755, root's.
    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.simple(b'5', name, "", 0o755, b"")
    }

    /// A regular file, 0644, root's.
    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.simple(b'0', name, "", 0o644, data)
    }

    /// A regular file with a mode and owner.
    pub fn file_owned(
        &mut self,
        name: &str,
        mode: u32,
        (uid, gid): (u64, u64),
        data: &[u8],
    ) -> &mut Self {
        self.entry(
            Hdr {
                kind: b'0',
                name: name.as_bytes(),
                link: b"",
                mode,
                uid,
                gid,
                mtime: MTIME,
            },
            data,
        )
    }

    /// A directory with a mode and owner.
    pub fn dir_owned(&mut self, name: &str, mode: u32, (uid, gid): (u64, u64)) -> &mut Self {
        self.entry(
            Hdr {
                kind: b'5',
                name: name.as_bytes(),
                link: b"",
                mode,
                uid,
                gid,
                mtime: MTIME,
            },
            b"",
        )
    }

    /// A symlink.
    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.simple(b'2', name, target, 0o777, b"")
    }

    /// A hard link to `target` (a name in the archive).
    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.simple(b'1', name, target, 0o644, b"")
    }

    /// A FIFO.
    pub fn fifo(&mut self, name: &str, mode: u32) -> &mut Self {
        self.simple(b'6', name, "", mode, b"")
    }

    /// A character device (1,3).
    pub fn chardev(&mut self, name: &str) -> &mut Self {
        self.simple(b'3', name, "", 0o666, b"")
    }

    /// A block device.
    pub fn blockdev(&mut self, name: &str) -> &mut Self {
        self.simple(b'4', name, "", 0o660, b"")
    }

    /// The finished stream (with the two zero blocks that end it).
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = self.out.clone();
        out.extend(std::iter::repeat_n(0, 1024));
        out
    }
}

/// `media type` for a compression.
pub fn media_type(c: Compression) -> &'static str {
    match c {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// `tar` compressed as `c`.
pub fn compress(tar: &[u8], c: Compression) -> Result<Vec<u8>> {
    Ok(match c {
        Compression::None => tar.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(tar)?;
            e.finish()?
        }
        Compression::Zstd => zstd::encode_all(tar, 3)?,
    })
}

/// `sha256:HEX` of some bytes.
pub fn sha256(bytes: &[u8]) -> Result<String> {
    Ok(locald::image::Digest::of(bytes).to_string())
}

/// Writes layer blobs named by digest into `dir` and returns them.
pub fn write_layers(dir: &Path, layers: &[(Tar, Compression)]) -> Result<Vec<Layer>> {
    fs::create_dir_all(dir)?;
    let mut out = Vec::new();
    for (tar, c) in layers {
        let blob = compress(&tar.bytes(), *c)?;
        let digest = sha256(&blob)?;
        let path = dir.join(digest.trim_start_matches("sha256:"));
        fs::write(&path, &blob)?;
        out.push(Layer {
            path,
            media_type: media_type(*c).into(),
            digest,
        });
    }
    Ok(out)
}

/// An OCI image layout at `dir` with one image tagged `tag` made of
/// `layers` (for `umoci`); returns its layer blobs, for locald.
pub fn write_oci_layout(
    dir: &Path,
    tag: &str,
    layers: &[(Tar, Compression)],
) -> Result<Vec<Layer>> {
    let blobs = dir.join("blobs/sha256");
    fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<(String, usize)> {
        let d = sha256(bytes)?;
        fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes)?;
        Ok((d, bytes.len()))
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    let mut out = Vec::new();
    for (tar, c) in layers {
        let plain = tar.bytes();
        diff_ids.push(sha256(&plain)?);
        let (digest, size) = put(&compress(&plain, *c)?)?;
        descs
            .push(serde_json::json!({"mediaType": media_type(*c), "digest": digest, "size": size}));
        out.push(Layer {
            path: blobs.join(digest.trim_start_matches("sha256:")),
            media_type: media_type(*c).into(),
            digest,
        });
    }
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let (cd, cs) = put(&serde_json::to_vec(&config)?)?;
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": descs,
    });
    let (md, ms) = put(&serde_json::to_vec(&manifest)?)?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": md, "size": ms,
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    Ok(out)
}

/// What `locald-test-unpack` reads on stdin.
#[derive(Debug, Serialize, Deserialize)]
pub struct UnpackRequest {
    /// The `locald` binary to use as the helper.
    pub helper: PathBuf,
    /// The rootfs to create.
    pub rootfs: PathBuf,
    /// The layers.
    pub layers: Vec<Layer>,
    /// Map only the caller (as if they had no subordinate ids).
    pub caller_only: bool,
    /// `syncfs` at the end.
    pub sync: bool,
}

/// What `locald-test-unpack` prints on stdout.
#[derive(Debug, Serialize, Deserialize)]
pub enum UnpackOutcome {
    /// It worked.
    Ok(UnpackStats),
    /// It failed: the message (the whole chain) and the refusal, if any.
    Err {
        /// `{:#}` of the error.
        message: String,
        /// Why an entry was refused.
        refusal: Option<Refusal>,
    },
}

impl UnpackOutcome {
    /// The outcome of the library call.
    pub fn of(r: Result<UnpackStats, locald::image::unpack::UnpackError>) -> Self {
        match r {
            Ok(s) => UnpackOutcome::Ok(s),
            Err(e) => UnpackOutcome::Err {
                message: locald::error_chain(&e),
                refusal: e.refusal().cloned(),
            },
        }
    }
}

/// The request as the library's options, for the calling user.
pub fn run_request(req: &UnpackRequest) -> UnpackOutcome {
    let mut opts = locald::image::unpack::UnpackOptions::new(req.helper.clone());
    if req.caller_only {
        opts.ids = IdMap::caller_only(opts.ids.uid, opts.ids.gid);
    }
    opts.sync = req.sync;
    UnpackOutcome::of(locald::image::unpack::unpack(
        &req.rootfs,
        &req.layers,
        &opts,
    ))
}

/// What `locald-test-unpack --remove` reads on stdin: a rootfs to remove
/// with the library's `unpack::remove` (through the helper's namespace).
#[derive(Debug, Serialize, Deserialize)]
pub struct RemoveRequest {
    /// The `locald` binary to use as the helper.
    pub helper: PathBuf,
    /// The rootfs to remove.
    pub rootfs: PathBuf,
}

/// Removes the rootfs of `req` for the calling user.
pub fn run_remove(req: &RemoveRequest) -> UnpackOutcome {
    let opts = locald::image::unpack::UnpackOptions::new(req.helper.clone());
    UnpackOutcome::of(
        locald::image::unpack::remove(&req.rootfs, &opts).map(|()| UnpackStats::default()),
    )
}

/// Runs `locald-test-unpack` as `user` (`setpriv --reuid --regid
/// --init-groups`) on `req`.
pub fn run_as(user: &TestUser, req: &UnpackRequest) -> Result<UnpackOutcome> {
    bin_as(user, &[], &serde_json::to_vec(req)?)
}

/// Runs `locald-test-unpack --remove` as `user` on `req`.
pub fn remove_as(user: &TestUser, req: &RemoveRequest) -> Result<UnpackOutcome> {
    bin_as(user, &["--remove"], &serde_json::to_vec(req)?)
}

fn bin_as(user: &TestUser, args: &[&str], input: &[u8]) -> Result<UnpackOutcome> {
    let bin = crate::user_bin("locald-test-unpack");
    let mut child = Command::new("setpriv")
        .args([
            &format!("--reuid={}", user.uid),
            &format!("--regid={}", user.gid),
            "--init-groups",
            "--",
        ])
        .arg(bin)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .current_dir("/")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("setpriv")?;
    let mut stdin = child.stdin.take().context("stdin")?;
    stdin.write_all(input)?;
    drop(stdin);
    let out = child.wait_with_output()?;
    match serde_json::from_slice(&out.stdout) {
        Ok(o) => Ok(o),
        Err(e) => bail!(
            "locald-test-unpack as {}: {e}: status {}\n{}\n{}",
            user.name,
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// One line per path under `root` (sorted, relative):
/// `path kind mode uid:gid nlink size-or-target`.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(base: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let Ok(m) = fs::symlink_metadata(&p) else {
            continue;
        };
        let ft = m.file_type();
        let (kind, what) = if ft.is_symlink() {
            (
                "l",
                fs::read_link(&p)
                    .map(|t| t.display().to_string())
                    .unwrap_or_default(),
            )
        } else if ft.is_dir() {
            ("d", String::new())
        } else if ft.is_file() {
            ("f", m.len().to_string())
        } else if ft.is_fifo() {
            ("p", String::new())
        } else if ft.is_char_device() || ft.is_block_device() {
            ("dev", String::new())
        } else {
            ("?", String::new())
        };
        let rel = p
            .strip_prefix(base)
            .map(|r| r.display().to_string())
            .unwrap_or_default();
        let mode = if ft.is_symlink() {
            String::new()
        } else {
            format!("{:04o}", m.mode() & 0o7777)
        };
        out.insert(
            rel,
            format!("{kind} {mode} {}:{} {} {what}", m.uid(), m.gid(), m.nlink()),
        );
        if ft.is_dir() {
            walk(base, &p, out);
        }
    }
}

/// Everything under `dir` except the subtrees named in `skip`, with file
/// contents: a before/after snapshot of what a hostile layer must not touch.
pub fn snapshot(dir: &Path, skip: &[&str]) -> BTreeMap<String, String> {
    let mut t = tree(dir);
    t.retain(|p, _| {
        !skip
            .iter()
            .any(|s| p == s || p.starts_with(&format!("{s}/")))
    });
    for (p, v) in t.iter_mut() {
        if v.starts_with("f ") {
            v.push(' ');
            v.push_str(&String::from_utf8_lossy(
                &fs::read(dir.join(p)).unwrap_or_default(),
            ));
        }
    }
    t
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

/// The containers benchmarks' image (`tests/bench/containers/`), three
/// gzip layers: busybox with its applets as hard links; about 5 MiB of
/// text-like files in many directories; a layer that overwrites, whites
/// out and makes a directory opaque.
pub fn bench_image() -> Result<Vec<(Tar, Compression)>> {
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
