//! Unpacking image layers through the real helper (`locald internal-unpack`
//! in a user namespace), as root and as an unprivileged user with
//! subordinate ids (through `setpriv`, as the daemon would run):
//!
//! - hostile layers (`../../x`, absolute names, a symlink to `/` and a file
//!   through it in one layer and across layers, symlink chains, a directory
//!   replaced by a symlink, hard links to `/etc/shadow` and through `..`,
//!   whiteouts of `../x` and through symlinks) are each refused with their
//!   message, and nothing outside the rootfs is written or removed;
//! - a gzip + zstd + plain image with a whiteout, an opaque directory, a
//!   hard link, a symlink, an executable, setuid/setgid files, a FIFO and
//!   device nodes unpacks exactly as expected, owned by the user's
//!   subordinate ids (or by the user alone without them);
//! - `umoci unpack --rootless` of the same image gives the same file list.
//!
//! Needs root, `setpriv`, `newuidmap` (uidmap) and `umoci`; build the
//! binaries first (`cargo build -p locald` and this package's bins).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use locald::image::unpack::{Compression, Layer, Owners, Refusal, UnpackStats};
use locald_tests::require;
use locald_tests::shim::{test_user, TestUser};
use locald_tests::unpack::{
    run_as, run_request, snapshot, tree, write_layers, write_oci_layout, Tar, UnpackOutcome,
    UnpackRequest,
};

const USER: &str = "locald-unpack-t1";

fn preconditions() -> bool {
    let root = nix::unistd::geteuid().is_root();
    if require(
        root,
        "the unpack tests run as root (they create a test user)",
    ) {
        return false;
    }
    for (tool, pkg) in [
        ("/usr/bin/newuidmap", "uidmap"),
        ("/usr/bin/setpriv", "util-linux"),
        ("/usr/sbin/useradd", "passwd"),
    ] {
        if require(
            Path::new(tool).exists(),
            &format!("{tool} is missing (apt install {pkg}; tests/setup-debian.sh)"),
        ) {
            return false;
        }
    }
    true
}

/// Who runs the unpack.
#[derive(Clone)]
enum Runner {
    /// This (root) process, through the library.
    Root,
    /// A test user with subordinate ids, through `setpriv`.
    User(TestUser),
    /// The same user as if they had none.
    UserCallerOnly(TestUser),
}

impl Runner {
    fn name(&self) -> String {
        match self {
            Runner::Root => "root".into(),
            Runner::User(u) => u.name.clone(),
            Runner::UserCallerOnly(u) => format!("{} without subordinate ids", u.name),
        }
    }

    fn owner(&self) -> Option<&TestUser> {
        match self {
            Runner::Root => None,
            Runner::User(u) | Runner::UserCallerOnly(u) => Some(u),
        }
    }

    /// Host uid:gid for container ids (uid, gid) after an unpack by this
    /// runner.
    fn host_ids(&self, (uid, gid): (u32, u32)) -> String {
        match self {
            Runner::Root => "0:0".into(),
            Runner::UserCallerOnly(u) => format!("{}:{}", u.uid, u.gid),
            Runner::User(u) => {
                let map = |id: u32, own: u32| if id == 0 { own } else { u.sub_start + id - 1 };
                format!("{}:{}", map(uid, u.uid), map(gid, u.gid))
            }
        }
    }

    fn unpack(&self, work: &Work, layers: Vec<Layer>) -> UnpackOutcome {
        let req = UnpackRequest {
            helper: locald_tests::user_bin("locald"),
            rootfs: work.rootfs(),
            layers,
            caller_only: matches!(self, Runner::UserCallerOnly(_)),
            sync: false,
        };
        match self.owner() {
            None => run_request(&req),
            Some(u) => run_as(u, &req).expect("run locald-test-unpack as the test user"),
        }
    }
}

fn runners() -> Vec<Runner> {
    let user = test_user(USER).expect("test user");
    vec![Runner::Root, Runner::User(user)]
}

/// A private working directory owned by the runner: `rootfs` (made by the
/// unpack), `outside/sentinel`, and `blobs/`.
struct Work {
    tmp: tempfile::TempDir,
    owner: (u32, u32),
}

