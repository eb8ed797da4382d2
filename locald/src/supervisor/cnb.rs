//! Running a Cloud Native Buildpacks build: the builder image's own
//! lifecycle (`/cnb/lifecycle/creator`) in a container through the shim,
//! daemonless, exporting an OCI image into the service's artifact.
//!
//! One build:
//! 1. resolve the builder and run images in the user's store (pulled only
//!    when missing, or always with `pull = "always"`), read the builder's
//!    metadata ([`BuilderInfo`]) and decide with the sources, the builder
//!    and run image digests and the config whether anything changed;
//! 2. take the service's build lock (staging), and make a fresh build
//!    directory next to the artifact: `app/` (a copy of the sources exactly
//!    as the hash saw them; the build never writes into the user's tree),
//!    `layers/` (new every build: reusing one is what made restores fail
//!    with "file exists", seed 002 §3.3), `platform/env/` (the build env)
//!    and `layout/` (the run image as an OCI layout where the creator looks
//!    for it); the cache is `.locald/services/<name>/cache/`, kept;
//! 3. run the creator as the builder's CNB user, with the user's own ids
//!    mapped to that user, so everything the build writes is the user's;
//!    its `===> PHASE` banners become progress steps;
//! 4. move the exported layout into the staged artifact, import it into the
//!    store as `locald.local/<project>/<service>:latest`, read its process
//!    types, and commit the artifact with its manifest.
//!
//! Dropping the future (a stop, Ctrl-C, a config change) kills the
//! container and removes the build directory and the staging directory;
//! the last good artifact is never touched until a build succeeds.

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::build::{Builder, UnitError};
use crate::build::cnb::{
    self, creator_args, creator_env, layout_path, output_name, paths, run_image_name,
    BuildMetadata, BuilderInfo, BuildpackChoice, CreatorCall, ProjectDescriptor,
};
use crate::build::{needs_cnb_rebuild_with, BuildOptions, CnbManifest, FileEntry, FileKind};
use crate::config::{BuildSpec, CnbBuild, PullPolicy, Volume, CNB_IMAGE_TAG};
use crate::error_chain;
use crate::event::{BuildRecord, BuildResult, LogLine};
use crate::fsutil::{work_dir, SafeDir};
use crate::image::prepare::StoreImages;
use crate::image::{no_progress, Image, ImageRef};
use crate::output::{BoxFuture, LogSink};
use crate::runtime::container::{ImageSource, PreparedImage};
use locald_core::workload::Workload;

/// Where the order of the user's buildpacks is, in the build container: the
/// layers directory's `order.toml`, which the spec reads before the
/// builder's.
const ORDER_IN_CONTAINER: &str = "/layers/order.toml";

/// Total progress steps of a CNB build: the lifecycle's five phases.
const STEPS: u32 = 5;

/// What a build is decided on and made from.
struct Plan {
    project: ProjectDescriptor,
    builder: Image,
    info: BuilderInfo,
    run_ref: String,
    run: Image,
    opts: BuildOptions,
}

