//! Importing images from local OCI image layouts (`oci:PATH[:TAG]`) and
//! from tar files of them (`oci-archive:FILE[:TAG]`), with no registry.
//!
//! A layout is `oci-layout` (the version), `index.json` (descriptors of the
//! images in it, tagged by their `org.opencontainers.image.ref.name`
//! annotation) and `blobs/sha256/<hex>`. Import reads `index.json`, picks
//! the descriptor by tag (or the only one), follows an image index to the
//! entry for linux and this architecture, checks the manifest is a runnable
//! image, and copies config and layers into the [`Store`], every blob
//! verified against its digest and size as it is copied. Blobs already in
//! the store are not read again; the manifest is stored last.
//!
//! Both sources sit behind one small trait, [`Source`]: a directory opens
//! `blobs/sha256/<hex>` (the hex is a checked [`Digest`], so no path from the
//! layout is ever joined); an archive is indexed once (name → offset and
//! size of each regular entry) and blobs are read from those offsets in
//! place: nothing is extracted, so no name in the tar can write anywhere.
//! `index.json` and `oci-layout` decide what is trusted and are read like
//! every config input ([`fsutil::read_input`]); blobs need no such check,
//! since their digests chain from the index.
//!
//! Import is blocking file I/O; async callers run it on the blocking pool.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use oci_spec::image::{Descriptor, ImageIndex, ImageManifest};

use super::digest::Digest;
use super::manifest::{self, Manifest, ManifestError, CONFIG_LIMIT, INDEX_DEPTH, MANIFEST_LIMIT};
use super::store::{Store, StoreError};
use super::{LayerProgress, ProgressFn};
use locald_core::fsutil::{self, UnsafeFile};

/// The annotation that tags an image in a layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// The largest `index.json` read.
const INDEX_LIMIT: u64 = 4 << 20;

/// Why a layout or archive could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A file of the layout is unsafe or unreadable.
    #[error(transparent)]
    Unsafe(#[from] UnsafeFile),
    /// No `oci-layout` file: not a layout at all.
    #[error("{} is not an OCI image layout (it has no oci-layout file)", path.display())]
    NotALayout {
        /// The layout or archive.
        path: PathBuf,
    },
    /// An `oci-layout` of an unknown version.
    #[error("{} has image layout version {version:?}; locald reads 1.0.0", path.display())]
    Version {
        /// The layout or archive.
        path: PathBuf,
        /// The version found.
        version: String,
    },
    /// `index.json` or `oci-layout` is not valid JSON of its kind.
    #[error("{} in {} is not valid", file, path.display())]
    Json {
        /// The layout or archive.
        path: PathBuf,
        /// `index.json` or `oci-layout`.
        file: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// No image carries the tag asked for.
    #[error("{} has no image tagged {tag:?} ({})", path.display(), tag_list(.tags))]
    NoSuchTag {
        /// The layout or archive.
        path: PathBuf,
        /// The tag asked for.
        tag: String,
        /// The tags there are.
        tags: Vec<String>,
    },
    /// No tag was given and there is not exactly one image.
    #[error("{} holds {count} images; name one as {transport}PATH:TAG ({})", path.display(), tag_list(.tags))]
    Ambiguous {
        /// The layout or archive.
        path: PathBuf,
        /// `oci:` or `oci-archive:`.
        transport: &'static str,
        /// How many images it holds.
        count: usize,
        /// The tags there are.
        tags: Vec<String>,
    },
    /// A blob named by the index or a manifest is not in the layout.
    #[error("{}: blob {digest} is missing", path.display())]
    MissingBlob {
        /// The layout or archive.
        path: PathBuf,
        /// The blob.
        digest: String,
    },
    /// A blob that is not what its descriptor says (digest or size).
    #[error("{}: blob {digest}", path.display())]
    Blob {
        /// The layout or archive.
        path: PathBuf,
        /// The blob.
        digest: Digest,
        /// What is wrong (digest or size mismatch, or a store error).
        #[source]
        source: Box<StoreError>,
    },
    /// A manifest or index that is not a runnable image.
    #[error("{}: the image cannot be used", path.display())]
    Manifest {
        /// The layout or archive.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: ManifestError,
    },
    /// A descriptor with a digest locald cannot store.
    #[error("{}: a descriptor's digest cannot be used", path.display())]
    Digest {
        /// The layout or archive.
        path: PathBuf,
        /// What is wrong.
        #[source]
        source: super::digest::DigestError,
    },
    /// An I/O error reading the layout or archive.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A compressed archive: `oci-archive:` is a plain tar.
    #[error("{} is {kind}-compressed; oci-archive: reads an uncompressed tar, as `skopeo copy … oci-archive:` writes", path.display())]
    Compressed {
        /// The archive.
        path: PathBuf,
        /// gzip, zstd, …
        kind: &'static str,
    },
    /// A blob in an archive stored as something other than a plain file.
    #[error("{}: blob {digest} is stored as a {kind} entry, not a regular file", path.display())]
    EntryKind {
        /// The archive.
        path: PathBuf,
        /// The blob.
        digest: String,
        /// The tar entry type.
        kind: String,
    },
    /// Storing what was read failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn tag_list(tags: &[String]) -> String {
    if tags.is_empty() {
        "it has no tagged images".to_owned()
    } else {
        format!("tags: {}", tags.join(", "))
    }
}

/// What an import stored.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The platform-specific manifest.
    pub manifest: Digest,
    /// The image index it was chosen from, if any.
    pub index: Option<Digest>,
    /// Blobs copied into the store by this import (the rest were there).
    pub copied: Vec<Digest>,
    /// Bytes copied.
    pub bytes: u64,
}

