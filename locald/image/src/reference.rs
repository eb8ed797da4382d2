//! Image references as a user writes them in `image = "…"`.
//!
//! Three kinds, in skopeo's transport syntax:
//!
//! - `name[:tag][@digest]` (optionally `docker://name…`): an image in a
//!   registry, with Docker's defaults: no registry means `docker.io`, a
//!   single-component name on `docker.io` means `library/NAME`, and neither
//!   tag nor digest means `:latest`. The first component is a registry host
//!   only when it contains `.` or `:` or is `localhost`, as Docker decides.
//!   When both a tag and a digest are given the digest is what is pulled;
//!   the tag is kept for display.
//! - `oci:PATH[:TAG]`: a local OCI image layout directory, `PATH` relative
//!   to the project directory; `TAG` selects the manifest whose
//!   `org.opencontainers.image.ref.name` annotation it is.
//! - `oci-archive:FILE[:TAG]`: the same, as a tar file.
//!
//! Parsing checks everything the grammar of `distribution/reference` checks
//! and says which part is wrong; nothing is looked up here.

use std::fmt;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use super::digest::{Digest, DigestError};

/// Docker Hub, the registry of names without a host.
pub const DOCKER_HUB: &str = "docker.io";

/// The longest repository name (`host/path`) Docker accepts.
const NAME_MAX: usize = 255;
/// The longest tag the distribution spec allows.
const TAG_MAX: usize = 128;

/// A parsed image reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ImageRef {
    /// An image in a registry.
    Registry(RegistryRef),
    /// `oci:PATH[:TAG]`: a local OCI image layout directory.
    OciLayout(LocalRef),
    /// `oci-archive:FILE[:TAG]`: a tar of an OCI image layout.
    OciArchive(LocalRef),
}

/// An image in a registry, with Docker's defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RegistryRef {
    registry: String,
    repository: String,
    tag: Option<String>,
    digest: Option<Digest>,
}

/// A local layout or archive and the tag that selects an image in it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LocalRef {
    /// The path as written (relative paths are relative to the project).
    pub path: PathBuf,
    /// The `org.opencontainers.image.ref.name` to select, if any.
    pub tag: Option<String>,
}

