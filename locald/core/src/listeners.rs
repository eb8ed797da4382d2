//! Who listens on a local TCP port, before locald trusts what answers there.
//!
//! A port on 127.0.0.1 is not a user's own: any local user may bind one
//! that is free, and another user's server then answers whatever locald
//! sends there — a registry that serves an image the victim runs, a page
//! the proxy serves under the victim's `*.localhost` origin, a health probe
//! that calls another process healthy. So before it talks to a local port
//! for the user, locald asks the kernel who listens: the socket tables
//! `/proc/net/tcp` and `/proc/net/tcp6` of its network namespace give each
//! listening socket's address, owner (uid) and inode, and
//! `/proc/PID/fd/*` says which process holds that inode.
//!
//! [`receiver`] finds the socket a connection to an address would reach (a
//! listener on the exact address wins over a wildcard, as in the kernel's
//! lookup); [`check_service`] says whether it belongs to a service (its
//! uid is the user's or one of the user's subordinate uids, and its inode is
//! held by one of the service's processes: the main process, its
//! descendants, and the members of its own cgroup); [`check_owner`] whether
//! a trusted user (the user or root) owns it.
//!
//! What this cannot close is the moment between the check and the
//! connection: a listener that goes away right after being checked leaves
//! its port free for anyone. Callers check at each connection, which leaves
//! that window microseconds wide.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// TCP state `LISTEN` in the socket tables.
const LISTEN: &str = "0A";

/// A listening TCP socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// The address it is bound to (a wildcard: `0.0.0.0` or `::`).
    pub addr: IpAddr,
    /// Its port.
    pub port: u16,
    /// Its owner: the effective uid of the process that made it.
    pub uid: u32,
    /// Its inode (`socket:[INODE]` in `/proc/PID/fd`).
    pub inode: u64,
    /// An IPv6 socket that takes no IPv4 connections (`IPV6_V6ONLY`);
    /// known from the socket diagnostics only (false from `/proc`).
    pub v6only: bool,
}

/// The listening sockets on `port` in this network namespace: asked of the
/// kernel's socket diagnostics (netlink `SOCK_DIAG`: listeners only, one
/// round trip), else read from `/proc/net/tcp{,6}`.
pub fn listeners(port: u16) -> io::Result<Vec<Listener>> {
    match diag::listening() {
        Ok(all) => Ok(all.into_iter().filter(|l| l.port == port).collect()),
        Err(_) => proc_listeners(port),
    }
}

/// The uid owning the TCP socket of this machine whose local address is
/// `local` and whose peer is `remote` (the other end of a loopback
/// connection we accepted, seen from our side as `remote` → `local`:
/// pass the peer's address as `local`). `None` when there is none.
pub fn connection_owner(local: SocketAddr, remote: SocketAddr) -> Option<u32> {
    diag::owner_of(local, remote).ok().flatten()
}

fn proc_listeners(port: u16) -> io::Result<Vec<Listener>> {
    let mut out = Vec::new();
    for (file, v6) in [("/proc/net/tcp", false), ("/proc/net/tcp6", true)] {
        match std::fs::read_to_string(file) {
            Ok(text) => out.extend(parse_table(&text, v6).filter(|l| l.port == port)),
            // A kernel without IPv6 has no tcp6 table.
            Err(e) if v6 && e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// The listening sockets of one table (`v6` for `tcp6`).
fn parse_table(text: &str, v6: bool) -> impl Iterator<Item = Listener> + '_ {
    text.lines().skip(1).filter_map(move |line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st queues timer retrnsmt uid timeout inode
        if f.len() < 10 || f[3] != LISTEN {
            return None;
        }
        let (addr, port) = f[1].split_once(':')?;
        Some(Listener {
            addr: match parse_addr(addr, v6)? {
                // A v4-mapped address in tcp6 is the IPv4 address.
                IpAddr::V6(a) => a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4),
                a => a,
            },
            port: u16::from_str_radix(port, 16).ok()?,
            uid: f[7].parse().ok()?,
            inode: f[9].parse().ok()?,
            v6only: false,
        })
    })
}

