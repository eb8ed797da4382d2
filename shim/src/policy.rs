//! The bundle policy: a pure function from a bundle's `config.json` and the
//! facts about the caller to a verdict.
//!
//! This module is the heart of the shim's security boundary. It touches no
//! file, process or global state, so it can be unit-tested, property-tested
//! and fuzzed. [`validate`] checks the structure of a config and returns a
//! [`Plan`]: the spec to hand runc plus the host paths (rootfs, bind-mount
//! sources) that the caller asked for. Those paths are then opened *as the
//! caller* by `bundle.rs`, and the facts about what was opened are judged
//! here again by [`check_rootfs`] and [`check_bind_source`]. Finally
//! [`finalize`] rewrites the spec to point at the shim's own staging paths.
//!
//! Everything is an allow-list: a field, mount type, option, device, sysctl or
//! namespace that is not named here is refused, never passed through.

use std::fmt;
use std::path::{Component, Path, PathBuf};

use oci_spec::runtime::{
    LinuxDeviceType, LinuxIdMapping, LinuxNamespaceType, LinuxSeccompAction, Mount,
    PosixRlimitType, Spec,
};
use serde_json::Value;

/// Largest `config.json` the shim reads; a real one is a few KiB.
pub const MAX_CONFIG_BYTES: usize = 1 << 20;

/// The kernel accepts at most this many lines in `uid_map` / `gid_map`.
const MAX_ID_MAPPINGS: usize = 340;

/// A contiguous range of host ids from `/etc/subuid` or `/etc/subgid`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdRange {
    /// First host id of the range.
    pub start: u32,
    /// Number of ids in the range.
    pub count: u32,
}

impl IdRange {
    fn end(self) -> u64 {
        u64::from(self.start) + u64::from(self.count)
    }
}

/// What the shim knows about the user who invoked it. Gathered by
/// `caller.rs` from the kernel and root-owned files, never from the caller.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The caller's real uid.
    pub uid: u32,
    /// The caller's real gid.
    pub gid: u32,
    /// The caller's `/etc/subuid` ranges.
    pub subuids: Vec<IdRange>,
    /// The caller's `/etc/subgid` ranges.
    pub subgids: Vec<IdRange>,
    /// The caller's hard rlimits; a resource missing here is refused.
    pub rlimit_hard: Vec<(PosixRlimitType, u64)>,
    /// The caller's current `oom_score_adj`.
    pub oom_score_adj: i32,
}

/// One reason a bundle is refused: the config field and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    /// JSON path of the offending field, e.g. `linux.uidMappings[0]`.
    pub field: String,
    /// What is wrong and why it is refused.
    pub message: String,
}

impl Violation {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// The verdict when a bundle is refused: every violation found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal(pub Vec<Violation>);

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "refused: {v}")?;
        }
        Ok(())
    }
}

/// A bind mount the caller asked for; its source is opened as the caller and
/// judged by [`check_bind_source`] before anything is mounted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindRequest {
    /// Index of the mount in `Plan::spec.mounts`.
    pub index: usize,
    /// The host path as written in the bundle (absolute).
    pub source: PathBuf,
    /// Whether the mount is read-only (`ro` in its options).
    pub readonly: bool,
}

/// A structurally valid bundle: the spec to run and the host paths that must
/// still be opened as the caller and checked.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The parsed spec; [`finalize`] turns it into what runc gets.
    pub spec: Spec,
    /// `root.path` as written (relative to the bundle directory or absolute).
    pub rootfs: PathBuf,
    /// The bind mounts, in mount order.
    pub binds: Vec<BindRequest>,
}

/// The kind of file a host path turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A directory.
    Directory,
    /// A regular file.
    Regular,
    /// A unix socket (e.g. `docker.sock`).
    Socket,
    /// A block or character device.
    Device,
    /// A named pipe.
    Fifo,
    /// Anything else.
    Other,
}

impl fmt::Display for FileKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FileKind::Directory => "a directory",
            FileKind::Regular => "a regular file",
            FileKind::Socket => "a socket",
            FileKind::Device => "a device node",
            FileKind::Fifo => "a named pipe",
            FileKind::Other => "a special file",
        })
    }
}

/// Facts about a host path after it was opened as the caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileFacts {
    /// What kind of file it is.
    pub kind: FileKind,
    /// Owner uid.
    pub uid: u32,
    /// Device and inode, to recognise the host root.
    pub dev_ino: (u64, u64),
    /// The path the kernel resolved it to (from `/proc/self/fd`).
    pub canonical: PathBuf,
    /// Whether the caller could open it for reading.
    pub caller_can_read: bool,
}

/// Read-only system paths any caller may bind-mount (read-only) even though
/// they do not own them: the files a networked dev container needs to
/// resolve names and check TLS certificates. Nothing secret lives here.
pub const SYSTEM_READONLY_BINDS: &[&str] = &[
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/localtime",
    "/etc/ssl/certs",
    "/usr/share/zoneinfo",
    "/usr/share/ca-certificates",
];

/// Mount types the container may ask for. All of them are mounted by runc
/// from inside the user namespace, where the kernel applies the same rules as
/// to any unprivileged user; `bind` additionally has its source checked.
const MOUNT_TYPES: &[&str] = &[
    "bind", "proc", "sysfs", "tmpfs", "devpts", "mqueue", "cgroup",
];

/// Mount options without a value that may appear on any mount.
const MOUNT_FLAGS: &[&str] = &[
    "ro",
    "rw",
    "nosuid",
    "nodev",
    "noexec",
    "exec",
    "relatime",
    "norelatime",
    "strictatime",
    "nostrictatime",
    "noatime",
    "atime",
    "nodiratime",
    "diratime",
    "bind",
    "rbind",
    "private",
    "rprivate",
    "slave",
    "rslave",
    "newinstance",
];

/// Mount options with a value (`key=value`); the kernel parses the value.
const MOUNT_KEYED: &[&str] = &["mode", "size", "nr_inodes", "ptmxmode", "gid", "uid"];

/// The device nodes a container may have: `(path, major, minor)`, all char
/// devices. This is runc's default set; anything else would expose host
/// hardware.
const DEVICES: &[(&str, i64, i64)] = &[
    ("/dev/null", 1, 3),
    ("/dev/zero", 1, 5),
    ("/dev/full", 1, 7),
    ("/dev/random", 1, 8),
    ("/dev/urandom", 1, 9),
    ("/dev/tty", 5, 0),
];

/// Sysctls that live in the IPC namespace.
const IPC_SYSCTLS: &[&str] = &[
    "kernel.msgmax",
    "kernel.msgmnb",
    "kernel.msgmni",
    "kernel.sem",
    "kernel.shmall",
    "kernel.shmmax",
    "kernel.shmmni",
    "kernel.shm_rmid_forced",
];

/// The cgroup every container of `uid` lives under, whatever the bundle says.
pub fn cgroups_path(uid: u32, id: &str) -> PathBuf {
    PathBuf::from(format!("/locald-shim/u{uid}/{id}"))
}

/// Parse and validate raw `config.json` bytes.
pub fn validate_bytes(bytes: &[u8], caller: &Caller) -> Result<Plan, Refusal> {
    if bytes.len() > MAX_CONFIG_BYTES {
        return Err(Refusal(vec![Violation::new(
            "config.json",
            format!("is larger than {MAX_CONFIG_BYTES} bytes"),
        )]));
    }
    let raw: Value = serde_json::from_slice(bytes).map_err(|e| {
        Refusal(vec![Violation::new(
            "config.json",
            format!("is not valid JSON: {e}"),
        )])
    })?;
    validate(&raw, caller)
}

