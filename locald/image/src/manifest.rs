//! Reading manifests and indexes, wherever they came from.
//!
//! Registries and layouts hand over the same documents: an image index (a
//! list of manifests per platform, Docker's "manifest list") or an image
//! manifest (a config and layers), in OCI or Docker schema 2 media types.
//! This module decides which kind a document is, picks the entry of an index
//! for linux and this machine's architecture, and checks that a manifest is
//! a container image locald can run (a known config type and layer types
//! whose compression it knows) before any layer is fetched.

use oci_spec::image::{Arch, Descriptor, ImageIndex, ImageManifest, MediaType, Os};
use serde::de::IgnoredAny;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (an index).
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";

/// Every manifest media type locald reads, for a registry's `Accept`.
pub const MANIFEST_TYPES: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// The largest manifest or index read (the distribution spec lets registries
/// refuse larger ones).
pub const MANIFEST_LIMIT: u64 = 4 << 20;
/// The largest image config read (a long history makes configs large, but
/// not this large).
pub const CONFIG_LIMIT: u64 = 16 << 20;

/// The most layers an image may have. Docker and overlayfs stop near 128;
/// a manifest listing thousands is an attack on memory, not an image.
pub const MAX_LAYERS: usize = 500;

/// How deep indexes may nest (an index naming an index naming a manifest).
pub const INDEX_DEPTH: usize = 4;

/// A parsed manifest document.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// An image manifest: a config and layers.
    Image(Box<ImageManifest>),
    /// An image index: manifests per platform.
    Index(Box<ImageIndex>),
}

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Why a manifest, index or layer cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("the {what} is not valid")]
    Parse {
        /// "manifest", "image index", "image config".
        what: &'static str,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// Docker's schema 1, or an unknown schema version.
    #[error("manifest schema version {0} is not supported (only schema 2; re-push the image with a current tool)")]
    Schema(u32),
    /// A media type that is neither a manifest nor an index.
    #[error("media type {0:?} is not an image manifest or index")]
    MediaType(String),
    /// An index was expected to resolve to a manifest and did not.
    #[error("the image index nests deeper than {INDEX_DEPTH} levels")]
    TooDeep,
    /// No entry for linux and this architecture.
    #[error("no image for {wanted} (the index has {})", if .available.is_empty() { "no platform entries".to_owned() } else { .available.join(", ") })]
    NoPlatform {
        /// `linux/amd64`.
        wanted: String,
        /// What the index offers.
        available: Vec<String>,
    },
    /// The config is not a container image config (an OCI artifact, say).
    #[error("this is not a container image: its config has media type {0:?} (an OCI artifact?)")]
    NotAnImage(String),
    /// A layer locald cannot unpack.
    #[error("layer {digest} has media type {media_type:?}, {why}")]
    Layer {
        /// The layer's digest.
        digest: String,
        /// Its media type.
        media_type: String,
        /// Why it cannot be used.
        why: &'static str,
    },
    /// A config whose layer list does not match the manifest's.
    #[error("the image config lists {diff_ids} layers but the manifest has {layers}")]
    LayerCount {
        /// `rootfs.diff_ids` in the config.
        diff_ids: usize,
        /// Layers in the manifest.
        layers: usize,
    },
    /// More layers than any real image has.
    #[error("the manifest lists {0} layers; at most {MAX_LAYERS} are accepted")]
    TooManyLayers(usize),
    /// A config for another operating system.
    #[error("the image is for {0}, not linux")]
    Os(String),
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<u32>,
    media_type: Option<String>,
    manifests: Option<IgnoredAny>,
    layers: Option<IgnoredAny>,
}

fn is_index_type(t: &str) -> bool {
    t == OCI_INDEX || t == DOCKER_LIST
}

fn is_manifest_type(t: &str) -> bool {
    t == OCI_MANIFEST || t == DOCKER_MANIFEST
}

/// Whether a descriptor points at an index (by its media type).
pub fn is_index(d: &Descriptor) -> bool {
    is_index_type(d.media_type().as_ref())
}

