//! Unit tests: names, PAX times, id ranges, and [`extract`] in this process
//! on layers built here — the layer rules, every refusal, and that nothing
//! outside the rootfs changes. (The helper, the user namespace and
//! ownership are covered by `tests/tests/unpack.rs`.)

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::extract::{pax_time, BadName, Name};
use super::*;
use locald_core::ids::parse_subid;

/// A tar stream with raw headers, so names like `../../x` go in as they are.
#[derive(Default)]
struct Tar {
    out: Vec<u8>,
}

impl Tar {
    fn raw(&mut self, kind: u8, name: &[u8], link: &[u8], mode: u32, data: &[u8]) -> &mut Self {
        self.raw_owned(kind, name, link, mode, (0, 0), data)
    }

    fn raw_owned(
        &mut self,
        kind: u8,
        name: &[u8],
        link: &[u8],
        mode: u32,
        (uid, gid): (u64, u64),
        data: &[u8],
    ) -> &mut Self {
        if name.len() > 100 || link.len() > 100 {
            let mut rec = Vec::new();
            if name.len() > 100 {
                rec.push(("path", name));
            }
            if link.len() > 100 {
                rec.push(("linkpath", link));
            }
            self.pax(&rec);
        }
        let mut h = tar::Header::new_ustar();
        {
            let u = h.as_ustar_mut().expect("ustar");
            let n = name.len().min(100);
            u.name[..n].copy_from_slice(&name[..n]);
            let l = link.len().min(100);
            u.linkname[..l].copy_from_slice(&link[..l]);
        }
        h.set_entry_type(tar::EntryType::new(kind));
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.data(data);
        self
    }

    fn data(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0, pad));
    }

    /// A PAX extended header for the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut body = Vec::new();
        for (k, v) in records {
            // "LEN KEY=VALUE\n", LEN counting itself.
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
        h.as_ustar_mut().expect("ustar").name[..9].copy_from_slice(b"PaxHeader");
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_mode(0o644);
        h.set_size(body.len() as u64);
        h.set_cksum();
        self.out.extend_from_slice(h.as_bytes());
        self.data(&body);
        self
    }

    fn dir(&mut self, name: &str) -> &mut Self {
        self.raw(b'5', name.as_bytes(), b"", 0o755, b"")
    }

    fn file(&mut self, name: &str, data: &str) -> &mut Self {
        self.raw(b'0', name.as_bytes(), b"", 0o644, data.as_bytes())
    }

    fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(b'2', name.as_bytes(), target.as_bytes(), 0o777, b"")
    }

    fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(b'1', name.as_bytes(), target.as_bytes(), 0o644, b"")
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = self.out.clone();
        out.extend(std::iter::repeat_n(0, 1024));
        out
    }
}

/// A temp dir holding `rootfs/`, `outside/sentinel` and the layer blobs.
struct Scene {
    tmp: tempfile::TempDir,
    layers: Vec<Layer>,
}

impl Scene {
    fn new() -> Self {
        let tmp = tempfile::tempdir().expect("tempdir");
        fs::create_dir(tmp.path().join("rootfs")).expect("rootfs");
        fs::create_dir(tmp.path().join("outside")).expect("outside");
        fs::write(tmp.path().join("outside/sentinel"), "keep me").expect("sentinel");
        fs::create_dir(tmp.path().join("blobs")).expect("blobs");
        Self {
            tmp,
            layers: Vec::new(),
        }
    }

    fn rootfs(&self) -> PathBuf {
        self.tmp.path().join("rootfs")
    }

    fn outside(&self) -> PathBuf {
        self.tmp.path().join("outside")
    }

    /// The outside directory as a path relative to `/`.
    fn outside_from_root(&self) -> String {
        self.outside()
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string()
    }

    fn layer(&mut self, tar: &Tar, compression: Compression) -> &mut Self {
        let n = self.layers.len();
        let plain = tar.bytes();
        let (bytes, media_type) = match compression {
            Compression::None => (plain, "application/vnd.oci.image.layer.v1.tar"),
            Compression::Gzip => {
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                e.write_all(&plain).expect("gzip");
                (
                    e.finish().expect("gzip"),
                    "application/vnd.oci.image.layer.v1.tar+gzip",
                )
            }
            Compression::Zstd => (
                zstd::encode_all(&plain[..], 1).expect("zstd"),
                "application/vnd.oci.image.layer.v1.tar+zstd",
            ),
        };
        let path = self.tmp.path().join(format!("blobs/layer{n}"));
        fs::write(&path, bytes).expect("blob");
        self.layers.push(Layer {
            path,
            media_type: media_type.into(),
            digest: format!("sha256:{n:064}"),
        });
        self
    }