/// Validate a parsed `config.json` against the caller's facts.
///
/// Returns every violation found, not just the first, so a user fixing a
/// bundle sees the whole list at once.
pub fn validate(raw: &Value, caller: &Caller) -> Result<Plan, Refusal> {
    let spec = parse_spec(raw)?;
    let mut v = Vec::new();

    if !spec.version().starts_with("1.") {
        v.push(Violation::new(
            "ociVersion",
            format!("{:?} is not a 1.x runtime spec version", spec.version()),
        ));
    }
    let rootfs = check_root(&spec, &mut v);

    let Some(linux) = spec.linux() else {
        v.push(Violation::new(
            "linux",
            "is missing: a user namespace with uid/gid mappings is required",
        ));
        return Err(Refusal(v));
    };
    let ns = check_namespaces(&spec, linux, &mut v);
    let (uid_ranges, gid_ranges) = check_id_mappings(linux, caller, &mut v);

    check_process(&spec, &uid_ranges, &gid_ranges, caller, &mut v);
    check_devices(linux, &uid_ranges, &gid_ranges, &mut v);
    check_sysctls(linux, &ns, &mut v);
    check_resources(&spec, &mut v);
    check_seccomp(linux, &mut v);
    check_linux_misc(linux, &mut v);

    let binds = check_mounts(&spec, &mut v);

    if v.is_empty() {
        Ok(Plan {
            spec,
            rootfs,
            binds,
        })
    } else {
        Err(Refusal(v))
    }
}

/// Turn raw JSON into a typed spec, but only after every key passed the
/// allow-list: a config with an unknown or forbidden field is refused
/// before anything interprets the rest of it.
fn parse_spec(raw: &Value) -> Result<Spec, Refusal> {
    let mut v = Vec::new();
    check_raw_keys(raw, &mut v);
    if !v.is_empty() {
        // Unknown or forbidden fields: do not even try to interpret the rest.
        return Err(Refusal(v));
    }
    serde_json::from_value(raw.clone()).map_err(|e| {
        Refusal(vec![Violation::new(
            "config.json",
            format!("is not a valid OCI runtime spec: {e}"),
        )])
    })
}

/// `root.path` as written, to be opened as the caller later; a missing root
/// or an unusable path is a violation (and yields an empty path).
fn check_root(spec: &Spec, v: &mut Vec<Violation>) -> PathBuf {
    match spec.root() {
        None => {
            v.push(Violation::new("root", "is missing"));
            PathBuf::new()
        }
        Some(root) => {
            let p = root.path().clone();
            if p.as_os_str().is_empty() {
                v.push(Violation::new("root.path", "is empty"));
            }
            if has_nul(&p) {
                v.push(Violation::new("root.path", "contains a NUL byte"));
            }
            p
        }
    }
}

/// Container-side id ranges `[start, end)` that a mapping list maps; ids
/// used inside the container must fall into them.
type MappedIds = Vec<(u64, u64)>;

/// Id mappings: only the caller's own id and their subordinate ranges.
/// Returns what the uid and the gid mappings map inside the container.
fn check_id_mappings(
    linux: &oci_spec::runtime::Linux,
    caller: &Caller,
    v: &mut Vec<Violation>,
) -> (MappedIds, MappedIds) {
    let uid_ranges = check_mappings(
        "linux.uidMappings",
        "uid",
        "/etc/subuid",
        linux.uid_mappings().as_deref(),
        caller.uid,
        &caller.subuids,
        v,
    );
    let gid_ranges = check_mappings(
        "linux.gidMappings",
        "gid",
        "/etc/subgid",
        linux.gid_mappings().as_deref(),
        caller.gid,
        &caller.subgids,
        v,
    );
    (uid_ranges, gid_ranges)
}

/// Which namespaces the container creates (sysctls depend on them).
struct Namespaces {
    net: bool,
    ipc: bool,
}

/// A fresh user and mount namespace are mandatory, nothing is joined.
fn check_namespaces(
    spec: &Spec,
    linux: &oci_spec::runtime::Linux,
    v: &mut Vec<Violation>,
) -> Namespaces {
    let created = scan_namespaces(linux, v);
    if !created.user
        && !linux
            .namespaces()
            .iter()
            .flatten()
            .any(|n| n.typ() == LinuxNamespaceType::User)
    {
        v.push(Violation::new(
            "linux.namespaces",
            "no user namespace: the container must run in a new user namespace",
        ));
    }
    if !created.mount {
        v.push(Violation::new(
            "linux.namespaces",
            "no mount namespace: the container must run in a new mount namespace",
        ));
    }
    if (spec.hostname().is_some() || spec.domainname().is_some()) && !created.uts {
        v.push(Violation::new(
            "hostname",
            "setting a hostname requires a new uts namespace",
        ));
    }

    Namespaces {
        net: created.net,
        ipc: created.ipc,
    }
}

/// The namespaces a config creates afresh (not joined by path), which decide
/// what else it may ask for.
#[derive(Default)]
struct Created {
    user: bool,
    mount: bool,
    net: bool,
    ipc: bool,
    uts: bool,
}

/// Go through `linux.namespaces` once, refusing duplicates, namespaces
/// joined by path and time namespaces, and note which ones are created.
fn scan_namespaces(linux: &oci_spec::runtime::Linux, v: &mut Vec<Violation>) -> Created {
    let mut seen = Vec::new();
    let mut created = Created::default();
    for (i, ns) in linux.namespaces().iter().flatten().enumerate() {
        let field = format!("linux.namespaces[{i}]");
        let typ = ns.typ();
        if seen.contains(&typ) {
            v.push(Violation::new(
                &field,
                format!("{typ} namespace listed twice"),
            ));
        }
        seen.push(typ);
        if let Some(path) = ns.path() {
            v.push(joined_namespace(&field, typ, path));
            continue;
        }
        match typ {
            LinuxNamespaceType::User => created.user = true,
            LinuxNamespaceType::Mount => created.mount = true,
            LinuxNamespaceType::Network => created.net = true,
            LinuxNamespaceType::Ipc => created.ipc = true,
            LinuxNamespaceType::Uts => created.uts = true,
            LinuxNamespaceType::Pid | LinuxNamespaceType::Cgroup => {}
            LinuxNamespaceType::Time => v.push(Violation::new(
                &field,
                "time namespaces are not supported by the shim",
            )),
        }
    }
    created
}

/// The refusal of a namespace joined by `path`: runc would join it as root,
/// so the host's (or anyone's) namespaces could be entered, and a joined user
/// namespace has mappings the shim never checked.
fn joined_namespace(field: &str, typ: LinuxNamespaceType, path: &Path) -> Violation {
    if typ == LinuxNamespaceType::User {
        Violation::new(
            field,
            format!(
                "user namespace joined by path {}: the container must create \
                 its own user namespace",
                path.display()
            ),
        )
    } else {
        Violation::new(
            field,
            format!(
                "joining an existing {typ} namespace by path {} is not allowed",
                path.display()
            ),
        )
    }
}

