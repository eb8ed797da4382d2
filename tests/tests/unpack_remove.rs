//! Removing an unpacked rootfs (what `prune` does) through the helper's
//! user namespace, as an unprivileged user with subordinate ids: the
//! image's files belong to those ids, in directories the user cannot enter
//! or write outside the namespace, so plain `rm -rf` fails; `remove` takes
//! everything and nothing outside the rootfs, whatever its symlinks point at.
//!
//! Needs root (to create the test user), `setpriv` and `newuidmap`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use locald::image::unpack::{Compression, Owners};
use locald_tests::require;
use locald_tests::shim::{chown_tree, test_user};
use locald_tests::unpack::{
    remove_as, run_as, write_layers, RemoveRequest, Tar, UnpackOutcome, UnpackRequest,
};

#[test]
fn a_rootfs_owned_by_subordinate_ids_is_removed_in_the_namespace_and_nothing_else() {
    let root = nix::unistd::geteuid().is_root();
    let tools = [
        "/usr/bin/newuidmap",
        "/usr/bin/setpriv",
        "/usr/sbin/useradd",
    ]
    .iter()
    .all(|t| Path::new(t).exists());
    if require(
        root && tools,
        "needs root, newuidmap, setpriv and useradd (tests/setup-debian.sh)",
    ) {
        return;
    }
    let user = test_user("locald-unpack-t1").expect("test user");
    let tmp = tempfile::Builder::new()
        .prefix("locald-unpack-rm-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let outside = tmp.path().join("outside");
    fs::create_dir(&outside).expect("mkdir");
    fs::write(outside.join("sentinel"), "keep me").expect("sentinel");
    let mut t = Tar::default();
    t.dir_owned("srv", 0o700, (1000, 1000))
        .file_owned("srv/secret", 0o600, (1000, 1000), b"secret")
        .dir_owned("ro", 0o555, (0, 0))
        .file("ro/file", b"read-only directory")
        .symlink("ro/up", "../../outside")
        .symlink("abs", &outside.display().to_string());
    let layers =
        write_layers(&tmp.path().join("blobs"), &[(t, Compression::Gzip)]).expect("layers");
    chown_tree(tmp.path(), (user.uid, user.gid)).expect("chown");
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).expect("chmod");
    let rootfs = tmp.path().join("rootfs");

    let unpacked = run_as(
        &user,
        &UnpackRequest {
            helper: locald_tests::user_bin("locald"),
            rootfs: rootfs.clone(),
            layers,
            caller_only: false,
            sync: false,
        },
    )
    .expect("run the unpack");
    let UnpackOutcome::Ok(stats) = unpacked else {
        panic!("unpack failed: {unpacked:?}");
    };
    assert!(
        matches!(stats.owners, Some(Owners::Image { .. })),
        "{stats:?}"
    );
    let srv = fs::symlink_metadata(rootfs.join("srv")).expect("srv");
    assert_eq!(srv.uid(), user.sub_start + 999, "owned by a subordinate id");

    // By hand, the user cannot remove it.
    let rm = Command::new("setpriv")
        .arg(format!("--reuid={}", user.uid))
        .arg(format!("--regid={}", user.gid))
        .arg("--init-groups")
        .args(["rm", "-rf"])
        .arg(&rootfs)
        .output()
        .expect("rm");
    assert!(!rm.status.success(), "rm -rf should fail: {rm:?}");
    assert!(rootfs.join("srv/secret").exists());

    let removed = remove_as(
        &user,
        &RemoveRequest {
            helper: locald_tests::user_bin("locald"),
            rootfs: rootfs.clone(),
        },
    )
    .expect("run the removal");
    assert!(matches!(removed, UnpackOutcome::Ok(_)), "{removed:?}");
    assert!(!rootfs.exists(), "the rootfs is gone");
    assert_eq!(
        fs::read_to_string(outside.join("sentinel")).expect("sentinel"),
        "keep me"
    );
    assert_eq!(fs::read_dir(&outside).expect("outside").count(), 1);

    // A second removal finds nothing to do.
    let again = remove_as(
        &user,
        &RemoveRequest {
            helper: locald_tests::user_bin("locald"),
            rootfs: rootfs.clone(),
        },
    )
    .expect("run the removal");
    assert!(matches!(again, UnpackOutcome::Ok(_)), "{again:?}");
}