/// An address as the kernel prints it: the 32-bit words of the address in
/// host byte order, each as 8 hex digits.
fn parse_addr(hex: &str, v6: bool) -> Option<IpAddr> {
    let words: Option<Vec<u32>> = (0..hex.len() / 8)
        .map(|i| u32::from_str_radix(hex.get(i * 8..i * 8 + 8)?, 16).ok())
        .collect();
    let words = words?;
    match (v6, words.as_slice()) {
        (false, [w]) => Some(IpAddr::V4(Ipv4Addr::from(w.to_ne_bytes()))),
        (true, [a, b, c, d]) => {
            let mut bytes = [0u8; 16];
            for (i, w) in [a, b, c, d].iter().enumerate() {
                bytes[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::V6(Ipv6Addr::from(bytes)))
        }
        _ => None,
    }
}

/// The listener a connection to `to` reaches, if any: one bound to that
/// very address, else the wildcard of its family, else (for IPv4) the IPv6
/// wildcard unless it is IPv6-only.
pub fn receiver(listeners: &[Listener], to: SocketAddr) -> Option<&Listener> {
    let on = |a: IpAddr| {
        listeners.iter().find(|l| {
            l.port == to.port() && l.addr == a && !(to.is_ipv4() && a.is_ipv6() && l.v6only)
        })
    };
    let ip = match to.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    on(ip).or_else(|| match ip {
        IpAddr::V4(_) => {
            on(Ipv4Addr::UNSPECIFIED.into()).or_else(|| on(Ipv6Addr::UNSPECIFIED.into()))
        }
        IpAddr::V6(_) => on(Ipv6Addr::UNSPECIFIED.into()),
    })
}

/// Whose a listener turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    /// Nobody listens there.
    Nobody,
    /// Another user.
    OtherUser {
        /// Their uid.
        uid: u32,
    },
    /// The user, but not the service: another of their processes.
    OtherProcess {
        /// The first process found holding it, if one could be seen.
        pid: Option<u32>,
    },
}

impl Holder {
    /// "uid 1001 (eve)", "another of your processes (pid 42)", "nothing".
    pub fn describe(&self) -> String {
        match self {
            Holder::Nobody => "nothing".into(),
            Holder::OtherUser { uid } => describe_uid(*uid),
            Holder::OtherProcess { pid: Some(p) } => {
                format!("another of your processes (pid {p}{})", comm(*p))
            }
            Holder::OtherProcess { pid: None } => "another of your processes".into(),
        }
    }
}

impl fmt::Display for Holder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// "uid 1001 (eve)".
pub fn describe_uid(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("uid {uid} ({})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// `: python3` for pid 42, from its `comm` (empty when unknown).
fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| format!(": {}", crate::text::sanitize(c.trim())))
        .unwrap_or_default()
}

/// The user this process runs as, and the ids that count as theirs where a
/// container may have made a socket: their subordinate uids.
#[derive(Debug, Clone)]
pub struct Owner {
    uid: u32,
    subuids: Vec<(u32, u32)>,
}

impl Owner {
    /// This process's user and their `/etc/subuid` ranges.
    pub fn current() -> Owner {
        Owner {
            uid: nix::unistd::geteuid().as_raw(),
            subuids: crate::ids::current_subuids()
                .iter()
                .map(|r| (r.start, r.count))
                .collect(),
        }
    }

    /// Only `uid` (tests).
    pub fn only(uid: u32) -> Owner {
        Owner {
            uid,
            subuids: Vec::new(),
        }
    }

    /// The user's uid.
    pub fn uid(&self) -> u32 {
        self.uid
    }

    /// Whether a socket of `uid` is one the user may trust: their own, one
    /// of their subordinate uids' (a container's non-root user, a registry
    /// they run in a container), or root's (trusted by everyone; e.g.
    /// `docker-proxy` for a port a service published).
    pub fn trusts(&self, uid: u32) -> bool {
        uid == self.uid
            || uid == 0
            || self
                .subuids
                .iter()
                .any(|&(start, count)| uid >= start && uid - start < count)
    }
}

