//! Pulling images from registries.
//!
//! The HTTP side of the distribution protocol (the `/v2/` API, Bearer token
//! challenges and the anonymous token flow Docker Hub needs, redirects to
//! blob storage) is `oci-client`'s; everything that decides what is trusted
//! is here:
//!
//! - **What is pulled.** The reference's manifest is fetched raw, hashed by
//!   us and checked against the reference's digest (or, below an index,
//!   against the index entry's digest and size). An index is resolved to
//!   linux and this machine's architecture ([`manifest::select_platform`]).
//!   The manifest is checked to be a runnable image before any layer moves.
//! - **Every blob verified.** Config and layers stream into a
//!   [`BlobWriter`](super::store::BlobWriter), which refuses a byte past the
//!   descriptor's size and commits only content whose SHA-256 matches.
//!   (`oci-client` verifies too; either refusal reads the same.)
//! - **Once per blob.** Blobs in the store are not fetched; in one process
//!   concurrent pulls of one blob wait for each other
//!   ([`Store::lock_blob`]); the index entry is written by the caller only
//!   after everything is stored.
//! - **In parallel, with progress.** Layers download [`PARALLEL`] at a time
//!   on the runtime's worker threads, each reporting through the caller's
//!   [`ProgressFn`].
//! - **Credentials** come from `$REGISTRY_AUTH_FILE`,
//!   `$XDG_RUNTIME_DIR/containers/auth.json` (podman, skopeo, buildah) and
//!   `~/.docker/config.json` (or `$DOCKER_CONFIG/config.json`), in that
//!   order: base64 `auth` entries, keyed by host or by host and repository
//!   path (the most specific key wins). Credential helpers (`credsStore`,
//!   `credHelpers`) are not run. Without an entry, access is anonymous.
//! - **HTTPS only**, except for registries the user lists in
//!   `insecure_registries` ([`UserConfig`]); TLS is rustls with the `ring`
//!   provider and the system's trust store.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use futures_util::StreamExt as _;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError as ClientDigestError, OciDistributionError, OciErrorCode};
use oci_client::manifest::OciDescriptor;
use oci_client::secrets::RegistryAuth;
use oci_spec::image::ImageManifest;
use tokio::sync::watch;

use super::digest::{Digest, DigestError};
use super::manifest::{self, Manifest, ManifestError, CONFIG_LIMIT, INDEX_DEPTH, MANIFEST_LIMIT};
use super::reference::RegistryRef;
use super::store::{Store, StoreError};
use super::{LayerProgress, ProgressFn};
use crate::user_config::UserConfig;
use locald_core::fsutil::{self, UnsafeFile};

/// Layers downloaded at once (Docker's default).
pub const PARALLEL: usize = 3;

