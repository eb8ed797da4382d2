//! The setuid shim as its users meet it: a real root-owned 4755 copy run as
//! an unprivileged test user, real runc, busybox-static bundles. First what
//! must work, then the attacks, each of which must be refused with its own
//! message and leave nothing behind.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Result;
use locald_tests::shim::*;
use serde_json::{json, Value};

/// Set up the shim and users, or skip (outside CI) when the machine can't.
fn setup() -> Option<(InstalledShim, TestUser, TestUser)> {
    if !preconditions() {
        return None;
    }
    let shim = install_shim().expect("install the shim setuid");
    let (u1, u2) = users().expect("create test users");
    Some((shim, u1, u2))
}

fn assert_clean(user: &TestUser, id: &str) {
    let left = leftovers(user.uid, id);
    remove_cgroups(user.uid, id);
    assert!(left.is_empty(), "state left behind for {id}: {left:?}");
}

fn run_bundle(shim: &Path, user: &TestUser, b: &Bundle, id: &str) -> std::process::Output {
    let bundle = b.dir.to_string_lossy().to_string();
    run_as(shim, user, &["run", "--bundle", &bundle, "--id", id]).expect("spawn shim")
}

#[test]
fn valid_bundle_runs_with_output_and_exit_status() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    let b = Bundle::new(
        &u1,
        &["sh", "-c", "echo out; echo err >&2; cat /marker; exit 7"],
    )?;
    let id = unique_id("ok");
    let out = run_bundle(&shim.path, &u1, &b, &id);
    assert_eq!(out.status.code(), Some(7), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\ngood");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
    assert_clean(&u1, &id);
    Ok(())
}

#[test]
fn root_inside_is_the_user_outside() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    let mut b = Bundle::new(&u1, &["sh", "-c", "id -u; id -g; touch /out/made-inside"])?;
    let out_dir = b.user_dir("out")?;
    b.config["mounts"]
        .as_array_mut()
        .expect("mounts")
        .push(json!({"destination": "/out", "type": "bind", "source": out_dir, "options": ["rbind", "rw"]}));
    b.write()?;
    let id = unique_id("uid");
    let out = run_bundle(&shim.path, &u1, &b, &id);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "0\n0\n");
    assert_eq!(owner_of(&out_dir.join("made-inside"))?, u1.uid);
    assert_clean(&u1, &id);
    Ok(())
}

#[test]
fn state_list_kill_and_cgroup_confinement() -> Result<()> {
    let Some((shim, u1, u2)) = setup() else {
        return Ok(());
    };
    let b = Bundle::new(&u1, &["sleep", "30"])?;
    let id = unique_id("kill");
    let bundle = b.dir.to_string_lossy().to_string();
    let child = spawn(
        shim_as(&shim.path, &u1, &["run", "--bundle", &bundle, "--id", &id])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )?;
    let state = wait_for_status(&shim.path, &u1, &id, "running", Duration::from_secs(10))?;
    let pid = state["pid"].as_u64().expect("pid in state");
    // The host sees the container's root as the caller.
    assert_eq!(host_uid_of(pid)?, u1.uid);
    // Its cgroup is the shim's per-user subtree.
    let cg = fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    assert!(
        cg.contains(&format!("/locald-shim/u{}/{id}", u1.uid)),
        "cgroup not confined: {cg}"
    );
    let list = run_as(&shim.path, &u1, &["list"])?;
    assert!(list.status.success(), "{}", describe(&list));
    let list: Value = serde_json::from_slice(&list.stdout)?;
    assert!(list
        .as_array()
        .is_some_and(|a| a.iter().any(|c| c["id"] == id.as_str())));

    // The owner can run a probe inside it, with the container's settings:
    // it runs as the container's root (the owner outside) and its exit
    // code comes back.
    let probe = run_as(
        &shim.path,
        &u1,
        &["exec", "--id", &id, "--", "sh", "-c", "id -u; exit 7"],
    )?;
    assert_eq!(probe.status.code(), Some(7), "{}", describe(&probe));
    assert_eq!(String::from_utf8_lossy(&probe.stdout), "0\n");
    // runc options cannot be smuggled in as the program.
    let smuggled = run_as(
        &shim.path,
        &u1,
        &["exec", "--id", &id, "--", "--cap-add=CAP_SYS_ADMIN", "sh"],
    )?;
    assert_eq!(
        smuggled.status.code(),
        Some(SHIM_ERROR),
        "{}",
        describe(&smuggled)
    );

    // Another user can neither see, signal, exec into nor delete it.
    let out = run_as(
        &shim.path,
        &u2,
        &["exec", "--id", &id, "--", "sh", "-c", "id"],
    )?;
    assert_eq!(out.status.code(), Some(SHIM_ERROR), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("no container \"{id}\" for uid {}", u2.uid)),
        "exec: {}",
        describe(&out)
    );
    for cmd in ["state", "kill", "delete"] {
        let out = run_as(&shim.path, &u2, &[cmd, "--id", &id])?;
        assert_eq!(out.status.code(), Some(SHIM_ERROR), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains(&format!("no container \"{id}\" for uid {}", u2.uid)),
            "{cmd}: {err}"
        );
    }
    // The id is taken while it runs.
    let again = run_as(&shim.path, &u1, &["run", "--bundle", &bundle, "--id", &id])?;
    assert_eq!(
        again.status.code(),
        Some(SHIM_ERROR),
        "{}",
        describe(&again)
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    let other_list = run_as(&shim.path, &u2, &["list"])?;
    assert!(!String::from_utf8_lossy(&other_list.stdout).contains(&id));
    wait_for_status(&shim.path, &u1, &id, "running", Duration::from_secs(1))?;

    let kill = run_as(&shim.path, &u1, &["kill", "--id", &id, "--signal", "KILL"])?;
    assert!(kill.status.success(), "{}", describe(&kill));
    let out = child.wait_with_output()?;
    assert_eq!(out.status.code(), Some(137), "{}", describe(&out));
    assert_clean(&u1, &id);
    Ok(())
}

