//! `locald.toml` errors: each malformed file gets its message, the exact
//! `line:column` of the offending value, and a hint; `locald check` prints
//! them and exits 2. Also: the published JSON Schema matches the parser.

use std::path::Path;
use std::process::Command;

use locald::config::{Config, ConfigError};
use locald_tests::{bin, TestProject};

fn err(text: &str) -> ConfigError {
    match Config::parse(Path::new("/proj/locald.toml"), text) {
        Ok(_) => panic!("expected an error for:\n{text}"),
        Err(e) => e,
    }
}

/// Asserts the first diagnostic's message contains `msg`, sits at `line:col`,
/// and has a hint containing `hint`.
fn check(text: &str, msg: &str, line: usize, col: usize, hint: &str) {
    let e = err(text);
    let d = &e.diagnostics[0];
    assert!(
        d.message.contains(msg),
        "message {:?} does not contain {msg:?}\n{e}",
        d.message
    );
    let span = d
        .span
        .clone()
        .unwrap_or_else(|| panic!("no span for {msg:?}"));
    assert_eq!(
        e.line_col(span.start),
        (line, col),
        "position of {msg:?}\n{e}"
    );
    let h = d.hint.clone().unwrap_or_default();
    assert!(
        h.contains(hint),
        "hint {h:?} does not contain {hint:?}\n{e}"
    );
    let rendered = e.to_string();
    assert!(
        rendered.contains(&format!("/proj/locald.toml:{line}:{col}")),
        "{rendered}"
    );
}

#[test]
fn unknown_service_key_suggests_the_right_one() {
    check(
        "[services.web]\ncomand = \"x\"\n",
        "unknown field `comand`",
        2,
        1,
        "did you mean `command`?",
    );
}

#[test]
fn unknown_top_level_table() {
    check(
        "[servics.web]\ncommand = \"x\"\n",
        "unknown field `servics`",
        1,
        2,
        "did you mean `services`?",
    );
}

#[test]
fn unknown_dependency() {
    check(
        "[services.web]\ncommand = \"x\"\ndepends_on = [\"dbb\"]\n[services.db]\ncommand = \"y\"\n",
        "depends on unknown service `dbb`",
        3,
        15,
        "did you mean `db`?",
    );
}

#[test]
fn dependency_cycle_is_named() {
    check(
        "[services.a]\ncommand = \"x\"\ndepends_on = [\"b\"]\n[services.b]\ncommand = \"x\"\ndepends_on = [\"c\"]\n\
         [services.c]\ncommand = \"x\"\ndepends_on = [\"a\"]\n",
        "dependency cycle: a -> b -> c -> a",
        9,
        15,
        "remove one",
    );
}

#[test]
fn self_dependency() {
    check(
        "[services.web]\ncommand = \"x\"\ndepends_on = [\"web\"]\n",
        "depends on itself",
        3,
        15,
        "remove it",
    );
}

#[test]
fn empty_shell_command() {
    check(
        "[services.web]\ncommand = \"  \"\n",
        "command is empty",
        2,
        11,
        "write the command",
    );
}

#[test]
fn empty_argv_command() {
    check(
        "[services.web]\ncommand = []\n",
        "command is empty",
        2,
        11,
        "first element",
    );
}

#[test]
fn empty_build_command() {
    check(
        "[services.web]\ncommand = \"x\"\nbuild = \"\"\n",
        "build command is empty",
        3,
        9,
        "write the command",
    );
}

#[test]
fn bad_duration() {
    check(
        "[services.web]\ncommand = \"x\"\nstop_timeout = \"10 sekonds\"\n",
        "invalid duration `10 sekonds`",
        3,
        16,
        "\"500ms\"",
    );
}

#[test]
fn negative_duration() {
    check(
        "[services.web]\ncommand = \"x\"\nrestart_delay = -1\n",
        "invalid duration -1",
        3,
        17,
        "number of seconds",
    );
}

#[test]
fn bad_signal() {
    check(
        "[services.web]\ncommand = \"x\"\nstop_signal = \"SIGFOO\"\n",
        "unknown signal `SIGFOO`",
        3,
        15,
        "SIGTERM",
    );
}

#[test]
fn bad_restart_policy() {
    check(
        "[services.web]\ncommand = \"x\"\nrestart = \"sometimes\"\n",
        "unknown variant `sometimes`",
        3,
        11,
        "on-failure",
    );
}