/// The largest credentials file read.
const AUTH_FILE_LIMIT: u64 = 1 << 20;

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The HTTP client could not be set up.
    #[error("cannot set up the registry client")]
    Client(#[source] OciDistributionError),
    /// A registry reached over plain HTTP at an address of this machine is
    /// served by another user: a local port belongs to whoever binds it
    /// first, and their image would run in the user's containers.
    #[error("{registry} is an insecure (plain HTTP) registry on this machine, and its port is held by {holder}, not by you (or your subordinate ids) or root; refusing to pull from it (start your registry there, or pin images by digest: docs/containers.md)")]
    UntrustedListener {
        /// The registry (`host:port`).
        registry: String,
        /// Who holds the port ("uid 1001 (eve)").
        holder: String,
    },
    /// The registry refused access (or hides that the repository does not
    /// exist, as Docker Hub does).
    #[error("{registry} refused access to {repository} ({})", if *.anonymous { "anonymously; if it exists and is private, log in with `podman login` or `docker login`" } else { "with the stored credentials" })]
    Denied {
        /// The registry.
        registry: String,
        /// The repository.
        repository: String,
        /// Whether no credentials were sent.
        anonymous: bool,
        /// The client's error.
        #[source]
        source: OciDistributionError,
    },
    /// No such repository, tag or digest.
    #[error("{registry} has no {what}")]
    NotFound {
        /// The registry.
        registry: String,
        /// `library/redis:7`.
        what: String,
        /// The client's error.
        #[source]
        source: OciDistributionError,
    },
    /// Content that does not hash to the digest it was asked for.
    #[error("{what} {digest} from {registry} does not match its digest (the content hashes to {actual}); refusing it")]
    Corrupt {
        /// "layer", "config", "manifest".
        what: &'static str,
        /// The digest asked for.
        digest: String,
        /// What it hashed to.
        actual: String,
        /// The registry.
        registry: String,
    },
    /// Content longer or shorter than its descriptor says.
    #[error("{what} {digest} from {registry} is not the {expected} bytes its descriptor says ({actual}{} arrived); refusing it", if *.more { " or more" } else { "" })]
    Size {
        /// "layer", "config", "manifest".
        what: &'static str,
        /// The digest.
        digest: String,
        /// The registry.
        registry: String,
        /// The descriptor's size.
        expected: u64,
        /// What arrived.
        actual: u64,
        /// Whether it was cut off for being too long.
        more: bool,
    },
    /// A manifest, index or config that cannot be used.
    #[error("the image from {registry} cannot be used")]
    Manifest {
        /// The registry.
        registry: String,
        /// What is wrong.
        #[source]
        source: ManifestError,
    },
    /// A descriptor with a digest locald cannot store.
    #[error("a descriptor from {registry} has an unusable digest")]
    Digest {
        /// The registry.
        registry: String,
        /// What is wrong.
        #[source]
        source: DigestError,
    },
    /// A transfer broke off.
    #[error("downloading {what} {digest} from {registry} failed")]
    Transfer {
        /// "layer", "config".
        what: &'static str,
        /// The blob.
        digest: String,
        /// The registry.
        registry: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Any other failure talking to the registry.
    #[error("talking to registry {registry} failed{hint}")]
    Registry {
        /// The registry.
        registry: String,
        /// A hint about plain HTTP, or "".
        hint: String,
        /// The client's error.
        #[source]
        source: OciDistributionError,
    },
    /// The store failed.
    #[error("image store")]
    Store(#[source] StoreError),
    /// A download task ended without an answer.
    #[error("a download from {registry} was interrupted")]
    Interrupted {
        /// The registry.
        registry: String,
    },
}

/// Why a credentials file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// Unsafe or unreadable.
    #[error(transparent)]
    Read(#[from] UnsafeFile),
    /// Not JSON of the expected shape.
    #[error("{} is not a valid registry credentials file", path.display())]
    Json {
        /// The file.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// An `auth` entry that does not decode.
    #[error("{}: the auth entry for {key:?} {why}", path.display())]
    Entry {
        /// The file.
        path: PathBuf,
        /// The entry's key.
        key: String,
        /// What is wrong (never the secret).
        why: &'static str,
    },
}

/// A user name and password for one registry (or repository path).
#[derive(Clone)]
struct Login {
    user: String,
    password: String,
}

/// Registry credentials from auth files; never printed.
#[derive(Clone, Default)]
pub struct Credentials {
    /// Per file, in precedence order: normalized key → login.
    files: Vec<(PathBuf, HashMap<String, Login>)>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.files.iter().flat_map(|(p, m)| {
                    m.keys().map(move |k| format!("{k} (from {})", p.display()))
                }),
            )
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
}

#[derive(serde::Deserialize)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
}

impl Credentials {
    /// No credentials: every registry anonymously.
    pub fn none() -> Credentials {
        Credentials::default()
    }

    /// The files podman, skopeo and docker log in to, in precedence order.
    pub fn default_paths() -> Vec<PathBuf> {
        let abs = |v: &str| {
            std::env::var_os(v)
                .filter(|x| !x.is_empty())
                .map(PathBuf::from)
                .filter(|p| p.is_absolute())
        };
        let mut paths = Vec::new();
        paths.extend(abs("REGISTRY_AUTH_FILE"));
        paths.extend(abs("XDG_RUNTIME_DIR").map(|d| d.join("containers/auth.json")));
        paths.extend(
            abs("DOCKER_CONFIG")
                .or_else(|| abs("HOME").map(|h| h.join(".docker")))
                .map(|d| d.join("config.json")),
        );
        paths
    }

    /// Reads the auth files among `paths` that exist. Each is read like
    /// every config input (ours or root's, not writable by others).
    pub fn load(paths: &[PathBuf]) -> Result<Credentials, CredentialsError> {
        let mut files = Vec::new();
        for path in paths {
            let data =
                match fsutil::read_input(path, "a registry credentials file", AUTH_FILE_LIMIT) {
                    Ok(d) => d,
                    Err(UnsafeFile::Io { source, .. })
                        if source.kind() == std::io::ErrorKind::NotFound =>
                    {
                        continue
                    }
                    Err(e) => return Err(e.into()),
                };
            let file: AuthFile =
                serde_json::from_slice(&data).map_err(|source| CredentialsError::Json {
                    path: path.clone(),
                    source,
                })?;
            let mut logins = HashMap::new();
            for (key, entry) in file.auths {
                let Some(auth) = entry.auth.filter(|a| !a.is_empty()) else {
                    continue;
                };
                let bad = |why| CredentialsError::Entry {
                    path: path.clone(),
                    key: key.clone(),
                    why,
                };
                let engine = base64::engine::general_purpose::STANDARD;
                let decoded = engine
                    .decode(auth.trim())
                    .or_else(|_| {
                        base64::engine::general_purpose::STANDARD_NO_PAD.decode(auth.trim())
                    })
                    .map_err(|_| bad("is not base64"))?;
                let decoded = String::from_utf8(decoded).map_err(|_| bad("is not UTF-8"))?;
                let (user, password) = decoded
                    .split_once(':')
                    .ok_or_else(|| bad("does not decode to user:password"))?;
                logins.insert(
                    normalize_key(&key),
                    Login {
                        user: user.to_owned(),
                        password: password.to_owned(),
                    },
                );
            }
            files.push((path.clone(), logins));
        }
        Ok(Credentials { files })
    }

    /// The login for `repository` on `registry`: the first file with a
    /// matching key, and in it the most specific key
    /// (`host/a/b` before `host/a` before `host`).
    fn find(&self, registry: &str, repository: &str) -> Option<&Login> {
        let mut keys = vec![format!("{registry}/{repository}")];
        let mut path = repository;
        while let Some((parent, _)) = path.rsplit_once('/') {
            keys.push(format!("{registry}/{parent}"));
            path = parent;
        }
        keys.push(registry.to_owned());
        self.files
            .iter()
            .find_map(|(_, logins)| keys.iter().find_map(|k| logins.get(k)))
    }

    /// The user name that would be sent for `repository` on `registry`, if
    /// any (for messages and tests; the password is never exposed).
    pub fn user_for(&self, registry: &str, repository: &str) -> Option<&str> {
        self.find(registry, repository).map(|l| l.user.as_str())
    }
}

/// `https://index.docker.io/v1/` → `docker.io`; `quay.io/org` stays;
/// a URL names only its host (Docker's convention).
fn normalize_key(key: &str) -> String {
    let (url, rest) = match key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
    {
        Some(r) => (true, r),
        None => (false, key),
    };
    let rest = rest.trim_end_matches('/');
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) if !url => (h, Some(p)),
        Some((h, _)) => (h, None),
        None => (rest, None),
    };
    let host = match host {
        "index.docker.io" | "registry-1.docker.io" => super::reference::DOCKER_HUB,
        h => h,
    };
    match path {
        Some(p) => format!("{host}/{p}"),
        None => host.to_owned(),
    }
}