#[test]
fn delete_force_stops_and_removes() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    let b = Bundle::new(&u1, &["sleep", "30"])?;
    let id = unique_id("del");
    let bundle = b.dir.to_string_lossy().to_string();
    let mut child = spawn(
        shim_as(&shim.path, &u1, &["run", "--bundle", &bundle, "--id", &id])
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )?;
    wait_for_status(&shim.path, &u1, &id, "running", Duration::from_secs(10))?;
    let del = run_as(&shim.path, &u1, &["delete", "--id", &id, "--force"])?;
    assert!(del.status.success(), "{}", describe(&del));
    let status = child.wait()?;
    assert_ne!(status.code(), Some(0));
    let state = run_as(&shim.path, &u1, &["state", "--id", &id])?;
    assert_eq!(state.status.code(), Some(SHIM_ERROR));
    assert_clean(&u1, &id);
    Ok(())
}

#[test]
fn run_forwards_the_callers_signals_to_the_container() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    let b = Bundle::new(
        &u1,
        &[
            "sh",
            "-c",
            "trap 'echo got-term; exit 5' TERM; sleep 30 & wait",
        ],
    )?;
    let id = unique_id("sig");
    let child = spawn(
        shim_as(
            &shim.path,
            &u1,
            &["run", "--bundle", &b.dir.to_string_lossy(), "--id", &id],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()),
    )?;
    wait_for_status(&shim.path, &u1, &id, "running", Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_millis(300));
    // The caller (not root) signals the shim, as locald would.
    use std::os::unix::process::CommandExt;
    let kill = std::process::Command::new("/bin/kill")
        .args(["-TERM", &child.id().to_string()])
        .uid(u1.uid)
        .gid(u1.gid)
        .status()?;
    assert!(kill.success());
    let out = child.wait_with_output()?;
    assert_eq!(out.status.code(), Some(5), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "got-term\n");
    assert_clean(&u1, &id);
    Ok(())
}

#[test]
fn runc_failure_leaves_nothing_behind() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    let b = Bundle::new(&u1, &["/no/such/program"])?;
    let id = unique_id("fail");
    let out = run_bundle(&shim.path, &u1, &b, &id);
    assert_ne!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no such file"),
        "{}",
        describe(&out)
    );
    assert_clean(&u1, &id);
    Ok(())
}

#[test]
fn system_allow_list_binds_read_only_only() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    let mut b = Bundle::new(&u1, &["cat", "/etc/hosts"])?;
    push_mount(
        &mut b.config,
        json!({"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind", "ro"]}),
    );
    b.write()?;
    let id = unique_id("hosts");
    let out = run_bundle(&shim.path, &u1, &b, &id);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(out.stdout, fs::read("/etc/hosts")?);
    assert_clean(&u1, &id);
    refused(
        |c, _, _| {
            push_mount(
                c,
                json!({"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind", "rw"]}),
            )
        },
        "bind mount of system path /etc/hosts must be read-only",
    )
}

/// Opening "as the caller" with only the fs ids switched kept root's
/// `CAP_SYS_PTRACE`, so the shim followed another user's `/proc/PID/cwd`
/// magic link, which the caller cannot, and judged a file in a directory the
/// caller has no access to: the policy passed it, and only the kernel's
/// refusal to bind-mount from another mount namespace stopped the run. The
/// messages were an oracle for the existence, kind and owner of files the
/// caller cannot reach; now the walk fails as the caller's own would.
#[test]
fn attack_bind_source_through_another_users_proc_cwd() -> Result<()> {
    use std::os::unix::fs::{chown, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let Some((shim, u1, u2)) = setup() else {
        return Ok(());
    };
    // u2's private directory; inside it u2's working directory holds a file
    // of u1's that u1 cannot reach by any path.
    let private = tempfile::Builder::new()
        .prefix("locald-shim-private-")
        .tempdir_in("/tmp")?;
    chown(private.path(), Some(u2.uid), Some(u2.gid))?;
    fs::set_permissions(private.path(), fs::Permissions::from_mode(0o700))?;
    let work = private.path().join("work");
    fs::create_dir(&work)?;
    chown(&work, Some(u2.uid), Some(u2.gid))?;
    fs::set_permissions(&work, fs::Permissions::from_mode(0o755))?;
    let file = work.join("f");
    fs::write(&file, "not for u1's eyes through u2's directory\n")?;
    chown(&file, Some(u1.uid), Some(u1.gid))?;
    let mut sleeper = std::process::Command::new("sleep")
        .arg("60")
        .current_dir(&work)
        .uid(u2.uid)
        .gid(u2.gid)
        .stdin(Stdio::null())
        .spawn()?;
    let source = format!("/proc/{}/cwd/f", sleeper.id());
    let mut b = Bundle::new(&u1, &["cat", "/f"])?;
    push_mount(
        &mut b.config,
        json!({"destination": "/f", "type": "bind", "source": source, "options": ["rbind", "ro"]}),
    );
    b.write()?;
    let id = unique_id("proc");
    let out = run_bundle(&shim.path, &u1, &b, &id);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(out.status.code(), Some(SHIM_ERROR), "{}", describe(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "bind mount source {source} cannot be accessed by you"
        )),
        "{}",
        describe(&out)
    );
    assert_clean(&u1, &id);
    Ok(())
}