    fn extract(&self) -> Result<UnpackStats, UnpackError> {
        extract(&self.rootfs(), &self.layers, Owners::Caller, false)
    }

    /// Everything outside the rootfs (and the blobs): path → kind, mode,
    /// size, content.
    fn outside_listing(&self) -> BTreeMap<PathBuf, String> {
        let mut out = BTreeMap::new();
        listing(self.tmp.path(), self.tmp.path(), &mut out);
        out.retain(|p, _| !p.starts_with("rootfs/") && !p.starts_with("blobs"));
        out
    }
}

fn listing(base: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    for e in fs::read_dir(dir).expect("read_dir") {
        let p = e.expect("entry").path();
        let m = fs::symlink_metadata(&p).expect("lstat");
        let rel = p.strip_prefix(base).expect("under base").to_path_buf();
        let content = if m.is_file() {
            fs::read_to_string(&p).unwrap_or_default()
        } else if m.file_type().is_symlink() {
            fs::read_link(&p).expect("readlink").display().to_string()
        } else {
            String::new()
        };
        out.insert(
            rel,
            format!("{:o} {} {} {content}", m.mode(), m.len(), m.nlink()),
        );
        if m.is_dir() {
            listing(base, &p, out);
        }
    }
}

/// Runs a hostile image: it must be refused with `reason`, the message
/// must name the layer and the entry, and nothing outside may change.
fn refused(scene: &Scene, entry: &str, reason: Refusal) {
    let before = scene.outside_listing();
    let err = scene.extract().expect_err("hostile layer must be refused");
    let msg = err.to_string();
    assert_eq!(err.refusal(), Some(&reason), "{msg}");
    assert!(msg.contains(&format!("{entry:?}")), "{msg}");
    assert!(msg.contains("sha256:0000"), "{msg}");
    assert_eq!(before, scene.outside_listing(), "something outside changed");
    assert_eq!(
        fs::read_to_string(scene.outside().join("sentinel"))
            .ok()
            .as_deref(),
        Some("keep me")
    );
}

#[test]
fn names_are_normalized_and_refused() {
    let ok = |s: &str| {
        Name::parse(s.as_bytes()).map(|n| {
            String::from_utf8(n.parent().to_vec()).unwrap()
                + "|"
                + std::str::from_utf8(n.base()).unwrap()
        })
    };
    assert_eq!(ok("./a/b/"), Ok("a|b".into()));
    assert_eq!(ok("a//./b"), Ok("a|b".into()));
    assert_eq!(ok("x"), Ok("|x".into()));
    assert_eq!(ok("./"), Ok("|".into()));
    assert_eq!(Name::parse(b"../../x"), Err(BadName::DotDot));
    assert_eq!(Name::parse(b"a/../b"), Err(BadName::DotDot));
    assert_eq!(Name::parse(b"/x"), Err(BadName::Absolute));
    assert_eq!(Name::parse(b""), Err(BadName::Malformed));
    assert_eq!(Name::parse(b"a\0b"), Err(BadName::Malformed));
}

#[test]
fn pax_times_parse_fractions_and_negatives() {
    let t = |s: &str| pax_time(s.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec)).ok();
    assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
    assert_eq!(t("1700000000.5"), Some((1_700_000_000, 500_000_000)));
    assert_eq!(t("1.1234567891"), Some((1, 123_456_789)));
    assert_eq!(t("-1.5"), Some((-2, 500_000_000)));
    assert_eq!(t("-3"), Some((-3, 0)));
    assert_eq!(t("x"), None);
    assert_eq!(t("1.x"), None);
}