/// Why an image reference does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Nothing was given.
    #[error("the image reference is empty")]
    Empty,
    /// Uppercase letters in the repository path.
    #[error("image reference {reference:?}: repository name {repository:?} must be lowercase")]
    Uppercase {
        /// The whole reference.
        reference: String,
        /// The repository path.
        repository: String,
    },
    /// A path component that breaks the grammar.
    #[error("image reference {reference:?}: repository component {component:?} {why}")]
    Component {
        /// The whole reference.
        reference: String,
        /// The offending component.
        component: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A registry host or port that breaks the grammar.
    #[error("image reference {reference:?}: registry {registry:?} {why}")]
    Registry {
        /// The whole reference.
        reference: String,
        /// The registry part.
        registry: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// A tag that breaks the grammar.
    #[error("image reference {reference:?}: tag {tag:?} {why}")]
    Tag {
        /// The whole reference.
        reference: String,
        /// The tag.
        tag: String,
        /// What is wrong with it.
        why: String,
    },
    /// A digest that is malformed or of an unsupported algorithm.
    #[error("image reference {reference:?}: {problem}")]
    Digest {
        /// The whole reference.
        reference: String,
        /// What is wrong with the digest.
        problem: DigestError,
    },
    /// The repository name is longer than Docker allows.
    #[error("image reference {reference:?}: the name is {len} characters long; at most {NAME_MAX} are allowed")]
    TooLong {
        /// The whole reference.
        reference: String,
        /// The name's length.
        len: usize,
    },
    /// `oci:` or `oci-archive:` without a path.
    #[error("image reference {reference:?}: {transport} needs a path ({hint})")]
    NoPath {
        /// The whole reference.
        reference: String,
        /// `oci:` or `oci-archive:`.
        transport: &'static str,
        /// What the path names.
        hint: &'static str,
    },
    /// A URL scheme, or a transport locald does not read.
    #[error("image reference {reference:?}: {why}")]
    Transport {
        /// The whole reference.
        reference: String,
        /// What to write instead.
        why: String,
    },
}

impl ImageRef {
    /// Parses a reference as written in `locald.toml`.
    pub fn parse(s: &str) -> Result<ImageRef, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            return parse_local(s, rest, "oci:", "an OCI image layout directory")
                .map(ImageRef::OciLayout);
        }
        if let Some(rest) = s.strip_prefix("oci-archive:") {
            return parse_local(s, rest, "oci-archive:", "a tar file of an OCI image layout")
                .map(ImageRef::OciArchive);
        }
        if let Some(rest) = s.strip_prefix("docker://") {
            return RegistryRef::parse_in(s, rest).map(ImageRef::Registry);
        }
        if let Some((scheme, _)) = s.split_once("://") {
            return Err(ReferenceError::Transport {
                reference: s.to_owned(),
                why: format!(
                    "{scheme}:// is not a reference form; write HOST/REPOSITORY[:TAG] without a scheme"
                ),
            });
        }
        if let Some((transport, rest)) = s.split_once(':') {
            if OTHER_TRANSPORTS.contains(&transport) && looks_like_path(rest) {
                return Err(ReferenceError::Transport {
                    reference: s.to_owned(),
                    why: format!(
                        "the {transport}: transport is not supported; use a registry reference, oci:PATH[:TAG] or oci-archive:FILE[:TAG]"
                    ),
                });
            }
        }
        RegistryRef::parse_in(s, s).map(ImageRef::Registry)
    }

    /// The name this reference is recorded under in the store's index: the
    /// canonical registry reference, or the transport with the absolute
    /// path (relative paths resolved against `project_dir`) and tag.
    pub fn key(&self, project_dir: &Path) -> String {
        match self {
            ImageRef::Registry(r) => r.to_string(),
            ImageRef::OciLayout(l) => l.key("oci:", project_dir),
            ImageRef::OciArchive(l) => l.key("oci-archive:", project_dir),
        }
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ImageRef::parse(s)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => r.fmt(f),
            ImageRef::OciLayout(l) => write!(f, "oci:{l}"),
            ImageRef::OciArchive(l) => write!(f, "oci-archive:{l}"),
        }
    }
}

/// skopeo transports locald does not read; named so the error can say so.
const OTHER_TRANSPORTS: &[&str] = &[
    "dir",
    "docker-archive",
    "docker-daemon",
    "containers-storage",
    "ostree",
    "sif",
    "tarball",
];

/// A tag never starts with `/` or `.`, so `word:/x` or `word:./x` is a
/// transport and a path, not a name and a tag.
fn looks_like_path(s: &str) -> bool {
    s.starts_with('/') || s.starts_with('.') || s.starts_with('~')
}

fn parse_local(
    reference: &str,
    rest: &str,
    transport: &'static str,
    hint: &'static str,
) -> Result<LocalRef, ReferenceError> {
    // As skopeo: the path ends at the first ':'; a layout path cannot hold one.
    let (path, tag) = match rest.split_once(':') {
        Some((p, t)) => (p, Some(t)),
        None => (rest, None),
    };
    if path.is_empty() {
        return Err(ReferenceError::NoPath {
            reference: reference.to_owned(),
            transport,
            hint,
        });
    }
    if let Some(tag) = tag {
        check_ref_name(reference, tag)?;
    }
    Ok(LocalRef {
        path: PathBuf::from(path),
        tag: tag.map(str::to_owned),
    })
}