impl Builder {
    /// A buildpacks build; see the module doc.
    pub(super) async fn cnb(
        &self,
        cnb: &CnbBuild,
        force: bool,
        build_id: &str,
        started: SystemTime,
        record: &mut BuildRecord,
    ) -> Result<BuildResult, String> {
        let images = self
            .images
            .get()
            .map_err(|e| format!("buildpacks builds need the image store: {e}"))?
            .clone();
        let plan = self.cnb_plan(cnb, &images, force, build_id).await?;
        self.progress(build_id, 0, STEPS, "checking sources".into());
        let b = plan.builder.manifest_digest.to_string();
        let r = plan.run.manifest_digest.to_string();
        let decision = self
            .decide(&plan.opts, build_id, record, move |o, known| {
                needs_cnb_rebuild_with(o, &b, &r, known)
            })
            .await?;
        if !decision.rebuild() {
            return Ok(BuildResult::Skipped);
        }

        // The lock is held from here to the commit: one build of a service
        // at a time, so the cache is never shared.
        let staging = plan
            .opts
            .service_layout()
            .stage()
            .map_err(|e| error_chain(&e))?;
        // A private directory outside the project (see `scratch_dir`); one
        // per service, as the lock is. One a killed build left is removed
        // here.
        // Keyed by the project instance (name and directory), not by this
        // run's claim (`locald build` claims one of its own), so the cache
        // is found again by every later build of the service.
        let instance = crate::runtime::claim::project_key(&self.project, &self.root);
        let scratch = scratch_dir(self.paths.cache.as_deref(), &instance, &self.service)?;
        let work = BuildDir::create(scratch.join("build"))?;
        let files = decision
            .source
            .as_ref()
            .map(|s| s.files.clone())
            .unwrap_or_default();
        let (volumes, order, _held) = self.cnb_prepare(cnb, &images, &plan, &work, files).await?;
        let output = output_name(&self.project, &self.service);
        self.cnb_run(cnb, &plan, volumes, order, &output, build_id)
            .await?;

        // The exported layout becomes the artifact's `oci-layout/`.
        let target = staging.handle().map_err(|e| error_chain(&e))?;
        let (image_digest, meta) = take_result(&images, &work, &output, target, &self.root).await?;
        meta.check_process(cnb.process.as_deref())
            .map_err(|e| e.to_string())?;
        let finished = SystemTime::now();
        let cnb_manifest = CnbManifest {
            run_image_digest: plan.run.manifest_digest.to_string(),
            platform_api: plan.info.platform_api.clone(),
            image_digest,
            image_name: output,
            process_types: meta.process_types(),
            default_process: meta.default_process.clone(),
        };
        let opts = plan.opts;
        tokio::task::spawn_blocking(move || {
            let mut manifest = decision.manifest(&opts, started, finished)?;
            manifest.cnb = Some(Box::new(cnb_manifest));
            let files = decision.source.as_ref().map(|s| s.files.as_slice());
            staging.commit(&manifest, files)
        })
        .await
        .map_err(|e| format!("saving the artifact crashed: {e}"))?
        .map_err(|e| format!("cannot save the artifact: {}", error_chain(&e)))?;
        Ok(BuildResult::Succeeded)
    }

    /// `project.toml`, the builder and run images, the builder's metadata
    /// and the options the decision is made with.
    async fn cnb_plan(
        &self,
        cnb: &CnbBuild,
        images: &StoreImages,
        force: bool,
        build_id: &str,
    ) -> Result<Plan, String> {
        self.progress(build_id, 0, STEPS, "resolving the builder image".into());
        let project = {
            let dir = cnb.path.clone();
            tokio::task::spawn_blocking(move || ProjectDescriptor::load(&dir))
                .await
                .map_err(|e| format!("reading project.toml crashed: {e}"))?
                .map_err(|e| e.to_string())?
        };
        if let Some(bad) = project
            .exclude
            .iter()
            .find(|p| p.contains(['*', '?', '[', '!']))
        {
            return Err(format!(
                "project.toml: exclude pattern `{bad}` has wildcards; locald takes plain paths there"
            ));
        }
        let pull = cnb.pull == PullPolicy::Always;
        let builder = self.image(images, &cnb.builder, pull).await?;
        let info =
            BuilderInfo::from_config(&cnb.builder, &builder.config).map_err(|e| e.to_string())?;
        let run_ref = cnb
            .run_image
            .clone()
            .or_else(|| info.run_image.clone())
            .ok_or_else(|| {
                cnb::CnbError::NoRunImage {
                    image: cnb.builder.clone(),
                }
                .to_string()
            })?;
        self.progress(build_id, 0, STEPS, "resolving the run image".into());
        let run = match self.image(images, &run_ref, pull).await {
            Ok(run) => run,
            Err(e) if cnb.run_image.is_none() => {
                return Err(format!(
                    "{e} (the run image the builder names; set `run_image` in the build \
                     table to use another, e.g. an `oci:` layout)"
                ))
            }
            Err(e) => return Err(e),
        };
        let mut opts = BuildOptions::new(
            &self.root,
            &self.service,
            BuildSpec::Cnb(cnb.clone()),
            force,
        )
        .map_err(|e| error_chain(&e))?;
        opts.include = project.include.clone();
        opts.exclude = project
            .exclude
            .iter()
            .map(|p| PathBuf::from(p.trim_start_matches('/').trim_end_matches('/')))
            .collect();
        Ok(Plan {
            project,
            builder,
            info,
            run_ref,
            run,
            opts,
        })
    }