#[test]
fn subordinate_ranges_by_name_or_uid_become_contiguous_mappings() {
    let file =
        "# comment\nalice:100000:65536\nbob:200000:10\n1000:300000:5\nalice:bad:1\nalice:1:0\n";
    let r = parse_subid(file, Some("alice"), 1000);
    assert_eq!(
        r,
        vec![
            IdRange {
                start: 100_000,
                count: 65536
            },
            IdRange {
                start: 300_000,
                count: 5
            }
        ]
    );
    let m = IdMap {
        uid: 1000,
        gid: 1001,
        subuids: r.clone(),
        subgids: r,
    };
    assert_eq!(
        m.uid_lines(),
        vec![[0, 1000, 1], [1, 100_000, 65536], [65537, 300_000, 5]]
    );
    assert_eq!(m.gid_lines()[0], [0, 1001, 1]);
    let none = IdMap::caller_only(1000, 1000);
    assert!(none
        .caller_only_reason()
        .is_some_and(|r| r.contains("no subordinate ids")));
}

#[test]
fn media_types_follow_the_fetching_rules() {
    let layer = |mt: &str| Layer {
        path: PathBuf::from("/nonexistent"),
        media_type: mt.into(),
        digest: "sha256:00".into(),
    };
    let c = |mt: &str| compression(&layer(mt)).ok();
    assert_eq!(
        c("application/vnd.oci.image.layer.v1.tar+zstd"),
        Some(Compression::Zstd)
    );
    assert_eq!(
        c("application/vnd.docker.image.rootfs.diff.tar.gzip"),
        Some(Compression::Gzip)
    );
    assert_eq!(
        c("application/vnd.oci.image.layer.v1.tar"),
        Some(Compression::None)
    );
    let err = compression(&layer("application/vnd.oci.image.config.v1+json")).unwrap_err();
    assert!(
        err.to_string().contains("not a container image layer"),
        "{err}"
    );
}