/// An open blob and its length.
pub type OpenBlob<'a> = (Box<dyn Read + 'a>, u64);

/// Where a layout's files come from.
pub trait Source {
    /// The layout directory or archive, for messages.
    fn path(&self) -> &Path;
    /// `oci:` or `oci-archive:`, for messages.
    fn transport(&self) -> &'static str;
    /// Reads `oci-layout` or `index.json` (`Ok(None)` when absent).
    fn read_file(&mut self, name: &'static str, limit: u64)
        -> Result<Option<Vec<u8>>, LayoutError>;
    /// Opens a blob and says how long it is (`Ok(None)` when absent).
    fn open_blob(&mut self, digest: &Digest) -> Result<Option<OpenBlob<'_>>, LayoutError>;
}

/// Writes the stored image `manifest` as an OCI image layout at `dir` (which
/// must not exist) holding that one image, tagged `tag`: what a CNB creator
/// reads its run image from. Blobs are copied, never linked, so nothing
/// done to the layout reaches the store.
pub fn export_image(
    store: &Store,
    manifest: &Digest,
    dir: &Path,
    tag: &str,
) -> Result<(), LayoutError> {
    let io_err = |path: &Path, source: io::Error| LayoutError::Io {
        path: path.to_owned(),
        source,
    };
    let image = store.image(manifest)?;
    let manifest_bytes = store.read_blob(manifest, MANIFEST_LIMIT)?;
    let media_type = serde_json::from_slice::<serde_json::Value>(&manifest_bytes)
        .ok()
        .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "application/vnd.oci.image.manifest.v1+json".to_owned());
    let blobs = dir.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(|e| io_err(&blobs, e))?;
    let digests = std::iter::once(manifest.clone())
        .chain(std::iter::once(image.config_digest.clone()))
        .chain(image.layers.iter().map(|l| l.digest.clone()));
    for d in digests {
        let algo_dir = blobs.join("sha256");
        std::fs::create_dir_all(&algo_dir).map_err(|e| io_err(&algo_dir, e))?;
        let to = algo_dir.join(d.hex());
        if to.exists() {
            continue;
        }
        std::fs::copy(store.blob_path(&d), &to).map_err(|e| io_err(&to, e))?;
    }
    let layout = dir.join("oci-layout");
    std::fs::write(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| io_err(&layout, e))?;
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": media_type,
            "digest": manifest.to_string(),
            "size": manifest_bytes.len(),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    });
    let index_path = dir.join("index.json");
    std::fs::write(&index_path, index.to_string()).map_err(|e| io_err(&index_path, e))?;
    Ok(())
}

/// Imports the image tagged `tag` (or the only one) from the layout
/// directory `dir`.
pub fn import_layout(
    store: &Store,
    dir: &Path,
    tag: Option<&str>,
    progress: &ProgressFn,
) -> Result<Imported, LayoutError> {
    let mut source = LayoutDir {
        dir: dir.to_owned(),
    };
    import(store, &mut source, tag, progress)
}

/// Imports the image tagged `tag` (or the only one) from the tar of a
/// layout at `file`.
pub fn import_archive(
    store: &Store,
    file: &Path,
    tag: Option<&str>,
    progress: &ProgressFn,
) -> Result<Imported, LayoutError> {
    let mut source = Archive::open(file)?;
    import(store, &mut source, tag, progress)
}