    /// Fills the build directory (sources, platform env, run image,
    /// buildpacks) and returns the container's bind mounts, the order to
    /// pass, and the hold on the builder's rootfs when it was read.
    async fn cnb_prepare(
        &self,
        cnb: &CnbBuild,
        images: &StoreImages,
        plan: &Plan,
        work: &BuildDir,
        files: Vec<FileEntry>,
    ) -> Result<(Vec<Volume>, Option<&'static str>, Option<PreparedImage>), String> {
        let run_name = run_image_name(&plan.run_ref, plan.run.manifest_digest.hex());
        {
            let (src, dir, store) = (
                cnb.path.clone(),
                work.path.clone(),
                images.images().store().clone(),
            );
            let run_digest = plan.run.manifest_digest.clone();
            let mut env = plan.project.env.clone();
            env.extend(cnb.env.iter().cloned());
            tokio::task::spawn_blocking(move || {
                prepare_dirs(&dir, &src, &files, &env)?;
                let at = dir.join("layout").join(
                    layout_path(&run_name)
                        .ok_or_else(|| format!("run image name `{run_name}` cannot be mapped"))?,
                );
                crate::image::layout::export_image(&store, &run_digest, &at, tag_of(&run_name))
                    .map_err(|e| format!("cannot place the run image: {}", error_chain(&e)))
            })
            .await
            .map_err(|e| format!("preparing the build crashed: {e}"))??;
        }
        // Buildpacks chosen by the user: one order group of them, and, for
        // local directories, a buildpacks directory of our own (the
        // builder's and theirs) mounted over /cnb/buildpacks.
        let choices: Vec<BuildpackChoice> = if cnb.buildpacks.is_empty() {
            plan.project
                .buildpacks
                .iter()
                .map(|b| BuildpackChoice::from_project(b, &cnb.path))
                .collect::<Result<_, _>>()?
        } else {
            cnb.buildpacks
                .iter()
                .map(|b| BuildpackChoice::from_config(b))
                .collect()
        };
        let local = choices.iter().any(|c| matches!(c, BuildpackChoice::Dir(_)));
        let builder_rootfs = if local {
            let source: &dyn ImageSource = images;
            Some(
                source
                    .prepare(&cnb.builder, &self.root, no_progress())
                    .await
                    .map_err(|e| format!("image {}: {e}", cnb.builder))?,
            )
        } else {
            None
        };
        let order = (!choices.is_empty()).then_some(ORDER_IN_CONTAINER);
        if !choices.is_empty() {
            let have = cnb::builder_buildpacks(&plan.builder.config);
            let (dir, name) = (work.path.clone(), cnb.builder.clone());
            let rootfs = builder_rootfs.as_ref().map(|p| p.rootfs.clone());
            tokio::task::spawn_blocking(move || {
                choose_buildpacks(&dir, &choices, &have, &name, rootfs.as_deref())
            })
            .await
            .map_err(|e| format!("preparing the buildpacks crashed: {e}"))??;
        }
        // Kept between builds, beside the build directory: private and
        // outside the project, so no rename of `.locald` by another user can
        // redirect the bind mount the shim makes of it.
        let cache = work.cache()?;
        let workdir = work.path()?;
        let bind = |source: PathBuf, target: &str, read_only| Volume {
            source,
            target: target.to_owned(),
            read_only,
        };
        let mut volumes = vec![
            bind(workdir.join("app"), paths::APP, false),
            bind(workdir.join("layers"), paths::LAYERS, false),
            bind(cache, paths::CACHE, false),
            bind(workdir.join("platform"), paths::PLATFORM, true),
            bind(workdir.join("layout"), paths::LAYOUT, false),
        ];
        if local {
            volumes.push(bind(workdir.join("buildpacks"), "/cnb/buildpacks", true));
        }
        Ok((volumes, order, builder_rootfs))
    }