/// A tag in a layout is an `org.opencontainers.image.ref.name`:
/// `component ("/" component)*`, components of letters and digits joined by
/// one of `-._:@+` (or `--`).
fn check_ref_name(reference: &str, tag: &str) -> Result<(), ReferenceError> {
    let err = |why: &str| ReferenceError::Tag {
        reference: reference.to_owned(),
        tag: tag.to_owned(),
        why: why.to_owned(),
    };
    if tag.is_empty() {
        return Err(err("is empty; leave out the ':' to take the only image"));
    }
    for component in tag.split('/') {
        let bytes = component.as_bytes();
        let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
            return Err(err("has an empty component between '/'"));
        };
        if !first.is_ascii_alphanumeric() || !last.is_ascii_alphanumeric() {
            return Err(err("must start and end with a letter or digit"));
        }
        if let Some(c) = component
            .chars()
            .find(|c| !c.is_ascii_alphanumeric() && !"-._:@+".contains(*c))
        {
            return Err(err(&format!(
                "contains {c:?}; allowed are letters, digits and -._:@+/"
            )));
        }
    }
    Ok(())
}

impl LocalRef {
    /// The layout or archive: `path` itself if absolute, else under
    /// `project_dir`, without `.` components.
    pub fn resolve(&self, project_dir: &Path) -> PathBuf {
        project_dir
            .join(&self.path)
            .components()
            .filter(|c| !matches!(c, Component::CurDir))
            .collect()
    }

    fn key(&self, transport: &str, project_dir: &Path) -> String {
        let path = self.resolve(project_dir);
        match &self.tag {
            Some(t) => format!("{transport}{}:{t}", path.display()),
            None => format!("{transport}{}", path.display()),
        }
    }
}

impl fmt::Display for LocalRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.tag {
            Some(t) => write!(f, "{}:{t}", self.path.display()),
            None => write!(f, "{}", self.path.display()),
        }
    }
}

impl RegistryRef {
    /// Parses `[host[:port]/]path[:tag][@digest]`.
    pub fn parse(s: &str) -> Result<RegistryRef, ReferenceError> {
        RegistryRef::parse_in(s, s)
    }

    /// Parses `s`, naming `whole` (which may carry a `docker://` prefix) in
    /// errors.
    fn parse_in(whole: &str, s: &str) -> Result<RegistryRef, ReferenceError> {
        if s.is_empty() {
            return Err(ReferenceError::Empty);
        }
        let reference = || whole.to_owned();
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => {
                let digest = Digest::parse(d).map_err(|problem| ReferenceError::Digest {
                    reference: reference(),
                    problem,
                })?;
                (n, Some(digest))
            }
            None => (s, None),
        };
        // A ':' after the last '/' starts the tag; one before it is a port.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => (
                &name_tag[..last_slash + i],
                Some(&name_tag[last_slash + i + 1..]),
            ),
            None => (name_tag, None),
        };
        if let Some(tag) = tag {
            check_tag(whole, tag)?;
        }
        let (registry, path) = split_registry(name);
        let registry = match registry {
            Some(r) => {
                check_registry(whole, r)?;
                if r == "index.docker.io" || r == "registry-1.docker.io" {
                    DOCKER_HUB.to_owned()
                } else {
                    r.to_owned()
                }
            }
            None => DOCKER_HUB.to_owned(),
        };
        check_path(whole, path)?;
        let repository = if registry == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        let len = registry.len() + 1 + repository.len();
        if len > NAME_MAX {
            return Err(ReferenceError::TooLong {
                reference: reference(),
                len,
            });
        }
        let tag = match (tag, &digest) {
            (Some(t), _) => Some(t.to_owned()),
            (None, Some(_)) => None,
            (None, None) => Some("latest".to_owned()),
        };
        Ok(RegistryRef {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The registry host (and port): `docker.io`, `ghcr.io`,
    /// `127.0.0.1:5000`.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    /// The repository path within the registry: `library/redis`.
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// The tag, if any (`latest` when neither tag nor digest was given).
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// The digest, if one was given; it wins over the tag when pulling.
    pub fn digest(&self) -> Option<&Digest> {
        self.digest.as_ref()
    }

    /// This reference pinned to `digest` (the tag kept for display).
    pub fn with_digest(&self, digest: Digest) -> RegistryRef {
        RegistryRef {
            digest: Some(digest),
            ..self.clone()
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

impl FromStr for RegistryRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        RegistryRef::parse(s)
    }
}

/// Docker's rule: the first component names a registry when it has a `.`
/// or a `:` or is `localhost`; otherwise the whole name is a path on
/// Docker Hub.
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn check_registry(reference: &str, registry: &str) -> Result<(), ReferenceError> {
    check_registry_name(registry).map_err(|why| ReferenceError::Registry {
        reference: reference.to_owned(),
        registry: registry.to_owned(),
        why,
    })
}

/// Checks `host[:port]` (host a DNS name, an IPv4 address or a bracketed
/// IPv6 address); says what is wrong.
pub fn check_registry_name(registry: &str) -> Result<(), &'static str> {
    let (host, port) = if let Some(v6) = registry.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("opens '[' for an IPv6 address but never closes it")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("is not a valid IPv6 address in brackets");
        }
        match after {
            "" => (None, None),
            p => (
                None,
                Some(
                    p.strip_prefix(':')
                        .ok_or("has text after the IPv6 address")?,
                ),
            ),
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(registry), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err("has an empty host name");
        }
        for label in host.split('.') {
            let bytes = label.as_bytes();
            let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
                return Err("has an empty label between dots");
            };
            if !bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            {
                return Err("may contain only letters, digits, '-' and '.'");
            }
            if *first == b'-' || *last == b'-' {
                return Err("has a label that starts or ends with a hyphen");
            }
        }
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("has a port that is not a number");
        }
        if !matches!(port.parse::<u32>(), Ok(1..=65535)) {
            return Err("has a port outside 1-65535");
        }
    }
    Ok(())
}

