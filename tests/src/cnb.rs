//! The Cloud Native Buildpacks test fixture (`tests/fixtures/cnb/`): a
//! builder image of our own, with a stand-in lifecycle and bash buildpacks,
//! because public builders and the real lifecycle cannot be downloaded where
//! the tests run. See `tests/fixtures/cnb/README.md` for what is real.
//!
//! - [`make_builder`] runs `make-builder.sh`: an OCI layout with tags
//!   `builder` and `run`.
//! - [`place_run_image`] copies the run image into a layout directory where
//!   the creator looks for `-run-image` (the spec's "map an image reference
//!   to a path in the layout directory"), as a platform does.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The name the fixture builder's metadata gives its run image (unless
/// `FIXTURE_RUN_IMAGE` says otherwise when it is made).
pub const RUN_IMAGE: &str = "registry.locald.test/fixture/run:latest";

/// Tools the fixture needs, and the Debian package of each.
const TOOLS: &[(&str, &str)] = &[
    ("/usr/bin/umoci", "umoci"),
    ("/usr/bin/skopeo", "skopeo"),
    ("/bin/busybox", "busybox-static"),
    ("/bin/bash-static", "bash-static"),
];

/// Why the fixture cannot be made here, if it cannot.
pub fn missing_tools() -> Option<String> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(path, _)| !Path::new(path).exists())
        .map(|(path, pkg)| format!("{path} (apt-get install {pkg})"))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "missing {}; tests/setup-debian.sh installs them",
            missing.join(", ")
        )
    })
}

/// `tests/fixtures/cnb/`.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/cnb")
}

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes the fixture builder at `out` (which must not exist), with the
/// given buildpack directories or, when `buildpacks` is empty, the fixture's
/// own two.
pub fn make_builder(out: &Path, buildpacks: &[&Path]) -> Result<()> {
    run(Command::new(fixture_dir().join("make-builder.sh"))
        .arg(out)
        .args(buildpacks))?;
    Ok(())
}

/// Copies `layout:run` to where the creator finds `reference` under
/// `layout_dir` (`<layout-dir>/<registry>/<repo>/<tag>`, one image in its
/// index.json); returns that directory.
pub fn place_run_image(layout: &Path, layout_dir: &Path, reference: &str) -> Result<PathBuf> {
    let (name, tag) = reference
        .rsplit_once(':')
        .context("reference without a tag")?;
    let dir = layout_dir.join(name).join(tag);
    std::fs::create_dir_all(&dir)?;
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci:{}:run", layout.display()),
        &format!("oci:{}:{tag}", dir.display()),
    ]))?;
    Ok(dir)
}
