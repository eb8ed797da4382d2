//! `packaging/install.sh` into a staging root: every file lands where the
//! docs say, the shim is root-owned and setuid, the unit runs the installed
//! binary, and the installed shim accepts the shim.conf the script wrote.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use locald_tests::{bin_dir, require};

#[test]
fn install_script_stages_a_working_layout() {
    if require(
        nix::unistd::Uid::effective().is_root(),
        "install.sh needs root to set the shim's owner and setuid bit",
    ) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let staging = tempfile::Builder::new()
        .prefix("locald-pkg-")
        .tempdir_in("/var/tmp")
        .expect("tempdir");
    // Use the debug binaries the test run already built.
    let fake_release = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(fake_release.path().join("release")).expect("mkdir");
    for b in ["locald", "locald-ctl", "locald-shim"] {
        std::fs::copy(
            bin_dir().join(b),
            fake_release.path().join("release").join(b),
        )
        .expect("copy binary");
    }
    let out = Command::new("bash")
        .arg(root.join("packaging/install.sh"))
        .args(["--no-build", "--destdir"])
        .arg(staging.path())
        .env("CARGO_TARGET_DIR", fake_release.path())
        .output()
        .expect("run install.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let d = staging.path();
    for f in [
        "usr/local/bin/locald",
        "usr/local/bin/locald-ctl",
        "usr/lib/systemd/user/locald.service",
        "usr/share/dbus-1/services/dev.locald.Locald1.service",
        "usr/local/share/man/man1/locald-ctl.1",
        "etc/locald/shim.conf",
    ] {
        assert!(d.join(f).is_file(), "{f} installed");
    }
    let shim = d.join("usr/libexec/locald/locald-shim");
    let meta = std::fs::metadata(&shim).expect("shim installed");
    assert_eq!((meta.uid(), meta.gid()), (0, 0));
    assert_eq!(meta.permissions().mode() & 0o7777, 0o4755);
    let unit =
        std::fs::read_to_string(d.join("usr/lib/systemd/user/locald.service")).expect("unit");
    assert!(
        unit.contains("\nExecStart=/usr/local/bin/locald daemon\n"),
        "{unit}"
    );
    assert!(unit.contains("Type=notify") && unit.contains("LogRateLimitIntervalSec=0"));
    let dash = std::fs::read_to_string(d.join("usr/lib/systemd/user/locald-dashboard.service"))
        .expect("dashboard unit");
    assert!(
        dash.contains("\nExecStart=/usr/local/bin/locald-ctl dashboard --no-open "),
        "{dash}"
    );
    let conf = std::fs::read_to_string(d.join("etc/locald/shim.conf")).expect("conf");
    assert!(conf.lines().any(|l| l.starts_with("runc = /")), "{conf}");
}