#[test]
fn layers_in_every_compression_apply_in_order() {
    let mut s = Scene::new();
    let mut l1 = Tar::default();
    l1.raw(b'5', b"./", b"", 0o755, b"")
        .dir("etc")
        .file("etc/old", "old")
        .file("etc/keep", "v1")
        .raw(b'0', b"bin/tool", b"", 0o4755, b"#!/bin/sh\n")
        .hardlink("bin/tool2", "bin/tool")
        .symlink("bin/sh", "tool")
        .raw(b'6', b"run/fifo", b"", 0o600, b"")
        .raw(b'3', b"dev/null", b"", 0o666, b"")
        .raw(b'4', b"dev/sda", b"", 0o660, b"");
    let mut l2 = Tar::default();
    l2.dir("etc")
        .file("etc/.wh.old", "")
        .file("etc/keep", "v2")
        .pax(&[
            ("SCHILY.xattr.user.locald", b"yes"),
            ("mtime", b"1234567890.25"),
        ])
        .file("etc/xattr", "x");
    let mut l3 = Tar::default();
    l3.file("var/lib/deep/file", "implicit parents");
    s.layer(&l1, Compression::Gzip)
        .layer(&l2, Compression::Zstd)
        .layer(&l3, Compression::None);
    let st = s.extract().expect("unpack");
    let r = s.rootfs();
    assert_eq!(fs::read_to_string(r.join("etc/keep")).unwrap(), "v2");
    assert!(!r.join("etc/old").exists());
    let tool = fs::metadata(r.join("bin/tool")).unwrap();
    assert_eq!(tool.mode() & 0o7777, 0o4755);
    assert_eq!(tool.nlink(), 2);
    assert_eq!(tool.mtime(), 1_600_000_000);
    assert_eq!(fs::read_link(r.join("bin/sh")).unwrap(), Path::new("tool"));
    assert!(fs::symlink_metadata(r.join("run/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    assert!(fs::symlink_metadata(r.join("dev/null")).is_err());
    assert!(fs::symlink_metadata(r.join("dev/sda")).is_err());
    assert_eq!(st.devices_skipped, 2);
    let x = fs::metadata(r.join("etc/xattr")).unwrap();
    assert_eq!((x.mtime(), x.mtime_nsec()), (1_234_567_890, 250_000_000));
    let mut v = [0u8; 8];
    let n = rustix::fs::getxattr(r.join("etc/xattr"), "user.locald", &mut v[..]).unwrap();
    assert_eq!(&v[..n], b"yes");
    assert_eq!(
        fs::metadata(r.join("var/lib/deep")).unwrap().mode() & 0o777,
        0o755
    );
    assert_eq!(fs::metadata(r.join("etc")).unwrap().mtime(), 1_600_000_000);
    assert_eq!(fs::metadata(&r).unwrap().mode() & 0o777, 0o755);
    assert_eq!(
        (
            st.layers,
            st.files,
            st.hardlinks,
            st.symlinks,
            st.fifos,
            st.whiteouts,
            st.xattrs_set
        ),
        (3, 6, 1, 1, 1, 1, 1)
    );
}

#[test]
fn whiteouts_hide_lower_layers_only_wherever_they_appear() {
    let mut s = Scene::new();
    let mut l1 = Tar::default();
    l1.file("a/x", "")
        .file("a/y", "")
        .file("b", "")
        .file("c/old", "")
        .file("c/sub/old", "")
        .file("d/old", "")
        .file("e/old", "")
        .symlink("link", "/");
    let mut l2 = Tar::default();
    l2.file(".wh.b", "")
        .file("a/.wh.x", "")
        // An opaque directory after entries of its own layer keeps them.
        .file("c/new", "")
        .file("c/sub/new", "")
        .file("c/.wh..wh..opq", "")
        // A whiteout after a directory of its own layer hides only what
        // lies below.
        .file("d/new", "")
        .file(".wh.d", "")
        // Before: the whole lower directory goes, then the new one comes.
        .file(".wh.e", "")
        .file("e/new", "")
        // A whiteout of a symlink removes the symlink, not its target.
        .file(".wh.link", "")
        .file(".wh.missing", "")
        .file("nodir/.wh.missing", "");
    s.layer(&l1, Compression::None)
        .layer(&l2, Compression::None);
    s.extract().expect("unpack");
    let r = s.rootfs();
    let mut got = Vec::new();
    for e in walk(&r) {
        got.push(e);
    }
    assert_eq!(
        got,
        [
            "a",
            "a/y",
            "c",
            "c/new",
            "c/sub",
            "c/sub/new",
            "d",
            "d/new",
            "e",
            "e/new"
        ]
    );
}

fn walk(root: &Path) -> Vec<String> {
    let mut out = BTreeMap::new();
    listing(root, root, &mut out);
    out.into_keys().map(|p| p.display().to_string()).collect()
}

#[test]
fn entries_replace_what_is_there_without_following_it() {
    let mut s = Scene::new();
    let target = s.outside().join("sentinel");
    let mut l1 = Tar::default();
    l1.symlink("f", &target.to_string_lossy())
        .dir("d")
        .file("d/x", "")
        .file("g", "file")
        .symlink("h", &target.to_string_lossy());
    let mut l2 = Tar::default();
    l2.file("f", "new content")
        .file("d", "dir became a file")
        .dir("g")
        .hardlink("h2", "h");
    s.layer(&l1, Compression::None)
        .layer(&l2, Compression::None);
    let before = s.outside_listing();
    s.extract().expect("unpack");
    assert_eq!(before, s.outside_listing());
    let r = s.rootfs();
    assert_eq!(fs::read_to_string(r.join("f")).unwrap(), "new content");
    assert_eq!(
        fs::read_to_string(r.join("d")).unwrap(),
        "dir became a file"
    );
    assert!(fs::metadata(r.join("g")).unwrap().is_dir());
    // A hard link to a symlink is another symlink, inside.
    let h2 = fs::symlink_metadata(r.join("h2")).unwrap();
    assert!(h2.file_type().is_symlink());
    assert_eq!(h2.nlink(), 2);
}

#[test]
fn dot_dot_names_are_refused() {
    let mut s = Scene::new();
    let mut t = Tar::default();
    t.file("../../x", "pwned");
    s.layer(&t, Compression::None);
    refused(&s, "../../x", Refusal::DotDot);
}

#[test]
fn absolute_names_are_refused() {
    let mut s = Scene::new();
    let name = format!("{}/pwned", s.outside().display());
    let mut t = Tar::default();
    t.file(&name, "pwned");
    s.layer(&t, Compression::Gzip);
    refused(&s, &name, Refusal::Absolute);
}

#[test]
fn writes_through_a_symlink_to_root_are_refused_in_one_layer() {
    let mut s = Scene::new();
    let name = format!("x/{}/pwned", s.outside_from_root());
    let mut t = Tar::default();
    t.symlink("x", "/").file(&name, "pwned");
    s.layer(&t, Compression::None);
    refused(
        &s,
        &name,
        Refusal::Escapes {
            path: format!("x/{}", s.outside_from_root()),
        },
    );
}

#[test]
fn writes_through_a_symlink_to_root_are_refused_across_layers() {
    let mut s = Scene::new();
    let name = format!("x/{}/sentinel", s.outside_from_root());
    let (mut a, mut b) = (Tar::default(), Tar::default());
    a.symlink("x", "/");
    b.file(&name, "overwritten");
    s.layer(&a, Compression::Zstd).layer(&b, Compression::Gzip);
    refused(
        &s,
        &name,
        Refusal::Escapes {
            path: format!("x/{}", s.outside_from_root()),
        },
    );
}

#[test]
fn symlink_chains_and_climbing_symlinks_are_refused() {
    let mut s = Scene::new();
    let mut t = Tar::default();
    t.symlink("a", "b")
        .symlink("b", "c/..")
        .dir("c")
        .symlink("e", "a/../..");
    t.file("a/ok", "inside is fine")
        .file("e/outside/pwned", "x");
    s.layer(&t, Compression::None);
    refused(
        &s,
        "e/outside/pwned",
        Refusal::Escapes {
            path: "e/outside".into(),
        },
    );
    assert!(
        s.rootfs().join("ok").exists(),
        "a → b → c/.. is the rootfs itself"
    );
}

#[test]
fn symlink_loops_are_refused() {
    let mut s = Scene::new();
    let mut t = Tar::default();
    t.symlink("a", "b").symlink("b", "a").file("a/x", "");
    s.layer(&t, Compression::None);
    refused(&s, "a/x", Refusal::Escapes { path: "a".into() });
}

#[test]
fn a_directory_replaced_by_a_symlink_cannot_be_written_through() {
    let mut s = Scene::new();
    let (mut a, mut b, mut c) = (Tar::default(), Tar::default(), Tar::default());
    a.dir("d").file("d/x", "");
    b.symlink("d", &s.outside().to_string_lossy());
    c.file("d/pwned", "x");
    s.layer(&a, Compression::None)
        .layer(&b, Compression::None)
        .layer(&c, Compression::None);
    refused(&s, "d/pwned", Refusal::Escapes { path: "d".into() });
}

#[test]
fn hard_links_outside_are_refused() {
    for (target, reason) in [
        (
            "/etc/shadow",
            Refusal::LinkAbsolute {
                target: "/etc/shadow".into(),
            },
        ),
        (
            "../outside/sentinel",
            Refusal::LinkDotDot {
                target: "../outside/sentinel".into(),
            },
        ),
        (
            "etc/../../outside/sentinel",
            Refusal::LinkDotDot {
                target: "etc/../../outside/sentinel".into(),
            },
        ),
        (
            "s/etc/shadow",
            Refusal::LinkEscapes {
                target: "s/etc/shadow".into(),
            },
        ),
    ] {
        let mut s = Scene::new();
        let mut t = Tar::default();
        t.symlink("s", "/").hardlink("shadow", target);
        s.layer(&t, Compression::None);
        let nlink = fs::metadata("/etc/shadow").map(|m| m.nlink()).ok();
        refused(&s, "shadow", reason);
        assert_eq!(nlink, fs::metadata("/etc/shadow").map(|m| m.nlink()).ok());
    }
}

#[test]
fn whiteouts_outside_are_refused() {
    let cases = |s: &Scene| {
        vec![
            ("../.wh.outside".to_string(), Refusal::DotDot),
            ("../outside/.wh.sentinel".to_string(), Refusal::DotDot),
            (".wh...".to_string(), Refusal::DotDot),
            (".wh..".to_string(), Refusal::BadName),
            (
                "s/.wh.sentinel".to_string(),
                Refusal::Escapes { path: "s".into() },
            ),
            (
                "s/.wh..wh..opq".to_string(),
                Refusal::Escapes { path: "s".into() },
            ),
            (
                format!("r/{}/.wh.sentinel", s.outside_from_root()),
                Refusal::Escapes {
                    path: format!("r/{}", s.outside_from_root()),
                },
            ),
        ]
    };
    let n = cases(&Scene::new()).len();
    for i in 0..n {
        let mut s = Scene::new();
        let (name, reason) = cases(&s).swap_remove(i);
        let mut t = Tar::default();
        t.symlink("s", &s.outside().to_string_lossy())
            .symlink("r", "/")
            .file(&name, "");
        s.layer(&t, Compression::None);
        refused(&s, &name, reason);
    }
}

#[test]
fn the_rootfs_itself_cannot_be_replaced_and_odd_types_are_refused() {
    let mut s = Scene::new();
    let mut t = Tar::default();
    t.file(".", "");
    s.layer(&t, Compression::None);
    refused(&s, ".", Refusal::ReplacesRoot);

    let mut s = Scene::new();
    let mut t = Tar::default();
    t.raw(b'V', b"volume", b"", 0o644, b"");
    s.layer(&t, Compression::None);
    refused(&s, "volume", Refusal::UnsupportedType('V'));
}

#[test]
fn long_names_through_pax_are_checked_too() {
    let mut s = Scene::new();
    let name = format!("{}/../../../x", "a".repeat(120));
    let mut t = Tar::default();
    t.file(&name, "x");
    s.layer(&t, Compression::None);
    refused(&s, &name, Refusal::DotDot);
}

#[test]
fn a_rootfs_that_is_not_empty_is_refused() {
    let mut s = Scene::new();
    fs::write(s.rootfs().join("junk"), "").unwrap();
    let mut t = Tar::default();
    t.file("a", "");
    s.layer(&t, Compression::None);
    let err = s.extract().expect_err("not empty");
    assert!(
        matches!(err, UnpackError::RootfsIo { op: Op::Open, .. }),
        "{err}"
    );
}

#[test]
fn corrupt_and_unknown_layers_are_errors_naming_the_layer() {
    let mut s = Scene::new();
    let mut t = Tar::default();
    t.file("a", "hello");
    s.layer(&t, Compression::Gzip);
    let blob = &s.layers[0].path;
    let mut bytes = fs::read(blob).unwrap();
    let n = bytes.len();
    bytes[n - 6] ^= 0xff; // the gzip CRC
    fs::write(blob, bytes).unwrap();
    let err = s.extract().expect_err("corrupt");
    assert!(matches!(err, UnpackError::Read { .. }), "{err}");
    assert!(err.to_string().contains("sha256:0000"), "{err}");

    fs::remove_dir_all(s.rootfs()).unwrap();
    fs::create_dir(s.rootfs()).unwrap();
    s.layers[0].media_type = "application/vnd.oci.image.layer.v1.tar+bzip2".into();
    let err = s.extract().expect_err("unknown media type");
    assert!(matches!(err, UnpackError::MediaType { .. }), "{err}");
}

#[test]
fn modes_follow_the_image_and_are_kept_private_until_set() {
    let mut s = Scene::new();
    let mut t = Tar::default();
    t.raw(b'5', b"locked", b"", 0o000, b"")
        .raw(b'0', b"locked/f", b"", 0o400, b"data")
        .raw(b'0', b"suid", b"", 0o6755, b"");
    s.layer(&t, Compression::None);
    s.extract().expect("unpack");
    let r = s.rootfs();
    let mode = |p: &str| {
        fs::symlink_metadata(r.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(
        (mode("locked"), mode("locked/f"), mode("suid")),
        (0o000, 0o400, 0o6755)
    );
}

#[test]
fn caller_ownership_drops_setid_bits_of_other_owners() {
    let mut s = Scene::new();
    let mut t = Tar::default();
    t.raw_owned(b'0', b"root-suid", b"", 0o4755, (0, 0), b"")
        .raw_owned(b'0', b"user-suid", b"", 0o4755, (1000, 0), b"")
        .raw_owned(b'0', b"group-sgid", b"", 0o2755, (0, 42), b"");
    s.layer(&t, Compression::None);
    let st = s.extract().expect("unpack");
    let r = s.rootfs();
    let mode = |p: &str| fs::metadata(r.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(
        (mode("root-suid"), mode("user-suid"), mode("group-sgid")),
        (0o4755, 0o755, 0o755)
    );
    assert_eq!(st.setid_bits_dropped, 2);
}

#[test]
fn image_ownership_refuses_ids_beyond_the_mapping() {
    let mut s = Scene::new();
    let mut t = Tar::default();
    t.raw_owned(b'0', b"far", b"", 0o644, (70_000, 0), b"");
    s.layer(&t, Compression::None);
    let err = extract(
        &s.rootfs(),
        &s.layers,
        Owners::Image {
            uids: 65537,
            gids: 65537,
        },
        false,
    )
    .expect_err("beyond the range");
    assert_eq!(
        err.refusal(),
        Some(&Refusal::IdOutOfRange {
            kind: "uid".into(),
            id: 70_000,
            count: 65537
        })
    );
}
