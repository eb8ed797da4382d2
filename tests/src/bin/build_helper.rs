//! A child process for the incremental-build tests.
//!
//! - `stage-and-hang PROJECT SERVICE`: starts a build of SERVICE the way
//!   locald does (takes the lock, creates the staging directory), writes
//!   half an artifact into it, prints `ready STAGING_DIR` and keeps writing
//!   until it is killed. The test SIGKILLs it, so no destructor runs: what
//!   is left is exactly what a killed locald leaves.
//! - `hash DIR`: prints the tree hash of DIR and then every file in it, one
//!   per line, so a test can hash with another environment (a private
//!   `XDG_CONFIG_HOME` for global git excludes) without touching its own.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use locald::build::hash::hash_tree;
use locald::build::{HashScope, Layout, StatCache};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["stage-and-hang", project, service] => stage_and_hang(project.into(), service),
        ["hash", dir] => {
            let tree = hash_tree(&HashScope::tree(dir), &mut StatCache::in_memory())?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", tree.digest)?;
            for f in &tree.files {
                writeln!(out, "{}", f.path.display())?;
            }
            Ok(())
        }
        _ => bail!("usage: build_helper stage-and-hang PROJECT SERVICE | hash DIR"),
    }
}

fn stage_and_hang(project: PathBuf, service: &str) -> Result<()> {
    let svc = Layout::new(&project).service(service)?;
    let staging = svc.stage()?;
    let oci = staging.oci_layout_dir();
    fs::create_dir_all(oci.join("blobs"))?;
    fs::write(oci.join("index.json"), "{\"half\":")?;
    let blob = oci.join("blobs/layer");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&blob)
        .with_context(|| format!("opening {}", blob.display()))?;
    f.write_all(&[0u8; 64 << 10])?;
    f.sync_all()?;
    println!("ready {}", staging.path().display());
    std::io::stdout().flush()?;
    loop {
        f.write_all(&[1u8; 4096])?;
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