#[test]
fn inherited_fds_do_not_reach_the_container() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    let b = Bundle::new(&u1, &["ls", "/proc/self/fd"])?;
    let id = unique_id("fds");
    let secret = fs::File::open("/etc/hostname").or_else(|_| fs::File::open("/etc/hosts"))?;
    let raw = std::os::fd::AsRawFd::as_raw_fd(&secret);
    let mut cmd = shim_as(
        &shim.path,
        &u1,
        &["run", "--bundle", &b.dir.to_string_lossy(), "--id", &id],
    );
    use std::os::unix::process::CommandExt;
    // SAFETY: dup2 is async-signal-safe; it leaves a non-CLOEXEC fd 7 open
    // in the child, as a careless (or hostile) caller would.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, 7) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = output(&mut cmd)?;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let fds: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect();
    assert!(!fds.contains(&"7".to_string()), "fd 7 leaked: {fds:?}");
    assert!(fds.len() <= 4, "unexpected fds in the container: {fds:?}");
    assert_clean(&u1, &id);
    Ok(())
}

#[test]
fn self_check_and_version() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    let out = run_as(&shim.path, &u1, &["self-check"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(
        text.contains(&format!("setuid: yes (caller uid {})", u1.uid)),
        "{text}"
    );
    assert!(
        text.contains("runc: /usr/sbin/runc (runc version"),
        "{text}"
    );
    assert!(
        text.contains(&format!("subuid: {}+{}", u1.sub_start, u1.sub_count)),
        "{text}"
    );
    assert!(text.contains("cgroup: "), "{text}");
    let v = run_as(&shim.path, &u1, &["--version"])?;
    assert!(String::from_utf8_lossy(&v.stdout).starts_with("locald-shim "));
    Ok(())
}

#[test]
fn a_copy_that_is_not_setuid_says_how_to_install() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    use std::os::unix::fs::PermissionsExt;
    let plain = shim.dir.path().join("plain-shim");
    fs::copy(&shim.path, &plain)?;
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o755))?;
    let out = run_as(&plain, &u1, &["list"])?;
    assert_eq!(out.status.code(), Some(SHIM_ERROR));
    assert!(String::from_utf8_lossy(&out.stderr).contains("owned by root, mode 4755"));
    Ok(())
}

/// Run a bundle whose config was mutated by `edit`, expect a refusal whose
/// stderr contains `expected`, and no state left behind.
fn refused(edit: impl FnOnce(&mut Value, &Bundle, &TestUser), expected: &str) -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    if let Some(why) = refusal_missing(&shim, &u1, edit, expected)? {
        panic!("{why}");
    }
    Ok(())
}

/// What is wrong when a bundle edited by `edit` is not refused with
/// `expected` in the message (`None`: refused as it should be). Whatever
/// happened, nothing of it may be left behind.
fn refusal_missing(
    shim: &InstalledShim,
    user: &TestUser,
    edit: impl FnOnce(&mut Value, &Bundle, &TestUser),
    expected: &str,
) -> Result<Option<String>> {
    let mut b = Bundle::new(user, &["true"])?;
    let mut cfg = b.config.clone();
    edit(&mut cfg, &b, user);
    b.config = cfg;
    b.write()?;
    let id = unique_id("atk");
    let out = run_bundle(&shim.path, user, &b, &id);
    let err = String::from_utf8_lossy(&out.stderr);
    let missing = (out.status.code() != Some(SHIM_ERROR) || !err.contains(expected))
        .then(|| format!("expected {expected:?} in the refusal:\n{}", describe(&out)));
    assert_clean(user, &id);
    Ok(missing)
}

fn ns(cfg: &mut Value) -> &mut Vec<Value> {
    cfg["linux"]["namespaces"]
        .as_array_mut()
        .expect("namespaces")
}

fn push_mount(cfg: &mut Value, m: Value) {
    cfg["mounts"].as_array_mut().expect("mounts").push(m);
}

/// A config attack: what it does to a valid bundle, and the words of its
/// refusal.
struct Attack {
    name: &'static str,
    edit: fn(&mut Value, &Bundle, &TestUser),
    refusal: &'static str,
}

