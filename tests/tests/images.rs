//! Fetching images as users meet it: a busybox image built by the test with
//! umoci, a real `docker-registry` on 127.0.0.1 fed by skopeo, and locald's
//! store in a temporary directory. Pulls are checked against digests
//! computed by the tools (and `sha256sum`), not by locald; the registry's
//! own access log says what was downloaded.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use locald::image::registry::PullError;
use locald::image::{
    no_progress, Credentials, ImageError, ImageRef, Images, Progress, RegistryClient, Store,
};
use locald::user_config::UserConfig;
use locald_tests::images::{self, Layout, Registry};

/// The user agent locald's client sends (`locald/<version>`).
const AGENT: &str = "locald/";

struct Setup {
    dir: tempfile::TempDir,
    layout: Layout,
}

impl Setup {
    fn store_root(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn project(&self) -> PathBuf {
        self.dir.path().to_owned()
    }
}

/// Builds the busybox layout, or skips (outside CI) without the tools.
fn setup() -> Option<Setup> {
    let missing = images::missing_tools();
    if locald_tests::require(missing.is_none(), missing.as_deref().unwrap_or("")) {
        return None;
    }
    let dir = tempfile::Builder::new()
        .prefix("locald-images-")
        .tempdir()
        .expect("tempdir");
    let layout = images::build_busybox_layout(&dir.path().join("layout")).expect("build image");
    Some(Setup { dir, layout })
}

fn images_at(root: &Path, insecure: &[&str]) -> Images {
    let config = UserConfig {
        insecure_registries: insecure.iter().map(|s| s.to_string()).collect(),
        path: None,
    };
    let store = Store::open(root).expect("open store");
    Images::new(
        store,
        RegistryClient::new(&config, Credentials::none()).expect("client"),
    )
}

fn stored_blobs(root: &Path) -> BTreeSet<String> {
    fs::read_dir(root.join("blobs/sha256"))
        .expect("blobs dir")
        .map(|e| format!("sha256:{}", e.expect("entry").file_name().to_string_lossy()))
        .collect()
}

fn temporaries(root: &Path) -> Vec<PathBuf> {
    fs::read_dir(root.join("blobs/.tmp"))
        .map(|rd| rd.map(|e| e.expect("entry").path()).collect())
        .unwrap_or_default()
}

/// Each stored blob hashes (by `sha256sum`) to its name.
fn assert_blobs_verified(root: &Path) {
    for digest in stored_blobs(root) {
        let hex = digest.trim_start_matches("sha256:");
        let data = fs::read(root.join("blobs/sha256").join(hex)).expect("read blob");
        assert_eq!(
            images::sha256_hex(&data).expect("sha256sum"),
            hex,
            "{digest}"
        );
    }
}

fn reference(s: &str) -> ImageRef {
    ImageRef::parse(s).expect("reference")
}

fn recorder() -> (Arc<Mutex<Vec<Progress>>>, locald::image::ProgressFn) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    (
        seen,
        Arc::new(move |p: &Progress| s.lock().expect("lock").push(p.clone())),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_verifies_every_blob_and_a_second_pull_is_a_no_op() {
    let Some(s) = setup() else { return };
    let registry = Registry::start().expect("registry");
    let name = registry
        .push(&s.layout.dir, "v1", &locald_tests::unique("app"))
        .expect("push");
    let root = s.store_root("store");
    let images = images_at(&root, &[&registry.addr]);
    let (seen, progress) = recorder();

    let fetched = images
        .fetch(&reference(&name), &s.project(), progress)
        .await
        .expect("pull");
    let manifest = s.layout.digest("v1").expect("v1 digest");
    assert_eq!(fetched.image.manifest_digest.to_string(), manifest);
    let layers = s.layout.layers(&manifest).expect("layers");
    assert_eq!(layers.len(), 2, "busybox and the marker layer");
    let got: Vec<String> = fetched
        .image
        .layers
        .iter()
        .map(|l| l.digest.to_string())
        .collect();
    assert_eq!(got, layers, "layers in order");
    for l in &fetched.image.layers {
        assert_eq!(l.blob_path, root.join("blobs/sha256").join(l.digest.hex()));
        assert_eq!(fs::metadata(&l.blob_path).expect("blob").len(), l.size);
    }
    let config = &fetched.image.config;
    let env = config
        .config()
        .as_ref()
        .and_then(|c| c.env().clone())
        .unwrap_or_default();
    assert!(env.contains(&"LOCALD_TEST=1".to_owned()), "{env:?}");
    assert_blobs_verified(&root);
    assert_eq!(
        stored_blobs(&root).len(),
        4,
        "manifest, config, two layers: {:?}",
        stored_blobs(&root)
    );
    assert!(temporaries(&root).is_empty());
    assert_eq!(registry.blob_gets(AGENT), 3, "config and two layers");

    // Progress: every layer reported from 0 to its full size.
    let seen = seen.lock().expect("lock").clone();
    for l in &fetched.image.layers {
        let of_layer: Vec<&Progress> = seen.iter().filter(|p| p.layer == l.digest).collect();
        assert_eq!(of_layer.first().map(|p| p.done), Some(0), "{of_layer:?}");
        assert_eq!(
            of_layer.last().map(|p| p.done),
            Some(l.size),
            "{of_layer:?}"
        );
        assert!(of_layer
            .iter()
            .all(|p| p.total == l.size && p.layers == 2 && !p.cached));
    }

    // Again: the manifest is asked for, no blob moves, nothing changes.
    let inode = fs::metadata(&fetched.image.layers[0].blob_path)
        .expect("stat")
        .ino();
    let (seen, progress) = recorder();
    let again = images
        .fetch(&reference(&name), &s.project(), progress)
        .await
        .expect("second pull");
    assert!(again.copied.is_empty(), "{:?}", again.copied);
    assert_eq!(again.bytes, 0);
    assert_eq!(again.image.manifest_digest, fetched.image.manifest_digest);
    assert_eq!(registry.blob_gets(AGENT), 3, "no blob downloaded again");
    assert_eq!(
        fs::metadata(&fetched.image.layers[0].blob_path)
            .expect("stat")
            .ino(),
        inode
    );
    assert!(seen.lock().expect("lock").iter().all(|p| p.cached));

    // And the index knows the reference, its digest and the project.
    let key = reference(&name).key(&s.project());
    let entry = images
        .store()
        .lookup(&key)
        .expect("index")
        .expect("recorded");
    assert_eq!(entry.manifest.to_string(), manifest);
    assert!(entry.projects.contains(&s.project()));
    let resolved = images
        .resolve(&reference(&name), &s.project())
        .expect("resolve")
        .expect("stored");
    assert_eq!(resolved.manifest_digest, fetched.image.manifest_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_pulls_both_succeed_and_store_one_copy() {
    let Some(s) = setup() else { return };
    let registry = Registry::start().expect("registry");
    let name = registry
        .push(&s.layout.dir, "v1", &locald_tests::unique("app"))
        .expect("push");
    let root = s.store_root("store");
    // Two handles on one store, as two daemons (or a daemon and a CLI) have.
    let a = images_at(&root, &[&registry.addr]);
    let b = images_at(&root, &[&registry.addr]);
    let r = reference(&name);
    let project = s.project();
    let (x, y) = tokio::join!(
        a.fetch(&r, &project, no_progress()),
        b.fetch(&r, &project, no_progress())
    );
    let (x, y) = (x.expect("first pull"), y.expect("second pull"));
    assert_eq!(x.image.manifest_digest, y.image.manifest_digest);
    assert_eq!(stored_blobs(&root).len(), 4, "{:?}", stored_blobs(&root));
    assert_blobs_verified(&root);
    assert!(temporaries(&root).is_empty(), "{:?}", temporaries(&root));
    // Between them every blob was stored once (the loser of a race drops
    // its verified copy; it does not replace the winner's).
    let mut copied: Vec<_> = x.copied.iter().chain(&y.copied).cloned().collect();
    copied.sort();
    copied.dedup();
    assert_eq!(copied.len(), 4, "{copied:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blob_corrupted_in_the_registry_is_refused() {
    let Some(s) = setup() else { return };
    let registry = Registry::start().expect("registry");
    let name = registry
        .push(&s.layout.dir, "v1", &locald_tests::unique("app"))
        .expect("push");
    let manifest = s.layout.digest("v1").expect("v1");
    let top = s.layout.layers(&manifest).expect("layers")[1].clone();
    // Same size, one byte different: only the digest can tell.
    let data_path = registry.blob_data(&top);
    let mut data = fs::read(&data_path).expect("registry blob");
    let mid = data.len() / 2;
    data[mid] ^= 0x55;
    fs::write(&data_path, data).expect("corrupt");

    let root = s.store_root("store");
    let images = images_at(&root, &[&registry.addr]);
    let e = images
        .fetch(&reference(&name), &s.project(), no_progress())
        .await
        .expect_err("corrupt layer refused");
    let chain = locald::error_chain(&e);
    assert!(
        chain.contains(&format!(
            "layer {top} from {} does not match its digest",
            registry.addr
        )) && chain.ends_with("refusing it"),
        "{chain}"
    );
    assert!(
        matches!(&e, ImageError::Pull { source, .. } if matches!(**source, PullError::Corrupt { .. })),
        "{e:?}"
    );
    assert!(
        !stored_blobs(&root).contains(&top),
        "the bad layer is not stored"
    );
    assert!(
        !stored_blobs(&root).contains(&manifest),
        "no manifest without its layers"
    );
    assert!(temporaries(&root).is_empty(), "{:?}", temporaries(&root));
    let key = reference(&name).key(&s.project());
    assert!(images.store().lookup(&key).expect("index").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_resolves_to_this_platform() {
    let Some(s) = setup() else { return };
    let registry = Registry::start().expect("registry");
    let name = registry
        .push(&s.layout.dir, "multi", &locald_tests::unique("multi"))
        .expect("push index");
    let root = s.store_root("store");
    let images = images_at(&root, &[&registry.addr]);
    let fetched = images
        .fetch(&reference(&name), &s.project(), no_progress())
        .await
        .expect("pull index");
    assert_eq!(
        fetched.image.manifest_digest.to_string(),
        s.layout.digest("v1").expect("v1"),
        "the entry for {}",
        images::this_arch()
    );
    assert_eq!(
        fetched.index.map(|d| d.to_string()),
        Some(s.layout.digest("multi").expect("multi"))
    );
    // The other platform's image was not downloaded.
    let base = s.layout.digest("base").expect("base");
    assert!(!stored_blobs(&root).contains(&base));
    assert_blobs_verified(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_media_types_pull_like_oci_ones() {
    let Some(s) = setup() else { return };
    let registry = Registry::start().expect("registry");
    let name = registry
        .push_as(
            &s.layout.dir,
            "v1",
            &locald_tests::unique("docker"),
            Some("v2s2"),
        )
        .expect("push as docker schema 2");
    let root = s.store_root("store");
    let images = images_at(&root, &[&registry.addr]);
    let fetched = images
        .fetch(&reference(&name), &s.project(), no_progress())
        .await
        .expect("pull docker v2s2");
    assert_eq!(fetched.image.layers.len(), 2);
    for l in &fetched.image.layers {
        assert_eq!(
            l.media_type.to_string(),
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
        );
        assert_eq!(
            l.compression().expect("known"),
            locald::image::manifest::Compression::Gzip
        );
    }
    assert_blobs_verified(&root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_only_for_registries_the_user_named() {
    let Some(s) = setup() else { return };
    let registry = Registry::start().expect("registry");
    let name = registry
        .push(&s.layout.dir, "v1", &locald_tests::unique("app"))
        .expect("push");
    let root = s.store_root("store");
    let images = images_at(&root, &[]);
    let e = images
        .fetch(&reference(&name), &s.project(), no_progress())
        .await
        .expect_err("HTTPS to a plain-HTTP registry fails");
    let chain = locald::error_chain(&e);
    assert!(
        chain.contains(&format!(
            "if {} serves plain HTTP, list it in insecure_registries",
            registry.addr
        )),
        "{chain}"
    );
    assert_eq!(registry.blob_gets(AGENT), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_tags_and_repositories_are_named() {
    let Some(s) = setup() else { return };
    let registry = Registry::start().expect("registry");
    let repo = locald_tests::unique("app");
    registry.push(&s.layout.dir, "v1", &repo).expect("push");
    let images = images_at(&s.store_root("store"), &[&registry.addr]);
    for (what, r) in [
        ("a tag", format!("{}/{repo}:nope", registry.addr)),
        ("a repository", format!("{}/no-such-repo:v1", registry.addr)),
    ] {
        let e = images
            .fetch(&reference(&r), &s.project(), no_progress())
            .await
            .expect_err(what);
        let chain = locald::error_chain(&e);
        let (_, name) = r.split_once('/').expect("host/name");
        assert!(
            chain.contains(&format!("{} has no {name}", registry.addr)),
            "{what}: {chain}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_layout_imports_with_no_registry() {
    let Some(s) = setup() else { return };
    let root = s.store_root("store");
    // No insecure registries, no registry running: nothing but the layout.
    let images = images_at(&root, &[]);
    let r = reference("oci:layout:v1");
    let (seen, progress) = recorder();
    let fetched = images
        .fetch(&r, &s.project(), progress)
        .await
        .expect("import layout");
    let manifest = s.layout.digest("v1").expect("v1");
    assert_eq!(fetched.image.manifest_digest.to_string(), manifest);
    assert_eq!(
        fetched
            .image
            .layers
            .iter()
            .map(|l| l.digest.to_string())
            .collect::<Vec<_>>(),
        s.layout.layers(&manifest).expect("layers")
    );
    assert_blobs_verified(&root);
    assert_eq!(
        seen.lock()
            .expect("lock")
            .iter()
            .filter(|p| p.done == p.total)
            .count(),
        2
    );
    // The key is the absolute layout path; the project is recorded.
    let key = format!("oci:{}:v1", s.layout.dir.display());
    assert_eq!(r.key(&s.project()), key);
    assert!(images.store().lookup(&key).expect("index").is_some());

    // Importing again (the layout may have changed) copies nothing new.
    let again = images
        .fetch(&r, &s.project(), no_progress())
        .await
        .expect("again");
    assert!(again.copied.is_empty(), "{:?}", again.copied);

    // The index entry in the layout resolves to this platform too.
    let multi = images
        .fetch(&reference("oci:layout:multi"), &s.project(), no_progress())
        .await
        .expect("import index");
    assert_eq!(multi.image.manifest_digest.to_string(), manifest);

    // A layout blob that is not what its digest says is refused.
    let top = &s.layout.layers(&manifest).expect("layers")[1];
    let blob = s
        .layout
        .dir
        .join("blobs/sha256")
        .join(top.trim_start_matches("sha256:"));
    let mut data = fs::read(&blob).expect("read");
    data[0] ^= 1;
    fs::write(&blob, data).expect("corrupt");
    let fresh = images_at(&s.store_root("fresh"), &[]);
    let e = fresh
        .fetch(&r, &s.project(), no_progress())
        .await
        .expect_err("corrupt layout blob");
    let chain = locald::error_chain(&e);
    assert!(
        chain.contains(&format!(
            "layout: blob {top}: the content hashes to sha256:"
        )),
        "{chain}"
    );
    assert!(temporaries(&s.store_root("fresh")).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oci_archive_imports_with_no_registry() {
    let Some(s) = setup() else { return };
    let file = s.dir.path().join("image.tar");
    images::archive(&s.layout.dir, "v1", &file).expect("skopeo oci-archive");
    let root = s.store_root("store");
    let images = images_at(&root, &[]);
    for r in ["oci-archive:image.tar:v1", "oci-archive:image.tar"] {
        let fetched = images
            .fetch(&reference(r), &s.project(), no_progress())
            .await
            .expect(r);
        let manifest = s.layout.digest("v1").expect("v1");
        assert_eq!(fetched.image.manifest_digest.to_string(), manifest, "{r}");
    }
    assert_blobs_verified(&root);
    let e = images
        .fetch(
            &reference("oci-archive:image.tar:nope"),
            &s.project(),
            no_progress(),
        )
        .await
        .expect_err("no such tag");
    assert!(
        locald::error_chain(&e).contains("has no image tagged \"nope\" (tags: v1)"),
        "{}",
        locald::error_chain(&e)
    );
}