/// Parses a manifest or index. The document's own `mediaType` decides; when
/// it has none (allowed by OCI), `declared` (the descriptor's or the HTTP
/// response's type) does, and failing that its shape.
pub fn parse(bytes: &[u8], declared: Option<&str>) -> Result<Manifest, ManifestError> {
    let probe: Probe = serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
        what: "manifest",
        source,
    })?;
    let version = probe.schema_version.unwrap_or(0);
    if version != 2 {
        return Err(ManifestError::Schema(version));
    }
    let kind = probe.media_type.as_deref().or(declared);
    let index = match kind {
        Some(t) if is_index_type(t) => true,
        Some(t) if is_manifest_type(t) => false,
        Some(t) => return Err(ManifestError::MediaType(t.to_owned())),
        None => probe.manifests.is_some() && probe.layers.is_none(),
    };
    if index {
        serde_json::from_slice(bytes)
            .map(|i| Manifest::Index(Box::new(i)))
            .map_err(|source| ManifestError::Parse {
                what: "image index",
                source,
            })
    } else {
        serde_json::from_slice(bytes)
            .map(|m| Manifest::Image(Box::new(m)))
            .map_err(|source| ManifestError::Parse {
                what: "manifest",
                source,
            })
    }
}

/// Parses an image config. `history` is optional in the image spec but
/// required by the `oci-spec` version in use, and some builders leave it
/// out; a config without one is read as having an empty history.
pub fn parse_config(bytes: &[u8]) -> Result<oci_spec::image::ImageConfiguration, ManifestError> {
    let parse_err = |source| ManifestError::Parse {
        what: "image config",
        source,
    };
    let mut value: serde_json::Value = serde_json::from_slice(bytes).map_err(parse_err)?;
    if let Some(obj) = value.as_object_mut() {
        obj.entry("history")
            .or_insert_with(|| serde_json::Value::Array(Vec::new()));
    }
    serde_json::from_value(value).map_err(parse_err)
}

/// `linux/<this machine's architecture>` in OCI's names (`amd64`, `arm64`).
pub fn this_platform() -> String {
    format!("linux/{}", Arch::default())
}

fn platform_name(d: &Descriptor) -> Option<String> {
    let p = d.platform().as_ref()?;
    Some(match p.variant() {
        Some(v) => format!("{}/{}/{v}", p.os(), p.architecture()),
        None => format!("{}/{}", p.os(), p.architecture()),
    })
}

/// The entry of an index for linux and this machine's architecture (the
/// first, as Docker takes it). Entries without a platform (attestations,
/// signatures) are never chosen.
pub fn select_platform(index: &ImageIndex) -> Result<Descriptor, ManifestError> {
    let arch = Arch::default();
    index
        .manifests()
        .iter()
        .find(|d| {
            d.platform()
                .as_ref()
                .is_some_and(|p| *p.os() == Os::Linux && *p.architecture() == arch)
        })
        .cloned()
        .ok_or_else(|| ManifestError::NoPlatform {
            wanted: this_platform(),
            available: index
                .manifests()
                .iter()
                .filter_map(platform_name)
                .filter(|n| n != "unknown/unknown")
                .collect(),
        })
}

/// The compression of a layer of this media type, or why locald cannot use
/// such a layer.
pub fn layer_compression(
    digest: &str,
    media_type: &MediaType,
) -> Result<Compression, ManifestError> {
    let err = |why| ManifestError::Layer {
        digest: digest.to_owned(),
        media_type: media_type.to_string(),
        why,
    };
    match media_type {
        MediaType::ImageLayer => Ok(Compression::None),
        MediaType::ImageLayerGzip => Ok(Compression::Gzip),
        MediaType::ImageLayerZstd => Ok(Compression::Zstd),
        MediaType::ImageLayerNonDistributable
        | MediaType::ImageLayerNonDistributableGzip
        | MediaType::ImageLayerNonDistributableZstd => Err(err(
            "a non-distributable layer that registries do not serve",
        )),
        MediaType::Other(t) => match t.as_str() {
            "application/vnd.docker.image.rootfs.diff.tar" => Ok(Compression::None),
            "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
            "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Err(err(
                "a foreign layer (Windows base images) that registries do not serve",
            )),
            _ => Err(err("which is not a container image layer")),
        },
        _ => Err(err("which is not a container image layer")),
    }
}

/// Checks that a manifest describes a container image locald can unpack:
/// an image config, and layers of known types. Done before any layer is
/// fetched, so an artifact or a Windows image fails fast.
pub fn check_image(m: &ImageManifest) -> Result<(), ManifestError> {
    let config = m.config().media_type();
    if !matches!(config, MediaType::ImageConfig) && config.as_ref() != DOCKER_CONFIG {
        return Err(ManifestError::NotAnImage(config.to_string()));
    }
    if m.layers().len() > MAX_LAYERS {
        return Err(ManifestError::TooManyLayers(m.layers().len()));
    }
    for layer in m.layers() {
        layer_compression(layer.digest().as_ref(), layer.media_type())?;
    }
    Ok(())
}

