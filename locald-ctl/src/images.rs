//! `images [--json]`, `pull [SERVICE] [--force]` and `prune`: the user's
//! image store through the daemon. `pull` draws a progress bar from the
//! daemon's `PullProgress` signals, as `build` does from `BuildProgress`,
//! and folds it into one ✓/✗ line per service.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde::Serialize;

use locald_api::{Error, ImageEntry, PruneResult, PullResult};
use locald_core::term::human_bytes;

use crate::client::{Client, CtlError};
use crate::status::{rfc3339, short, terminal_width};

/// `sha256:0123456789ab…` as its first 12 hex digits, as `docker images`
/// shows image ids.
pub fn short_digest(digest: &str) -> &str {
    let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
    hex.get(..12).unwrap_or(hex)
}

/// The images table; each line fits in `width` when given, by cutting the
/// projects, which come last.
pub fn table(images: &[ImageEntry], now: SystemTime, width: Option<usize>) -> String {
    let mut rows = vec![[
        "REFERENCE".to_owned(),
        "DIGEST".to_owned(),
        "SIZE".to_owned(),
        "FETCHED".to_owned(),
        "USED BY".to_owned(),
    ]];
    for i in images {
        let fetched = now
            .duration_since(UNIX_EPOCH + Duration::from_micros(i.fetched_at))
            .map_or("-".to_owned(), |d| format!("{} ago", short(d)));
        let used = if i.projects.is_empty() {
            "-".to_owned()
        } else {
            i.projects.join(", ")
        };
        rows.push([
            i.reference.clone(),
            short_digest(&i.digest).to_owned(),
            human_bytes(i.size),
            fetched,
            used,
        ]);
    }
    crate::status::columns(&rows, width)
}

/// The line under the table: how many, how much, and what `prune` would
/// remove.
pub fn summary(images: &[ImageEntry]) -> String {
    let total: u64 = images.iter().map(|i| i.size).sum();
    let unused = images.iter().filter(|i| i.projects.is_empty()).count();
    let mut line = format!(
        "{} image{}, {}",
        images.len(),
        if images.len() == 1 { "" } else { "s" },
        human_bytes(total)
    );
    if unused > 0 {
        line.push_str(&format!(
            "; {unused} used by no project that is up (`locald-ctl prune` removes {})",
            if unused == 1 { "it" } else { "them" }
        ));
    }
    line
}

/// One image in `images --json`.
#[derive(Serialize)]
struct JsonImage<'a> {
    reference: &'a str,
    digest: &'a str,
    size: u64,
    unpacked: bool,
    projects: &'a [String],
    fetched_at: Option<String>,
}

/// `images [--json]`.
pub async fn images(client: &Client, json: bool) -> Result<ExitCode, CtlError> {
    let images = client.manager.list_images().await.map_err(CtlError::call)?;
    if json {
        let out: Vec<JsonImage<'_>> = images
            .iter()
            .map(|i| JsonImage {
                reference: &i.reference,
                digest: &i.digest,
                size: i.size,
                unpacked: i.unpacked,
                projects: &i.projects,
                fetched_at: rfc3339(i.fetched_at),
            })
            .collect();
        let text = serde_json::to_string_pretty(&out)
            .map_err(|e| CtlError::Failed(format!("cannot write JSON: {e}")))?;
        println!("{text}");
        return Ok(ExitCode::SUCCESS);
    }
    if images.is_empty() {
        println!("no images stored");
        return Ok(ExitCode::SUCCESS);
    }
    print!("{}", table(&images, SystemTime::now(), terminal_width()));
    println!("{}", summary(&images));
    Ok(ExitCode::SUCCESS)
}

/// What is known of a pull's layers so far: index → (done, total, cached).
#[derive(Default)]
pub struct Layers {
    layers: BTreeMap<u32, (u64, u64, bool)>,
    count: u32,
}

impl Layers {
    /// Takes in one progress report.
    pub fn update(&mut self, index: u32, layers: u32, done: u64, total: u64, cached: bool) {
        self.count = layers;
        self.layers.insert(index, (done, total, cached));
    }

    /// The bar: bytes of every layer seen so far, and how many layers are
    /// complete.
    pub fn bar(&self, service: &str) -> String {
        const WIDTH: u64 = 20;
        let done: u64 = self.layers.values().map(|l| l.0).sum();
        let total: u64 = self.layers.values().map(|l| l.1).sum();
        let complete = self.layers.values().filter(|l| l.0 >= l.1).count();
        let filled = if total == 0 {
            0
        } else {
            u128::from(done.min(total)) * u128::from(WIDTH) / u128::from(total)
        } as u64;
        format!(
            "{service} [{}{}] {}/{} layers {complete}/{}",
            "#".repeat(filled as usize),
            "-".repeat((WIDTH - filled) as usize),
            human_bytes(done),
            human_bytes(total),
            self.count
        )
    }
}