#[test]
fn missing_command() {
    check(
        "[services.web]\nbuild = \"make\"\n",
        "service `web` has no `command`",
        1,
        1,
        "add `command",
    );
}

#[test]
fn health_with_two_kinds() {
    check(
        "[services.web]\ncommand = \"x\"\nhealth = { tcp = 80, http = \"http://127.0.0.1/\" }\n",
        "more than one kind",
        3,
        10,
        "exactly one of",
    );
}

#[test]
fn health_with_no_kind() {
    check(
        "[services.web]\ncommand = \"x\"\n[services.web.health]\ninterval = \"1s\"\n",
        "has no kind",
        3,
        1,
        "exactly one of",
    );
}

#[test]
fn health_https_url() {
    let e = err("[services.web]\ncommand = \"x\"\nhealth = { http = \"https://127.0.0.1/\" }\n");
    assert_eq!(e.diagnostics.len(), 1, "one problem, one error:\n{e}");
    check(
        "[services.web]\ncommand = \"x\"\nhealth = { http = \"https://127.0.0.1/\" }\n",
        "only http:// URLs",
        3,
        19,
        "http://127.0.0.1:8000/health",
    );
}

#[test]
fn health_unknown_key() {
    check(
        "[services.web]\ncommand = \"x\"\nhealth = { tcp = 80, intervall = \"1s\" }\n",
        "unknown field `intervall`",
        3,
        22,
        "did you mean `interval`?",
    );
}

#[test]
fn build_with_command_and_builder() {
    check(
        "[services.web]\ncommand = \"x\"\nbuild = { command = \"make\", builder = \"paketo/builder\" }\n",
        "both `command` and `builder`",
        3,
        39,
        "not both",
    );
}

#[test]
fn build_table_unknown_key() {
    check(
        "[services.web]\ncommand = \"x\"\nbuild = { command = \"make\", inptus = [\"src/**\"] }\n",
        "unknown field `inptus`",
        3,
        29,
        "did you mean `inputs`?",
    );
}

#[test]
fn cnb_build_bad_builder_reference() {
    check(
        "[services.web]\nbuild = { builder = \"oci:\" }\n",
        "invalid builder image",
        2,
        21,
        "oci:PATH[:TAG]",
    );
}

#[test]
fn cnb_build_bad_run_image() {
    check(
        "[services.web]\nbuild = { builder = \"b/b\", run_image = \"a b\" }\n",
        "invalid run image",
        2,
        40,
        "name[:tag]",
    );
}

#[test]
fn cnb_build_bad_pull_policy() {
    check(
        "[services.web]\nbuild = { builder = \"b/b\", pull = \"sometimes\" }\n",
        "invalid pull policy `sometimes`",
        2,
        35,
        "\"always\"",
    );
}

#[test]
fn cnb_build_bad_process_type() {
    check(
        "[services.web]\nbuild = { builder = \"b/b\", process = \"../x\" }\n",
        "invalid process type",
        2,
        38,
        "worker",
    );
}

#[test]
fn cnb_keys_on_a_host_build() {
    check(
        "[services.web]\ncommand = \"x\"\nbuild = { command = \"make\", process = \"web\" }\n",
        "`process` is for buildpacks builds",
        3,
        9,
        "add `builder`",
    );
}

#[test]
fn cnb_service_needs_no_command() {
    let c = Config::parse(
        Path::new("/proj/locald.toml"),
        "[services.web]\nbuild = { builder = \"b/b\", process = \"worker\", pull = \"always\" }\n",
    )
    .unwrap();
    assert!(c.services["web"].command.is_none());
}

#[test]
fn toml_syntax_error() {
    check(
        "[services.web]\ncommand = \"x\n",
        "invalid basic string",
        2,
        13,
        "close the string",
    );
}

#[test]
fn wrong_value_type() {
    check(
        "[services.web]\ncommand = 42\n",
        "invalid type: integer `42`",
        2,
        11,
        "check the value's type",
    );
}

#[test]
fn invalid_service_name() {
    check(
        "[services.\"my web\"]\ncommand = \"x\"\n",
        "invalid service name `my web`",
        1,
        11,
        "letters, digits",
    );
}