/// `path-component ('/' path-component)*`, each component
/// `[a-z0-9]+ (separator [a-z0-9]+)*` with separator `.`, `_`, `__` or any
/// number of `-`.
fn check_path(reference: &str, path: &str) -> Result<(), ReferenceError> {
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(ReferenceError::Uppercase {
            reference: reference.to_owned(),
            repository: path.to_owned(),
        });
    }
    let err = |component: &str, why| ReferenceError::Component {
        reference: reference.to_owned(),
        component: component.to_owned(),
        why,
    };
    if path.is_empty() {
        return Err(err(path, "is empty: a repository name is required"));
    }
    for component in path.split('/') {
        check_component(component).map_err(|why| err(component, why))?;
    }
    Ok(())
}

fn check_component(c: &str) -> Result<(), &'static str> {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = c.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return Err("is empty (two '/' in a row, or a '/' at an end)");
    };
    if !alnum(first) || !alnum(last) {
        return Err("must start and end with a lowercase letter or digit");
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        match &c[start..i] {
            "." | "_" | "__" => {}
            sep if sep.bytes().all(|b| b == b'-') => {}
            sep if sep.bytes().all(|b| b"._-".contains(&b)) => {
                return Err(
                    "joins words with more than one separator (only '.', '_', '__' or dashes)",
                )
            }
            _ => return Err("may contain only lowercase letters, digits, '.', '_' and '-'"),
        }
    }
    Ok(())
}