    /// Runs the builder's creator as its CNB user, its banners as progress.
    async fn cnb_run(
        &self,
        cnb: &CnbBuild,
        plan: &Plan,
        volumes: Vec<Volume>,
        order: Option<&str>,
        output: &str,
        build_id: &str,
    ) -> Result<(), String> {
        let info = &plan.info;
        let run_name = run_image_name(&plan.run_ref, plan.run.manifest_digest.hex());
        let argv = creator_args(&CreatorCall {
            platform_api: &info.platform_api,
            uid: info.uid,
            gid: info.gid,
            run_image: &run_name,
            output,
            order,
            process: None,
            buildpacks: None,
        });
        let workload = Workload::Image {
            reference: cnb.builder.clone(),
            command: Some(argv),
            volumes,
            workdir: Some(paths::LAYERS.into()),
            read_only: true,
            map_user: Some((info.uid, info.gid)),
        };
        let sink: Arc<dyn LogSink> = Arc::new(PhaseSink {
            inner: self.sink.clone(),
            builder: self.clone(),
            build_id: build_id.to_owned(),
        });
        self.progress(build_id, 0, STEPS, format!("starting {}", cnb.builder));
        self.run_unit(
            workload,
            creator_env(&info.platform_api),
            build_id,
            sink,
            &self.root,
        )
        .await
        .map_err(|e| match e {
            UnitError::Start(why) => format!("cannot run the builder's lifecycle: {why}"),
            UnitError::Exit(status) => creator_failure(status),
        })
    }

    /// The stored image `reference` names, pulled or imported when missing
    /// (or always when `pull`).
    async fn image(
        &self,
        images: &StoreImages,
        reference: &str,
        pull: bool,
    ) -> Result<Image, String> {
        let r = ImageRef::parse(reference).map_err(|e| format!("image {reference}: {e}"))?;
        let images = images.images();
        // Pulls show as PullProgress, as an image service's do.
        let progress =
            super::pull_reporter(self.events.clone(), &self.project, &self.service, reference);
        let got = if pull {
            images
                .fetch(&r, &self.root, progress)
                .await
                .map(|f| f.image)
        } else {
            images.ensure(&r, &self.root, progress).await
        };
        got.map_err(|e| format!("image {reference}: {}", error_chain(&e)))
    }
}

/// The tag part of a name made by [`run_image_name`] or given by the user.
fn tag_of(name: &str) -> &str {
    match name.rsplit_once(':') {
        Some((_, t)) if !t.contains('/') => t,
        _ => CNB_IMAGE_TAG,
    }
}

/// `$XDG_CACHE_HOME/locald/builds/<project key>/<service>/`: where a
/// buildpacks build prepares its sources, platform files and exported image
/// (`build/`, one build's), and keeps the lifecycle's cache (`cache/`).
/// Private (0700, ours) and outside the project: the project directory may
/// be writable by others, who could rename `.locald` between two of the
/// many steps that fill these directories by name (`fsutil::dir`).
fn scratch_dir(cache: Option<&Path>, key: &str, service: &str) -> Result<PathBuf, String> {
    let mut dir = cache
        .ok_or("neither XDG_CACHE_HOME nor HOME is set: no place for the build directory")?
        .to_owned();
    for part in ["builds", key, service] {
        crate::fsutil::private_dir(&dir).map_err(|e| error_chain(&e))?;
        dir = dir.join(part);
    }
    crate::fsutil::private_dir(&dir).map_err(|e| error_chain(&e))?;
    Ok(dir)
}

/// A build's private directory (in [`scratch_dir`]), removed when dropped
/// (also when the build is cancelled).
struct BuildDir {
    parent: SafeDir,
    name: std::ffi::OsString,
    path: PathBuf,
}

impl BuildDir {
    fn create(path: PathBuf) -> Result<Self, String> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(format!("{} cannot be a build directory", path.display()));
        };
        let parent = work_dir(parent, true)
            .map_err(|e| error_chain(&e))?
            .ok_or_else(|| format!("cannot create {}", parent.display()))?;
        let fail = |e: std::io::Error| format!("cannot create {}: {e}", path.display());
        parent.remove(name).map_err(fail)?;
        parent.mkdir(name, 0o700).map_err(fail)?;
        Ok(BuildDir {
            parent,
            name: name.to_owned(),
            path,
        })
    }

    /// `cache/` beside it, kept between builds.
    fn cache(&self) -> Result<PathBuf, String> {
        let dir = self
            .parent
            .sub("cache", true)
            .map_err(|e| error_chain(&e))?;
        dir.map(|d| d.path().to_owned())
            .ok_or_else(|| format!("cannot create {}", self.parent.join("cache").display()))
    }

    /// Where it is, for the lifecycle's bind mounts; an error when the name
    /// no longer leads to the directory made (something above it was
    /// renamed away since).
    fn path(&self) -> Result<&Path, String> {
        match self.parent.sub(&self.name, false) {
            Ok(Some(d)) if d.still_at_path() => Ok(&self.path),
            _ => Err(format!(
                "{} was moved or replaced while the build was being prepared",
                self.path.display()
            )),
        }
    }
}