/// Imports from any [`Source`].
pub fn import(
    store: &Store,
    source: &mut dyn Source,
    tag: Option<&str>,
    progress: &ProgressFn,
) -> Result<Imported, LayoutError> {
    check_layout_version(source)?;
    let top = select(source, tag)?;
    let path = source.path().to_owned();
    let bad = |source| LayoutError::Manifest {
        path: path.clone(),
        source,
    };

    // Follow indexes down to the manifest for this platform.
    let mut desc = top;
    let mut index = None;
    let mut depth = 0;
    let (manifest_digest, manifest_bytes, m): (Digest, Vec<u8>, ImageManifest) = loop {
        let digest = digest_of(&path, &desc)?;
        let bytes = read_blob(source, &digest, desc.size(), MANIFEST_LIMIT)?;
        match manifest::parse(&bytes, Some(desc.media_type().as_ref())).map_err(bad)? {
            Manifest::Image(m) => break (digest, bytes, *m),
            Manifest::Index(i) => {
                depth += 1;
                if depth > INDEX_DEPTH {
                    return Err(bad(ManifestError::TooDeep));
                }
                store.put_blob(&digest, &bytes)?;
                // The outermost index is the one a reference names.
                index.get_or_insert(digest);
                desc = manifest::select_platform(&i).map_err(bad)?;
            }
        }
    };
    manifest::check_image(&m).map_err(bad)?;

    let mut copied = Vec::new();
    let mut bytes = 0u64;
    let config_digest = digest_of(&path, m.config())?;
    let config_bytes = read_blob(source, &config_digest, m.config().size(), CONFIG_LIMIT)?;
    let config: oci_spec::image::ImageConfiguration =
        manifest::parse_config(&config_bytes).map_err(bad)?;
    manifest::check_config(&config, &m).map_err(bad)?;
    if !store.has_blob(&config_digest) {
        store.put_blob(&config_digest, &config_bytes)?;
        copied.push(config_digest);
        bytes += config_bytes.len() as u64;
    }

    let count = m.layers().len();
    for (i, layer) in m.layers().iter().enumerate() {
        let digest = digest_of(&path, layer)?;
        if store.has_blob(&digest) {
            LayerProgress::cached(progress, &digest, i, count, layer.size());
            continue;
        }
        let mut report = LayerProgress::start(progress, &digest, i, count, layer.size());
        copy_blob(store, source, &digest, layer.size(), |done| {
            report.update(done)
        })?;
        copied.push(digest);
        bytes += layer.size();
    }
    if !store.has_blob(&manifest_digest) {
        store.put_blob(&manifest_digest, &manifest_bytes)?;
        copied.push(manifest_digest.clone());
    }
    Ok(Imported {
        manifest: manifest_digest,
        index,
        copied,
        bytes,
    })
}

fn check_layout_version(source: &mut dyn Source) -> Result<(), LayoutError> {
    let path = source.path().to_owned();
    let Some(data) = source.read_file("oci-layout", 4096)? else {
        return Err(LayoutError::NotALayout { path });
    };
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct OciLayout {
        image_layout_version: String,
    }
    let layout: OciLayout = serde_json::from_slice(&data).map_err(|source| LayoutError::Json {
        path: path.clone(),
        file: "oci-layout",
        source,
    })?;
    if layout.image_layout_version != "1.0.0" {
        return Err(LayoutError::Version {
            path,
            version: layout.image_layout_version,
        });
    }
    Ok(())
}

/// The descriptor in `index.json` tagged `tag`, or the only one.
fn select(source: &mut dyn Source, tag: Option<&str>) -> Result<Descriptor, LayoutError> {
    let path = source.path().to_owned();
    let data = source
        .read_file("index.json", INDEX_LIMIT)?
        .ok_or_else(|| LayoutError::NotALayout { path: path.clone() })?;
    let index: ImageIndex = serde_json::from_slice(&data).map_err(|source| LayoutError::Json {
        path: path.clone(),
        file: "index.json",
        source,
    })?;
    let name = |d: &Descriptor| d.annotations().as_ref()?.get(REF_NAME).cloned();
    let tags: Vec<String> = index.manifests().iter().filter_map(name).collect();
    match tag {
        Some(tag) => index
            .manifests()
            .iter()
            .find(|d| name(d).as_deref() == Some(tag))
            .cloned()
            .ok_or_else(|| LayoutError::NoSuchTag {
                path,
                tag: tag.to_owned(),
                tags,
            }),
        None => match index.manifests().as_slice() {
            [only] => Ok(only.clone()),
            all => Err(LayoutError::Ambiguous {
                path,
                transport: source.transport(),
                count: all.len(),
                tags,
            }),
        },
    }
}

