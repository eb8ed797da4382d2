//! Incremental builds as a user meets them: `locald build` says why it
//! builds or that the build is up to date, and `locald up` reuses the last
//! good artifact instead of building again.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use locald::engine::{Engine, EngineOptions};
use locald::event::{BuildResult, ServiceState};
use locald_tests::{bin, unique, wait_for, CollectSink, TestProject};

fn project() -> TestProject {
    let p = TestProject::new(&format!(
        r#"[project]
name = "{}"

[services.app]
build = {{ command = "echo compiling | tee -a build-log; mkdir -p dist; cp src/main.txt dist/", inputs = ["src/**"], outputs = ["dist/"] }}
command = "sleep 100"
"#,
        unique("incr")
    ));
    p.write("src/main.txt", "v1\n");
    p
}

fn locald_build(p: &TestProject, args: &[&str]) -> (i32, String) {
    let out = Command::new(bin("locald"))
        .arg("build")
        .args(args)
        .current_dir(p.path())
        .env("NO_COLOR", "1")
        .output()
        .expect("run locald build");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn locald_build_says_why_or_that_it_is_up_to_date() {
    let p = project();
    let (code, out) = locald_build(&p, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("✓ app: built") && out.contains("no previous build"),
        "{out}"
    );
    assert!(out.contains("app:build | compiling"), "{out}");

    let (code, out) = locald_build(&p, &["app"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("✓ app: Build up to date"), "{out}");

    p.write("src/main.txt", "v2\n");
    let (_, out) = locald_build(&p, &[]);
    assert!(
        out.contains("source changed: 1 file (1 modified), e.g. src/main.txt"),
        "{out}"
    );

    let (_, out) = locald_build(&p, &["--force"]);
    assert!(out.contains("rebuild forced"), "{out}");
    assert_eq!(p.read("build-log"), "compiling\ncompiling\ncompiling\n");
    assert!(p
        .join(".locald/services/app/artifacts/manifest.json")
        .is_file());
}

#[test]
fn locald_build_failure_exits_1_and_keeps_the_last_artifact() {
    let p = project();
    assert_eq!(locald_build(&p, &[]).0, 0);
    let manifest = p.read(".locald/services/app/artifacts/manifest.json");
    p.write(
        "locald.toml",
        &p.read("locald.toml").replace(
            "echo compiling | tee -a build-log;",
            "echo broken >&2; exit 4;",
        ),
    );
    let (code, out) = locald_build(&p, &[]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("✗ app: build command exited with status 4"),
        "{out}"
    );
    assert_eq!(
        p.read(".locald/services/app/artifacts/manifest.json"),
        manifest,
        "last good artifact kept"
    );
}

#[test]
fn locald_build_of_an_unknown_service_is_a_usage_error() {
    let p = project();
    let (code, out) = locald_build(&p, &["nope"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("has no service `nope`"), "{out}");
}

#[tokio::test]
async fn up_reuses_the_last_good_artifact() {
    let p = project();
    for round in 0..2 {
        let sink = Arc::new(CollectSink::default());
        let engine = Engine::new(EngineOptions {
            sink,
            state_dir: None,
            instance: "test".into(),
            paths: locald::paths::Paths::from_env(),
        });
        let name = engine.up(p.path()).await.expect("up");
        let s = wait_for(Duration::from_secs(10), || {
            engine
                .project(&name)?
                .services
                .into_iter()
                .find(|s| s.state == ServiceState::Running)
        })
        .await
        .expect("running");
        let build = s.last_build.expect("a build record");
        let expected = if round == 0 {
            BuildResult::Succeeded
        } else {
            BuildResult::Skipped
        };
        assert_eq!(build.result, expected, "round {round}: {build:?}");
        assert!(build.source_hash.is_some());
        engine.shutdown().await;
    }
    assert_eq!(
        p.read("build-log"),
        "compiling\n",
        "the second up did not build"
    );
}