impl Drop for BuildDir {
    fn drop(&mut self) {
        if let Err(e) = self.parent.remove(&self.name) {
            tracing::warn!(
                "cannot remove the build directory {}: {e}",
                self.path.display()
            );
        }
    }
}

/// Makes `app/` (the sources as hashed), `layers/`, `platform/env/` and
/// `layout/` under `dir`.
fn prepare_dirs(
    dir: &Path,
    src: &Path,
    files: &[FileEntry],
    env: &[(String, String)],
) -> Result<(), String> {
    for d in ["app", "layers", "platform/env", "layout"] {
        let p = dir.join(d);
        std::fs::create_dir_all(&p).map_err(|e| format!("cannot create {}: {e}", p.display()))?;
    }
    copy_sources(src, &dir.join("app"), files)?;
    for (k, v) in env {
        if k.is_empty() || k.contains(['/', '\0', '=']) || k == "." || k == ".." {
            return Err(format!(
                "build env name `{k}` cannot be a platform env file"
            ));
        }
        let p = dir.join("platform/env").join(k);
        std::fs::write(&p, v).map_err(|e| format!("cannot write {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Resolves the user's buildpacks into `dir/layers/order.toml` and, for
/// local directories, `dir/buildpacks/` (the builder's from `rootfs` plus
/// the local ones).
fn choose_buildpacks(
    dir: &Path,
    choices: &[BuildpackChoice],
    have: &std::collections::BTreeMap<String, Vec<String>>,
    builder: &str,
    rootfs: Option<&Path>,
) -> Result<(), String> {
    let bps = dir.join("buildpacks");
    if let Some(rootfs) = rootfs {
        copy_tree(&rootfs.join("cnb/buildpacks"), &bps)?;
    }
    let mut group = Vec::new();
    for c in choices {
        match c {
            BuildpackChoice::Id { id, version } => {
                let v = cnb::resolve_version(id, version.as_deref(), have, builder)?;
                group.push((id.clone(), v));
            }
            BuildpackChoice::Dir(d) => {
                let toml_path = d.join("buildpack.toml");
                let text = crate::fsutil::read_input(&toml_path, "buildpack.toml", 1 << 20)
                    .map_err(|e| format!("buildpack {}: {}", d.display(), error_chain(&e)))?;
                let (id, version) = cnb::buildpack_id(&String::from_utf8_lossy(&text))
                    .map_err(|e| format!("{}: {e}", toml_path.display()))?;
                let to = bps.join(cnb::escape_id(&id)).join(&version);
                // Never through a symlink (copy_tree refused any that
                // lead out; this one is removed, not followed).
                if std::fs::symlink_metadata(&to).is_ok() {
                    let (Some(parent), Some(name)) = (to.parent(), to.file_name()) else {
                        return Err(format!("cannot replace {}", to.display()));
                    };
                    crate::fsutil::SafeDir::open(parent)
                        .map_err(|e| error_chain(&e))?
                        .remove(name)
                        .map_err(|e| format!("cannot replace {}: {e}", to.display()))?;
                }
                copy_tree(d, &to)?;
                group.push((id, version));
            }
        }
    }
    let order = dir.join("layers/order.toml");
    std::fs::write(&order, cnb::order_toml(&group))
        .map_err(|e| format!("cannot write {}: {e}", order.display()))
}

/// Copies a directory tree (files with their modes, symlinks as symlinks).
/// A symlink that is absolute or climbs out of the tree being copied is
/// refused: the tree comes from an image or a checkout, and such a link,
/// recreated here, would lead later writes into this directory elsewhere.
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    copy_tree_at(from, to, 0)
}

fn copy_tree_at(from: &Path, to: &Path, depth: usize) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(from)
        .map_err(|e| format!("cannot read {}: {e}", from.display()))?;
    let fail =
        |what: &str, p: &Path, e: std::io::Error| format!("cannot {what} {}: {e}", p.display());
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(from).map_err(|e| fail("read", from, e))?;
        if !stays_inside(&target, depth) {
            return Err(format!(
                "{} is a symbolic link to {}, outside the buildpack; refusing it",
                from.display(),
                target.display()
            ));
        }
        std::os::unix::fs::symlink(target, to).map_err(|e| fail("create", to, e))
    } else if meta.is_dir() {
        std::fs::create_dir_all(to).map_err(|e| fail("create", to, e))?;
        for entry in std::fs::read_dir(from).map_err(|e| fail("read", from, e))? {
            let entry = entry.map_err(|e| fail("read", from, e))?;
            copy_tree_at(&entry.path(), &to.join(entry.file_name()), depth + 1)?;
        }
        Ok(())
    } else if meta.is_file() {
        std::fs::copy(from, to).map_err(|e| fail("copy", from, e))?;
        std::fs::set_permissions(
            to,
            std::fs::Permissions::from_mode(meta.permissions().mode() & 0o755),
        )
        .map_err(|e| fail("chmod", to, e))
    } else {
        // FIFOs, devices, sockets: nothing a buildpack is made of.
        Err(format!(
            "{} is not a file, directory or symlink",
            from.display()
        ))
    }
}

/// Whether a relative symlink `target`, found `depth` directories below the
/// top of a copied tree, resolves inside that tree (judged by its text:
/// `..` may not climb above the top; an absolute target never stays).
fn stays_inside(target: &Path, depth: usize) -> bool {
    use std::path::Component;
    // The link lives in a directory `depth - 1` levels below the top.
    let mut level = depth.saturating_sub(1) as isize;
    for c in target.components() {
        match c {
            Component::Normal(_) => level += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                level -= 1;
                if level < 0 {
                    return false;
                }
            }
            Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Copies `files` from `src` to `dst`, checking each against the digest the
/// source hash recorded: the build gets exactly what was hashed, or fails
/// (a file changed in between; the next build picks it up).
fn copy_sources(src: &Path, dst: &Path, files: &[FileEntry]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut buf = vec![0u8; 256 * 1024];
    for f in files {
        if f.path.is_absolute()
            || f.path
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(format!("unexpected source path {}", f.path.display()));
        }
        let from = src.join(&f.path);
        let to = dst.join(&f.path);
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let changed = || {
            format!(
                "{} changed while the build was being prepared; build again",
                f.path.display()
            )
        };
        match f.kind {
            FileKind::Symlink => {
                let target = std::fs::read_link(&from).map_err(|_| changed())?;
                let bytes = std::os::unix::ffi::OsStrExt::as_bytes(target.as_os_str());
                if crate::build::Digest::from(blake3::hash(bytes)) != f.digest {
                    return Err(changed());
                }
                std::os::unix::fs::symlink(&target, &to)
                    .map_err(|e| format!("cannot create {}: {e}", to.display()))?;
            }
            FileKind::File | FileKind::Executable => {
                let mut file = std::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                    .open(&from)
                    .map_err(|_| changed())?;
                if !file.metadata().map_err(|_| changed())?.is_file() {
                    return Err(changed());
                }
                // Streamed, hashed on the way: a big file costs no memory.
                let mode = if f.kind == FileKind::Executable {
                    0o755
                } else {
                    0o644
                };
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(mode)
                    .open(&to)
                    .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
                let mut hasher = blake3::Hasher::new();
                loop {
                    let n = file.read(&mut buf).map_err(|_| changed())?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    out.write_all(&buf[..n])
                        .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
                }
                if crate::build::Digest::from(hasher.finalize()) != f.digest {
                    return Err(changed());
                }
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode))
                    .map_err(|e| format!("cannot write {}: {e}", to.display()))?;
            }
        }
    }
    Ok(())
}