/// Every config the policy must refuse, each with its own message; run by
/// [`every_config_attack_is_refused_with_its_own_message`].
const ATTACKS: &[Attack] = &[
    // runc applies mount options in order: `ro` followed by `rw` is a writable
    // bind, so it must not pass the read-only rule for system files.
    Attack {
        name: "system_bind_ro_then_rw",
        edit: |c, _, _| {
            push_mount(
                c,
                json!({"destination": "/etc/hosts", "type": "bind", "source": "/etc/hosts", "options": ["rbind", "ro", "rw"]}),
            )
        },
        refusal: "bind mount of system path /etc/hosts must be read-only",
    },
    Attack {
        name: "no_user_namespace",
        edit: |c, _, _| ns(c).retain(|n| n["type"] != "user"),
        refusal: "no user namespace",
    },
    Attack {
        name: "user_namespace_joined_by_path",
        edit: |c, _, _| {
            for n in ns(c).iter_mut() {
                if n["type"] == "user" {
                    n["path"] = json!("/proc/1/ns/user");
                }
            }
        },
        refusal: "user namespace joined by path /proc/1/ns/user",
    },
    Attack {
        name: "uid_mapping_to_host_root",
        edit: |c, _, _| c["linux"]["uidMappings"][0]["hostID"] = json!(0),
        refusal: "maps host uid 0 (root): never allowed",
    },
    Attack {
        name: "uid_mapping_beyond_subuid_range",
        edit: |c, _, u| c["linux"]["uidMappings"][1]["size"] = json!(u.sub_count + 1),
        refusal: "nor in your /etc/subuid ranges",
    },
    Attack {
        name: "process_user_outside_mapping",
        edit: |c, _, u| c["process"]["user"]["uid"] = json!(u.sub_count + 5),
        refusal: "is outside the user namespace's uid mapping",
    },
    Attack {
        name: "additional_gids_outside_mapping",
        edit: |c, _, u| c["process"]["user"]["additionalGids"] = json!([u.sub_count + 5]),
        refusal: "process.user.additionalGids: gid",
    },
    Attack {
        name: "join_host_network_namespace",
        edit: |c, _, _| {
            for n in ns(c).iter_mut() {
                if n["type"] == "network" {
                    n["path"] = json!("/proc/1/ns/net");
                }
            }
        },
        refusal: "joining an existing net namespace by path /proc/1/ns/net is not allowed",
    },
    Attack {
        name: "prestart_hook",
        edit: |c, _, _| {
            c["hooks"] =
                json!({"prestart": [{"path": "/bin/sh", "args": ["sh", "-c", "id > /tmp/pwned"]}]})
        },
        refusal: "OCI hooks are not allowed: they run as root on the host",
    },
    Attack {
        name: "bind_mount_etc_shadow",
        edit: |c, _, _| {
            push_mount(
                c,
                json!({"destination": "/shadow", "type": "bind", "source": "/etc/shadow", "options": ["rbind", "ro"]}),
            )
        },
        refusal: "bind mount source /etc/shadow is not readable by you",
    },
    Attack {
        name: "bind_mount_unreadable_directory",
        edit: |c, _, _| {
            push_mount(
                c,
                json!({"destination": "/r", "type": "bind", "source": "/root", "options": ["rbind", "ro"]}),
            )
        },
        refusal: "bind mount source /root is not readable by you",
    },
    Attack {
        name: "bind_mount_readable_system_directory",
        edit: |c, _, _| {
            push_mount(
                c,
                json!({"destination": "/e", "type": "bind", "source": "/etc", "options": ["rbind", "ro"]}),
            )
        },
        refusal: "bind mount source /etc (resolved to /etc) is owned by uid 0",
    },
    Attack {
        name: "mount_type_not_allowed",
        edit: |c, _, _| {
            push_mount(
                c,
                json!({"destination": "/mnt", "type": "ext4", "source": "/dev/vda"}),
            )
        },
        refusal: "mount type \"ext4\" is not allowed",
    },
    Attack {
        name: "device_beyond_standard_set",
        edit: |c, _, _| {
            c["linux"]["devices"] =
                json!([{"path": "/dev/mem", "type": "c", "major": 1, "minor": 1}])
        },
        refusal: "device /dev/mem (c 1:1) is not in the allowed set",
    },
    Attack {
        name: "non_namespaced_sysctl",
        edit: |c, _, _| c["linux"]["sysctl"] = json!({"kernel.core_pattern": "|/tmp/pwn"}),
        refusal: "linux.sysctl.kernel.core_pattern: is not a namespaced sysctl",
    },
    Attack {
        name: "rlimit_above_hard_limit",
        edit: |c, _, _| {
            c["process"]["rlimits"] =
                json!([{"type": "RLIMIT_NOFILE", "hard": 1u64 << 40, "soft": 1024}])
        },
        refusal: "RLIMIT_NOFILE hard limit 1099511627776 is above your own hard limit",
    },
    Attack {
        name: "lower_oom_score_adj",
        edit: |c, _, _| c["process"]["oomScoreAdj"] = json!(-1000),
        refusal: "-1000 is lower than your own oom_score_adj",
    },
    Attack {
        name: "seccomp_listener_path",
        edit: |c, _, _| {
            c["linux"]["seccomp"] =
                json!({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"})
        },
        refusal: "seccomp listenerPath /run/agent.sock is not allowed",
    },
    Attack {
        name: "custom_apparmor_profile",
        edit: |c, _, _| c["process"]["apparmorProfile"] = json!("unconfined"),
        refusal: "process.apparmorProfile: custom AppArmor profiles are not allowed",
    },
    Attack {
        name: "custom_selinux_label",
        edit: |c, _, _| c["process"]["selinuxLabel"] = json!("system_u:system_r:spc_t:s0"),
        refusal: "process.selinuxLabel: custom SELinux labels are not allowed",
    },
    Attack {
        name: "unknown_field_is_not_passed_through",
        edit: |c, _, _| c["linux"]["netDevices"] = json!({"eth0": {}}),
        refusal: "linux.netDevices: unknown or unsupported field",
    },
    Attack {
        name: "device_cgroup_allow_all",
        edit: |c, _, _| {
            c["linux"]["resources"] = json!({"devices": [{"allow": true, "access": "rwm"}]})
        },
        refusal: "device cgroup allow rules are not allowed",
    },
    Attack {
        name: "rootfs_is_host_root",
        edit: |c, _, _| c["root"]["path"] = json!("/"),
        refusal: "root.path: / resolves to the host root directory",
    },
    Attack {
        name: "rootfs_symlink_to_host_root",
        edit: |c, b, _| {
            let link = b.dir.join("evil-root");
            std::os::unix::fs::symlink("/", &link).expect("symlink");
            c["root"]["path"] = json!("evil-root");
        },
        refusal: "evil-root resolves to the host root directory",
    },
    Attack {
        name: "rootfs_of_another_owner",
        edit: |c, _, _| c["root"]["path"] = json!("/usr"),
        refusal: "rootfs /usr (resolved to /usr) is owned by uid 0, not by you",
    },
    Attack {
        name: "gid_mapping_of_another_group",
        // 42 is `shadow`.
        edit: |c, _, _| c["linux"]["gidMappings"][0]["hostID"] = json!(42),
        refusal: "maps host gid 42, which is neither yours",
    },
    Attack {
        name: "intel_rdt_and_personality",
        edit: |c, _, _| {
            c["linux"]["intelRdt"] = json!({"closID": "x"});
            c["linux"]["personality"] = json!({"domain": "LINUX32"});
        },
        refusal: "linux.personality: personality is not allowed",
    },
    Attack {
        name: "intel_rdt",
        edit: |c, _, _| c["linux"]["intelRdt"] = json!({"closID": "x"}),
        refusal: "linux.intelRdt: intelRdt is not allowed",
    },
];

#[test]
fn every_config_attack_is_refused_with_its_own_message() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    let mut failed = Vec::new();
    for attack in ATTACKS {
        if let Some(why) = refusal_missing(&shim, &u1, attack.edit, attack.refusal)? {
            failed.push(format!("{}: {why}", attack.name));
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
    Ok(())
}

#[test]
fn attack_bind_mount_docker_and_containerd_sockets() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    // A root-owned socket like the real daemons' (which may not run here),
    // plus the real paths, refused whether or not they exist.
    let sockdir = tempfile::Builder::new()
        .prefix("locald-shim-sock-")
        .tempdir_in("/tmp")?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(sockdir.path(), fs::Permissions::from_mode(0o755))?;
    let sock = sockdir.path().join("docker.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&sock)?;
    fs::set_permissions(&sock, fs::Permissions::from_mode(0o666))?;
    for source in [
        sock.clone(),
        PathBuf::from("/var/run/docker.sock"),
        PathBuf::from("/run/containerd/containerd.sock"),
    ] {
        let mut b = Bundle::new(&u1, &["true"])?;
        push_mount(
            &mut b.config,
            json!({"destination": "/var/run/docker.sock", "type": "bind", "source": source, "options": ["rbind"]}),
        );
        b.write()?;
        let id = unique_id("sock");
        let out = run_bundle(&shim.path, &u1, &b, &id);
        assert_eq!(out.status.code(), Some(SHIM_ERROR), "{}", describe(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        let expected = if source.exists() {
            format!("bind mount source {} is a socket", source.display())
        } else {
            format!(
                "bind mount source {} cannot be accessed by you",
                source.display()
            )
        };
        assert!(err.contains(&expected), "{expected}: {}", describe(&out));
        assert_clean(&u1, &id);
    }
    Ok(())
}

#[test]
fn attack_bundle_dir_symlink_to_root_owned_dir() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    // A root-owned bundle with a config that would otherwise pass.
    let b = Bundle::new(&u1, &["true"])?;
    let rootdir = tempfile::Builder::new()
        .prefix("locald-shim-rootb-")
        .tempdir_in("/tmp")?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(rootdir.path(), fs::Permissions::from_mode(0o755))?;
    fs::write(
        rootdir.path().join("config.json"),
        serde_json::to_vec(&b.config)?,
    )?;
    let link = b.user_dir("links")?.join("bundle");
    std::os::unix::fs::symlink(rootdir.path(), &link)?;
    let id = unique_id("lnk");
    let out = run_as(
        &shim.path,
        &u1,
        &["run", "--bundle", &link.to_string_lossy(), "--id", &id],
    )?;
    assert_eq!(out.status.code(), Some(SHIM_ERROR), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is a symlink or not a directory"),
        "{}",
        describe(&out)
    );
    // Naming the root-owned directory directly is refused too.
    let out = run_as(
        &shim.path,
        &u1,
        &[
            "run",
            "--bundle",
            &rootdir.path().to_string_lossy(),
            "--id",
            &id,
        ],
    )?;
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is owned by uid 0, not by you"),
        "{}",
        describe(&out)
    );
    assert_clean(&u1, &id);
    Ok(())
}

#[test]
fn attack_config_json_symlink_to_root_owned_file() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    let b = Bundle::new(&u1, &["true"])?;
    let rootdir = tempfile::Builder::new()
        .prefix("locald-shim-rootc-")
        .tempdir_in("/tmp")?;
    let target = rootdir.path().join("config.json");
    fs::write(&target, serde_json::to_vec(&b.config)?)?;
    fs::remove_file(b.dir.join("config.json"))?;
    std::os::unix::fs::symlink(&target, b.dir.join("config.json"))?;
    let id = unique_id("cfg");
    let out = run_bundle(&shim.path, &u1, &b, &id);
    assert_eq!(out.status.code(), Some(SHIM_ERROR), "{}", describe(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("config.json: is a symlink"),
        "{}",
        describe(&out)
    );
    assert_clean(&u1, &id);
    Ok(())
}

#[test]
fn attack_id_with_path_traversal() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    let b = Bundle::new(&u1, &["true"])?;
    for id in ["../0/evil", "..", "a/../../b", "x..y"] {
        for args in [
            vec!["run", "--bundle", b.dir.to_str().unwrap_or("/"), "--id", id],
            vec!["kill", "--id", id],
            vec!["delete", "--id", id],
            vec!["state", "--id", id],
        ] {
            let out = run_as(&shim.path, &u1, &args)?;
            assert_eq!(out.status.code(), Some(SHIM_ERROR), "{}", describe(&out));
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("invalid container id"), "{args:?}: {err}");
        }
    }
    Ok(())
}

#[test]
fn attack_caller_path_and_ld_preload_are_ignored() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    let b = Bundle::new(&u1, &["env"])?;
    // A fake runc first in PATH that would leave a marker if it ever ran.
    let evil = b.user_dir("evil")?;
    let marker = b.tmp.path().join("fake-runc-ran");
    fs::write(
        evil.join("runc"),
        format!("#!/bin/sh\ntouch {}\n", marker.display()),
    )?;
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(evil.join("runc"), fs::Permissions::from_mode(0o755))?;
    let id = unique_id("env");
    let out = output(
        shim_as(
            &shim.path,
            &u1,
            &["run", "--bundle", &b.dir.to_string_lossy(), "--id", &id],
        )
        .env("PATH", format!("{}:/usr/sbin:/usr/bin", evil.display()))
        .env("LD_PRELOAD", evil.join("evil.so"))
        .env("LD_LIBRARY_PATH", &evil)
        .env("LOCALD_CANARY", "leak"),
    )?;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert!(!marker.exists(), "the caller's PATH chose runc");
    let env = String::from_utf8_lossy(&out.stdout);
    for leaked in [
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "LOCALD_CANARY",
        evil.to_str().unwrap_or("/"),
    ] {
        assert!(
            !env.contains(leaked),
            "{leaked} leaked into the container: {env}"
        );
    }
    assert!(!String::from_utf8_lossy(&out.stderr).contains("preload"));
    assert_clean(&u1, &id);
    Ok(())
}