impl Work {
    fn new(runner: &Runner) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("locald-unpack-")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let owner = runner.owner().map_or((0, 0), |u| (u.uid, u.gid));
        fs::create_dir(tmp.path().join("outside")).expect("outside");
        fs::write(tmp.path().join("outside/sentinel"), "keep me").expect("sentinel");
        fs::create_dir(tmp.path().join("blobs")).expect("blobs");
        let w = Self { tmp, owner };
        w.chown();
        fs::set_permissions(w.tmp.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
        w
    }

    fn chown(&self) {
        locald_tests::shim::chown_tree(self.tmp.path(), self.owner).expect("chown");
    }

    fn path(&self) -> &Path {
        self.tmp.path()
    }

    fn rootfs(&self) -> PathBuf {
        self.path().join("rootfs")
    }

    fn outside(&self) -> PathBuf {
        self.path().join("outside")
    }

    /// The outside directory relative to `/` (to reach it through a
    /// symlink to `/`).
    fn outside_from_root(&self) -> String {
        self.outside()
            .to_string_lossy()
            .trim_start_matches('/')
            .to_string()
    }

    fn layers(&self, layers: &[(Tar, Compression)]) -> Vec<Layer> {
        let l = write_layers(&self.path().join("blobs"), layers).expect("layers");
        self.chown();
        l
    }

    fn snapshot(&self) -> BTreeMap<String, String> {
        snapshot(self.path(), &["rootfs", "blobs"])
    }
}

/// One hostile image.
struct Hostile {
    what: &'static str,
    layers: Vec<(Tar, Compression)>,
    entry: String,
    refusal: Refusal,
}

fn tar(f: impl FnOnce(&mut Tar)) -> Tar {
    let mut t = Tar::default();
    f(&mut t);
    t
}

fn hostile_images(w: &Work) -> Vec<Hostile> {
    use Compression::{Gzip, None as Plain, Zstd};
    let outside = w.outside().to_string_lossy().to_string();
    let via_root = format!("x/{}", w.outside_from_root());
    vec![
        Hostile {
            what: "a name climbing out with ..",
            layers: vec![(
                tar(|t| {
                    t.file("../../x", b"pwned");
                }),
                Gzip,
            )],
            entry: "../../x".into(),
            refusal: Refusal::DotDot,
        },
        Hostile {
            what: "a name climbing out with .. onto the sentinel",
            layers: vec![(
                tar(|t| {
                    t.file("./../outside/sentinel", b"pwned");
                }),
                Plain,
            )],
            entry: "./../outside/sentinel".into(),
            refusal: Refusal::DotDot,
        },
        Hostile {
            what: "an absolute name",
            layers: vec![(
                tar(|t| {
                    t.file(&format!("{outside}/x"), b"pwned");
                }),
                Zstd,
            )],
            entry: format!("{outside}/x"),
            refusal: Refusal::Absolute,
        },
        Hostile {
            what: "a symlink to / and a file through it in one layer",
            layers: vec![(
                tar(|t| {
                    t.symlink("x", "/")
                        .file(&format!("{via_root}/pwned"), b"pwned");
                }),
                Gzip,
            )],
            entry: format!("{via_root}/pwned"),
            refusal: Refusal::Escapes {
                path: via_root.clone(),
            },
        },
        Hostile {
            what: "a symlink to / and a file through it in the next layer",
            layers: vec![
                (
                    tar(|t| {
                        t.symlink("x", "/");
                    }),
                    Gzip,
                ),
                (
                    tar(|t| {
                        t.file(&format!("{via_root}/sentinel"), b"pwned");
                    }),
                    Zstd,
                ),
            ],
            entry: format!("{via_root}/sentinel"),
            refusal: Refusal::Escapes {
                path: via_root.clone(),
            },
        },
        Hostile {
            what: "a chain of symlinks climbing out",
            layers: vec![(
                tar(|t| {
                    t.symlink("a", "b")
                        .symlink("b", "c/../..")
                        .dir("c")
                        .file("a/outside/pwned", b"x");
                }),
                Plain,
            )],
            entry: "a/outside/pwned".into(),
            refusal: Refusal::Escapes {
                path: "a/outside".into(),
            },
        },
        Hostile {
            what: "a directory replaced by a symlink, then written under",
            layers: vec![
                (
                    tar(|t| {
                        t.dir("d").file("d/x", b"");
                    }),
                    Gzip,
                ),
                (
                    tar(|t| {
                        t.symlink("d", &outside);
                    }),
                    Plain,
                ),
                (
                    tar(|t| {
                        t.file("d/pwned", b"x");
                    }),
                    Zstd,
                ),
            ],
            entry: "d/pwned".into(),
            refusal: Refusal::Escapes { path: "d".into() },
        },
        Hostile {
            what: "a hard link to /etc/shadow",
            layers: vec![(
                tar(|t| {
                    t.hardlink("shadow", "/etc/shadow");
                }),
                Gzip,
            )],
            entry: "shadow".into(),
            refusal: Refusal::LinkAbsolute {
                target: "/etc/shadow".into(),
            },
        },
        Hostile {
            what: "a hard link through ..",
            layers: vec![(
                tar(|t| {
                    t.hardlink("s", "etc/../../outside/sentinel");
                }),
                Plain,
            )],
            entry: "s".into(),
            refusal: Refusal::LinkDotDot {
                target: "etc/../../outside/sentinel".into(),
            },
        },
        Hostile {
            what: "a hard link through a symlink to /",
            layers: vec![(
                tar(|t| {
                    t.symlink("x", "/").hardlink("shadow", "x/etc/shadow");
                }),
                Zstd,
            )],
            entry: "shadow".into(),
            refusal: Refusal::LinkEscapes {
                target: "x/etc/shadow".into(),
            },
        },
        Hostile {
            what: "a whiteout of ../x",
            layers: vec![(
                tar(|t| {
                    t.file("../outside/.wh.sentinel", b"");
                }),
                Gzip,
            )],
            entry: "../outside/.wh.sentinel".into(),
            refusal: Refusal::DotDot,
        },
        Hostile {
            what: "a whiteout of ..",
            layers: vec![(
                tar(|t| {
                    t.file(".wh...", b"");
                }),
                Plain,
            )],
            entry: ".wh...".into(),
            refusal: Refusal::DotDot,
        },
        Hostile {
            what: "a whiteout through a symlink",
            layers: vec![(
                tar(|t| {
                    t.symlink("s", &outside).file("s/.wh.sentinel", b"");
                }),
                Zstd,
            )],
            entry: "s/.wh.sentinel".into(),
            refusal: Refusal::Escapes { path: "s".into() },
        },
        Hostile {
            what: "an opaque directory through a symlink",
            layers: vec![
                (
                    tar(|t| {
                        t.symlink("s", &outside);
                    }),
                    Plain,
                ),
                (
                    tar(|t| {
                        t.file("s/.wh..wh..opq", b"");
                    }),
                    Gzip,
                ),
            ],
            entry: "s/.wh..wh..opq".into(),
            refusal: Refusal::Escapes { path: "s".into() },
        },
    ]
}