/// Who is behind a uid: the account itself, or the account whose
/// subordinate range (`/etc/subuid`) holds it. Counting connections by
/// account keeps a user from multiplying their share with the subordinate
/// ids every user has.
#[derive(Debug, Clone)]
pub struct Accounts {
    me: u32,
    /// (first, count, owner uid) of every subordinate range.
    ranges: Vec<(u32, u32, u32)>,
}

impl Accounts {
    /// This process's uid and every range of `/etc/subuid` (owners given
    /// by name or number; names that are not users are skipped).
    pub fn read() -> Accounts {
        let text = std::fs::read_to_string("/etc/subuid").unwrap_or_default();
        let mut ranges = Vec::new();
        for line in text.lines() {
            let mut f = line.trim().split(':');
            let (Some(who), Some(start), Some(count)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let (Ok(start), Ok(count)) = (start.parse::<u32>(), count.parse::<u32>()) else {
                continue;
            };
            let owner = who.parse::<u32>().ok().or_else(|| {
                nix::unistd::User::from_name(who)
                    .ok()
                    .flatten()
                    .map(|u| u.uid.as_raw())
            });
            if let Some(owner) = owner {
                ranges.push((start, count, owner));
            }
        }
        Accounts::from_ranges(nix::unistd::geteuid().as_raw(), ranges)
    }

    /// From given ranges (tests).
    pub fn from_ranges(me: u32, ranges: Vec<(u32, u32, u32)>) -> Accounts {
        Accounts { me, ranges }
    }

    /// The uid this process runs as.
    pub fn me(&self) -> u32 {
        self.me
    }

    /// The account `uid` belongs to.
    pub fn account_of(&self, uid: u32) -> u32 {
        self.ranges
            .iter()
            .find(|&&(start, count, _)| uid >= start && uid - start < count)
            .map_or(uid, |&(_, _, owner)| owner)
    }
}

/// Which process of the user's listens where a service's port is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attribution {
    /// One of the service's own processes (or one whose descriptors cannot
    /// be read, judged by its trusted uid).
    Service,
    /// Another process of the user's (or root's): a copy of the project
    /// elsewhere, a server that outlived its service, `docker-proxy`.
    Other {
        /// The process found holding the socket, if one could be seen.
        pid: Option<u32>,
    },
}

/// Where to connect to reach `port` of the service whose processes are
/// `pids` (empty: any trusted process counts as the service's), trying
/// `127.0.0.1` and then `::1` (a server that binds only `::1`, as Vite
/// does, leaves 127.0.0.1 to whoever takes it): an address whose receiving
/// listener is the service's comes first; else, unless `strict`, one that
/// another trusted process of the user's holds, said as such. A listener of
/// another user is never an answer: then (or when nobody listens) the
/// error says who holds the port.
pub fn check_service(
    table: &[Listener],
    port: u16,
    owner: &Owner,
    pids: &[u32],
    strict: bool,
) -> Result<(SocketAddr, Attribution), Holder> {
    let mut worst = Holder::Nobody;
    let mut other = None;
    let held = (!pids.is_empty()).then(|| socket_inodes(pids));
    for ip in [
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
    ] {
        let to = SocketAddr::new(ip, port);
        let Some(l) = receiver(table, to) else {
            continue;
        };
        if !owner.trusts(l.uid) {
            worst = Holder::OtherUser { uid: l.uid };
            continue;
        }
        match &held {
            // A process whose descriptors cannot be read (a container's
            // non-root user) is judged by its trusted uid.
            Some(h) if !h.inodes.contains(&l.inode) && !h.unreadable => {
                let pid = holder_of(l.inode);
                if other.is_none() {
                    other = Some((to, pid));
                }
                if !matches!(worst, Holder::OtherUser { .. }) {
                    worst = Holder::OtherProcess { pid };
                }
            }
            _ => return Ok((to, Attribution::Service)),
        }
    }
    match other {
        Some((to, pid)) if !strict => Ok((to, Attribution::Other { pid })),
        _ => Err(worst),
    }
}

/// Whether the listener that a connection to `to` reaches is one the user
/// trusts ([`Owner::trusts`]): `Ok(true)` yes, `Ok(false)` nobody listens,
/// `Err` the other user's uid.
pub fn check_owner(table: &[Listener], to: SocketAddr, owner: &Owner) -> Result<bool, u32> {
    match receiver(table, to) {
        None => Ok(false),
        Some(l) if owner.trusts(l.uid) => Ok(true),
        Some(l) => Err(l.uid),
    }
}