/// `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn check_tag(reference: &str, tag: &str) -> Result<(), ReferenceError> {
    let err = |why: String| ReferenceError::Tag {
        reference: reference.to_owned(),
        tag: tag.to_owned(),
        why,
    };
    let Some(first) = tag.chars().next() else {
        return Err(err("is empty; leave out the ':' for latest".into()));
    };
    if !(first.is_ascii_alphanumeric() || first == '_') {
        let mut why = "must start with a letter, digit or '_'".to_owned();
        if looks_like_path(tag) {
            why.push_str(" (a path? local images are oci:PATH[:TAG] or oci-archive:FILE[:TAG])");
        }
        return Err(err(why));
    }
    if let Some(c) = tag
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "_.-".contains(*c)))
    {
        return Err(err(format!(
            "contains {c:?}; allowed are letters, digits, '_', '.' and '-'"
        )));
    }
    if tag.len() > TAG_MAX {
        return Err(err(format!("is longer than {TAG_MAX} characters")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn reg(s: &str) -> RegistryRef {
        match ImageRef::parse(s) {
            Ok(ImageRef::Registry(r)) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn canonical(s: &str) -> String {
        reg(s).to_string()
    }

    fn err(s: &str) -> String {
        ImageRef::parse(s).expect_err(s).to_string()
    }

    #[test]
    fn docker_hub_defaults() {
        assert_eq!(canonical("redis"), "docker.io/library/redis:latest");
        assert_eq!(canonical("redis:7"), "docker.io/library/redis:7");
        assert_eq!(
            canonical("bitnami/redis:7.2"),
            "docker.io/bitnami/redis:7.2"
        );
        assert_eq!(
            canonical("docker.io/redis"),
            "docker.io/library/redis:latest"
        );
        assert_eq!(
            canonical("index.docker.io/library/redis:7"),
            "docker.io/library/redis:7"
        );
        assert_eq!(canonical("docker://redis:7"), "docker.io/library/redis:7");
        let r = reg("redis:7");
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            (DOCKER_HUB, "library/redis", Some("7"))
        );
    }

    #[test]
    fn registry_hosts_with_ports_and_localhost() {
        let r = reg("localhost:5000/x");
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("localhost:5000", "x", Some("latest"))
        );
        assert_eq!(canonical("localhost/x:1"), "localhost/x:1");
        assert_eq!(
            canonical("127.0.0.1:5000/team/app:v1.2-rc_3"),
            "127.0.0.1:5000/team/app:v1.2-rc_3"
        );
        assert_eq!(
            canonical("ghcr.io/org/app/sub:edge"),
            "ghcr.io/org/app/sub:edge"
        );
        assert_eq!(canonical("[::1]:5000/x:y"), "[::1]:5000/x:y");
        // Without '.', ':' or localhost the first component is a path.
        assert_eq!(canonical("myhost/app"), "docker.io/myhost/app:latest");
        // Hosts may be uppercase; repositories may not.
        assert_eq!(
            canonical("Registry.Example.com/app"),
            "Registry.Example.com/app:latest"
        );
    }

    #[test]
    fn digests_pin_and_keep_the_tag() {
        let r = reg(&format!("ghcr.io/org/app@{D}"));
        assert_eq!(r.tag(), None, "a digest alone does not default to latest");
        assert_eq!(r.digest().map(ToString::to_string).as_deref(), Some(D));
        assert_eq!(r.to_string(), format!("ghcr.io/org/app@{D}"));
        let r = reg(&format!("redis:7@{D}"));
        assert_eq!(r.tag(), Some("7"));
        assert_eq!(r.to_string(), format!("docker.io/library/redis:7@{D}"));
        let r = reg(&format!("localhost:5000/x@{D}"));
        assert_eq!((r.registry(), r.tag()), ("localhost:5000", None));
    }

    #[test]
    fn uppercase_repositories_are_refused() {
        assert_eq!(
            err("Redis:7"),
            "image reference \"Redis:7\": repository name \"Redis\" must be lowercase"
        );
        assert!(err("ghcr.io/Org/app").contains("must be lowercase"));
        // An uppercase tag is fine.
        assert_eq!(reg("redis:Alpine").tag(), Some("Alpine"));
    }

    #[test]
    fn bad_digests_say_what_is_wrong() {
        assert!(
            err("redis@sha256:abc").contains("exactly 64 hex digits"),
            "{}",
            err("redis@sha256:abc")
        );
        assert!(err(&format!("redis@sha512:{}", "a".repeat(128))).contains("not supported"));
        assert!(err("redis@").contains("no `algorithm:` prefix"));
        assert!(err(&format!(
            "redis@{}",
            D.to_uppercase().replace("SHA256", "sha256")
        ))
        .contains("lowercase hex"));
    }

    #[test]
    fn bad_names_say_which_part() {
        assert_eq!(err(""), "the image reference is empty");
        assert!(err("a//b").contains("is empty (two '/'"), "{}", err("a//b"));
        assert!(err("redis/").contains("is empty"));
        assert!(err("-redis").contains("must start and end"));
        assert!(
            err("re..dis").contains("more than one separator"),
            "{}",
            err("re..dis")
        );
        assert!(err("re$dis").contains("may contain only lowercase"));
        assert_eq!(
            canonical("a__b/c---d/e.f_g"),
            "docker.io/a__b/c---d/e.f_g:latest"
        );
        assert!(err("redis:").contains("tag \"\" is empty"));
        assert!(err("redis:-x").contains("must start with a letter"));
        assert!(err("redis:a+b").contains("contains '+'"));
        assert!(err(&format!("redis:{}", "a".repeat(129))).contains("longer than 128"));
        assert!(err(&format!("x/{}", "a".repeat(260))).contains("at most 255"));
    }

    #[test]
    fn bad_registries_say_which_part() {
        assert!(err("localhost:0/x").contains("outside 1-65535"));
        assert!(err("localhost:99999/x").contains("outside 1-65535"));
        assert!(err("localhost:http/x").contains("not a number"));
        assert!(err("-bad.example/x").contains("starts or ends with a hyphen"));
        assert!(err("a..b/x").contains("empty label"));
        assert!(err("[::1/x").contains("never closes"));
        assert!(err("[zz]:5000/x").contains("IPv6"));
        assert!(err("ex_ample.com/x").contains("only letters, digits"));
    }

    #[test]
    fn schemes_and_other_transports_are_named() {
        assert!(err("https://ghcr.io/x").contains("https:// is not a reference form"));
        assert!(
            err("docker-archive:./img.tar").contains("docker-archive: transport is not supported")
        );
        assert!(err("dir:/tmp/img").contains("dir: transport"));
        // A library image that happens to share a transport's name is still an image.
        assert_eq!(canonical("tarball:1"), "docker.io/library/tarball:1");
    }

    #[test]
    fn local_layouts_and_archives() {
        let r = ImageRef::parse("oci:./images/layout:api").expect("layout");
        let ImageRef::OciLayout(l) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(l.path, Path::new("./images/layout"));
        assert_eq!(l.tag.as_deref(), Some("api"));
        assert_eq!(r.to_string(), "oci:./images/layout:api");
        assert_eq!(
            r.key(Path::new("/home/u/proj")),
            "oci:/home/u/proj/images/layout:api"
        );
        assert_eq!(
            l.resolve(Path::new("/home/u/proj")),
            Path::new("/home/u/proj/images/layout")
        );

        let r = ImageRef::parse("oci-archive:/srv/img.tar").expect("archive");
        let ImageRef::OciArchive(a) = &r else {
            panic!("{r:?}")
        };
        assert_eq!(
            (a.path.as_path(), a.tag.as_deref()),
            (Path::new("/srv/img.tar"), None)
        );
        assert_eq!(r.key(Path::new("/p")), "oci-archive:/srv/img.tar");

        let r = ImageRef::parse("oci:layout:v1.0/app:x").expect("tag with '/' and ':'");
        assert!(
            matches!(r, ImageRef::OciLayout(LocalRef { tag: Some(ref t), .. }) if t == "v1.0/app:x")
        );
    }

    #[test]
    fn local_references_say_what_is_missing() {
        assert_eq!(
            err("oci:"),
            "image reference \"oci:\": oci: needs a path (an OCI image layout directory)"
        );
        assert!(err("oci-archive::tag").contains("oci-archive: needs a path (a tar file"));
        assert!(err("oci:./l:").contains("is empty; leave out the ':'"));
        assert!(err("oci:./l:a b").contains("contains ' '"));
        assert!(err("oci:./l:-a").contains("start and end with a letter"));
    }
}