#[test]
fn attack_swap_config_and_rootfs_during_checks() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    // The bundle's `rootfs` and `config.json` are flipped by renames in a
    // tight loop between a good version and an evil one while the shim runs.
    // Every run must either run the good rootfs or be refused: the shim
    // reads each file once and runc only sees what the shim checked.
    let mut b = Bundle::new(&u1, &["cat", "/marker"])?;
    let good_root = b.dir.join("rootfs");
    fs::rename(&good_root, b.dir.join("rootfs-good"))?;
    std::os::unix::fs::symlink("rootfs-good", &good_root)?;
    std::os::unix::fs::symlink("/", b.dir.join("rootfs-evil"))?;
    let mut evil = b.config.clone();
    evil["hooks"] = json!({"prestart": [{"path": "/bin/true"}]});
    b.write_config_to(&b.dir.join("config-evil.json"), &evil)?;
    b.config = b.config.clone();
    b.write_config_to(&b.dir.join("config-good.json"), &b.config.clone())?;
    chown_tree(&b.dir, (u1.uid, u1.gid))?;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flipper = {
        let dir = b.dir.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut evil = false;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (root, cfg) = if evil {
                    ("rootfs-evil", "config-evil.json")
                } else {
                    ("rootfs-good", "config-good.json")
                };
                // Swap by rename so each name always exists.
                let tmp_link = dir.join("rootfs.tmp");
                let _ = fs::remove_file(&tmp_link);
                let _ = std::os::unix::fs::symlink(root, &tmp_link);
                let _ = fs::rename(&tmp_link, dir.join("rootfs"));
                let _ = fs::copy(dir.join(cfg), dir.join("config.tmp"));
                let _ = fs::rename(dir.join("config.tmp"), dir.join("config.json"));
                evil = !evil;
            }
        })
    };
    let mut ran = 0;
    let mut refused = 0;
    for _ in 0..20 {
        // The flipper runs as root, so fix ownership it may have changed.
        let _ = chown_tree(&b.dir, (u1.uid, u1.gid));
        let id = unique_id("race");
        let out = run_bundle(&shim.path, &u1, &b, &id);
        let err = String::from_utf8_lossy(&out.stderr);
        match out.status.code() {
            Some(0) => {
                assert_eq!(
                    String::from_utf8_lossy(&out.stdout),
                    "good",
                    "{}",
                    describe(&out)
                );
                ran += 1;
            }
            Some(SHIM_ERROR) => {
                assert!(
                    err.contains("resolves to the host root directory")
                        || err.contains("OCI hooks are not allowed")
                        || err.contains("not by you")
                        || err.contains("cannot open"),
                    "unexpected failure: {}",
                    describe(&out)
                );
                refused += 1;
            }
            _ => panic!("a swapped bundle ran something else: {}", describe(&out)),
        }
        assert_clean(&u1, &id);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = flipper.join();
    eprintln!("swap race: {ran} ran the checked rootfs, {refused} refused");
    Ok(())
}