#[test]
fn hostile_layers_are_refused_and_touch_nothing_outside() {
    if !preconditions() {
        return;
    }
    let shadow = fs::metadata("/etc/shadow").map(|m| format!("{m:?}")).ok();
    for runner in runners() {
        let n = hostile_images(&Work::new(&runner)).len();
        for i in 0..n {
            let work = Work::new(&runner);
            let case = hostile_images(&work).swap_remove(i);
            let layers = work.layers(&case.layers);
            let before = work.snapshot();
            let outcome = runner.unpack(&work, layers.clone());
            let who = runner.name();
            let UnpackOutcome::Err { message, refusal } = outcome else {
                panic!("{}: {who}: not refused: {outcome:?}", case.what);
            };
            assert_eq!(
                refusal.as_ref(),
                Some(&case.refusal),
                "{}: {who}: {message}",
                case.what
            );
            let digest = &layers.last().map(|l| l.digest.clone()).unwrap_or_default();
            for part in [
                format!("layer {digest}"),
                format!("entry {:?} refused", case.entry),
                case.refusal.to_string(),
            ] {
                assert!(
                    message.contains(&part),
                    "{}: {who}: {message:?} lacks {part:?}",
                    case.what
                );
            }
            assert_eq!(
                before,
                work.snapshot(),
                "{}: {who}: something outside changed",
                case.what
            );
            assert_eq!(
                fs::read_to_string(work.outside().join("sentinel"))
                    .ok()
                    .as_deref(),
                Some("keep me")
            );
        }
    }
    assert_eq!(
        shadow,
        fs::metadata("/etc/shadow").map(|m| format!("{m:?}")).ok()
    );
}