/// Devices: the standard set only, with mapped owners.
fn check_devices(
    linux: &oci_spec::runtime::Linux,
    uid_ranges: &[(u64, u64)],
    gid_ranges: &[(u64, u64)],
    v: &mut Vec<Violation>,
) {
    // Devices: the standard set only.
    for (i, d) in linux.devices().iter().flatten().enumerate() {
        let field = format!("linux.devices[{i}]");
        let path = d.path().to_string_lossy();
        let ok = d.typ() == LinuxDeviceType::C
            && DEVICES
                .iter()
                .any(|&(p, ma, mi)| p == path && ma == d.major() && mi == d.minor());
        if !ok {
            v.push(Violation::new(
                &field,
                format!(
                    "device {path} ({} {}:{}) is not in the allowed set \
                     (null, zero, full, random, urandom, tty)",
                    d.typ().as_str(),
                    d.major(),
                    d.minor()
                ),
            ));
        }
        if let Some(mode) = d.file_mode() {
            if mode & !0o666 != 0 {
                v.push(Violation::new(
                    &field,
                    format!("device file mode {mode:o} has bits beyond 0666"),
                ));
            }
        }
        if let Some(uid) = d.uid() {
            if !in_ranges(uid, uid_ranges) {
                v.push(Violation::new(
                    &field,
                    format!("device owner uid {uid} is not mapped"),
                ));
            }
        }
        if let Some(gid) = d.gid() {
            if !in_ranges(gid, gid_ranges) {
                v.push(Violation::new(
                    &field,
                    format!("device group gid {gid} is not mapped"),
                ));
            }
        }
    }
}

/// Sysctls: only those that live in a namespace the container creates.
fn check_sysctls(linux: &oci_spec::runtime::Linux, ns: &Namespaces, v: &mut Vec<Violation>) {
    // Sysctls: only those that live in a namespace the container owns.
    if let Some(sysctl) = linux.sysctl() {
        let mut keys: Vec<_> = sysctl.iter().collect();
        keys.sort();
        for (k, val) in keys {
            let field = format!("linux.sysctl.{k}");
            let namespaced = (IPC_SYSCTLS.contains(&k.as_str()) || k.starts_with("fs.mqueue."))
                && ns.ipc
                || k.starts_with("net.") && ns.net;
            let well_formed = !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
                && !k.contains("..");
            if !namespaced || !well_formed {
                v.push(Violation::new(
                    &field,
                    "is not a namespaced sysctl of a namespace this container creates",
                ));
            }
            if val.contains('\n') || val.contains('\0') {
                v.push(Violation::new(&field, "value contains a newline or NUL"));
            }
        }
    }
}

fn check_seccomp(linux: &oci_spec::runtime::Linux, v: &mut Vec<Violation>) {
    // Seccomp can only restrict, except for the notify listener: that makes
    // runc (root) connect to a socket of the caller's choosing.
    if let Some(seccomp) = linux.seccomp() {
        if let Some(p) = seccomp.listener_path() {
            v.push(Violation::new(
                "linux.seccomp.listenerPath",
                format!(
                    "seccomp listenerPath {} is not allowed: runc would hand a \
                     seccomp notify fd to a socket as root",
                    p.display()
                ),
            ));
        }
        if seccomp.listener_metadata().is_some() {
            v.push(Violation::new(
                "linux.seccomp.listenerMetadata",
                "is not allowed (no seccomp listener)",
            ));
        }
        let notify = seccomp.default_action() == LinuxSeccompAction::ScmpActNotify
            || seccomp
                .syscalls()
                .iter()
                .flatten()
                .any(|s| s.action() == LinuxSeccompAction::ScmpActNotify);
        if notify {
            v.push(Violation::new(
                "linux.seccomp",
                "SCMP_ACT_NOTIFY is not allowed (no seccomp listener)",
            ));
        }
    }
}

/// Propagation, masked/read-only paths, and the fields that are refused.
fn check_linux_misc(linux: &oci_spec::runtime::Linux, v: &mut Vec<Violation>) {
    if let Some(p) = linux.rootfs_propagation() {
        if !["private", "rprivate", "slave", "rslave"].contains(&p.as_str()) {
            v.push(Violation::new(
                "linux.rootfsPropagation",
                format!("{p:?} is not allowed: only private or slave propagation"),
            ));
        }
    }
    for (name, paths) in [
        ("linux.maskedPaths", linux.masked_paths()),
        ("linux.readonlyPaths", linux.readonly_paths()),
    ] {
        for (i, p) in paths.iter().flatten().enumerate() {
            if let Err(msg) = container_path_ok(Path::new(p)) {
                v.push(Violation::new(format!("{name}[{i}]"), msg));
            }
        }
    }
    // Fields the product does not need and that each widen what runc does as
    // root; refused with a name so the user knows which one.
    if linux
        .mount_label()
        .as_deref()
        .is_some_and(|s| !s.is_empty())
    {
        v.push(Violation::new(
            "linux.mountLabel",
            "custom SELinux mount labels are not allowed",
        ));
    }
    if linux.intel_rdt().is_some() {
        v.push(Violation::new("linux.intelRdt", "intelRdt is not allowed"));
    }
    if linux.personality().is_some() {
        v.push(Violation::new(
            "linux.personality",
            "personality is not allowed",
        ));
    }
    if linux.time_offsets().is_some() {
        v.push(Violation::new(
            "linux.timeOffsets",
            "time namespace offsets are not allowed",
        ));
    }
}

/// The allow-lists of JSON keys, object by object, that [`check_raw_keys`]
/// applies before typed parsing, and the known keys that are refused with a
/// message of their own. A key in neither list is refused as unknown.
mod fields {
    pub(super) const TOP: &[&str] = &[
        "ociVersion",
        "root",
        "mounts",
        "process",
        "hostname",
        "domainname",
        "annotations",
        "linux",
    ];
    pub(super) const TOP_NAMED: &[(&str, &str)] = &[
        (
            "hooks",
            "OCI hooks are not allowed: they run as root on the host",
        ),
        ("solaris", "is not a Linux field"),
        ("windows", "is not a Linux field"),
        ("vm", "virtual-machine containers are not supported"),
        ("zos", "is not a Linux field"),
    ];
    pub(super) const ROOT: &[&str] = &["path", "readonly"];
    pub(super) const MOUNT: &[&str] = &["destination", "type", "source", "options"];
    pub(super) const PROCESS: &[&str] = &[
        "terminal",
        "user",
        "args",
        "env",
        "cwd",
        "capabilities",
        "rlimits",
        "noNewPrivileges",
        "oomScoreAdj",
        "consoleSize",
    ];
    pub(super) const PROCESS_NAMED: &[(&str, &str)] = &[
        (
            "apparmorProfile",
            "custom AppArmor profiles are not allowed",
        ),
        ("selinuxLabel", "custom SELinux labels are not allowed"),
        ("ioPriority", "is not allowed"),
        ("scheduler", "is not allowed"),
        ("execCPUAffinity", "is not allowed"),
        ("commandLine", "is a Windows field"),
    ];
    pub(super) const USER: &[&str] = &["uid", "gid", "umask", "additionalGids"];
    pub(super) const USER_NAMED: &[(&str, &str)] = &[("username", "is a Windows field")];
    pub(super) const LINUX: &[&str] = &[
        "uidMappings",
        "gidMappings",
        "sysctl",
        "resources",
        "cgroupsPath",
        "namespaces",
        "devices",
        "seccomp",
        "rootfsPropagation",
        "maskedPaths",
        "readonlyPaths",
        "mountLabel",
        "intelRdt",
        "personality",
        "timeOffsets",
    ];
    pub(super) const RESOURCES: &[&str] = &["devices", "memory", "cpu", "pids"];
    pub(super) const RESOURCES_NAMED: &[(&str, &str)] = &[
        ("blockIO", "blockIO limits are not supported by the shim"),
        (
            "hugepageLimits",
            "hugepage limits are not supported by the shim",
        ),
        (
            "network",
            "network class/priority is not supported by the shim",
        ),
        ("rdma", "rdma limits are not supported by the shim"),
        (
            "unified",
            "raw cgroup v2 files are not allowed: use memory, cpu or pids",
        ),
    ];
    pub(super) const SECCOMP: &[&str] = &[
        "defaultAction",
        "defaultErrnoRet",
        "architectures",
        "flags",
        "syscalls",
        "listenerPath",
        "listenerMetadata",
    ];
    pub(super) const NAMESPACE: &[&str] = &["type", "path"];
    pub(super) const DEVICE: &[&str] =
        &["path", "type", "major", "minor", "fileMode", "uid", "gid"];
}

