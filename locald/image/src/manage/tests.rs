//! Listing and pruning on a store made here: images written blob by blob,
//! rootfs trees made by hand (owned by whoever runs the tests, so they are
//! removed in this process with [`remove_in_place`]; the helper and its
//! namespace are covered by the daemon's tests in `tests/tests/images_cli.rs`).

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use serde_json::json;

use super::*;
use crate::unpack::remove_in_place;

struct World {
    _dir: tempfile::TempDir,
    outside: PathBuf,
    store: Store,
}

fn world() -> World {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("store")).expect("store");
    let outside = dir.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    fs::write(outside.join("precious"), "keep me").expect("write");
    World {
        _dir: dir,
        outside,
        store,
    }
}

fn put(store: &Store, data: &[u8]) -> (Digest, u64) {
    let d = Digest::of(data);
    store.put_blob(&d, data).expect("put blob");
    (d, data.len() as u64)
}

/// Stores an image with a config labelled `name` and these layers; returns
/// its manifest digest.
fn put_image(store: &Store, name: &str, layers: &[&[u8]]) -> Digest {
    let layers: Vec<_> = layers.iter().map(|l| put(store, l)).collect();
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": { "Labels": { "name": name } },
        "rootfs": {
            "type": "layers",
            "diff_ids": layers.iter().map(|(d, _)| d.to_string()).collect::<Vec<_>>(),
        },
    });
    let (config, config_size) = put(store, config.to_string().as_bytes());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.to_string(),
            "size": config_size,
        },
        "layers": layers.iter().map(|(d, size)| json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": d.to_string(),
            "size": size,
        })).collect::<Vec<_>>(),
    });
    put(store, manifest.to_string().as_bytes()).0
}

/// A rootfs tree for `manifest`, with a symlink out of it to `outside`.
fn unpack_by_hand(store: &Store, manifest: &Digest, outside: &Path) -> PathBuf {
    let root = store.rootfs_dir(manifest);
    fs::create_dir_all(root.join("etc/deep")).expect("mkdir");
    fs::write(root.join("etc/deep/file"), "0123456789").expect("write");
    symlink(outside, root.join("escape")).expect("symlink");
    symlink(outside.join("precious"), root.join("etc/precious")).expect("symlink");
    root
}

fn remove(path: &Path) -> Result<(), UnpackError> {
    remove_in_place(path)
}

fn up(dirs: &[&str]) -> Users {
    Users {
        up: dirs.iter().map(PathBuf::from).collect(),
        declared: BTreeMap::new(),
    }
}