/// What a pull stored.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The platform-specific manifest.
    pub manifest: Digest,
    /// The image index it was chosen from, if the reference named one.
    pub index: Option<Digest>,
    /// Blobs downloaded by this pull (the others were stored already).
    pub copied: Vec<Digest>,
    /// Bytes downloaded.
    pub bytes: u64,
}

/// Pulls from registries: an `oci-client` client set up with the user's
/// insecure registries, plus their credentials.
///
/// The `oci-client` client is made at the first pull, not here: making it
/// loads and parses every root certificate of the system (tens of ms, on
/// every start of `locald up` and the daemon), which only a pull needs.
pub struct RegistryClient {
    client: std::sync::OnceLock<oci_client::Client>,
    credentials: Credentials,
    insecure: Vec<String>,
    /// The user config file the insecure list comes from, for hints.
    config_file: Option<PathBuf>,
}

/// `host:port` (`[v6]:port`) of a registry, the port 80 when none is
/// given (plain HTTP's; only insecure registries are asked).
fn split_host_port(registry: &str) -> (&str, u16) {
    if let Some(rest) = registry.strip_prefix('[') {
        if let Some((h, p)) = rest.split_once(']') {
            let port = p
                .strip_prefix(':')
                .and_then(|p| p.parse().ok())
                .unwrap_or(80);
            return (h, port);
        }
    }
    match registry.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (h, p.parse().unwrap_or(80)),
        _ => (registry, 80),
    }
}

/// Whether `ip` is one of this machine's: loopback, or an address of one
/// of its interfaces (another local user can bind those too).
fn is_this_machine(ip: std::net::IpAddr) -> bool {
    // `::ffff:127.0.0.1` is 127.0.0.1.
    let ip = ip.to_canonical();
    if ip.is_loopback() || ip.is_unspecified() {
        return true;
    }
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return false;
    };
    addrs.into_iter().filter_map(|a| a.address).any(|a| {
        a.as_sockaddr_in().map(|s| std::net::IpAddr::V4(s.ip())) == Some(ip)
            || a.as_sockaddr_in6().map(|s| std::net::IpAddr::V6(s.ip())) == Some(ip)
    })
}