/// Refuse fields by name before typed parsing, so that nothing the shim does
/// not know about (a newer spec field, a runc extension) reaches runc, and so
/// that dangerous known fields get a message naming them.
fn check_raw_keys(raw: &Value, v: &mut Vec<Violation>) {
    let Some(top) = raw.as_object() else {
        v.push(Violation::new("config.json", "is not a JSON object"));
        return;
    };
    keys("", top, fields::TOP, fields::TOP_NAMED, v);
    if let Some(Value::Object(o)) = top.get("root") {
        keys("root", o, fields::ROOT, &[], v);
    }
    if let Some(Value::Array(a)) = top.get("mounts") {
        keys_each("mounts", a, fields::MOUNT, v);
    }
    if let Some(Value::Object(p)) = top.get("process") {
        keys("process", p, fields::PROCESS, fields::PROCESS_NAMED, v);
        if let Some(Value::Object(u)) = p.get("user") {
            keys("process.user", u, fields::USER, fields::USER_NAMED, v);
        }
    }
    if let Some(Value::Object(l)) = top.get("linux") {
        check_raw_linux_keys(l, v);
    }
}

/// The key allow-lists of `linux` and the objects inside it.
fn check_raw_linux_keys(l: &serde_json::Map<String, Value>, v: &mut Vec<Violation>) {
    keys("linux", l, fields::LINUX, &[], v);
    if let Some(Value::Object(r)) = l.get("resources") {
        keys(
            "linux.resources",
            r,
            fields::RESOURCES,
            fields::RESOURCES_NAMED,
            v,
        );
    }
    if let Some(Value::Object(s)) = l.get("seccomp") {
        keys("linux.seccomp", s, fields::SECCOMP, &[], v);
    }
    if let Some(Value::Array(a)) = l.get("namespaces") {
        keys_each("linux.namespaces", a, fields::NAMESPACE, v);
    }
    if let Some(Value::Array(a)) = l.get("devices") {
        keys_each("linux.devices", a, fields::DEVICE, v);
    }
}

/// [`keys`] for every object of an array (`prefix[i]`); elements that are
/// not objects are left to typed parsing, which refuses them.
fn keys_each(prefix: &str, a: &[Value], allowed: &[&str], v: &mut Vec<Violation>) {
    for (i, m) in a.iter().enumerate() {
        if let Value::Object(o) = m {
            keys(&format!("{prefix}[{i}]"), o, allowed, &[], v);
        }
    }
}

/// Refuse every key of `obj` that is named in `named` (with its message) or
/// missing from `allowed`; `prefix` is the object's JSON path.
fn keys(
    prefix: &str,
    obj: &serde_json::Map<String, Value>,
    allowed: &[&str],
    named: &[(&str, &str)],
    v: &mut Vec<Violation>,
) {
    for k in obj.keys() {
        let field = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        if let Some((_, why)) = named.iter().find(|(n, _)| n == k) {
            v.push(Violation::new(field, *why));
        } else if !allowed.contains(&k.as_str()) {
            v.push(Violation::new(
                field,
                "unknown or unsupported field (the shim passes only fields it checks)",
            ));
        }
    }
}

/// Check one mapping list; returns the container-side ranges it maps so that
/// ids used inside the container can be checked against them.
fn check_mappings(
    field: &str,
    kind: &str,
    file: &str,
    maps: Option<&[LinuxIdMapping]>,
    own: u32,
    sub: &[IdRange],
    v: &mut Vec<Violation>,
) -> Vec<(u64, u64)> {
    let maps = maps.unwrap_or_default();
    if maps.is_empty() {
        v.push(Violation::new(
            field,
            format!("no {kind} mappings: the user namespace must map your own {kind}"),
        ));
        return Vec::new();
    }
    if maps.len() > MAX_ID_MAPPINGS {
        v.push(Violation::new(
            field,
            format!("more than {MAX_ID_MAPPINGS} mappings"),
        ));
        return Vec::new();
    }
    let mut allowed: Vec<(u64, u64)> = vec![(u64::from(own), u64::from(own) + 1)];
    allowed.extend(sub.iter().map(|r| (u64::from(r.start), r.end())));

    let mut container = Vec::new();
    let mut host = Vec::new();
    for (i, m) in maps.iter().enumerate() {
        let f = format!("{field}[{i}]");
        let size = u64::from(m.size());
        let (c0, h0) = (u64::from(m.container_id()), u64::from(m.host_id()));
        let (c1, h1) = (c0 + size, h0 + size);
        if size == 0 {
            v.push(Violation::new(&f, "size is 0"));
            continue;
        }
        // Ids are 32-bit and (u32)-1 is the kernel's "invalid id".
        if c1 > u64::from(u32::MAX) || h1 > u64::from(u32::MAX) {
            v.push(Violation::new(&f, "range runs past the largest valid id"));
            continue;
        }
        if h0 == 0 && own != 0 {
            v.push(Violation::new(
                &f,
                format!("maps host {kind} 0 (root): never allowed"),
            ));
            continue;
        }
        if let Some(bad) = first_uncovered(h0, h1, &allowed) {
            v.push(Violation::new(
                &f,
                format!(
                    "maps host {kind} {bad}, which is neither yours ({own}) nor in your \
                     {file} ranges: a mapping beyond your own ids is refused"
                ),
            ));
            continue;
        }
        if overlaps(c0, c1, &container) {
            v.push(Violation::new(&f, "container ids overlap another mapping"));
            continue;
        }
        if overlaps(h0, h1, &host) {
            v.push(Violation::new(&f, "host ids overlap another mapping"));
            continue;
        }
        container.push((c0, c1));
        host.push((h0, h1));
    }
    container
}

/// The first id in `[start, end)` not inside any of `allowed`, if any.
fn first_uncovered(start: u64, end: u64, allowed: &[(u64, u64)]) -> Option<u64> {
    let mut cur = start;
    while cur < end {
        match allowed.iter().find(|&&(a, b)| a <= cur && cur < b) {
            Some(&(_, b)) => cur = b.min(end),
            None => return Some(cur),
        }
    }
    None
}

fn overlaps(a0: u64, a1: u64, ranges: &[(u64, u64)]) -> bool {
    ranges.iter().any(|&(b0, b1)| a0 < b1 && b0 < a1)
}

fn in_ranges(id: u32, ranges: &[(u64, u64)]) -> bool {
    let id = u64::from(id);
    ranges.iter().any(|&(a, b)| a <= id && id < b)
}

fn has_nul(p: &Path) -> bool {
    p.as_os_str().as_encoded_bytes().contains(&0)
}