/// One pull's outcome as a line.
pub fn result_line(service: &str, outcome: &Result<PullResult, String>) -> String {
    let r = match outcome {
        Ok(r) => r,
        Err(reason) => return format!("✗ {service}: {reason}"),
    };
    let digest = short_digest(&r.digest);
    let repaired = if r.repaired > 0 {
        format!(
            "; {} damaged blob{} fetched again",
            r.repaired,
            if r.repaired == 1 { "" } else { "s" }
        )
    } else {
        String::new()
    };
    if r.up_to_date() {
        return format!("✓ {service}: {} is up to date ({digest})", r.reference);
    }
    let moved = format!(
        "{} blob{}, {}{repaired}",
        r.blobs,
        if r.blobs == 1 { "" } else { "s" },
        human_bytes(r.bytes)
    );
    if r.previous.is_empty() {
        format!("✓ {service}: pulled {} ({digest}; {moved})", r.reference)
    } else if r.previous != r.digest {
        format!(
            "✓ {service}: {} updated {} → {digest} ({moved}); `locald-ctl restart {service}` runs it",
            r.reference,
            short_digest(&r.previous)
        )
    } else {
        format!("✓ {service}: {} ({digest}; {moved})", r.reference)
    }
}

pub(crate) async fn pull_one(
    client: &Client,
    project: &str,
    service: &str,
    force: bool,
    tty: bool,
) -> Result<Result<PullResult, String>, Error> {
    // Subscribe before calling so the first layer is not missed.
    let mut progress = client.manager.receive_pull_progress().await?;
    let call = client.manager.pull(project, service, force);
    tokio::pin!(call);
    let mut stderr = std::io::stderr();
    let mut layers = Layers::default();
    // The reply may overtake the last signals (they come from another task
    // of the daemon); the result line says what they would have.
    let outcome = loop {
        tokio::select! {
            biased;
            result = &mut call => break result,
            Some(signal) = progress.next() => {
                let Ok(a) = signal.args() else { continue };
                if a.project() != project || a.service() != service {
                    continue;
                }
                let (index, count, done, total, cached) =
                    (*a.index(), *a.layers(), *a.done(), *a.total(), *a.cached());
                layers.update(index, count, done, total, cached);
                if tty {
                    let _ = write!(
                        stderr,
                        "\r\x1b[2K{}",
                        locald_core::text::sanitize(&layers.bar(service))
                    );
                    let _ = stderr.flush();
                } else if done >= total {
                    let what = if cached { "stored already" } else { "pulled" };
                    let _ = writeln!(
                        stderr,
                        "{service} layer {}/{count} {what} ({})",
                        index + 1,
                        human_bytes(total)
                    );
                }
            }
        }
    };
    if tty {
        let _ = write!(stderr, "\r\x1b[2K");
    }
    let outcome = match outcome {
        Ok(r) => Ok(r),
        Err(Error::PullFailed(reason)) => Err(reason),
        Err(e) => return Err(e),
    };
    println!(
        "{}",
        locald_core::text::sanitize(&result_line(service, &outcome))
    );
    Ok(outcome)
}