/// reqwest is built without a compiled-in TLS provider; install `ring` as
/// the process default once (a provider installed by someone else stays).
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl RegistryClient {
    /// A client for the registries `config` allows, with `credentials`.
    /// Cheap: the HTTP client is made at the first pull.
    pub fn new(config: &UserConfig, credentials: Credentials) -> Result<RegistryClient, PullError> {
        Ok(RegistryClient {
            client: std::sync::OnceLock::new(),
            credentials,
            insecure: config.insecure_registries.clone(),
            config_file: config.path.clone(),
        })
    }

    /// The `oci-client` client, made on first use.
    fn client(&self) -> Result<&oci_client::Client, PullError> {
        if let Some(c) = self.client.get() {
            return Ok(c);
        }
        install_crypto_provider();
        let client_config = ClientConfig {
            protocol: ClientProtocol::HttpsExcept(self.insecure.clone()),
            // Indexes are resolved here, from the raw bytes we verify.
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(30)),
            read_timeout: Some(Duration::from_secs(120)),
            user_agent: concat!("locald/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        // `Client::new` falls back to a default config on error (which
        // would drop the protocol setting); `try_from` reports it.
        let client = oci_client::Client::try_from(client_config).map_err(PullError::Client)?;
        // Two first pulls at once may both make one; either is fine.
        Ok(self.client.get_or_init(|| client))
    }

    /// For a registry spoken to over plain HTTP (`insecure_registries`) at
    /// an address of this machine: whoever listens there must be the user
    /// or root. Over HTTPS the certificate says who answers; over plain
    /// HTTP on a shared machine nothing does, and another user can bind
    /// the port while the user's registry is not running. (The check is
    /// made just before the pull connects; a listener that appears in
    /// between is not seen — digest pins cover that.)
    async fn check_local_listener(&self, registry: &str) -> Result<(), PullError> {
        if !self.insecure.iter().any(|r| r == registry) {
            return Ok(());
        }
        let (host, port) = split_host_port(registry);
        let addrs: Vec<std::net::SocketAddr> = match tokio::net::lookup_host((host, port)).await {
            Ok(a) => a.collect(),
            // The pull reports the lookup failure itself.
            Err(_) => return Ok(()),
        };
        let local: Vec<_> = addrs
            .into_iter()
            .filter(|a| is_this_machine(a.ip()))
            .collect();
        if local.is_empty() {
            return Ok(());
        }
        let owner = locald_core::listeners::Owner::current();
        let table = locald_core::listeners::listeners(port).unwrap_or_default();
        for a in local {
            if let Err(uid) = locald_core::listeners::check_owner(&table, a, &owner) {
                return Err(PullError::UntrustedListener {
                    registry: registry.to_owned(),
                    holder: locald_core::listeners::describe_uid(uid),
                });
            }
        }
        Ok(())
    }

    fn auth_for(&self, r: &RegistryRef) -> RegistryAuth {
        match self.credentials.find(r.registry(), r.repository()) {
            Some(l) => RegistryAuth::Basic(l.user.clone(), l.password.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    /// Pulls `r` into `store`: manifest (through any index), config, then
    /// layers in parallel; blobs already stored are skipped. Does not
    /// record the reference in the index (the caller does, as the commit).
    pub async fn pull(
        &self,
        store: &Store,
        r: &RegistryRef,
        progress: ProgressFn,
    ) -> Result<Pulled, PullError> {
        self.check_local_listener(r.registry()).await?;
        let auth = self.auth_for(r);
        let ctx = Ctx {
            client: self.client()?.clone(),
            store: store.clone(),
            registry: r.registry().to_owned(),
        };
        let (manifest_digest, manifest_bytes, index, m) =
            self.resolve_manifest(&ctx, r, &auth).await?;
        let bad = |source| PullError::Manifest {
            registry: ctx.registry.clone(),
            source,
        };
        manifest::check_image(&m).map_err(bad)?;
        let oref = oci_ref(r, Some(&manifest_digest));
        let mut copied = Vec::new();
        let mut bytes = 0;

        // The config first: a Windows image fails here, before its layers.
        let config_digest = ctx.digest(m.config().digest())?;
        if m.config().size() > CONFIG_LIMIT {
            return Err(PullError::Size {
                what: "config",
                digest: config_digest.to_string(),
                registry: ctx.registry.clone(),
                expected: CONFIG_LIMIT,
                actual: m.config().size(),
                more: true,
            });
        }
        let config_blob = Blob {
            what: "config",
            digest: config_digest.clone(),
            size: m.config().size(),
            media_type: m.config().media_type().to_string(),
        };
        // Never cancelled: the sender lives until the download is done.
        let (_keep, mut never) = watch::channel(false);
        if ctx
            .download(&oref, &config_blob, &mut never, |_| {})
            .await?
        {
            copied.push(config_digest.clone());
            bytes += m.config().size();
        }
        let config_bytes = store
            .read_blob(&config_digest, CONFIG_LIMIT)
            .map_err(PullError::Store)?;
        let config: oci_spec::image::ImageConfiguration =
            manifest::parse_config(&config_bytes).map_err(bad)?;
        manifest::check_config(&config, &m).map_err(bad)?;

        let (layers_copied, layer_bytes) = ctx.layers(&oref, &m, &progress).await?;
        copied.extend(layers_copied);
        bytes += layer_bytes;
        if !store.has_blob(&manifest_digest) {
            store
                .put_blob(&manifest_digest, &manifest_bytes)
                .map_err(PullError::Store)?;
            copied.push(manifest_digest.clone());
        }
        Ok(Pulled {
            manifest: manifest_digest,
            index,
            copied,
            bytes,
        })
    }

    /// Fetches what `r` names and follows indexes to this platform's
    /// manifest: (its digest, its bytes, the outermost index, the manifest).
    async fn resolve_manifest(
        &self,
        ctx: &Ctx,
        r: &RegistryRef,
        auth: &RegistryAuth,
    ) -> Result<(Digest, Vec<u8>, Option<Digest>, ImageManifest), PullError> {
        let bad = |source| PullError::Manifest {
            registry: ctx.registry.clone(),
            source,
        };
        let mut expected: Option<(Digest, Option<u64>)> = r.digest().map(|d| (d.clone(), None));
        let mut declared: Option<String> = None;
        let mut index = None;
        for _ in 0..=INDEX_DEPTH {
            let oref = oci_ref(r, expected.as_ref().map(|(d, _)| d));
            let (bytes, _) = ctx
                .client
                .pull_manifest_raw(&oref, auth, manifest::MANIFEST_TYPES)
                .await
                .map_err(|e| self.client_error(r, auth, e, "manifest"))?;
            let digest = ctx.check_manifest(&bytes, expected.as_ref())?;
            match manifest::parse(&bytes, declared.as_deref()).map_err(bad)? {
                Manifest::Image(m) => return Ok((digest, bytes.to_vec(), index, *m)),
                Manifest::Index(i) => {
                    ctx.store
                        .put_blob(&digest, &bytes)
                        .map_err(PullError::Store)?;
                    index.get_or_insert(digest);
                    let entry = manifest::select_platform(&i).map_err(bad)?;
                    expected = Some((ctx.digest(entry.digest())?, Some(entry.size())));
                    declared = Some(entry.media_type().to_string());
                }
            }
        }
        Err(bad(ManifestError::TooDeep))
    }

    /// Translates a client error into what the user needs to know.
    fn client_error(
        &self,
        r: &RegistryRef,
        auth: &RegistryAuth,
        e: OciDistributionError,
        what: &'static str,
    ) -> PullError {
        let registry = r.registry().to_owned();
        let (denied, not_found) = classify(&e);
        if denied {
            return PullError::Denied {
                registry,
                repository: r.repository().to_owned(),
                anonymous: matches!(auth, RegistryAuth::Anonymous),
                source: e,
            };
        }
        if not_found {
            let mut what = r.repository().to_owned();
            if let Some(t) = r.tag() {
                what = format!("{what}:{t}");
            }
            if let Some(d) = r.digest() {
                what = format!("{what}@{d}");
            }
            return PullError::NotFound {
                registry,
                what,
                source: e,
            };
        }
        if let OciDistributionError::DigestError(ClientDigestError::VerificationError {
            expected,
            actual,
        }) = e
        {
            return PullError::Corrupt {
                what,
                digest: expected,
                actual,
                registry,
            };
        }
        let hint = if matches!(e, OciDistributionError::RequestError(_))
            && !self.insecure.contains(&registry)
            && looks_like_tls_trouble(&locald_core::error_chain(&e))
        {
            format!(
                " (if {registry} serves plain HTTP, list it in insecure_registries in {})",
                self.config_file.as_ref().map_or_else(
                    || "~/.config/locald/config.toml".to_owned(),
                    |p| p.display().to_string()
                )
            )
        } else {
            String::new()
        };
        PullError::Registry {
            registry,
            hint,
            source: e,
        }
    }
}

/// Whether a client error is a refusal of access, and whether it says the
/// thing asked for does not exist (from the status and the OCI error codes).
fn classify(e: &OciDistributionError) -> (bool, bool) {
    let codes: Vec<&OciErrorCode> = match e {
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().map(|x| &x.code).collect()
        }
        _ => Vec::new(),
    };
    let denied = matches!(
        e,
        OciDistributionError::UnauthorizedError { .. }
            | OciDistributionError::AuthenticationFailure(_)
    ) || codes
        .iter()
        .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied));
    let not_found = matches!(e, OciDistributionError::ServerError { code: 404, .. })
        || codes.iter().any(|c| {
            matches!(
                c,
                OciErrorCode::ManifestUnknown | OciErrorCode::NameUnknown | OciErrorCode::NotFound
            )
        });
    (denied, not_found)
}

fn looks_like_tls_trouble(chain: &str) -> bool {
    let c = chain.to_ascii_lowercase();
    [
        "tls",
        "certificate",
        "invalidcontenttype",
        "corrupt message",
        "handshake",
    ]
    .iter()
    .any(|w| c.contains(w))
}

/// The `oci-client` reference for `r`, pinned to `digest` when given.
fn oci_ref(r: &RegistryRef, digest: Option<&Digest>) -> oci_client::Reference {
    match (digest.or(r.digest()), r.tag()) {
        (Some(d), _) => oci_client::Reference::with_digest(
            r.registry().to_owned(),
            r.repository().to_owned(),
            d.to_string(),
        ),
        (None, Some(t)) => oci_client::Reference::with_tag(
            r.registry().to_owned(),
            r.repository().to_owned(),
            t.to_owned(),
        ),
        // A reference always has a tag or a digest (parsing adds `latest`).
        (None, None) => oci_client::Reference::with_tag(
            r.registry().to_owned(),
            r.repository().to_owned(),
            "latest".to_owned(),
        ),
    }
}

/// What the download tasks share.
#[derive(Clone)]
struct Ctx {
    client: oci_client::Client,
    store: Store,
    registry: String,
}

impl Ctx {
    fn digest(&self, d: &oci_spec::image::Digest) -> Result<Digest, PullError> {
        Digest::try_from(d).map_err(|source| PullError::Digest {
            registry: self.registry.clone(),
            source,
        })
    }

    /// Checks a manifest's bytes against what named it; returns its digest.
    fn check_manifest(
        &self,
        bytes: &[u8],
        expected: Option<&(Digest, Option<u64>)>,
    ) -> Result<Digest, PullError> {
        let actual = Digest::of(bytes);
        let len = bytes.len() as u64;
        let Some((digest, size)) = expected else {
            if len > MANIFEST_LIMIT {
                return Err(self.size_error("manifest", &actual, MANIFEST_LIMIT, len, true));
            }
            return Ok(actual);
        };
        if let Some(size) = *size {
            if len != size {
                return Err(self.size_error("manifest", digest, size, len, len > size));
            }
        }
        if actual != *digest {
            return Err(PullError::Corrupt {
                what: "manifest",
                digest: digest.to_string(),
                actual: actual.to_string(),
                registry: self.registry.clone(),
            });
        }
        Ok(actual)
    }

    fn size_error(
        &self,
        what: &'static str,
        d: &Digest,
        expected: u64,
        actual: u64,
        more: bool,
    ) -> PullError {
        PullError::Size {
            what,
            digest: d.to_string(),
            registry: self.registry.clone(),
            expected,
            actual,
            more,
        }
    }

    /// Translates a store refusal of downloaded content.
    fn refusal(&self, what: &'static str, e: StoreError) -> PullError {
        match e {
            StoreError::DigestMismatch { expected, actual } => PullError::Corrupt {
                what,
                digest: expected.to_string(),
                actual: actual.to_string(),
                registry: self.registry.clone(),
            },
            StoreError::SizeMismatch {
                digest,
                expected,
                actual,
                more,
            } => self.size_error(what, &digest, expected, actual, more),
            e => PullError::Store(e),
        }
    }

    /// Downloads one blob into the store unless it is there; `Ok(true)`
    /// when this call stored it. Stops (its temporary removed) when
    /// `cancel` turns true, except while committing: a blob being linked
    /// into place is finished.
    async fn download(
        &self,
        oref: &oci_client::Reference,
        blob: &Blob,
        cancel: &mut watch::Receiver<bool>,
        mut on: impl FnMut(u64),
    ) -> Result<bool, PullError> {
        let _lock = self.store.lock_blob(&blob.digest).await;
        if self.store.has_blob(&blob.digest) {
            return Ok(false);
        }
        let transfer = |source| PullError::Transfer {
            what: blob.what,
            digest: blob.digest.to_string(),
            registry: self.registry.clone(),
            source,
        };
        let desc = OciDescriptor {
            media_type: blob.media_type.clone(),
            digest: blob.digest.to_string(),
            size: i64::try_from(blob.size).unwrap_or(i64::MAX),
            ..OciDescriptor::default()
        };
        let mut stream = self
            .client
            .pull_blob_stream(oref, &desc)
            .await
            .map_err(|e| match e {
                OciDistributionError::IoError(io) => transfer(io),
                e => PullError::Registry {
                    registry: self.registry.clone(),
                    hint: String::new(),
                    source: e,
                },
            })?;
        let mut writer = self
            .store
            .blob_writer(&blob.digest, Some(blob.size))
            .map_err(PullError::Store)?;
        loop {
            let next = tokio::select! {
                next = stream.next() => next,
                () = cancelled(cancel) => return Err(PullError::Interrupted {
                    registry: self.registry.clone(),
                }),
            };
            let Some(chunk) = next else { break };
            let chunk = chunk.map_err(|e| match client_digest_error(&e) {
                Some((expected, actual)) => PullError::Corrupt {
                    what: blob.what,
                    digest: expected,
                    actual,
                    registry: self.registry.clone(),
                },
                None => transfer(e),
            })?;
            // Local page-cache writes of network-sized chunks; the fsync
            // in commit is the slow part and runs on the blocking pool.
            writer
                .write(&chunk)
                .map_err(|e| self.refusal(blob.what, e))?;
            on(writer.written());
        }
        tokio::task::spawn_blocking(move || writer.commit())
            .await
            .map_err(|_| PullError::Interrupted {
                registry: self.registry.clone(),
            })?
            .map_err(|e| self.refusal(blob.what, e))?;
        Ok(true)
    }

    /// Downloads the layers not yet stored, [`PARALLEL`] at a time; returns
    /// what was stored and how many bytes. The first failure cancels the
    /// others and waits for them, so no temporary outlives the error.
    async fn layers(
        &self,
        oref: &oci_client::Reference,
        m: &ImageManifest,
        progress: &ProgressFn,
    ) -> Result<(Vec<Digest>, u64), PullError> {
        let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        let (cancel, cancel_rx) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        let count = m.layers().len();
        for (i, layer) in m.layers().iter().enumerate() {
            let blob = Blob {
                what: "layer",
                digest: self.digest(layer.digest())?,
                size: layer.size(),
                media_type: layer.media_type().to_string(),
            };
            if self.store.has_blob(&blob.digest) {
                LayerProgress::cached(progress, &blob.digest, i, count, blob.size);
                continue;
            }
            let (ctx, oref, progress, permits, mut cancel) = (
                self.clone(),
                oref.clone(),
                progress.clone(),
                permits.clone(),
                cancel_rx.clone(),
            );
            tasks.spawn(async move {
                let interrupted = || PullError::Interrupted {
                    registry: ctx.registry.clone(),
                };
                let _permit = tokio::select! {
                    p = permits.acquire_owned() => p.map_err(|_| interrupted())?,
                    () = cancelled(&mut cancel) => return Err(interrupted()),
                };
                let mut report = LayerProgress::start(&progress, &blob.digest, i, count, blob.size);
                let stored = ctx
                    .download(&oref, &blob, &mut cancel, |done| report.update(done))
                    .await?;
                report.update(blob.size);
                Ok::<_, PullError>((blob.digest, blob.size, stored))
            });
        }
        let mut copied = Vec::new();
        let mut bytes = 0;
        let mut first_error = None;
        while let Some(done) = tasks.join_next().await {
            let result = done.unwrap_or_else(|_| {
                Err(PullError::Interrupted {
                    registry: self.registry.clone(),
                })
            });
            match result {
                Ok((digest, size, true)) => {
                    copied.push(digest);
                    bytes += size;
                }
                Ok(_) => {}
                Err(e) => {
                    if first_error.is_none() {
                        let _ = cancel.send(true);
                        first_error = Some(e);
                    }
                }
            }
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok((copied, bytes)),
        }
    }
}

/// A blob to download.
struct Blob {
    /// "layer", "config".
    what: &'static str,
    digest: Digest,
    size: u64,
    media_type: String,
}

/// Resolves once `rx` holds true; never, if its sender is gone first.
async fn cancelled(rx: &mut watch::Receiver<bool>) {
    loop {
        if *rx.borrow_and_update() {
            return;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// `oci-client`'s own digest refusal inside a stream error, if that is what
/// it is.
fn client_digest_error(e: &std::io::Error) -> Option<(String, String)> {
    match e.get_ref()?.downcast_ref::<ClientDigestError>()? {
        ClientDigestError::VerificationError { expected, actual } => {
            Some((expected.clone(), actual.clone()))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn registry_addresses_split_into_host_and_port() {
        assert_eq!(split_host_port("127.0.0.1:5000"), ("127.0.0.1", 5000));
        assert_eq!(split_host_port("localhost"), ("localhost", 80));
        assert_eq!(split_host_port("[::1]:5000"), ("::1", 5000));
        assert!(is_this_machine("127.0.0.1".parse().expect("ip")));
        assert!(is_this_machine("::1".parse().expect("ip")));
        assert!(is_this_machine("::ffff:127.0.0.1".parse().expect("ip")));
        assert!(!is_this_machine("192.0.2.1".parse().expect("ip")));
    }

    /// Regression (#19 item 2): a user who binds the loopback port of the
    /// victim's insecure registry first served an image that ran in the
    /// victim's containers. A listener of another uid is refused before
    /// anything is sent to it.
    #[tokio::test]
    async fn an_insecure_registry_port_held_by_another_user_is_refused() {
        let sock = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let registry = format!("127.0.0.1:{}", sock.local_addr().expect("addr").port());
        let config = UserConfig {
            insecure_registries: vec![registry.clone()],
            path: None,
        };
        let client = RegistryClient::new(&config, Credentials::none()).expect("client");
        // Our own listener: fine.
        client.check_local_listener(&registry).await.expect("ours");
        // Not an insecure registry: HTTPS vouches for it, nothing to check.
        client
            .check_local_listener("127.0.0.1:1")
            .await
            .expect("not insecure");
        if nix::unistd::geteuid().is_root() {
            drop(sock);
            let port: u16 = registry
                .rsplit(':')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("port");
            let squatter = std::process::Command::new("setpriv")
                .args(["--reuid=4242", "--regid=4242", "--clear-groups", "/usr/bin/python3", "-c"])
                .arg(format!(
                    "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',{port}))\ns.listen()\ntime.sleep(30)"
                ))
                .spawn()
                .expect("squatter");
            let squatter = Killed(squatter);
            let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let e = loop {
                match client.check_local_listener(&registry).await {
                    Err(e) => break e,
                    Ok(()) => {
                        assert!(
                            std::time::Instant::now() < end,
                            "the squatter never listened"
                        );
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
            };
            assert!(e.to_string().contains("held by uid 4242"), "{e}");
            drop(squatter);
        }
    }

    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn auth_file(dir: &Path, name: &str, json: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, json).expect("write");
        p
    }

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn docker_hub_keys_and_most_specific_match() {
        let dir = tempfile::tempdir().expect("tempdir");
        let docker = auth_file(
            dir.path(),
            "config.json",
            &format!(
                r#"{{"auths": {{
                    "https://index.docker.io/v1/": {{"auth": "{}"}},
                    "ghcr.io": {{"auth": "{}"}},
                    "ghcr.io/org/private": {{"auth": "{}"}},
                    "quay.io": {{}}
                }}, "credsStore": "desktop"}}"#,
                b64("hubuser:hubpass"),
                b64("gh:one"),
                b64("ghp:two:with:colons"),
            ),
        );
        let c = Credentials::load(&[dir.path().join("missing.json"), docker]).expect("load");
        assert_eq!(c.user_for("docker.io", "library/redis"), Some("hubuser"));
        assert_eq!(c.user_for("ghcr.io", "org/public"), Some("gh"));
        assert_eq!(c.user_for("ghcr.io", "org/private/sub"), Some("ghp"));
        assert_eq!(
            c.find("ghcr.io", "org/private")
                .map(|l| l.password.as_str()),
            Some("two:with:colons")
        );
        assert_eq!(
            c.user_for("quay.io", "x"),
            None,
            "an entry without auth is skipped"
        );
        assert!(
            !format!("{c:?}").contains("hubpass"),
            "secrets never printed"
        );
    }

    #[test]
    fn the_containers_file_comes_first() {
        let dir = tempfile::tempdir().expect("tempdir");
        let containers = auth_file(
            dir.path(),
            "auth.json",
            &format!(
                r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{}"}}}}}}"#,
                b64("podman:x")
            ),
        );
        let docker = auth_file(
            dir.path(),
            "config.json",
            &format!(
                r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{}"}}}}}}"#,
                b64("docker:y")
            ),
        );
        let c = Credentials::load(&[containers, docker]).expect("load");
        assert_eq!(c.user_for("127.0.0.1:5000", "x"), Some("podman"));
    }

    #[test]
    fn a_broken_entry_names_file_and_key_but_not_the_secret() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = auth_file(
            dir.path(),
            "config.json",
            &format!(
                r#"{{"auths": {{"ghcr.io": {{"auth": "{}"}}}}}}"#,
                b64("nocolon")
            ),
        );
        let e = Credentials::load(&[f]).expect_err("no colon").to_string();
        assert!(
            e.contains("\"ghcr.io\" does not decode to user:password"),
            "{e}"
        );
        assert!(!e.contains("nocolon"), "{e}");
    }

    #[test]
    fn references_map_to_the_client_with_digest_first() {
        let d = Digest::of(b"m");
        let r = RegistryRef::parse("localhost:5000/app:v1").expect("parse");
        let o = oci_ref(&r, None);
        assert_eq!(
            (o.registry(), o.repository(), o.tag()),
            ("localhost:5000", "app", Some("v1"))
        );
        let o = oci_ref(&r, Some(&d));
        assert_eq!(o.digest(), Some(d.to_string().as_str()));
        let hub = oci_ref(&RegistryRef::parse("redis").expect("parse"), None);
        assert_eq!(hub.resolve_registry(), "index.docker.io");
        assert_eq!(hub.repository(), "library/redis");
    }

    #[test]
    fn refusals_and_absences_are_told_apart() {
        use oci_client::errors::{OciEnvelope, OciError};
        let envelope = |code| OciDistributionError::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: String::new(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "u".into(),
        };
        let unauthorized = OciDistributionError::UnauthorizedError { url: "u".into() };
        assert_eq!(classify(&unauthorized), (true, false));
        assert_eq!(classify(&envelope(OciErrorCode::Denied)), (true, false));
        assert_eq!(
            classify(&envelope(OciErrorCode::ManifestUnknown)),
            (false, true)
        );
        assert_eq!(
            classify(&envelope(OciErrorCode::NameUnknown)),
            (false, true)
        );
        let not_found = OciDistributionError::ServerError {
            code: 404,
            url: "u".into(),
            message: String::new(),
        };
        assert_eq!(classify(&not_found), (false, true));
        let busy = OciDistributionError::ServerError {
            code: 503,
            url: "u".into(),
            message: String::new(),
        };
        assert_eq!(classify(&busy), (false, false));

        let client =
            RegistryClient::new(&UserConfig::default(), Credentials::none()).expect("client");
        let r = RegistryRef::parse("ghcr.io/org/private:1").expect("parse");
        let e = client.client_error(&r, &RegistryAuth::Anonymous, unauthorized, "manifest");
        assert_eq!(
            e.to_string(),
            "ghcr.io refused access to org/private (anonymously; if it exists and is private, \
             log in with `podman login` or `docker login`)"
        );
    }

    #[test]
    fn tls_trouble_is_recognized_for_the_hint() {
        assert!(looks_like_tls_trouble(
            "error sending request: client error (Connect): received corrupt message of type InvalidContentType"
        ));
        assert!(!looks_like_tls_trouble(
            "tcp connect error: Connection refused (os error 111)"
        ));
    }
}