/// A path inside the container: absolute, no `..`, no NUL.
fn container_path_ok(p: &Path) -> Result<(), String> {
    if has_nul(p) {
        return Err("path contains a NUL byte".into());
    }
    if !p.is_absolute() {
        return Err(format!("{} is not an absolute path", p.display()));
    }
    if p.components().any(|c| c == Component::ParentDir) {
        return Err(format!("{} contains `..`", p.display()));
    }
    Ok(())
}

/// `process`: what runs, as whom and with which limits. runc applies all of
/// it as root, so none of it may reach beyond what the caller could do.
fn check_process(
    spec: &Spec,
    uid_ranges: &[(u64, u64)],
    gid_ranges: &[(u64, u64)],
    caller: &Caller,
    v: &mut Vec<Violation>,
) {
    let Some(p) = spec.process() else {
        v.push(Violation::new("process", "is missing"));
        return;
    };
    check_command(p, v);
    check_user(p.user(), uid_ranges, gid_ranges, v);
    check_rlimits(p, caller, v);
    check_oom_score_adj(p, caller, v);
}

/// The program, its arguments, environment, working directory and
/// terminal: well-formed, and nothing started in or from `/proc`.
fn check_command(p: &oci_spec::runtime::Process, v: &mut Vec<Violation>) {
    if p.terminal() == Some(true) {
        v.push(Violation::new(
            "process.terminal",
            "terminals are not supported: the shim passes stdio through",
        ));
    }
    match p.args() {
        Some(a) if !a.is_empty() => {
            if a.iter().any(|s| s.contains('\0')) {
                v.push(Violation::new("process.args", "contains a NUL byte"));
            }
        }
        _ => v.push(Violation::new("process.args", "is empty")),
    }
    for (i, e) in p.env().iter().flatten().enumerate() {
        if !e.contains('=') || e.starts_with('=') || e.contains('\0') {
            v.push(Violation::new(
                format!("process.env[{i}]"),
                "is not of the form NAME=value",
            ));
        }
    }
    if let Err(msg) = container_path_ok(p.cwd()) {
        v.push(Violation::new("process.cwd", msg));
    }
    // Defense in depth against leaked-fd escapes (CVE-2024-21626): nothing
    // a dev service needs starts in or runs from /proc.
    if p.cwd().starts_with("/proc") {
        v.push(Violation::new(
            "process.cwd",
            "a working directory under /proc is not allowed",
        ));
    }
    if p.args()
        .iter()
        .flatten()
        .next()
        .is_some_and(|a| Path::new(a).starts_with("/proc"))
    {
        v.push(Violation::new(
            "process.args",
            "running a program from /proc is not allowed",
        ));
    }
}

/// `process.user`: the ids the process runs as must be mapped into the user
/// namespace (an unmapped id would fail or mean the overflow id).
fn check_user(
    user: &oci_spec::runtime::User,
    uid_ranges: &[(u64, u64)],
    gid_ranges: &[(u64, u64)],
    v: &mut Vec<Violation>,
) {
    if !uid_ranges.is_empty() && !in_ranges(user.uid(), uid_ranges) {
        v.push(Violation::new(
            "process.user.uid",
            format!(
                "uid {} is outside the user namespace's uid mapping",
                user.uid()
            ),
        ));
    }
    if !gid_ranges.is_empty() && !in_ranges(user.gid(), gid_ranges) {
        v.push(Violation::new(
            "process.user.gid",
            format!(
                "gid {} is outside the user namespace's gid mapping",
                user.gid()
            ),
        ));
    }
    for g in user.additional_gids().iter().flatten() {
        if !gid_ranges.is_empty() && !in_ranges(*g, gid_ranges) {
            v.push(Violation::new(
                "process.user.additionalGids",
                format!("gid {g} is outside the user namespace's gid mapping"),
            ));
        }
    }
    if let Some(umask) = user.umask() {
        if umask > 0o777 {
            v.push(Violation::new("process.user.umask", "is not a umask"));
        }
    }
}

/// rlimits are applied by runc as root (prlimit on the container's init),
/// so they must not exceed what the caller could set themselves.
fn check_rlimits(p: &oci_spec::runtime::Process, caller: &Caller, v: &mut Vec<Violation>) {
    let mut seen = Vec::new();
    for (i, r) in p.rlimits().iter().flatten().enumerate() {
        let f = format!("process.rlimits[{i}]");
        let typ = r.typ();
        if seen.contains(&typ) {
            v.push(Violation::new(&f, format!("{typ:?} listed twice")));
        }
        seen.push(typ);
        if r.soft() > r.hard() {
            v.push(Violation::new(&f, "soft limit above hard limit"));
        }
        match caller.rlimit_hard.iter().find(|(t, _)| *t == typ) {
            Some(&(_, max)) if r.hard() <= max => {}
            Some(&(_, max)) => v.push(Violation::new(
                &f,
                format!(
                    "{typ} hard limit {} is above your own hard limit {max}",
                    r.hard()
                ),
            )),
            None => v.push(Violation::new(
                &f,
                format!("{typ} is not a limit the shim knows"),
            )),
        }
    }
}

/// `process.oomScoreAdj` may only be raised: lowering it below the caller's
/// own value needs `CAP_SYS_RESOURCE`, which runc has and the caller has not.
fn check_oom_score_adj(p: &oci_spec::runtime::Process, caller: &Caller, v: &mut Vec<Violation>) {
    if let Some(adj) = p.oom_score_adj() {
        if adj < caller.oom_score_adj {
            v.push(Violation::new(
                "process.oomScoreAdj",
                format!(
                    "{adj} is lower than your own oom_score_adj {}: lowering it needs \
                     CAP_SYS_RESOURCE",
                    caller.oom_score_adj
                ),
            ));
        } else if adj > 1000 {
            v.push(Violation::new("process.oomScoreAdj", "is above 1000"));
        }
    }
}

fn check_resources(spec: &Spec, v: &mut Vec<Violation>) {
    let Some(r) = spec.linux().as_ref().and_then(|l| l.resources().as_ref()) else {
        return;
    };
    // The device cgroup is runc's: it allows exactly the standard devices.
    // A bundle may only add deny rules.
    for (i, d) in r.devices().iter().flatten().enumerate() {
        if d.allow() {
            v.push(Violation::new(
                format!("linux.resources.devices[{i}]"),
                "device cgroup allow rules are not allowed: the shim allows only the \
                 standard devices",
            ));
        }
    }
    if let Some(cpu) = r.cpu() {
        if cpu.realtime_runtime().is_some() || cpu.realtime_period().is_some() {
            v.push(Violation::new(
                "linux.resources.cpu",
                "realtime scheduling budgets are not allowed",
            ));
        }
    }
}