/// `pull [SERVICE] [--force]`.
pub async fn pull(
    client: &Client,
    service: Option<String>,
    force: bool,
) -> Result<ExitCode, CtlError> {
    let project = client.resolve(None).await?;
    let tty = std::io::stderr().is_terminal();
    let services = crate::status::targets(client, &project, service).await?;
    let (mut failed, mut pulled) = (0, 0);
    for (service, named) in services {
        match pull_one(client, &project, &service, force, tty).await {
            Ok(Ok(_)) => pulled += 1,
            Ok(Err(_)) => failed += 1,
            // Asked for all: services without an image are not an error.
            Err(Error::NoImage(_)) if !named => {}
            Err(e) => return Err(CtlError::call(e)),
        }
    }
    if pulled == 0 && failed == 0 {
        println!("no service of {project} has an image");
    }
    Ok(if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// What `prune` prints.
pub fn prune_lines(p: &PruneResult) -> Vec<String> {
    let mut lines = Vec::new();
    if p.references.is_empty() && p.blobs == 0 && p.unpacked == 0 {
        lines.push("nothing to remove: every stored image is used by a project that is up".into());
    } else {
        if !p.references.is_empty() {
            lines.push(format!(
                "removed {} image{}: {}",
                p.references.len(),
                if p.references.len() == 1 { "" } else { "s" },
                p.references.join(", ")
            ));
        }
        lines.push(format!(
            "{} blob{} and {} unpacked tree{} removed, {} freed",
            p.blobs,
            if p.blobs == 1 { "" } else { "s" },
            p.unpacked,
            if p.unpacked == 1 { "" } else { "s" },
            human_bytes(p.bytes)
        ));
    }
    if p.in_use > 0 {
        lines.push(format!(
            "kept {} unpacked tree{} that a running container uses",
            p.in_use,
            if p.in_use == 1 { "" } else { "s" }
        ));
    }
    lines
}

/// `prune`.
pub async fn prune(client: &Client) -> Result<ExitCode, CtlError> {
    let result = client.manager.prune().await.map_err(CtlError::call)?;
    for line in prune_lines(&result) {
        println!("{}", locald_core::text::sanitize(&line));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(reference: &str, size: u64, projects: &[&str]) -> ImageEntry {
        ImageEntry {
            reference: reference.into(),
            digest: format!("sha256:{}", "ab".repeat(32)),
            size,
            unpacked: true,
            projects: projects.iter().map(|p| p.to_string()).collect(),
            fetched_at: 1_000_000_000_000_000,
        }
    }

    #[test]
    fn the_table_lines_up_and_says_who_uses_what() {
        let now =
            UNIX_EPOCH + Duration::from_micros(1_000_000_000_000_000) + Duration::from_secs(90);
        let images = [
            image("docker.io/library/redis:7", 45_100_000, &["/home/me/shop"]),
            image("oci:/home/me/x/layout:v1", 1_200_000, &[]),
        ];
        let t = table(&images, now, None);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(
            lines,
            [
                "REFERENCE                  DIGEST        SIZE     FETCHED    USED BY",
                "docker.io/library/redis:7  abababababab  45.1 MB  1m30s ago  /home/me/shop",
                "oci:/home/me/x/layout:v1   abababababab  1.2 MB   1m30s ago  -",
            ]
        );
        assert_eq!(
            summary(&images),
            "2 images, 46.3 MB; 1 used by no project that is up (`locald-ctl prune` removes it)"
        );
        let narrow = table(&images, now, Some(40));
        assert!(narrow.lines().all(|l| l.chars().count() <= 40), "{narrow}");
    }

    #[test]
    fn digests_are_shortened_like_image_ids() {
        assert_eq!(short_digest("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_digest("short"), "short");
    }

    #[test]
    fn the_bar_counts_bytes_and_complete_layers() {
        let mut l = Layers::default();
        l.update(0, 2, 1_000_000, 1_000_000, true);
        l.update(1, 2, 500_000, 3_000_000, false);
        assert_eq!(
            l.bar("cache"),
            "cache [#######-------------] 1.5 MB/4.0 MB layers 1/2"
        );
    }

    #[test]
    fn result_lines_say_what_changed() {
        let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
        let same = PullResult {
            reference: "docker.io/library/redis:7".into(),
            digest: d('a'),
            previous: d('a'),
            ..Default::default()
        };
        assert_eq!(
            result_line("cache", &Ok(same.clone())),
            "✓ cache: docker.io/library/redis:7 is up to date (aaaaaaaaaaaa)"
        );
        let new = PullResult {
            previous: String::new(),
            blobs: 3,
            bytes: 27_000_000,
            ..same.clone()
        };
        assert_eq!(
            result_line("cache", &Ok(new)),
            "✓ cache: pulled docker.io/library/redis:7 (aaaaaaaaaaaa; 3 blobs, 27.0 MB)"
        );
        let moved = PullResult {
            previous: d('b'),
            blobs: 1,
            bytes: 2_000,
            ..same
        };
        assert_eq!(
            result_line("cache", &Ok(moved)),
            "✓ cache: docker.io/library/redis:7 updated bbbbbbbbbbbb → aaaaaaaaaaaa \
             (1 blob, 2.0 kB); `locald-ctl restart cache` runs it"
        );
        assert_eq!(
            result_line("cache", &Err("no such tag".into())),
            "✗ cache: no such tag"
        );
    }

    #[test]
    fn prune_says_what_went_and_what_stayed() {
        assert_eq!(
            prune_lines(&PruneResult::default()),
            ["nothing to remove: every stored image is used by a project that is up"]
        );
        let p = PruneResult {
            references: vec!["oci:/x:v1".into()],
            blobs: 3,
            unpacked: 1,
            in_use: 1,
            bytes: 2_500_000,
        };
        assert_eq!(
            prune_lines(&p),
            [
                "removed 1 image: oci:/x:v1",
                "3 blobs and 1 unpacked tree removed, 2.5 MB freed",
                "kept 1 unpacked tree that a running container uses",
            ]
        );
    }
}