/// The socket inodes the processes `pids` hold, and whether some process's
/// descriptors could not be read.
struct Held {
    inodes: HashSet<u64>,
    unreadable: bool,
}

fn socket_inodes(pids: &[u32]) -> Held {
    let mut held = Held {
        inodes: HashSet::new(),
        unreadable: false,
    };
    for pid in pids {
        let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            // Gone (nothing to count), or not ours to read.
            held.unreadable |= Path::new(&format!("/proc/{pid}")).exists();
            continue;
        };
        for e in rd.flatten() {
            if let Some(inode) = socket_inode(&e.path()) {
                held.inodes.insert(inode);
            }
        }
    }
    held
}

fn socket_inode(fd: &Path) -> Option<u64> {
    let link = std::fs::read_link(fd).ok()?;
    let s = link.to_str()?;
    s.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// A process of ours that holds socket `inode` (for the message), looked
/// for among every process whose descriptors we may read.
fn holder_of(inode: u64) -> Option<u32> {
    let rd = std::fs::read_dir("/proc").ok()?;
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        if fds
            .flatten()
            .any(|f| socket_inode(&f.path()) == Some(inode))
        {
            return Some(pid);
        }
    }
    None
}

/// The processes of a service whose main process is `pid`: it, its
/// descendants, and — when it runs in a cgroup of its own (a locald unit
/// `locald-….service`, or the host runtime's `…/locald/PROJECT/SERVICE`) —
/// every member of that cgroup, so a server that daemonized still counts.
pub fn service_processes(pid: u32) -> Vec<u32> {
    let mut seen: Vec<u32> = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if seen.contains(&p) || seen.len() > 4096 {
            continue;
        }
        seen.push(p);
        todo.extend(children(p));
    }
    for member in own_cgroup_members(pid) {
        if !seen.contains(&member) {
            seen.push(member);
        }
    }
    seen
}

/// The children of every thread of `pid` (`/proc/PID/task/*/children`,
/// readable by anyone, also for a setuid process).
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Members of `pid`'s cgroup (v2) when that cgroup is one locald made for
/// a service; empty otherwise (a shared cgroup would count strangers).
fn own_cgroup_members(pid: u32) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return Vec::new();
    };
    let Some(path) = text.lines().find_map(|l| l.strip_prefix("0::")) else {
        return Vec::new();
    };
    let path = path.trim().trim_start_matches('/');
    let comps: Vec<&str> = path.split('/').collect();
    let last = comps.last().copied().unwrap_or("");
    let ours = (last.starts_with("locald-") && last.ends_with(".service"))
        || (comps.len() >= 3 && comps[comps.len() - 3] == "locald");
    if !ours {
        return Vec::new();
    }
    for mount in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        let procs = Path::new(mount).join(path).join("cgroup.procs");
        if let Ok(text) = std::fs::read_to_string(&procs) {
            return text.lines().filter_map(|l| l.trim().parse().ok()).collect();
        }
    }
    Vec::new()
}

/// The kernel's socket diagnostics over netlink (`sock_diag(7)`), spoken
/// by hand: two requests, each a header and an `inet_diag_req_v2`.
mod diag {
    use std::io;
    use std::net::{IpAddr, SocketAddr};

    use rustix::net::netlink::{SocketAddrNetlink, SOCK_DIAG};
    use rustix::net::{AddressFamily, RecvFlags, SendFlags, SocketFlags, SocketType};

    use super::Listener;

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const TCP_LISTEN: u32 = 10;
    const HEADER: usize = 16;
    /// `inet_diag_msg`: family, state, timer, retrans, the socket id (48
    /// bytes), expires, rqueue, wqueue, uid, inode; attributes follow.
    const MSG: usize = 72;
    /// The attribute saying whether an IPv6 socket is IPv6-only.
    const INET_DIAG_SKV6ONLY: u16 = 11;

