//! Which program a command runs, found as a shell would find it: the same
//! answer for `command = ["x", …]` and `command = "x …"`, so a program that
//! is not on `PATH` is a clear, permanent error in both forms (a shell
//! would say only "exit status 127", over and over).

use std::path::{Path, PathBuf};

/// `program` found as `execvp` would: a name with a `/` relative to `cwd`,
/// else the first executable file in `path_var`'s directories.
pub fn find_program(program: &str, path_var: &str, cwd: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let p = cwd.join(program);
        return executable(&p).then_some(p);
    }
    path_var
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| cwd.join(d).join(program))
        .find(|p| executable(p))
}

/// The `PATH` a workload with environment `env` looks programs up in: its
/// own `PATH` (the last one set), else this process's.
pub fn search_path(env: &[(String, String)]) -> String {
    env.iter()
        .rev()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .or_else(|| std::env::var("PATH").ok())
        .unwrap_or_default()
}

/// Words a shell runs itself, or that start something other than a simple
/// command: the program of such a line cannot be told without a shell.
const SHELL_WORDS: &[&str] = &[
    "!", ".", ":", "[", "[[", "alias", "bg", "break", "case", "cd", "command", "continue",
    "coproc", "declare", "echo", "eval", "exit", "export", "false", "fg", "for", "function",
    "getopts", "hash", "if", "jobs", "kill", "let", "local", "printf", "pwd", "read", "readonly",
    "return", "select", "set", "shift", "source", "test", "time", "times", "trap", "true", "type",
    "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
];

/// The program a `sh -c` line runs, when the line is a simple command whose
/// first word can be read without a shell (after `VAR=value` assignments
/// and an `exec`); `None` when it cannot be told (quotes, expansions,
/// builtins, compound commands).
pub fn shell_program(line: &str) -> Option<&str> {
    const META: &[char] = &[
        '$', '`', '"', '\'', '\\', '(', ')', '{', '}', ';', '&', '|', '<', '>', '*', '?', '[', '~',
        '#',
    ];
    let mut words = line.split_whitespace();
    let mut word = words.next()?;
    loop {
        let assignment = word
            .split_once('=')
            .is_some_and(|(name, _)| !name.is_empty() && !name.contains('/'));
        if assignment || word == "exec" {
            word = words.next()?;
        } else {
            break;
        }
    }
    let simple = !word.contains(META) && !SHELL_WORDS.contains(&word);
    simple.then_some(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_of_a_simple_line_is_its_first_word() {
        assert_eq!(shell_program("python3 app.py"), Some("python3"));
        assert_eq!(shell_program("  exec node server.js"), Some("node"));
        assert_eq!(
            shell_program("PORT=1 DEBUG=x ./run.sh --fast"),
            Some("./run.sh")
        );
        assert_eq!(shell_program("bin/serve"), Some("bin/serve"));
    }

    #[test]
    fn a_line_a_shell_must_read_has_no_program() {
        for line in [
            "",
            "echo hi; exec sleep 1",
            "cd web && npm start",
            "$HOME/bin/x",
            "\"my prog\" x",
            "if true; then x; fi",
            "{ x; }",
            "exec",
            "A=1",
            "~/bin/x",
        ] {
            assert_eq!(shell_program(line), None, "{line:?}");
        }
    }

    #[test]
    fn programs_are_found_as_a_shell_finds_them() {
        let sh = find_program("sh", "/nonexistent:/bin:/usr/bin", Path::new("/"));
        assert!(sh.is_some_and(|p| p.is_absolute()));
        assert_eq!(
            find_program("no-such-program-x", "/bin", Path::new("/")),
            None
        );
        assert_eq!(find_program("", "/bin", Path::new("/")), None);
        assert!(find_program("bin/sh", "", Path::new("/")).is_some());
    }
}