/// Checks an image config against its manifest: a linux image, one
/// `diff_id` per layer.
pub fn check_config(
    config: &oci_spec::image::ImageConfiguration,
    m: &ImageManifest,
) -> Result<(), ManifestError> {
    if *config.os() != Os::Linux {
        return Err(ManifestError::Os(config.os().to_string()));
    }
    let diff_ids = config.rootfs().diff_ids().len();
    if diff_ids != m.layers().len() {
        return Err(ManifestError::LayerCount {
            diff_ids,
            layers: m.layers().len(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
    const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

    fn index(platforms: &[(&str, &str, &str)]) -> Vec<u8> {
        let manifests: Vec<_> = platforms
            .iter()
            .map(|(os, arch, digest)| {
                serde_json::json!({
                    "mediaType": OCI_MANIFEST, "digest": digest, "size": 10,
                    "platform": {"os": os, "architecture": arch}
                })
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests
        }))
        .expect("json")
    }

    fn manifest(config_type: &str, layer_type: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": config_type, "digest": D1, "size": 2},
            "layers": [{"mediaType": layer_type, "digest": D2, "size": 3}]
        }))
        .expect("json")
    }

    #[test]
    fn picks_linux_and_this_architecture() {
        let here = Arch::default().to_string();
        let other = if here == "amd64" { "arm64" } else { "amd64" };
        let bytes = index(&[
            ("linux", other, D1),
            ("windows", &here, D1),
            ("linux", &here, D2),
        ]);
        let Manifest::Index(i) = parse(&bytes, None).expect("index") else {
            panic!("not an index")
        };
        assert_eq!(select_platform(&i).expect("found").digest().to_string(), D2);
    }

    #[test]
    fn says_which_platforms_an_index_has() {
        let bytes = index(&[("linux", "s390x", D1), ("windows", "riscv64", D2)]);
        let Manifest::Index(i) = parse(&bytes, None).expect("index") else {
            panic!("not an index")
        };
        let e = select_platform(&i).expect_err("none for us").to_string();
        assert_eq!(
            e,
            format!(
                "no image for {} (the index has linux/s390x, windows/riscv64)",
                this_platform()
            )
        );
    }

    #[test]
    fn kind_comes_from_media_type_or_shape() {
        let m = manifest(
            DOCKER_CONFIG,
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
        );
        assert!(matches!(parse(&m, None), Ok(Manifest::Image(_))));
        assert!(matches!(
            parse(&m, Some(DOCKER_MANIFEST)),
            Ok(Manifest::Image(_))
        ));
        let e = parse(&m, Some("text/html")).expect_err("declared html");
        assert!(e.to_string().contains("text/html"), "{e}");
        let v1 = br#"{"schemaVersion": 1, "name": "x"}"#;
        assert_eq!(
            parse(v1, None).expect_err("schema 1").to_string(),
            "manifest schema version 1 is not supported (only schema 2; re-push the image with a current tool)"
        );
        assert!(parse(b"<html>", None).is_err());
    }

    #[test]
    fn refuses_artifacts_and_unknown_layers_before_fetching() {
        let Manifest::Image(m) = parse(
            &manifest("application/vnd.cncf.helm.config.v1+json", OCI_MANIFEST),
            None,
        )
        .expect("parses") else {
            panic!()
        };
        assert!(check_image(&m)
            .expect_err("artifact")
            .to_string()
            .contains("not a container image"));
        let Manifest::Image(m) = parse(
            &manifest(
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            ),
            None,
        )
        .expect("parses") else {
            panic!()
        };
        let e = check_image(&m).expect_err("foreign").to_string();
        assert!(e.contains("foreign layer") && e.contains(D2), "{e}");
    }

    #[test]
    fn refuses_a_flood_of_layers() {
        let layers: Vec<_> = (0..=MAX_LAYERS)
            .map(|_| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": D2, "size": 3}))
            .collect();
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": D1, "size": 2},
            "layers": layers
        }))
        .expect("json");
        let Manifest::Image(m) = parse(&bytes, None).expect("parses") else {
            panic!()
        };
        assert!(matches!(
            check_image(&m),
            Err(ManifestError::TooManyLayers(501))
        ));
    }

    #[test]
    fn compression_of_oci_and_docker_layers() {
        for (t, c) in [
            ("application/vnd.oci.image.layer.v1.tar", Compression::None),
            (
                "application/vnd.oci.image.layer.v1.tar+gzip",
                Compression::Gzip,
            ),
            (
                "application/vnd.oci.image.layer.v1.tar+zstd",
                Compression::Zstd,
            ),
            (
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                Compression::Gzip,
            ),
        ] {
            assert_eq!(layer_compression(D1, &MediaType::from(t)).expect(t), c);
        }
    }
}