fn check_mounts(spec: &Spec, v: &mut Vec<Violation>) -> Vec<BindRequest> {
    let mut binds = Vec::new();
    for (i, m) in spec.mounts().iter().flatten().enumerate() {
        let f = format!("mounts[{i}]");
        if let Err(msg) = container_path_ok(m.destination()) {
            v.push(Violation::new(format!("{f}.destination"), msg));
        }
        let options = m.options().clone().unwrap_or_default();
        let is_bind_opt = options.iter().any(|o| o == "bind" || o == "rbind");
        let typ = m.typ().as_deref().unwrap_or("");
        let is_bind = typ == "bind" || ((typ.is_empty() || typ == "none") && is_bind_opt);
        if !is_bind && !MOUNT_TYPES.contains(&typ) {
            v.push(Violation::new(
                format!("{f}.type"),
                format!(
                    "mount type {typ:?} is not allowed (only bind, proc, sysfs, tmpfs, \
                     devpts, mqueue, cgroup)"
                ),
            ));
            continue;
        }
        if is_bind_opt && !is_bind {
            v.push(Violation::new(
                format!("{f}.options"),
                format!("bind options on a {typ} mount"),
            ));
        }
        for o in &options {
            let ok = MOUNT_FLAGS.contains(&o.as_str())
                || o.split_once('=').is_some_and(|(k, val)| {
                    MOUNT_KEYED.contains(&k)
                        && !val.is_empty()
                        && val.bytes().all(|b| b.is_ascii_alphanumeric())
                });
            if !ok {
                v.push(Violation::new(
                    format!("{f}.options"),
                    format!("mount option {o:?} is not allowed"),
                ));
            }
        }
        if is_bind {
            if options.iter().any(|o| o.contains('=')) {
                v.push(Violation::new(
                    format!("{f}.options"),
                    "bind mounts take no key=value options",
                ));
            }
            match m.source() {
                None => v.push(Violation::new(
                    format!("{f}.source"),
                    "bind mount without a source",
                )),
                Some(src) if !src.is_absolute() || has_nul(src) => v.push(Violation::new(
                    format!("{f}.source"),
                    format!(
                        "bind mount source {} must be an absolute path",
                        src.display()
                    ),
                )),
                Some(src) => binds.push(BindRequest {
                    index: i,
                    source: src.clone(),
                    // runc applies the options in order, so a later "rw"
                    // undoes an earlier "ro": only the last one counts.
                    readonly: options
                        .iter()
                        .rev()
                        .find(|o| *o == "ro" || *o == "rw")
                        .is_some_and(|o| o == "ro"),
                }),
            }
        }
    }
    binds
}

/// Judge the rootfs the caller's `root.path` resolved to (opened as them).
pub fn check_rootfs(
    requested: &Path,
    facts: &FileFacts,
    host_root: (u64, u64),
    caller: &Caller,
) -> Result<(), Violation> {
    let f = "root.path";
    if facts.dev_ino == host_root {
        return Err(Violation::new(
            f,
            format!(
                "{} resolves to the host root directory: refused",
                requested.display()
            ),
        ));
    }
    if facts.kind != FileKind::Directory {
        return Err(Violation::new(
            f,
            format!("{} is {}, not a directory", requested.display(), facts.kind),
        ));
    }
    if facts.uid != caller.uid {
        return Err(Violation::new(
            f,
            format!(
                "rootfs {} (resolved to {}) is owned by uid {}, not by you ({})",
                requested.display(),
                facts.canonical.display(),
                facts.uid,
                caller.uid
            ),
        ));
    }
    Ok(())
}

/// Judge a bind-mount source after it was opened as the caller.
pub fn check_bind_source(
    req: &BindRequest,
    facts: &FileFacts,
    caller: &Caller,
) -> Result<(), Violation> {
    let f = format!("mounts[{}].source", req.index);
    let src = req.source.display();
    if !matches!(facts.kind, FileKind::Directory | FileKind::Regular) {
        return Err(Violation::new(
            f,
            format!(
                "bind mount source {src} is {}: only directories and regular files can be \
                 bind-mounted",
                facts.kind
            ),
        ));
    }
    if !facts.caller_can_read {
        return Err(Violation::new(
            f,
            format!("bind mount source {src} is not readable by you"),
        ));
    }
    if facts.uid == caller.uid {
        return Ok(());
    }
    let listed = |p: &Path| SYSTEM_READONLY_BINDS.iter().any(|a| Path::new(a) == p);
    if listed(&req.source) || listed(&facts.canonical) {
        if req.readonly {
            return Ok(());
        }
        return Err(Violation::new(
            f,
            format!("bind mount of system path {src} must be read-only (add \"ro\")"),
        ));
    }
    Err(Violation::new(
        f,
        format!(
            "bind mount source {src} (resolved to {}) is owned by uid {}: only your own \
             files and the read-only system allow-list ({}) can be bind-mounted",
            facts.canonical.display(),
            facts.uid,
            SYSTEM_READONLY_BINDS.join(", ")
        ),
    ))
}

/// Turn a checked plan into the spec runc gets: rootfs and bind sources point
/// at the shim's root-owned staging mounts, the cgroup is forced into the
/// caller's subtree, and every bind mount gets `nosuid,nodev`.
pub fn finalize(
    plan: &Plan,
    staged_rootfs: &Path,
    staged_binds: &[PathBuf],
    cgroups: &Path,
) -> Spec {
    let mut spec = plan.spec.clone();
    if let Some(root) = spec.root_mut() {
        root.set_path(staged_rootfs.to_path_buf());
    }
    if let Some(mounts) = spec.mounts_mut() {
        for (i, m) in mounts.iter_mut().enumerate() {
            if let Some(pos) = plan.binds.iter().position(|b| b.index == i) {
                if let Some(staged) = staged_binds.get(pos) {
                    m.set_source(Some(staged.clone()));
                }
                m.set_typ(Some("bind".to_string()));
                let mut opts = m.options().clone().unwrap_or_default();
                for o in ["nosuid", "nodev"] {
                    if !opts.iter().any(|x| x == o) {
                        opts.push(o.to_string());
                    }
                }
                if !opts.iter().any(|x| x == "bind" || x == "rbind") {
                    opts.push("rbind".to_string());
                }
                m.set_options(Some(opts));
            } else {
                // The kernel ignores the source of these mount types; make
                // sure no host path rides along anyway.
                let typ = m.typ().clone().unwrap_or_default();
                m.set_source(Some(PathBuf::from(typ)));
            }
        }
    }
    if let Some(linux) = spec.linux_mut() {
        linux.set_cgroups_path(Some(cgroups.to_path_buf()));
    }
    // Annotations only matter to hooks and runc extensions; none are wanted.
    spec.set_annotations(None);
    spec
}