/// Imports the image the creator exported for `output` (tagging it and
/// reading its build metadata), then moves it into `target`, the staged
/// artifact, as `oci-layout/`.
async fn take_result(
    images: &StoreImages,
    work: &BuildDir,
    output: &str,
    target: SafeDir,
    project: &Path,
) -> Result<(String, BuildMetadata), String> {
    let exported = work.path.join("layout").join(
        layout_path(output).ok_or_else(|| format!("image name `{output}` cannot be mapped"))?,
    );
    // The build wrote this tree: take it only as a real directory (a
    // symlink planted by a buildpack would lead locald's reads out).
    if !std::fs::symlink_metadata(&exported).is_ok_and(|m| m.is_dir()) {
        return Err(format!(
            "the creator exported no image directory at {}",
            exported.display()
        ));
    }
    let store = images.images().store().clone();
    let (output, root) = (output.to_owned(), project.to_owned());
    tokio::task::spawn_blocking(move || {
        let result = import_result(&store, &exported, &output, &root)?;
        target
            .take_from(&exported, "oci-layout")
            .map_err(|e| format!("cannot move {}: {e}", exported.display()))?;
        Ok(result)
    })
    .await
    .map_err(|e| format!("importing the image crashed: {e}"))?
}

/// Imports the exported layout into the store under `name` and reads its
/// build metadata.
fn import_result(
    store: &crate::image::store::Store,
    layout: &Path,
    name: &str,
    project: &Path,
) -> Result<(String, BuildMetadata), String> {
    let imported =
        crate::image::layout::import_layout(store, layout, Some(CNB_IMAGE_TAG), &no_progress())
            .map_err(|e| format!("the exported image is not usable: {}", error_chain(&e)))?;
    let key = ImageRef::parse(name)
        .map_err(|e| e.to_string())?
        .key(project);
    store
        .record(&key, &imported.manifest, None, Some(project))
        .map_err(|e| format!("cannot tag the image {name}: {}", error_chain(&e)))?;
    let image = store
        .image(&imported.manifest)
        .map_err(|e| format!("the exported image is not usable: {}", error_chain(&e)))?;
    let meta = BuildMetadata::from_config(&image.config).map_err(|e| e.to_string())?;
    Ok((imported.manifest.to_string(), meta))
}