fn digest_of(path: &Path, d: &Descriptor) -> Result<Digest, LayoutError> {
    Digest::try_from(d.digest()).map_err(|source| LayoutError::Digest {
        path: path.to_owned(),
        source,
    })
}

fn missing(path: &Path, digest: &Digest) -> LayoutError {
    LayoutError::MissingBlob {
        path: path.to_owned(),
        digest: digest.to_string(),
    }
}

/// Reads a small blob (a manifest, an index, a config) and verifies its
/// size and digest.
fn read_blob(
    source: &mut dyn Source,
    digest: &Digest,
    size: u64,
    limit: u64,
) -> Result<Vec<u8>, LayoutError> {
    let path = source.path().to_owned();
    let refuse = |e| LayoutError::Blob {
        path: path.clone(),
        digest: digest.clone(),
        source: Box::new(e),
    };
    if size > limit {
        return Err(refuse(StoreError::SizeMismatch {
            digest: digest.clone(),
            expected: limit,
            actual: size,
            more: true,
        }));
    }
    let (reader, _) = source
        .open_blob(digest)?
        .ok_or_else(|| missing(&path, digest))?;
    let mut data = Vec::new();
    // One byte past the size tells a blob that is longer than it says.
    reader
        .take(size + 1)
        .read_to_end(&mut data)
        .map_err(|e| LayoutError::Io {
            path: path.clone(),
            source: e,
        })?;
    if data.len() as u64 != size {
        return Err(refuse(StoreError::SizeMismatch {
            digest: digest.clone(),
            expected: size,
            actual: data.len() as u64,
            more: data.len() as u64 > size,
        }));
    }
    let actual = Digest::of(&data);
    if actual != *digest {
        return Err(refuse(StoreError::DigestMismatch {
            expected: digest.clone(),
            actual,
        }));
    }
    Ok(data)
}

fn copy_blob(
    store: &Store,
    source: &mut dyn Source,
    digest: &Digest,
    size: u64,
    progress: impl FnMut(u64),
) -> Result<(), LayoutError> {
    let path = source.path().to_owned();
    let (reader, _) = source
        .open_blob(digest)?
        .ok_or_else(|| missing(&path, digest))?;
    store
        .copy_blob(digest, size, reader, progress)
        .map(drop)
        .map_err(|e| match e {
            e @ (StoreError::DigestMismatch { .. } | StoreError::SizeMismatch { .. }) => {
                LayoutError::Blob {
                    path,
                    digest: digest.clone(),
                    source: Box::new(e),
                }
            }
            e => LayoutError::Store(e),
        })
}

/// A layout directory.
struct LayoutDir {
    dir: PathBuf,
}

impl Source for LayoutDir {
    fn path(&self) -> &Path {
        &self.dir
    }

    fn transport(&self) -> &'static str {
        "oci:"
    }

    fn read_file(
        &mut self,
        name: &'static str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, LayoutError> {
        match fsutil::read_input(&self.dir.join(name), name, limit) {
            Ok(d) => Ok(Some(d)),
            Err(UnsafeFile::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                Ok(None)
            }
            Err(e) => Err(e.into()),
        }
    }

    fn open_blob(&mut self, digest: &Digest) -> Result<Option<OpenBlob<'_>>, LayoutError> {
        let path = self.dir.join("blobs/sha256").join(digest.hex());
        // Any owner: the bytes are verified against the digest as they are
        // read. A FIFO or a device in a blob's place is refused.
        let Some(file) = fsutil::open_content(&path)? else {
            return Ok(None);
        };
        let meta = file.metadata().map_err(|source| LayoutError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Some((Box::new(file), meta.len())))
    }
}

/// A tar of a layout, indexed once and read in place.
struct Archive {
    path: PathBuf,
    file: File,
    /// Entry name (without `./`) → where its data starts, its size, and
    /// its tar entry type when it is not a regular file.
    entries: HashMap<String, (u64, u64, Option<String>)>,
}