#[test]
fn duplicate_key() {
    check(
        "[services.web]\ncommand = \"x\"\ncommand = \"y\"\n",
        "duplicate key `command`",
        3,
        1,
        "once per table",
    );
}

#[test]
fn no_services() {
    let e = err("[project]\nname = \"x\"\n");
    assert!(
        e.diagnostics[0].message.contains("no services defined"),
        "{e}"
    );
}

#[test]
fn several_problems_are_all_reported() {
    let e = err(
        "[services.a]\ncommand = \"\"\n[services.b]\ncommand = \"x\"\ndepends_on = [\"zzz\"]\n",
    );
    assert_eq!(e.diagnostics.len(), 2, "{e}");
}

#[test]
fn locald_check_prints_the_error_and_exits_2() {
    let p = TestProject::new("[services.web]\ncommand = \"x\"\nstop_timeout = \"soon\"\n");
    let out = Command::new(bin("locald"))
        .arg("check")
        .arg(p.path())
        .output()
        .expect("run locald check");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locald.toml:3:16"), "{err}");
    assert!(
        err.contains("3 | stop_timeout = \"soon\""),
        "offending line shown:\n{err}"
    );
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn locald_check_accepts_the_example() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello");
    let out = Command::new(bin("locald"))
        .arg("check")
        .arg(&example)
        .output()
        .expect("run locald check");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn published_schema_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/locald.schema.json");
    let published = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        published == locald::config::json_schema(),
        "docs/locald.schema.json is out of date: run `cargo run -p locald -- schema > docs/locald.schema.json`"
    );
}

/// Every key the schema allows in a service is accepted by the parser, and a
/// key the parser rejects is not in the schema: they come from the same types.
#[test]
fn schema_keys_match_the_parser() {
    let schema: serde_json::Value =
        serde_json::from_str(&locald::config::json_schema()).expect("schema is JSON");
    let service = &schema["definitions"]["RawService"]["properties"];
    let keys: Vec<&str> = service
        .as_object()
        .expect("service properties")
        .keys()
        .map(String::as_str)
        .collect();
    assert!(keys.contains(&"command") && keys.contains(&"depends_on") && keys.contains(&"health"));
    assert_eq!(
        schema["definitions"]["RawService"]["additionalProperties"],
        serde_json::Value::Bool(false)
    );
    for key in &keys {
        let value = match *key {
            "command" => "\"x\"".to_owned(),
            "workdir" | "env_file" => "\".\"".to_owned(),
            "env" => "{ A = \"1\" }".to_owned(),
            "build" => "\"make\"".to_owned(),
            "depends_on" => "[]".to_owned(),
            "image" => "\"redis:7\"".to_owned(),
            "volumes" => "[\"./data:/data\"]".to_owned(),
            "read_only" => "true".to_owned(),
            "health" => "{ tcp = 80 }".to_owned(),
            "restart" => "\"always\"".to_owned(),
            "start_limit_burst" => "3".to_owned(),
            "stop_signal" => "\"SIGINT\"".to_owned(),
            "stderr_priority" => "\"warning\"".to_owned(),
            "port" => "\"auto\"".to_owned(),
            "ports" => "{ http = \"auto\", admin = 9001 }".to_owned(),
            "watch" => "[\"src/**\"]".to_owned(),
            "restart_on" => "[]".to_owned(),
            "default" => "false".to_owned(),
            "runtime" => "\"systemd\"".to_owned(),
            _ => "\"1s\"".to_owned(),
        };
        let mut text = format!("[services.web]\n{key} = {value}\n");
        if *key == "volumes" || *key == "read_only" {
            text.push_str("image = \"redis\"\n");
        } else if *key != "command" && *key != "image" {
            text.push_str("command = \"x\"\n");
        }
        let r = Config::parse(Path::new("/proj/locald.toml"), &text);
        // env_file "." is a directory: the only acceptable error is reading it.
        if let Err(e) = r {
            assert!(
                *key == "env_file" && e.to_string().contains("env_file: "),
                "schema key `{key}` rejected:\n{e}"
            );
        }
    }
}