#[test]
fn swapping_the_bundle_after_start_changes_nothing() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    let b = Bundle::new(&u1, &["sh", "-c", "sleep 1; cat /marker"])?;
    let id = unique_id("swap");
    let child = spawn(
        shim_as(
            &shim.path,
            &u1,
            &["run", "--bundle", &b.dir.to_string_lossy(), "--id", &id],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped()),
    )?;
    wait_for_status(&shim.path, &u1, &id, "running", Duration::from_secs(10))?;
    // The config runc uses is the shim's root-owned copy, not the caller's.
    let staged = Path::new("/run/locald-shim")
        .join(u1.uid.to_string())
        .join("bundles")
        .join(&id)
        .join("config.json");
    let meta = fs::metadata(&staged)?;
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.mode() & 0o777), (0, 0o600));
    let sanitized: Value = serde_json::from_slice(&fs::read(&staged)?)?;
    assert_eq!(
        sanitized["linux"]["cgroupsPath"],
        format!("/locald-shim/u{}/{id}", u1.uid)
    );
    // Now swap everything the caller controls.
    fs::rename(b.dir.join("rootfs"), b.dir.join("rootfs-old"))?;
    std::os::unix::fs::symlink("/", b.dir.join("rootfs"))?;
    fs::write(b.dir.join("config.json"), b"{\"hooks\":{}}")?;
    let out = child.wait_with_output()?;
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "good");
    assert_clean(&u1, &id);
    Ok(())
}