impl Archive {
    fn open(path: &Path) -> Result<Archive, LayoutError> {
        let file = fsutil::open_input(path)?;
        let io = |source| LayoutError::Io {
            path: path.to_owned(),
            source,
        };
        let mut magic = [0u8; 4];
        let n = file.read_at(&mut magic, 0).map_err(io)?;
        let kind = match &magic[..n] {
            [0x1f, 0x8b, ..] => Some("gzip"),
            [0x28, 0xb5, 0x2f, 0xfd] => Some("zstd"),
            [b'B', b'Z', b'h', ..] => Some("bzip2"),
            [0xfd, b'7', b'z', b'X'] => Some("xz"),
            _ => None,
        };
        if let Some(kind) = kind {
            return Err(LayoutError::Compressed {
                path: path.to_owned(),
                kind,
            });
        }
        let mut entries = HashMap::new();
        let mut tar = tar::Archive::new(&file);
        for entry in tar.entries_with_seek().map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.path().map_err(io)?;
            let name = name.to_string_lossy();
            let name = name.trim_start_matches("./").to_owned();
            let kind = entry.header().entry_type();
            let odd = (!kind.is_file()).then(|| format!("{kind:?}"));
            // A later entry of the same name replaces an earlier one, as tar
            // extraction would.
            entries.insert(name, (entry.raw_file_position(), entry.size(), odd));
        }
        Ok(Archive {
            path: path.to_owned(),
            file,
            entries,
        })
    }

    fn open_entry(&self, name: &str) -> Result<Option<(Section<'_>, u64)>, LayoutError> {
        match self.entries.get(name) {
            None => Ok(None),
            Some((_, _, Some(kind))) => Err(LayoutError::EntryKind {
                path: self.path.clone(),
                digest: name.to_owned(),
                kind: kind.clone(),
            }),
            Some(&(pos, size, None)) => Ok(Some((
                Section {
                    file: &self.file,
                    pos,
                    end: pos + size,
                },
                size,
            ))),
        }
    }
}

impl Source for Archive {
    fn path(&self) -> &Path {
        &self.path
    }

    fn transport(&self) -> &'static str {
        "oci-archive:"
    }

    fn read_file(
        &mut self,
        name: &'static str,
        limit: u64,
    ) -> Result<Option<Vec<u8>>, LayoutError> {
        let Some((section, size)) = self.open_entry(name)? else {
            return Ok(None);
        };
        if size > limit {
            return Err(LayoutError::Unsafe(UnsafeFile::TooLarge {
                path: self.path.join(name),
                what: name,
                limit,
            }));
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
        let mut section = section;
        section
            .read_to_end(&mut data)
            .map_err(|source| LayoutError::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(Some(data))
    }

    fn open_blob(&mut self, digest: &Digest) -> Result<Option<OpenBlob<'_>>, LayoutError> {
        let name = format!("blobs/sha256/{}", digest.hex());
        Ok(self
            .open_entry(&name)?
            .map(|(s, size)| (Box::new(s) as Box<dyn Read>, size)))
    }
}