/// Editors validate with the schema, locald with the parser: on good files
/// both accept, on a misspelt key both reject.
#[test]
fn schema_and_parser_agree_on_files() {
    let schema: serde_json::Value =
        serde_json::from_str(&locald::config::json_schema()).expect("schema is JSON");
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello/locald.toml"),
    )
    .expect("example");
    let good = [
        example.as_str(),
        "[service.web]\ncommand = [\"a\", \"b\"]\nbuild = { builder = \"x/y:z\", buildpacks = [\"p\"] }\n",
        "[services.w]\ncommand = \"x\"\nbuild = { command = \"make\", inputs = [\"src/**\"], outputs = [\"dist\"] }\n\
         health = { http = \"http://127.0.0.1:1/\", interval = 2, timeout = \"1s\", retries = 2, start_period = 0.5 }\n\
         stop_signal = \"INT\"\nrestart = \"never\"\nenv = { A = \"1\" }\n",
    ];
    for text in good {
        let value: serde_json::Value = toml::from_str(text).expect("toml");
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "schema rejects a good file: {errors:?}\n{text}"
        );
        Config::parse(Path::new("/proj/locald.toml"), text)
            .unwrap_or_else(|e| panic!("parser rejects a good file:\n{e}"));
    }
    let bad = [
        "[services.web]\ncomand = \"x\"\n",
        "[services.web]\ncommand = \"x\"\nhealth = { tcp = 1, intervall = 2 }\n",
        "[servics.web]\ncommand = \"x\"\n",
    ];
    for text in bad {
        let value: serde_json::Value = toml::from_str(text).expect("toml");
        assert!(
            !validator.is_valid(&value),
            "schema accepts a bad file:\n{text}"
        );
        assert!(
            Config::parse(Path::new("/proj/locald.toml"), text).is_err(),
            "parser accepts a bad file:\n{text}"
        );
    }
}

#[test]
fn image_services_parse_with_volumes_and_an_optional_command() {
    let c = Config::parse(
        Path::new("/proj/locald.toml"),
        r#"[services.cache]
image = "docker.io/library/redis:7"

[services.api]
image = "oci:./images/layout:api"
command = ["/bin/api", "--port", "8080"]
workdir = "/srv"
volumes = ["./data:/data", "./config.toml:/etc/api.toml:ro"]
depends_on = ["cache"]
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let api = &c.services["api"];
    let image = api.image.as_ref().expect("image");
    assert_eq!(image.reference, "oci:./images/layout:api");
    assert_eq!(image.workdir.as_deref(), Some("/srv"));
    assert_eq!(image.volumes.len(), 2);
    assert_eq!(image.volumes[0].source, Path::new("/proj/./data"));
    assert!(image.volumes[1].read_only);
    assert!(c.services["cache"].command.is_none());
}

#[test]
fn bad_image_reference() {
    check(
        "[services.web]\nimage = \"Redis:7\"\n",
        "lowercase",
        2,
        9,
        "name[:tag]",
    );
    check(
        "[services.web]\nimage = \"redis@sha256:abc\"\n",
        "exactly 64 hex digits",
        2,
        9,
        "name[:tag]",
    );
}

#[test]
fn volumes_without_an_image() {
    check(
        "[services.web]\ncommand = \"x\"\nvolumes = [\"./a:/a\"]\n",
        "`volumes` are for image services",
        3,
        12,
        "add `image`",
    );
}

#[test]
fn bad_volume() {
    check(
        "[services.web]\nimage = \"redis\"\nvolumes = [\"./a:relative\"]\n",
        "must be an absolute path",
        3,
        12,
        "",
    );
    check(
        "[services.web]\nimage = \"redis\"\nvolumes = [\"./a\"]\n",
        "is not HOST:CONTAINER",
        3,
        12,
        "./data:/data",
    );
}

#[test]
fn relative_workdir_of_an_image_service() {
    check(
        "[services.web]\nimage = \"redis\"\nworkdir = \"app\"\n",
        "must be absolute",
        3,
        11,
        "/app",
    );
}

#[test]
fn read_only_without_an_image() {
    check(
        "[services.web]\ncommand = \"x\"\nread_only = true\n",
        "`read_only` is for image services",
        3,
        13,
        "add `image`",
    );
}

#[test]
fn bad_runtime() {
    check(
        "[project]\nruntime = \"docker\"\n[services.web]\ncommand = \"x\"\n",
        "unknown variant `docker`",
        2,
        11,
        "host",
    );
}