#[test]
fn bundle_cgroups_path_is_overridden() -> Result<()> {
    let Some((shim, u1, _)) = setup() else {
        return Ok(());
    };
    let mut b = Bundle::new(&u1, &["cat", "/proc/self/cgroup"])?;
    b.config["linux"]["cgroupsPath"] = json!("/../../system.slice/evil");
    b.write()?;
    let id = unique_id("cg");
    let out = run_bundle(&shim.path, &u1, &b, &id);
    assert_eq!(out.status.code(), Some(0), "{}", describe(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!text.contains("evil"), "{text}");
    assert_clean(&u1, &id);
    Ok(())
}

mod client {
    //! `locald::shim_client` driving the installed setuid shim.
    use super::*;
    use locald::shim_client::{BundleSpec, ShimClient, ShimError};

    /// `client.run`, retried while another test thread's fork still holds
    /// this test's freshly copied shim open for writing (ETXTBSY).
    async fn run(client: &ShimClient, bundle: &Path, id: &str) -> Result<tokio::process::Child> {
        for _ in 0..100 {
            match client.run(bundle, id) {
                Err(ShimError::Spawn { source, .. })
                    if source.raw_os_error() == Some(libc::ETXTBSY) =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                r => return Ok(r?),
            }
        }
        anyhow::bail!("shim stayed busy")
    }

    #[tokio::test]
    async fn client_writes_a_bundle_and_runs_it() -> Result<()> {
        let Some((shim, _, _)) = setup() else {
            return Ok(());
        };
        // The test process is root, so the shim runs in its root mode and the
        // bundle maps root's own uid; the setuid path is covered above.
        let tmp = tempfile::tempdir()?;
        let rootfs = tmp.path().join("rootfs");
        make_rootfs(&rootfs, (0, 0), "client")?;
        let spec = BundleSpec::for_current_user(
            &rootfs,
            vec![
                "sh".into(),
                "-c".into(),
                "cat /marker; echo; echo e >&2; exit 4".into(),
            ],
        )?
        .env(vec!["PATH=/bin".into()]);
        let bundle = spec.write(&tmp.path().join("bundle"))?;
        let client = ShimClient::new(&shim.path);
        client.check_installed()?;
        let id = unique_id("client");
        let child = run(&client, &bundle, &id).await?;
        let out = child.wait_with_output().await?;
        assert_eq!(out.status.code(), Some(4));
        assert_eq!(String::from_utf8_lossy(&out.stdout), "client\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "e\n");
        assert!(matches!(
            client.state(&id).await,
            Err(ShimError::Failed { .. })
        ));
        Ok(())
    }

    #[tokio::test]
    async fn client_kill_state_delete() -> Result<()> {
        let Some((shim, _, _)) = setup() else {
            return Ok(());
        };
        let tmp = tempfile::tempdir()?;
        let rootfs = tmp.path().join("rootfs");
        make_rootfs(&rootfs, (0, 0), "client")?;
        let bundle = BundleSpec::for_current_user(&rootfs, vec!["sleep".into(), "30".into()])?
            .write(&tmp.path().join("bundle"))?;
        let client = ShimClient::new(&shim.path);
        let id = unique_id("cstate");
        let child = run(&client, &bundle, &id).await?;
        let mut state = None;
        for _ in 0..200 {
            if let Ok(s) = client.state(&id).await {
                if s.status == "running" {
                    state = Some(s);
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let state = state.expect("container reached running");
        assert!(state.pid.is_some_and(|p| p > 0));
        client.kill(&id, "KILL").await?;
        let out = child.wait_with_output().await?;
        assert_eq!(out.status.code(), Some(137));
        let err = client.delete(&id, false).await.expect_err("already gone");
        assert!(matches!(err, ShimError::Failed { .. }), "{err}");
        Ok(())
    }

    /// Runs only when spawned by `client_as_the_unprivileged_user`, as that
    /// user: the client builds the bundle from the user's own ids and subuid
    /// ranges and runs it through the setuid shim.
    #[tokio::test]
    #[ignore = "spawned as the unprivileged test user by client_as_the_unprivileged_user"]
    async fn client_inner_as_user() -> Result<()> {
        let (Ok(shim), Ok(rootfs), Ok(work)) = (
            std::env::var("LOCALD_SHIM_TEST_SHIM"),
            std::env::var("LOCALD_SHIM_TEST_ROOTFS"),
            std::env::var("LOCALD_SHIM_TEST_WORK"),
        ) else {
            return Ok(());
        };
        let spec = BundleSpec::for_current_user(
            Path::new(&rootfs),
            vec!["sh".into(), "-c".into(), "id -u; cat /marker".into()],
        )?
        .env(vec!["PATH=/bin".into()]);
        assert!(
            spec.uid_mappings.len() >= 2,
            "subuid range not found: {spec:?}"
        );
        let bundle = spec.write(&Path::new(&work).join("bundle"))?;
        let client = ShimClient::new(shim);
        client.check_installed()?;
        let id = unique_id("cuser");
        let out = run(&client, &bundle, &id).await?.wait_with_output().await?;
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout), "0\nuser");
        println!("INNER-OK");
        Ok(())
    }

    #[test]
    fn client_as_the_unprivileged_user() -> Result<()> {
        let Some((shim, u1, _)) = setup() else {
            return Ok(());
        };
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        let tmp = tempfile::Builder::new()
            .prefix("locald-shim-client-")
            .tempdir_in("/tmp")?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))?;
        // This test binary, copied where the user can run it.
        let exe = tmp.path().join("shim-tests");
        fs::copy(std::env::current_exe()?, &exe)?;
        fs::set_permissions(&exe, fs::Permissions::from_mode(0o755))?;
        let rootfs = tmp.path().join("rootfs");
        make_rootfs(&rootfs, (u1.uid, u1.gid), "user")?;
        let work = tmp.path().join("work");
        fs::create_dir(&work)?;
        chown_tree(&work, (u1.uid, u1.gid))?;
        let out = output(
            std::process::Command::new(&exe)
                .args([
                    // This module's path in the test binary, without the
                    // crate's name: `shim::client::…` in `integration`.
                    &format!(
                        "{}::client_inner_as_user",
                        module_path!()
                            .split_once("::")
                            .map_or(module_path!(), |(_, rest)| rest)
                    ),
                    "--exact",
                    "--ignored",
                    "--nocapture",
                ])
                .env_clear()
                .env("PATH", "/usr/bin:/bin")
                .env("LOCALD_SHIM_TEST_SHIM", &shim.path)
                .env("LOCALD_SHIM_TEST_ROOTFS", &rootfs)
                .env("LOCALD_SHIM_TEST_WORK", &work)
                .current_dir(&work)
                .uid(u1.uid)
                .gid(u1.gid),
        )?;
        assert!(out.status.success(), "{}", describe(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("INNER-OK"),
            "{}",
            describe(&out)
        );
        Ok(())
    }

    #[test]
    fn client_explains_a_missing_or_plain_shim() -> Result<()> {
        let tmp = tempfile::tempdir()?;
        let missing = ShimClient::new(tmp.path().join("nope"));
        let e = missing.check_installed().expect_err("missing");
        assert!(matches!(e, ShimError::NotInstalled { .. }), "{e}");
        assert!(e.to_string().contains("owner root and mode 4755"), "{e}");

        let plain = tmp.path().join("plain");
        fs::write(&plain, b"#!/bin/sh\n")?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&plain, fs::Permissions::from_mode(0o755))?;
        let e = ShimClient::new(&plain)
            .check_installed()
            .expect_err("not setuid");
        assert!(matches!(e, ShimError::NotSetuid { .. }), "{e}");
        assert!(e.to_string().contains("not mounted nosuid"), "{e}");

        // Setuid root but on a nosuid mount: the bit would be ignored.
        if nix::unistd::geteuid().is_root() {
            let mnt = tmp.path().join("nosuid");
            fs::create_dir(&mnt)?;
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "nosuid,size=1m", "tmpfs"])
                .arg(&mnt)
                .status()?;
            assert!(mounted.success(), "mount tmpfs");
            let shim = mnt.join("locald-shim");
            let checked = fs::write(&shim, b"#!/bin/sh\n")
                .and_then(|()| fs::set_permissions(&shim, fs::Permissions::from_mode(0o4755)))
                .map(|()| ShimClient::new(&shim).check_installed());
            let unmounted = std::process::Command::new("umount").arg(&mnt).status()?;
            assert!(unmounted.success(), "umount");
            let e = checked?.expect_err("nosuid");
            assert!(matches!(e, ShimError::NosuidMount { .. }), "{e}");
            assert!(e.to_string().contains("mounted nosuid"), "{e}");
        }
        Ok(())
    }
}