/// A byte range of a file, read with `pread` (no shared seek position).
struct Section<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Section<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside an entry",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A layout built by hand: one image with one layer, tagged `t1`, and a
    /// second tagged `t2` that shares the layer.
    struct Fixture {
        dir: tempfile::TempDir,
        layer: Digest,
        manifests: Vec<Digest>,
    }

    fn blob(dir: &Path, data: &[u8]) -> (Digest, u64) {
        let d = Digest::of(data);
        std::fs::create_dir_all(dir.join("blobs/sha256")).expect("mkdir");
        std::fs::write(dir.join("blobs/sha256").join(d.hex()), data).expect("write");
        (d, data.len() as u64)
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path();
        std::fs::write(p.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).expect("write");
        let (layer, layer_size) = blob(p, b"not really a tar, but content is content");
        let mut entries = Vec::new();
        let mut manifests = Vec::new();
        for tag in ["t1", "t2"] {
            let config = serde_json::json!({
                "architecture": "amd64", "os": "linux",
                "config": {"Env": [format!("TAG={tag}")]},
                "rootfs": {"type": "layers", "diff_ids": [layer.to_string()]}
            });
            let (config, config_size) = blob(p, &serde_json::to_vec(&config).unwrap());
            let m = serde_json::json!({
                "schemaVersion": 2, "mediaType": manifest::OCI_MANIFEST,
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.to_string(), "size": config_size},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": layer.to_string(), "size": layer_size}]
            });
            let (md, ms) = blob(p, &serde_json::to_vec(&m).unwrap());
            manifests.push(md.clone());
            entries.push(serde_json::json!({
                "mediaType": manifest::OCI_MANIFEST, "digest": md.to_string(), "size": ms,
                "annotations": {REF_NAME: tag}
            }));
        }
        let index = serde_json::json!({"schemaVersion": 2, "manifests": entries});
        std::fs::write(p.join("index.json"), serde_json::to_vec(&index).unwrap()).expect("write");
        Fixture {
            dir,
            layer,
            manifests,
        }
    }

    fn quiet() -> ProgressFn {
        Arc::new(|_| {})
    }

    #[test]
    fn imports_by_tag_and_shares_layers() {
        let f = fixture();
        let root = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&root.path().join("s")).expect("store");
        let a = import_layout(&store, f.dir.path(), Some("t1"), &quiet()).expect("t1");
        assert_eq!(a.manifest, f.manifests[0]);
        assert_eq!(a.copied.len(), 3, "config, layer, manifest");
        let b = import_layout(&store, f.dir.path(), Some("t2"), &quiet()).expect("t2");
        assert_eq!(b.manifest, f.manifests[1]);
        assert!(
            !b.copied.contains(&f.layer),
            "the shared layer is not copied again"
        );
        let again = import_layout(&store, f.dir.path(), Some("t1"), &quiet()).expect("again");
        assert!(again.copied.is_empty());
        let image = store.image(&a.manifest).expect("complete");
        assert_eq!(image.layers.len(), 1);
        assert_eq!(image.layers[0].blob_path, store.blob_path(&f.layer));
    }

    #[test]
    fn says_which_tags_exist() {
        let f = fixture();
        let root = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&root.path().join("s")).expect("store");
        let e = import_layout(&store, f.dir.path(), None, &quiet()).expect_err("two images");
        assert!(
            e.to_string()
                .contains("holds 2 images; name one as oci:PATH:TAG (tags: t1, t2)"),
            "{e}"
        );
        let e = import_layout(&store, f.dir.path(), Some("nope"), &quiet()).expect_err("no tag");
        assert!(
            e.to_string()
                .ends_with("has no image tagged \"nope\" (tags: t1, t2)"),
            "{e}"
        );
        let e = import_layout(&store, root.path(), None, &quiet()).expect_err("not a layout");
        assert!(e.to_string().contains("is not an OCI image layout"), "{e}");
    }

    #[test]
    fn a_corrupted_layer_is_refused_and_nothing_is_recorded() {
        let f = fixture();
        let path = f.dir.path().join("blobs/sha256").join(f.layer.hex());
        let mut data = std::fs::read(&path).expect("read");
        data[0] ^= 0xff;
        std::fs::write(&path, data).expect("write");
        let root = tempfile::tempdir().expect("tempdir");
        let store = Store::open(&root.path().join("s")).expect("store");
        let e = import_layout(&store, f.dir.path(), Some("t1"), &quiet()).expect_err("corrupt");
        let chain = locald_core::error_chain(&e);
        assert!(
            chain.contains(&format!("blob {}: the content hashes to sha256:", f.layer)),
            "{chain}"
        );
        assert!(!store.has_blob(&f.layer));
        assert!(
            !store.has_blob(&f.manifests[0]),
            "no manifest without its layers"
        );
    }

    #[test]
    fn an_archive_is_read_in_place() {
        let f = fixture();
        let root = tempfile::tempdir().expect("tempdir");
        let tar_path = root.path().join("img.tar");
        let mut b = tar::Builder::new(File::create(&tar_path).expect("create"));
        // Blobs first, index last: the order must not matter.
        b.append_dir_all("blobs", f.dir.path().join("blobs"))
            .expect("blobs");
        b.append_path_with_name(f.dir.path().join("oci-layout"), "./oci-layout")
            .expect("layout");
        b.append_path_with_name(f.dir.path().join("index.json"), "index.json")
            .expect("index");
        b.finish().expect("finish");
        drop(b);
        let store = Store::open(&root.path().join("s")).expect("store");
        let a = import_archive(&store, &tar_path, Some("t2"), &quiet()).expect("t2");
        assert_eq!(a.manifest, f.manifests[1]);
        assert!(store.image(&a.manifest).is_ok());
    }

    #[test]
    fn a_compressed_archive_is_named_as_such() {
        let root = tempfile::tempdir().expect("tempdir");
        let p = root.path().join("img.tar.gz");
        std::fs::write(&p, [0x1f, 0x8b, 8, 0, 0, 0]).expect("write");
        let store = Store::open(&root.path().join("s")).expect("store");
        let e = import_archive(&store, &p, None, &quiet()).expect_err("gzip");
        assert!(e.to_string().contains("is gzip-compressed"), "{e}");
    }
}