/// What a creator exit code means (the lifecycle's documented codes).
fn creator_failure(status: crate::runtime::ExitStatus) -> String {
    let code = match status {
        crate::runtime::ExitStatus::Exited(c) => Some(c),
        crate::runtime::ExitStatus::Signaled(_) => None,
    };
    let what = match code {
        Some(11) => "the lifecycle does not support the platform API",
        Some(12) => "a buildpack's API is not supported",
        Some(20) => "no buildpack group passed detection",
        Some(21) => "detection failed with buildpack errors",
        Some(32) => "analysis failed",
        Some(42) => "restoring the cache failed",
        Some(51) => "a buildpack's bin/build failed",
        Some(52) => "the build failed",
        Some(62) => "exporting the image failed",
        _ => "the lifecycle failed",
    };
    format!("{what} (creator {status}); its output is in the build log")
}

/// Passes lines on, and turns the lifecycle's phase banners into progress.
struct PhaseSink {
    inner: Arc<dyn LogSink>,
    builder: Builder,
    build_id: String,
}

impl LogSink for PhaseSink {
    fn write<'a>(&'a self, line: &'a LogLine) -> BoxFuture<'a, ()> {
        if let Some((step, label)) = cnb::phase_of(&line.line) {
            self.builder
                .progress(&self.build_id, step, STEPS, label.to_owned());
        }
        self.inner.write(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A builder image's (or a checkout's) buildpack tree with a symlink
    /// out: recreated in the build directory, it would lead the later
    /// replacement of a buildpack (remove, then copy) into the user's home.
    #[test]
    fn buildpack_trees_with_symlinks_out_are_refused() {
        assert!(stays_inside(Path::new("bin/x"), 1));
        assert!(stays_inside(Path::new("../lib/x"), 2));
        assert!(!stays_inside(Path::new("../x"), 1));
        assert!(!stays_inside(Path::new("/home/victim"), 3));
        assert!(!stays_inside(Path::new("a/../../../x"), 2));
        let t = tempfile::tempdir().expect("tempdir");
        let from = t.path().join("bps");
        std::fs::create_dir_all(from.join("id/1.0/bin")).expect("mkdir");
        std::os::unix::fs::symlink("../../../..", from.join("id/1.0/bin/up")).expect("ln");
        let e = copy_tree(&from, &t.path().join("to")).expect_err("refused");
        assert!(e.contains("outside the buildpack"), "{e}");
        std::fs::remove_file(from.join("id/1.0/bin/up")).expect("rm");
        std::os::unix::fs::symlink("../bin", from.join("id/1.0/bin/ok")).expect("ln");
        copy_tree(&from, &t.path().join("to2")).expect("inside is fine");
    }
}