    /// `inet_diag_sockid`: ports big-endian, addresses in network order,
    /// no interface, no cookie.
    fn sockid(src: Option<SocketAddr>, dst: Option<SocketAddr>) -> [u8; 48] {
        let mut id = [0u8; 48];
        let put = |id: &mut [u8; 48], port_at: usize, addr_at: usize, a: SocketAddr| {
            id[port_at..port_at + 2].copy_from_slice(&a.port().to_be_bytes());
            match a.ip() {
                IpAddr::V4(v4) => id[addr_at..addr_at + 4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => id[addr_at..addr_at + 16].copy_from_slice(&v6.octets()),
            }
        };
        if let Some(a) = src {
            put(&mut id, 0, 4, a);
        }
        if let Some(a) = dst {
            put(&mut id, 2, 20, a);
        }
        // INET_DIAG_NOCOOKIE
        id[40..48].copy_from_slice(&[0xff; 8]);
        id
    }

    fn request(family: AddressFamily, flags: u16, states: u32, id: [u8; 48]) -> Vec<u8> {
        let mut m = Vec::with_capacity(HEADER + 56);
        m.extend_from_slice(&((HEADER + 56) as u32).to_ne_bytes());
        m.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        m.extend_from_slice(&(NLM_F_REQUEST | flags).to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes()); // seq
        m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it
        m.push(family.as_raw() as u8);
        m.push(libc::IPPROTO_TCP as u8);
        m.push(0); // no extensions
        m.push(0);
        m.extend_from_slice(&states.to_ne_bytes());
        m.extend_from_slice(&id);
        m
    }

    fn u32_at(b: &[u8], at: usize) -> Option<u32> {
        Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
    }

    /// Sends `req` and collects the `inet_diag_msg`s of the answer (until
    /// `NLMSG_DONE` for a dump, the first one otherwise).
    fn exchange(req: &[u8], dump: bool) -> io::Result<Vec<Vec<u8>>> {
        let fd = rustix::net::socket_with(
            AddressFamily::NETLINK,
            SocketType::DGRAM,
            SocketFlags::CLOEXEC,
            Some(SOCK_DIAG),
        )?;
        rustix::net::sendto(&fd, req, SendFlags::empty(), &SocketAddrNetlink::new(0, 0))?;
        let mut out = Vec::new();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let (n, _) = rustix::net::recv(&fd, &mut buf[..], RecvFlags::empty())?;
            let mut at = 0;
            while at + HEADER <= n {
                let len = u32_at(&buf, at).unwrap_or(0) as usize;
                let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
                if len < HEADER || at + len > n {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "short netlink message",
                    ));
                }
                match kind {
                    NLMSG_DONE => return Ok(out),
                    NLMSG_ERROR => {
                        let code = u32_at(&buf, at + HEADER).map_or(0, |c| c as i32);
                        if code != 0 {
                            return Err(io::Error::from_raw_os_error(-code));
                        }
                    }
                    SOCK_DIAG_BY_FAMILY if len >= HEADER + MSG => {
                        out.push(buf[at + HEADER..at + len].to_vec());
                        if !dump {
                            return Ok(out);
                        }
                    }
                    _ => {}
                }
                at += (len + 3) & !3;
            }
            if n == 0 {
                return Ok(out);
            }
        }
    }

    fn listener_of(m: &[u8], v6: bool) -> Option<Listener> {
        let port = u16::from_be_bytes([m[4], m[5]]);
        let addr = if v6 {
            let b: [u8; 16] = m[8..24].try_into().ok()?;
            let a = std::net::Ipv6Addr::from(b);
            a.to_ipv4_mapped().map_or(IpAddr::V6(a), IpAddr::V4)
        } else {
            let b: [u8; 4] = m[8..12].try_into().ok()?;
            IpAddr::V4(b.into())
        };
        Some(Listener {
            addr,
            port,
            uid: u32_at(m, 64)?,
            inode: u64::from(u32_at(m, 68)?),
            v6only: v6 && attribute(m, INET_DIAG_SKV6ONLY).is_some_and(|a| a.first() == Some(&1)),
        })
    }

    /// The data of attribute `kind` after the message (`struct rtattr`:
    /// length, type, data, padded to 4 bytes).
    fn attribute(m: &[u8], kind: u16) -> Option<&[u8]> {
        let mut at = MSG;
        while at + 4 <= m.len() {
            let len = usize::from(u16::from_ne_bytes([m[at], m[at + 1]]));
            let k = u16::from_ne_bytes([m[at + 2], m[at + 3]]);
            if len < 4 || at + len > m.len() {
                return None;
            }
            if k == kind {
                return m.get(at + 4..at + len);
            }
            at += (len + 3) & !3;
        }
        None
    }

    /// Every listening TCP socket, IPv4 and IPv6.
    pub(super) fn listening() -> io::Result<Vec<Listener>> {
        let mut out = Vec::new();
        for (family, v6) in [(AddressFamily::INET, false), (AddressFamily::INET6, true)] {
            let req = request(family, NLM_F_DUMP, 1 << TCP_LISTEN, sockid(None, None));
            match exchange(&req, true) {
                Ok(msgs) => out.extend(msgs.iter().filter_map(|m| listener_of(m, v6))),
                // No IPv6 in this kernel.
                Err(_) if v6 => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// The owner of the connected socket `local` → `remote`.
    pub(super) fn owner_of(local: SocketAddr, remote: SocketAddr) -> io::Result<Option<u32>> {
        let family = if local.is_ipv4() {
            AddressFamily::INET
        } else {
            AddressFamily::INET6
        };
        let req = request(family, 0, u32::MAX, sockid(Some(local), Some(remote)));
        match exchange(&req, false) {
            Ok(msgs) => Ok(msgs.first().and_then(|m| u32_at(m, 64))),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn the_kernel_names_the_owner_of_both_ends_of_a_connection() {
        let me = nix::unistd::geteuid().as_raw();
        let sock = TcpListener::bind("127.0.0.1:0").expect("bind");
        let server = sock.local_addr().expect("addr");
        let via_diag: Vec<Listener> = diag::listening()
            .expect("sock_diag")
            .into_iter()
            .filter(|l| l.port == server.port())
            .collect();
        let via_proc = proc_listeners(server.port()).expect("proc");
        assert_eq!(via_diag, via_proc);
        assert_eq!(via_diag.len(), 1);
        assert_eq!(via_diag[0].uid, me);
        let client = std::net::TcpStream::connect(server).expect("connect");
        let (accepted, peer) = sock.accept().expect("accept");
        assert_eq!(peer, client.local_addr().expect("client addr"));
        assert_eq!(connection_owner(peer, server), Some(me));
        drop(accepted);
        let nobody = SocketAddr::from(([127, 0, 0, 1], 1));
        assert_eq!(connection_owner(nobody, server), None);
    }

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1E6C 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1001        0 4242 1 0 100 0 0 10 0
   1: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 77 1 0 100 0 0 10 0
   2: 0100007F:1E6C 0100007F:9C40 01 00000000:00000000 00:00000000 00000000  1001        0 0 1 0 100 0 0 10 0
";

    #[test]
    fn reads_listeners_from_the_kernels_table() {
        let l: Vec<Listener> = parse_table(TABLE, false).collect();
        assert_eq!(l.len(), 2, "only LISTEN rows: {l:?}");
        assert_eq!(l[0].addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!((l[0].port, l[0].uid, l[0].inode), (7788, 1001, 4242));
        assert_eq!(l[1].addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let v6 = "x\n   0: 00000000000000000000000001000000:1E6C 00000000000000000000000000000000:0000 0A 0:0 0:0 0 1000 0 9 1";
        let l: Vec<Listener> = parse_table(v6, true).collect();
        assert_eq!(l[0].addr, IpAddr::V6(Ipv6Addr::LOCALHOST), "{l:?}");
    }

    #[test]
    fn the_exact_address_wins_over_a_wildcard() {
        let l = |addr: IpAddr, uid| Listener {
            addr,
            port: 80,
            uid,
            inode: u64::from(uid),
            v6only: false,
        };
        let table = vec![
            l(Ipv4Addr::UNSPECIFIED.into(), 1),
            l(Ipv4Addr::LOCALHOST.into(), 2),
            l(Ipv6Addr::UNSPECIFIED.into(), 3),
        ];
        let to = |ip: IpAddr| SocketAddr::new(ip, 80);
        assert_eq!(
            receiver(&table, to(Ipv4Addr::LOCALHOST.into())).map(|l| l.uid),
            Some(2)
        );
        assert_eq!(
            receiver(&table, to(Ipv4Addr::new(127, 0, 0, 2).into())).map(|l| l.uid),
            Some(1)
        );
        assert_eq!(
            receiver(&table, to(Ipv6Addr::LOCALHOST.into())).map(|l| l.uid),
            Some(3)
        );
        assert_eq!(
            receiver(&table[2..], to(Ipv4Addr::LOCALHOST.into())).map(|l| l.uid),
            Some(3)
        );
        assert!(receiver(&table[..1], to(Ipv6Addr::LOCALHOST.into())).is_none());
    }

    #[test]
    fn a_real_listener_is_found_with_its_owner_and_process() {
        let sock = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = sock.local_addr().expect("addr").port();
        let table = listeners(port).expect("tables");
        let me = Owner::only(nix::unistd::geteuid().as_raw());
        let pid = std::process::id();
        assert_eq!(
            check_service(&table, port, &me, &[pid], true),
            Ok((
                SocketAddr::from(([127, 0, 0, 1], port)),
                Attribution::Service
            ))
        );
        assert_eq!(
            check_owner(&table, SocketAddr::from(([127, 0, 0, 1], port)), &me),
            Ok(true)
        );
        // Held by this process, but the service is another: refused.
        let other = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .expect("sleep");
        let verdict = check_service(&table, port, &me, &[other.id()], true);
        assert!(
            matches!(verdict, Err(Holder::OtherProcess { pid: Some(p) }) if p == pid),
            "{verdict:?}"
        );
        // Not strict (the proxy): forwarded, and said whose it is.
        let verdict = check_service(&table, port, &me, &[other.id()], false);
        assert_eq!(
            verdict,
            Ok((
                SocketAddr::from(([127, 0, 0, 1], port)),
                Attribution::Other { pid: Some(pid) }
            ))
        );
        // Owned by someone else entirely (root is trusted by everyone).
        if me.uid() != 0 {
            let stranger = Owner::only(me.uid() + 1);
            assert_eq!(
                check_service(&table, port, &stranger, &[], false),
                Err(Holder::OtherUser { uid: me.uid() })
            );
        }
        drop(sock);
        let table = listeners(port).expect("tables");
        assert_eq!(
            check_service(&table, port, &me, &[pid], false),
            Err(Holder::Nobody)
        );
        let mut other = other;
        let _ = other.kill();
        let _ = other.wait();
    }

    #[test]
    fn a_server_on_ipv6_loopback_only_is_reached_there() {
        let Ok(sock) = TcpListener::bind("[::1]:0") else {
            return; // no IPv6 here
        };
        let port = sock.local_addr().expect("addr").port();
        let table = listeners(port).expect("tables");
        let me = Owner::only(nix::unistd::geteuid().as_raw());
        assert_eq!(
            check_service(&table, port, &me, &[std::process::id()], true),
            Ok((
                SocketAddr::from((Ipv6Addr::LOCALHOST, port)),
                Attribution::Service
            ))
        );
        // An IPv6-only wildcard takes no IPv4 connection.
        let v6only = std::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                "import socket,sys,time\ns=socket.socket(socket.AF_INET6)\ns.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)\ns.bind(('::', 0))\ns.listen()\nprint(s.getsockname()[1], flush=True)\ntime.sleep(10)",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn();
        if let Ok(mut child) = v6only {
            use std::io::BufRead;
            let mut line = String::new();
            if let Some(out) = child.stdout.take() {
                let _ = std::io::BufReader::new(out).read_line(&mut line);
            }
            if let Ok(port) = line.trim().parse::<u16>() {
                let table = listeners(port).expect("tables");
                assert_eq!(table.len(), 1);
                assert!(table[0].v6only, "{table:?}");
                assert!(receiver(&table, SocketAddr::from(([127, 0, 0, 1], port))).is_none());
                assert!(receiver(&table, SocketAddr::from((Ipv6Addr::LOCALHOST, port))).is_some());
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