#[test]
fn prune_keeps_what_projects_that_are_up_use_and_removes_the_rest() {
    let w = world();
    let s = &w.store;
    let a = put_image(s, "a", &[b"shared layer", b"layer of a"]);
    let b = put_image(s, "b", &[b"shared layer", b"layer of b"]);
    s.record("oci:/p/a/layout:v1", &a, None, Some(Path::new("/p/a")))
        .expect("record");
    s.record("reg.example/b:1", &b, None, Some(Path::new("/p/b")))
        .expect("record");
    s.add_project("reg.example/b:1", Path::new("/p/gone"))
        .expect("record");
    let (orphan, _) = put(s, b"a blob of a pull that never recorded");
    let root_a = unpack_by_hand(s, &a, &w.outside);
    let root_b = unpack_by_hand(s, &b, &w.outside);
    let a_only: Vec<Digest> = {
        let all_a = s.entry_blobs(&s.lookup("oci:/p/a/layout:v1").unwrap().unwrap());
        let all_b = s.entry_blobs(&s.lookup("reg.example/b:1").unwrap().unwrap());
        let b: BTreeSet<_> = all_b.unwrap().blobs.into_iter().collect();
        all_a
            .unwrap()
            .blobs
            .into_iter()
            .filter(|d| !b.contains(d))
            .collect()
    };
    assert_eq!(a_only.len(), 3, "manifest, config and one layer");

    let pruned = prune(s, &up(&["/p/b"]), &remove).expect("prune");
    assert_eq!(pruned.references, ["oci:/p/a/layout:v1"]);
    assert_eq!(pruned.blobs, 4, "a's three and the orphan");
    assert_eq!(pruned.rootfs, 1);
    assert_eq!(pruned.in_use, 0);
    assert!(pruned.bytes > 10, "{pruned:?}");
    for d in a_only.iter().chain([&orphan]) {
        assert!(!s.has_blob(d), "{d} should be gone");
    }
    assert!(s.image(&b).is_ok(), "b is whole: the shared layer stayed");
    assert!(!root_a.exists());
    assert!(root_b.join("etc/deep/file").exists());
    assert_eq!(
        fs::read_to_string(w.outside.join("precious")).expect("outside"),
        "keep me",
        "the symlinks were removed, not followed"
    );
    let rootfs_left: Vec<_> = fs::read_dir(s.rootfs_root())
        .expect("rootfs dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(rootfs_left, [b.hex()], "nothing set aside is left");
    let b_entry = s.lookup("reg.example/b:1").unwrap().unwrap();
    assert_eq!(
        b_entry.projects.iter().collect::<Vec<_>>(),
        [Path::new("/p/b")],
        "a recorded user that is not up is forgotten"
    );

    let again = prune(s, &up(&["/p/b"]), &remove).expect("prune");
    assert_eq!(again, Pruned::default(), "a second prune finds nothing");
}

#[test]
fn what_a_project_that_is_up_declares_is_kept_though_not_recorded() {
    let w = world();
    let s = &w.store;
    let a = put_image(s, "a", &[b"layer"]);
    s.record("reg.example/a:1", &a, None, None).expect("record");
    let mut users = up(&["/p/a"]);
    users
        .declared
        .insert("reg.example/a:1".into(), [PathBuf::from("/p/a")].into());
    let pruned = prune(s, &users, &remove).expect("prune");
    assert_eq!(pruned, Pruned::default());
    let listed = list(s, &users).expect("list");
    assert_eq!(listed[0].projects, [PathBuf::from("/p/a")]);
}

#[test]
fn a_rootfs_a_container_runs_from_is_kept_until_it_stops() {
    let w = world();
    let s = &w.store;
    let a = put_image(s, "a", &[b"layer"]);
    s.record("reg.example/a:1", &a, None, Some(Path::new("/p/a")))
        .expect("record");
    let root = unpack_by_hand(s, &a, &w.outside);
    // What prepare does for a running container.
    let lease_file =
        File::create(s.rootfs_root().join(format!(".{}.inuse", a.hex()))).expect("lease file");
    let lease = Flock::lock(lease_file, FlockArg::LockShared).expect("lease");

    let pruned = prune(s, &up(&[]), &remove).expect("prune");
    assert_eq!(pruned.references, ["reg.example/a:1"]);
    assert_eq!((pruned.rootfs, pruned.in_use, pruned.blobs), (0, 1, 0));
    assert!(root.join("etc/deep/file").exists());
    assert!(s.image(&a).is_ok(), "its blobs stay with it");

    drop(lease);
    let pruned = prune(s, &up(&[]), &remove).expect("prune");
    assert_eq!((pruned.rootfs, pruned.in_use, pruned.blobs), (1, 0, 3));
    assert!(!root.exists());
}

#[test]
fn what_a_cut_short_removal_or_a_dead_unpack_left_goes() {
    let w = world();
    let s = &w.store;
    let hex = "ab".repeat(32);
    let rootfs = s.rootfs_root();
    fs::create_dir_all(rootfs.join(format!(".rm-{hex}-1-0/usr"))).expect("mkdir");
    // A pid that cannot be running, and ours.
    let dead = rootfs.join(format!(".tmp-{hex}-4194305-0"));
    let live = rootfs.join(format!(".tmp-{hex}-{}-0", std::process::id()));
    fs::create_dir_all(dead.join("bin")).expect("mkdir");
    fs::create_dir_all(&live).expect("mkdir");
    let pruned = prune(s, &up(&[]), &remove).expect("prune");
    assert_eq!(pruned.rootfs, 2);
    let left: Vec<_> = fs::read_dir(&rootfs)
        .expect("rootfs dir")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(left, [live]);
}

#[test]
fn list_counts_blobs_and_the_unpacked_tree_and_names_users_that_are_up() {
    let w = world();
    let s = &w.store;
    let a = put_image(s, "a", &[b"0123456789"]);
    s.record("reg.example/a:1", &a, None, Some(Path::new("/p/a")))
        .expect("record");
    s.add_project("reg.example/a:1", Path::new("/p/down"))
        .expect("record");
    let blobs: u64 = s
        .entry_blobs(&s.lookup("reg.example/a:1").unwrap().unwrap())
        .unwrap()
        .blobs
        .iter()
        .filter_map(|d| s.blob_size(d))
        .sum();
    let listed = list(s, &up(&["/p/a"])).expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].size, blobs);
    assert!(!listed[0].unpacked);
    assert_eq!(listed[0].projects, [PathBuf::from("/p/a")]);

    let root = unpack_by_hand(s, &a, &w.outside);
    fs::hard_link(root.join("etc/deep/file"), root.join("etc/link")).expect("link");
    let listed = list(s, &up(&[])).expect("list");
    assert!(listed[0].unpacked);
    assert_eq!(
        listed[0].size,
        blobs + 10,
        "the file once, its hard link not again, symlinks not followed"
    );
    assert!(listed[0].projects.is_empty());
}

#[test]
fn a_rootfs_in_place_of_which_is_a_symlink_is_refused() {
    let w = world();
    let link = w.outside.join("link");
    symlink(&w.outside, &link).expect("symlink");
    let e = remove_in_place(&link).expect_err("a symlink");
    assert!(matches!(
        e,
        UnpackError::Rootfs {
            problem: crate::unpack::RootfsProblem::NotDirectory,
            ..
        }
    ));
    assert!(w.outside.join("precious").exists());
    remove_in_place(&w.outside.join("missing")).expect("missing is fine");
}

#[test]
fn a_tree_that_cannot_be_removed_is_reported_after_the_others_went() {
    let w = world();
    let s = &w.store;
    let a = put_image(s, "a", &[b"layer a"]);
    let b = put_image(s, "b", &[b"layer b"]);
    s.record("reg.example/a:1", &a, None, None).expect("record");
    s.record("reg.example/b:1", &b, None, None).expect("record");
    let root_a = unpack_by_hand(s, &a, &w.outside);
    let root_b = unpack_by_hand(s, &b, &w.outside);
    let refuse_a = |path: &Path| {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with(&format!(".rm-{}", a.hex()))) {
            Err(UnpackError::Helper {
                helper: PathBuf::from("/nowhere"),
                what: "refused for the test".into(),
                source: None,
            })
        } else {
            remove_in_place(path)
        }
    };
    let e = prune(s, &up(&[]), &refuse_a).expect_err("a stays");
    assert!(matches!(e, ManageError::Remove { .. }), "{e}");
    assert!(!root_a.exists() && !root_b.exists(), "both were set aside");
    assert!(s.entries().expect("entries").is_empty());
    assert!(s.blobs().expect("blobs").is_empty());

    // The next prune finishes what is left.
    let pruned = prune(s, &up(&[]), &remove).expect("prune");
    assert_eq!(pruned.rootfs, 1);
    let left: Vec<_> = fs::read_dir(s.rootfs_root()).expect("rootfs dir").collect();
    assert!(left.is_empty(), "{left:?}");
}