/// Whether a mount in a finalized spec is a bind mount (used by tests).
pub fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caller() -> Caller {
        Caller {
            uid: 1000,
            gid: 1000,
            subuids: vec![IdRange {
                start: 100_000,
                count: 65536,
            }],
            subgids: vec![IdRange {
                start: 100_000,
                count: 65536,
            }],
            rlimit_hard: vec![
                (PosixRlimitType::RlimitNofile, 20000),
                (PosixRlimitType::RlimitNproc, 1000),
            ],
            oom_score_adj: 0,
        }
    }

    fn base() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/",
                        "env": ["PATH=/bin"],
                        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]},
            "root": {"path": "rootfs"},
            "hostname": "h",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
                {"destination": "/data", "type": "bind", "source": "/home/u/data", "options": ["rbind", "ro"]}
            ],
            "linux": {
                "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 1},
                                {"containerID": 1, "hostID": 100000, "size": 65536}],
                "gidMappings": [{"containerID": 0, "hostID": 1000, "size": 1},
                                {"containerID": 1, "hostID": 100000, "size": 65536}],
                "namespaces": [{"type": "user"}, {"type": "mount"}, {"type": "pid"},
                               {"type": "uts"}, {"type": "ipc"}, {"type": "network"}],
                "devices": [{"path": "/dev/null", "type": "c", "major": 1, "minor": 3}],
                "sysctl": {"net.ipv4.ip_forward": "1", "kernel.shmmax": "100"},
                "seccomp": {"defaultAction": "SCMP_ACT_ALLOW"},
                "resources": {"memory": {"limit": 100000000}, "pids": {"limit": 100},
                              "devices": [{"allow": false, "access": "rwm"}]}
            }
        })
    }

    /// Apply `edit` to the base config and return the refusal text.
    fn refusal(edit: impl FnOnce(&mut Value)) -> String {
        let mut c = base();
        edit(&mut c);
        match validate(&c, &caller()) {
            Ok(_) => panic!("accepted: {c:#}"),
            Err(r) => r.to_string(),
        }
    }

    fn assert_refused(edit: impl FnOnce(&mut Value), expected: &str) {
        let text = refusal(edit);
        assert!(text.contains(expected), "expected {expected:?} in:\n{text}");
    }

    #[test]
    fn base_config_passes_and_yields_the_bind() {
        let plan = validate(&base(), &caller()).expect("base config is valid");
        assert_eq!(plan.rootfs, PathBuf::from("rootfs"));
        assert_eq!(
            plan.binds,
            vec![BindRequest {
                index: 2,
                source: "/home/u/data".into(),
                readonly: true
            }]
        );
    }

    #[test]
    fn finalize_points_at_staging_and_forces_cgroup() {
        let mut c = base();
        c["linux"]["cgroupsPath"] = json!("/evil");
        c["annotations"] = json!({"a": "b"});
        let plan = validate(&c, &caller()).expect("valid");
        let spec = finalize(
            &plan,
            Path::new("/stage/rootfs"),
            &[PathBuf::from("/stage/mnt/0")],
            &cgroups_path(1000, "x"),
        );
        assert_eq!(
            spec.root().as_ref().map(|r| r.path().clone()),
            Some("/stage/rootfs".into())
        );
        let mounts = spec.mounts().clone().unwrap_or_default();
        assert_eq!(mounts[2].source().clone(), Some("/stage/mnt/0".into()));
        assert!(is_bind(&mounts[2]));
        let opts = mounts[2].options().clone().unwrap_or_default();
        assert!(opts.contains(&"nosuid".to_string()) && opts.contains(&"nodev".to_string()));
        assert_eq!(mounts[0].source().clone(), Some("proc".into()));
        assert_eq!(
            spec.linux().as_ref().and_then(|l| l.cgroups_path().clone()),
            Some("/locald-shim/u1000/x".into())
        );
        assert!(spec.annotations().is_none());
    }

    #[test]
    fn user_namespace_rules() {
        assert_refused(
            |c| c["linux"]["namespaces"] = json!([{"type": "mount"}]),
            "no user namespace",
        );
        assert_refused(
            |c| c["linux"]["namespaces"][0]["path"] = json!("/proc/1/ns/user"),
            "user namespace joined by path",
        );
        assert_refused(
            |c| c["linux"]["namespaces"][5]["path"] = json!("/proc/1/ns/net"),
            "joining an existing net namespace by path /proc/1/ns/net",
        );
        assert_refused(
            |c| c["linux"]["namespaces"] = json!([{"type": "user"}]),
            "no mount namespace",
        );
        assert_refused(
            |c| c["linux"]["namespaces"][2] = json!({"type": "user"}),
            "user namespace listed twice",
        );
    }

    #[test]
    fn mapping_rules() {
        assert_refused(
            |c| c["linux"]["uidMappings"][0]["hostID"] = json!(0),
            "maps host uid 0 (root)",
        );
        assert_refused(
            |c| c["linux"]["uidMappings"][1]["size"] = json!(65537),
            "maps host uid 165536",
        );
        assert_refused(
            |c| c["linux"]["gidMappings"][0]["hostID"] = json!(1001),
            "maps host gid 1001, which is neither yours",
        );
        assert_refused(|c| c["linux"]["uidMappings"] = json!([]), "no uid mappings");
        assert_refused(
            |c| c["linux"]["uidMappings"][1]["containerID"] = json!(0),
            "container ids overlap",
        );
        assert_refused(
            |c| {
                c["linux"]["uidMappings"][1]["containerID"] = json!(5);
                c["linux"]["uidMappings"][1]["size"] = json!(1);
                if let Some(a) = c["linux"]["uidMappings"].as_array_mut() {
                    a.push(json!({"containerID": 7, "hostID": 100000, "size": 1}));
                }
            },
            "host ids overlap",
        );
        assert_refused(
            |c| {
                c["linux"]["uidMappings"][1] =
                    json!({"containerID": 1, "hostID": 4294967295u64, "size": 1})
            },
            "past the largest valid id",
        );
        assert_refused(
            |c| c["process"]["user"]["uid"] = json!(70000),
            "uid 70000 is outside the user namespace's uid mapping",
        );
        assert_refused(
            |c| c["process"]["user"]["gid"] = json!(70000),
            "gid 70000 is outside",
        );
        assert_refused(
            |c| c["process"]["user"]["additionalGids"] = json!([1, 70000]),
            "process.user.additionalGids: gid 70000",
        );
    }

    #[test]
    fn hooks_and_unknown_fields() {
        assert_refused(
            |c| c["hooks"] = json!({"prestart": [{"path": "/bin/sh"}]}),
            "OCI hooks are not allowed",
        );
        assert_refused(|c| c["hooks"] = json!({}), "hooks: OCI hooks");
        assert_refused(
            |c| c["linux"]["netDevices"] = json!({}),
            "linux.netDevices: unknown",
        );
        assert_refused(
            |c| c["process"]["user"]["username"] = json!("x"),
            "username",
        );
        assert_refused(
            |c| c["mounts"][0]["uidMappings"] = json!([]),
            "mounts[0].uidMappings",
        );
        assert_refused(|c| c["vm"] = json!({}), "vm: virtual-machine");
    }

    /// runc applies mount options in order, so `["ro", "rw"]` is a writable
    /// mount: the bind must not count as read-only.
    #[test]
    fn bind_ro_then_rw_is_not_read_only() {
        let readonly = |opts: Value| {
            let mut c = base();
            c["mounts"][2]["options"] = opts;
            validate(&c, &caller()).expect("valid").binds[0].readonly
        };
        assert!(!readonly(json!(["rbind", "ro", "rw"])));
        assert!(readonly(json!(["rbind", "rw", "ro"])));
        assert!(readonly(json!(["ro"])));
        assert!(!readonly(json!(["rbind"])));
    }

    #[test]
    fn mount_rules() {
        assert_refused(
            |c| c["mounts"][0]["type"] = json!("overlay"),
            "mount type \"overlay\" is not allowed",
        );
        assert_refused(
            |c| c["mounts"][1]["options"] = json!(["rshared"]),
            "mount option \"rshared\" is not allowed",
        );
        assert_refused(
            |c| c["mounts"][1]["options"] = json!(["mode=755,uid=0"]),
            "is not allowed",
        );
        assert_refused(
            |c| c["mounts"][2]["source"] = json!("data"),
            "must be an absolute path",
        );
        assert_refused(
            |c| c["mounts"][2]["destination"] = json!("/a/../../etc"),
            "contains `..`",
        );
        assert_refused(
            |c| c["mounts"][2]["destination"] = json!("rel"),
            "is not an absolute path",
        );
        // A bind written the runc-spec way (no type, bind option) is a bind.
        let mut c = base();
        c["mounts"][2]["type"] = json!(null);
        c["mounts"][2].as_object_mut().map(|o| o.remove("type"));
        let plan = validate(&c, &caller()).expect("valid");
        assert_eq!(plan.binds.len(), 1);
    }

    #[test]
    fn device_sysctl_rlimit_oom_rules() {
        assert_refused(
            |c| {
                c["linux"]["devices"][0] =
                    json!({"path": "/dev/sda", "type": "b", "major": 8, "minor": 0})
            },
            "device /dev/sda (b 8:0) is not in the allowed set",
        );
        assert_refused(
            |c| c["linux"]["devices"][0]["path"] = json!("/dev/zero"),
            "device /dev/zero (c 1:3)",
        );
        assert_refused(
            |c| c["linux"]["devices"][0]["fileMode"] = json!(0o4666),
            "has bits beyond 0666",
        );
        assert_refused(
            |c| c["linux"]["sysctl"] = json!({"kernel.core_pattern": "|x"}),
            "linux.sysctl.kernel.core_pattern: is not a namespaced sysctl",
        );
        assert_refused(
            |c| {
                c["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"});
                if let Some(a) = c["linux"]["namespaces"].as_array_mut() {
                    a.retain(|n| n["type"] != "network");
                }
            },
            "linux.sysctl.net.ipv4.ip_forward: is not a namespaced sysctl",
        );
        assert_refused(
            |c| c["process"]["rlimits"][0]["hard"] = json!(20001),
            "RLIMIT_NOFILE hard limit 20001 is above your own hard limit 20000",
        );
        assert_refused(
            |c| c["process"]["rlimits"] = json!([{"type": "RLIMIT_CORE", "hard": 1, "soft": 1}]),
            "RLIMIT_CORE is not a limit the shim knows",
        );
        assert_refused(
            |c| c["process"]["oomScoreAdj"] = json!(-1),
            "-1 is lower than your own oom_score_adj 0",
        );
    }

    #[test]
    fn security_label_and_misc_rules() {
        assert_refused(
            |c| c["linux"]["seccomp"]["listenerPath"] = json!("/run/x.sock"),
            "seccomp listenerPath /run/x.sock is not allowed",
        );
        assert_refused(
            |c| c["linux"]["seccomp"]["defaultAction"] = json!("SCMP_ACT_NOTIFY"),
            "SCMP_ACT_NOTIFY is not allowed",
        );
        assert_refused(
            |c| c["process"]["apparmorProfile"] = json!("unconfined"),
            "custom AppArmor profiles are not allowed",
        );
        assert_refused(
            |c| c["process"]["selinuxLabel"] = json!("x"),
            "custom SELinux labels are not allowed",
        );
        assert_refused(
            |c| c["linux"]["mountLabel"] = json!("x"),
            "custom SELinux mount labels",
        );
        assert_refused(
            |c| c["linux"]["intelRdt"] = json!({}),
            "intelRdt is not allowed",
        );
        assert_refused(
            |c| c["linux"]["personality"] = json!({"domain": "LINUX"}),
            "personality is not allowed",
        );
        assert_refused(
            |c| c["linux"]["resources"]["devices"][0]["allow"] = json!(true),
            "device cgroup allow rules are not allowed",
        );
        assert_refused(
            |c| c["linux"]["resources"]["unified"] = json!({"memory.max": "1"}),
            "raw cgroup v2 files are not allowed",
        );
        assert_refused(
            |c| c["linux"]["resources"]["cpu"] = json!({"realtimeRuntime": 1000}),
            "realtime scheduling budgets",
        );
        assert_refused(
            |c| c["linux"]["rootfsPropagation"] = json!("shared"),
            "only private or slave propagation",
        );
        assert_refused(
            |c| c["process"]["terminal"] = json!(true),
            "terminals are not supported",
        );
        assert_refused(
            |c| c["process"]["cwd"] = json!("/proc/self/fd/7"),
            "working directory under /proc",
        );
        assert_refused(
            |c| c["process"]["args"] = json!(["/proc/self/fd/7/../../bin/sh"]),
            "running a program from /proc",
        );
        assert_refused(
            |c| c["process"]["args"] = json!([]),
            "process.args: is empty",
        );
        assert_refused(|c| c["ociVersion"] = json!("2.0.0"), "is not a 1.x");
        assert_refused(
            |c| c["linux"]["namespaces"] = json!([{"type": "user"}, {"type": "mount"}]),
            "setting a hostname requires a new uts namespace",
        );
    }

    #[test]
    fn garbage_is_refused_not_panicking() {
        for bytes in [&b""[..], b"null", b"[]", b"{", b"{\"linux\": 5}", b"\"x\""] {
            assert!(validate_bytes(bytes, &caller()).is_err());
        }
        let big = vec![b' '; MAX_CONFIG_BYTES + 1];
        assert!(validate_bytes(&big, &caller()).is_err());
    }

    fn facts(kind: FileKind, uid: u32, canonical: &str, readable: bool) -> FileFacts {
        FileFacts {
            kind,
            uid,
            dev_ino: (1, 2),
            canonical: canonical.into(),
            caller_can_read: readable,
        }
    }

    #[test]
    fn rootfs_facts() {
        let c = caller();
        let p = Path::new("rootfs");
        assert!(check_rootfs(p, &facts(FileKind::Directory, 1000, "/r", true), (9, 9), &c).is_ok());
        let host = check_rootfs(p, &facts(FileKind::Directory, 0, "/", true), (1, 2), &c);
        assert!(host.is_err_and(|v| v.message.contains("host root")));
        let other = check_rootfs(p, &facts(FileKind::Directory, 1001, "/x", true), (9, 9), &c);
        assert!(other.is_err_and(|v| v.message.contains("not by you")));
        let file = check_rootfs(p, &facts(FileKind::Regular, 1000, "/x", true), (9, 9), &c);
        assert!(file.is_err_and(|v| v.message.contains("not a directory")));
    }

    #[test]
    fn bind_source_facts() {
        let c = caller();
        let req = |src: &str, ro: bool| BindRequest {
            index: 0,
            source: src.into(),
            readonly: ro,
        };
        let own = facts(FileKind::Directory, 1000, "/home/u/d", true);
        assert!(check_bind_source(&req("/home/u/d", false), &own, &c).is_ok());
        let resolv = facts(FileKind::Regular, 0, "/run/resolvconf/resolv.conf", true);
        assert!(check_bind_source(&req("/etc/resolv.conf", true), &resolv, &c).is_ok());
        let rw = check_bind_source(&req("/etc/resolv.conf", false), &resolv, &c);
        assert!(rw.is_err_and(|v| v.message.contains("must be read-only")));
        // A caller's symlink to an allow-listed file resolves to it: fine.
        let hosts = facts(FileKind::Regular, 0, "/etc/hosts", true);
        assert!(check_bind_source(&req("/home/u/link", true), &hosts, &c).is_ok());
        let shadow = facts(FileKind::Regular, 0, "/etc/shadow", false);
        let r = check_bind_source(&req("/home/u/link", true), &shadow, &c);
        assert!(r.is_err_and(|v| v.message.contains("not readable by you")));
        let passwd = facts(FileKind::Regular, 0, "/etc/passwd", true);
        let r = check_bind_source(&req("/etc/passwd", true), &passwd, &c);
        assert!(r.is_err_and(|v| v.message.contains("owned by uid 0")));
        let sock = facts(FileKind::Socket, 1000, "/run/user/1000/s", true);
        let r = check_bind_source(&req("/run/user/1000/s", false), &sock, &c);
        assert!(r.is_err_and(|v| v.message.contains("is a socket")));
        let dev = facts(FileKind::Device, 1000, "/dev/x", true);
        assert!(check_bind_source(&req("/dev/x", false), &dev, &c).is_err());
    }
}