#[test]
fn contained_tricks_are_placed_inside_without_following_anything() {
    if !preconditions() {
        return;
    }
    for runner in runners() {
        let work = Work::new(&runner);
        let target = format!("{}/sentinel", work.outside().display());
        let layers = work.layers(&[
            (
                tar(|t| {
                    // A hard link to a symlink is another symlink inside.
                    t.symlink("l", &target).hardlink("h", "l");
                    t.symlink("f", &target).symlink("up", "../..");
                }),
                Compression::Gzip,
            ),
            (
                tar(|t| {
                    // Files replace symlinks; they never write through them.
                    t.file("h", b"new h").file("f", b"new f");
                    t.symlink("lib", "usr/lib")
                        .dir("usr/lib")
                        .file("lib/libc.so", b"elf");
                }),
                Compression::Zstd,
            ),
        ]);
        let before = work.snapshot();
        let outcome = runner.unpack(&work, layers);
        assert!(
            matches!(outcome, UnpackOutcome::Ok(_)),
            "{}: {outcome:?}",
            runner.name()
        );
        assert_eq!(before, work.snapshot(), "{}", runner.name());
        let r = work.rootfs();
        assert_eq!(fs::read_to_string(r.join("h")).unwrap(), "new h");
        assert_eq!(fs::read_to_string(r.join("f")).unwrap(), "new f");
        assert!(fs::symlink_metadata(r.join("l"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read_to_string(r.join("usr/lib/libc.so")).unwrap(),
            "elf"
        );
    }
}

/// The multi-layer image of the positive tests, `zstd` as asked (or gzip
/// where umoci cannot read zstd).
fn image(zstd: Compression) -> Vec<(Tar, Compression)> {
    let l1 = tar(|t| {
        t.dir_owned("./", 0o755, (0, 0))
            .dir("bin")
            .file_owned("bin/hello", 0o755, (0, 0), b"#!/bin/sh\necho hello\n")
            .symlink("bin/sh", "hello")
            .dir("etc")
            .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
            .file_owned("etc/shadow", 0o640, (0, 42), b"root:*:1::::::\n")
            .file("etc/old", b"whited out in layer 2")
            .dir_owned("home/user", 0o750, (1000, 1000))
            .file_owned("home/user/notes", 0o600, (1000, 1000), b"mine")
            .dir("usr/bin")
            .file_owned("usr/bin/su", 0o4755, (0, 0), b"su")
            .file_owned("usr/bin/wall", 0o2755, (0, 5), b"wall")
            .file_owned("usr/bin/userprog", 0o4755, (1000, 0), b"setuid to a user")
            .dir("opq")
            .file("opq/a", b"a")
            .file("opq/b", b"b")
            .dir("data")
            .file("data/f", b"linked")
            .dir("dev")
            .chardev("dev/null")
            .dir("run")
            .fifo("run/fifo", 0o620);
    });
    let l2 = tar(|t| {
        t.dir("etc")
            .file("etc/.wh.old", b"")
            .dir("opq")
            .file("opq/.wh..wh..opq", b"")
            .file("opq/c", b"c")
            .hardlink("data/g", "data/f")
            .pax(&[
                ("SCHILY.xattr.user.comment", b"from the image"),
                ("SCHILY.xattr.trusted.locald", b"needs CAP_SYS_ADMIN"),
            ])
            .file("var/log/app.log", b"log");
    });
    let l3 = tar(|t| {
        t.dir("etc")
            .file(
                "etc/passwd",
                b"root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n",
            )
            .dir_owned("tmp", 0o1777, (0, 0))
            .blockdev("dev/sda");
    });
    vec![(l1, Compression::Gzip), (l2, zstd), (l3, Compression::None)]
}

/// What [`image`] must unpack to, for `runner`.
fn expected(runner: &Runner) -> BTreeMap<String, String> {
    let caller_only = !matches!(runner, Runner::User(_));
    let setid = |mode: &str| {
        if caller_only {
            "0755".to_string()
        } else {
            mode.to_string()
        }
    };
    let mut e = BTreeMap::new();
    let mut put = |p: &str, kind: &str, mode: &str, ids: (u32, u32), nlink: u32, what: &str| {
        let ids = runner.host_ids(ids);
        e.insert(p.to_string(), format!("{kind} {mode} {ids} {nlink} {what}"));
    };
    let passwd_len = "root:x:0:0::/root:/bin/sh\nuser:x:1000:1000::/home/user:/bin/sh\n".len();
    put("bin", "d", "0755", (0, 0), 2, "");
    put("bin/hello", "f", "0755", (0, 0), 1, "21");
    put("bin/sh", "l", "", (0, 0), 1, "hello");
    put("data", "d", "0755", (0, 0), 2, "");
    put("data/f", "f", "0644", (0, 0), 2, "6");
    put("data/g", "f", "0644", (0, 0), 2, "6");
    put("dev", "d", "0755", (0, 0), 2, "");
    put("etc", "d", "0755", (0, 0), 2, "");
    put(
        "etc/passwd",
        "f",
        "0644",
        (0, 0),
        1,
        &passwd_len.to_string(),
    );
    put("etc/shadow", "f", "0640", (0, 42), 1, "15");
    put("home", "d", "0755", (0, 0), 3, "");
    put("home/user", "d", "0750", (1000, 1000), 2, "");
    put("home/user/notes", "f", "0600", (1000, 1000), 1, "4");
    put("opq", "d", "0755", (0, 0), 2, "");
    put("opq/c", "f", "0644", (0, 0), 1, "1");
    put("run", "d", "0755", (0, 0), 2, "");
    put("run/fifo", "p", "0620", (0, 0), 1, "");
    put("tmp", "d", "1777", (0, 0), 2, "");
    put("usr", "d", "0755", (0, 0), 3, "");
    put("usr/bin", "d", "0755", (0, 0), 2, "");
    put("usr/bin/su", "f", "4755", (0, 0), 1, "2");
    put("usr/bin/userprog", "f", &setid("4755"), (1000, 0), 1, "16");
    put("usr/bin/wall", "f", &setid("2755"), (0, 5), 1, "4");
    put("var", "d", "0755", (0, 0), 3, "");
    put("var/log", "d", "0755", (0, 0), 2, "");
    put("var/log/app.log", "f", "0644", (0, 0), 1, "3");
    e
}

fn check_image(runner: &Runner) {
    let work = Work::new(runner);
    let layers = work.layers(&image(Compression::Zstd));
    let outcome = runner.unpack(&work, layers);
    let who = runner.name();
    let UnpackOutcome::Ok(stats) = outcome else {
        panic!("{who}: {outcome:?}");
    };
    assert_eq!(tree(&work.rootfs()), expected(runner), "{who}");
    let r = work.rootfs();
    let root_meta = fs::metadata(&r).unwrap();
    assert_eq!(
        (
            std::os::unix::fs::MetadataExt::uid(&root_meta),
            root_meta.permissions().mode() & 0o7777
        ),
        (work.owner.0, 0o755),
        "{who}: the rootfs directory stays the user's"
    );
    let mtime =
        |p: &str| std::os::unix::fs::MetadataExt::mtime(&fs::symlink_metadata(r.join(p)).unwrap());
    for p in [
        "bin/hello",
        "etc/shadow",
        "home/user",
        "usr/bin/su",
        "tmp",
        "etc",
        "bin/sh",
    ] {
        assert_eq!(
            mtime(p),
            locald_tests::unpack::MTIME as i64,
            "{who}: mtime of {p}"
        );
    }
    let mut v = [0u8; 64];
    let n = rustix::fs::getxattr(r.join("var/log/app.log"), "user.comment", &mut v[..])
        .expect("user.comment");
    assert_eq!(&v[..n], b"from the image");
    let owners = match runner {
        Runner::User(u) => Owners::Image {
            uids: 1 + u64::from(u.sub_count),
            gids: 1 + u64::from(u.sub_count),
        },
        _ => Owners::Caller,
    };
    let want = UnpackStats {
        layers: 3,
        entries: stats.entries,
        files: 14,
        dirs: 13,
        symlinks: 1,
        hardlinks: 1,
        fifos: 1,
        bytes: stats.bytes,
        devices_skipped: 2,
        whiteouts: 1,
        opaque_dirs: 1,
        xattrs_set: 1,
        xattrs_skipped: 1,
        skipped_xattr_names: vec!["trusted.locald".into()],
        setid_bits_dropped: if matches!(owners, Owners::Caller) {
            2
        } else {
            0
        },
        owners: Some(owners),
    };
    assert_eq!(stats, want, "{who}");
}

#[test]
fn a_multi_layer_image_unpacks_exactly_as_root() {
    if !preconditions() {
        return;
    }
    check_image(&Runner::Root);
}

#[test]
fn a_user_with_subordinate_ids_gets_them_as_owners() {
    if !preconditions() {
        return;
    }
    check_image(&Runner::User(test_user(USER).expect("user")));
}

#[test]
fn a_user_without_subordinate_ids_owns_everything() {
    if !preconditions() {
        return;
    }
    check_image(&Runner::UserCallerOnly(test_user(USER).expect("user")));
}

#[test]
fn umoci_unpacks_the_same_file_list() {
    if !preconditions() {
        return;
    }
    if require(
        Command::new("umoci")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "umoci is not installed (tests/setup-debian.sh)",
    ) {
        return;
    }
    // umoci 0.4 cannot read zstd layers: the same tar, gzipped.
    let runner = Runner::Root;
    let work = Work::new(&runner);
    let layers = work.layers(&image(Compression::Gzip));
    let outcome = runner.unpack(&work, layers);
    assert!(matches!(outcome, UnpackOutcome::Ok(_)), "{outcome:?}");
    let layout = work.path().join("layout");
    write_oci_layout(&layout, "test", &image(Compression::Gzip)).expect("layout");
    let bundle = work.path().join("bundle");
    let out = Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:test", layout.display()))
        .arg(&bundle)
        .output()
        .expect("umoci");
    assert!(
        out.status.success(),
        "umoci: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Kind, mode and link target of every path (owners differ: umoci
    // --rootless gives everything to the caller).
    let shape = |root: &Path| -> BTreeMap<String, String> {
        tree(root)
            .into_iter()
            .map(|(p, v)| {
                let f: Vec<&str> = v.splitn(5, ' ').collect();
                (p, format!("{} {} {}", f[0], f[1], f.get(4).unwrap_or(&"")))
            })
            .collect()
    };
    let ours = shape(&work.rootfs());
    let theirs = shape(&bundle.join("rootfs"));
    // The deliberate differences: umoci --rootless writes an empty
    // regular file where the image has a device node (locald writes
    // nothing), and it gives every file to the caller but keeps
    // setuid/setgid bits anyway, so a file the image makes setuid to uid
    // 1000 becomes setuid to container root (locald without subordinate
    // ids drops those bits instead).
    let paths: std::collections::BTreeSet<_> = ours.keys().chain(theirs.keys()).collect();
    let differ: Vec<_> = paths
        .into_iter()
        .filter(|p| ours.get(*p) != theirs.get(*p))
        .map(|p| {
            let show = |v: Option<&String>| v.map_or("nothing".to_string(), |v| format!("{v:?}"));
            format!(
                "{p}: locald {}, umoci {}",
                show(ours.get(p)),
                show(theirs.get(p))
            )
        })
        .collect();
    assert_eq!(
        differ,
        [
            r#"dev/null: locald nothing, umoci "f 0666 0""#,
            r#"dev/sda: locald nothing, umoci "f 0660 0""#,
            r#"usr/bin/userprog: locald "f 0755 16", umoci "f 4755 16""#,
            r#"usr/bin/wall: locald "f 0755 4", umoci "f 2755 4""#,
        ]
    );
}

#[test]
fn a_rootfs_in_a_reachable_directory_is_refused() {
    if !preconditions() {
        return;
    }
    let work = Work::new(&Runner::Root);
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let layers = work.layers(&image(Compression::Zstd));
    let UnpackOutcome::Err { message, .. } = Runner::Root.unpack(&work, layers) else {
        panic!("a rootfs beside others' reach must be refused");
    };
    assert!(
        message.contains("group and others must not reach it"),
        "{message}"
    );
    assert!(!work.rootfs().exists());
}

#[test]
fn a_helper_that_is_not_locald_is_an_error() {
    if !preconditions() {
        return;
    }
    let work = Work::new(&Runner::Root);
    let layers = work.layers(&image(Compression::Zstd));
    let req = UnpackRequest {
        helper: "/bin/false".into(),
        rootfs: work.rootfs(),
        layers,
        caller_only: false,
        sync: false,
    };
    let UnpackOutcome::Err { message, .. } = run_request(&req) else {
        panic!("/bin/false cannot unpack");
    };
    assert!(message.contains("ended without a result"), "{message}");
}
