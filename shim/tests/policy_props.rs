#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Property test of the policy (part of the normal test suite): whatever the
//! rest of the config says, a config that passes never maps a host id the
//! caller does not own.

use locald_shim::policy::{validate, Caller, IdRange};
use oci_spec::runtime::PosixRlimitType;
use proptest::prelude::*;
use serde_json::{json, Value};

fn in_allowed(id: u64, own: u32, sub: &[IdRange]) -> bool {
    id == u64::from(own)
        || sub
            .iter()
            .any(|r| u64::from(r.start) <= id && id < u64::from(r.start) + u64::from(r.count))
}

/// Host ids near the interesting edges, and anywhere.
fn host_id(own: u32, sub: IdRange) -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(own),
        Just(own.wrapping_add(1)),
        Just(own.wrapping_sub(1)),
        Just(0u32),
        Just(sub.start),
        Just(sub.start.wrapping_sub(1)),
        Just(sub.start.wrapping_add(sub.count)),
        Just(sub.start.wrapping_add(sub.count).wrapping_sub(1)),
        sub.start..sub.start.saturating_add(sub.count),
        any::<u32>(),
    ]
}

fn size(sub: IdRange) -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(1u32),
        Just(0u32),
        Just(sub.count),
        Just(sub.count + 1),
        1u32..100,
        any::<u32>(),
    ]
}

fn mapping(own: u32, sub: IdRange) -> impl Strategy<Value = Value> {
    (
        any::<u32>().prop_map(|c| c % 200_000),
        host_id(own, sub),
        size(sub),
    )
        .prop_map(|(c, h, s)| json!({"containerID": c, "hostID": h, "size": s}))
}

fn config(uids: Vec<Value>, gids: Vec<Value>, user_ns: bool, extra_mount: bool) -> Value {
    let mut ns = vec![json!({"type": "mount"}), json!({"type": "pid"})];
    if user_ns {
        ns.push(json!({"type": "user"}));
    }
    let mut mounts = vec![json!({"destination": "/proc", "type": "proc", "source": "proc"})];
    if extra_mount {
        mounts.push(json!({"destination": "/d", "type": "bind", "source": "/home/u/d", "options": ["rbind"]}));
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {"user": {"uid": 0, "gid": 0}, "args": ["sh"], "cwd": "/"},
        "root": {"path": "rootfs"},
        "mounts": mounts,
        "linux": {"uidMappings": uids, "gidMappings": gids, "namespaces": ns}
    })
}

/// Exact check, independent of the validator's algorithm: `[h0, h1)` minus
/// the caller's own id must lie inside the one subordinate range.
fn range_allowed(h0: u64, h1: u64, own: u32, sub: IdRange) -> bool {
    let own = u64::from(own);
    let (s0, s1) = (
        u64::from(sub.start),
        u64::from(sub.start) + u64::from(sub.count),
    );
    let inside = |a: u64, b: u64| a >= b || (s0 <= a && b <= s1);
    if h0 <= own && own < h1 {
        inside(h0, own) && inside(own + 1, h1)
    } else {
        inside(h0, h1)
    }
}

fn case() -> impl Strategy<Value = (u32, IdRange, Vec<Value>, Vec<Value>, bool, bool)> {
    (
        prop_oneof![Just(1000u32), 1u32..70_000, 99_000u32..100_001],
        prop_oneof![Just(100_000u32), 100_000u32..4_000_000_000],
        prop_oneof![Just(65536u32), 1u32..1_000_000],
    )
        .prop_flat_map(|(own, start, count)| {
            let sub = IdRange { start, count };
            (
                Just(own),
                Just(sub),
                proptest::collection::vec(mapping(own, sub), 0..4),
                proptest::collection::vec(mapping(own, sub), 0..4),
                any::<bool>(),
                any::<bool>(),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, .. ProptestConfig::default() })]

    #[test]
    fn passing_configs_never_map_beyond_the_caller(
        (own, sub, uids, gids, user_ns, extra_mount) in case()
    ) {
        let caller = Caller {
            uid: own,
            gid: own,
            subuids: vec![sub],
            subgids: vec![sub],
            rlimit_hard: vec![(PosixRlimitType::RlimitNofile, 1024)],
            oom_score_adj: 0,
        };
        let cfg = config(uids, gids, user_ns, extra_mount);
        if let Ok(plan) = validate(&cfg, &caller) {
            prop_assert!(user_ns, "passed without a user namespace: {cfg}");
            let linux = plan.spec.linux().clone().expect("linux");
            let all = linux.uid_mappings().iter().flatten().chain(linux.gid_mappings().iter().flatten());
            for m in all {
                let h0 = u64::from(m.host_id());
                let h1 = h0 + u64::from(m.size());
                prop_assert!(m.size() > 0, "empty mapping passed: {cfg}");
                prop_assert!(h0 != 0, "host id 0 passed: {cfg}");
                prop_assert!(in_allowed(h0, own, &[sub]) && in_allowed(h1 - 1, own, &[sub]));
                prop_assert!(range_allowed(h0, h1, own, sub), "range {h0}..{h1} passed: {cfg}");
            }
        }
    }
}

/// The property is not vacuous: the generator's config shape does pass when
/// the mappings are the caller's own.
#[test]
fn generated_shape_passes_with_own_mappings() {
    let sub = IdRange {
        start: 100_000,
        count: 65536,
    };
    let caller = Caller {
        uid: 1000,
        gid: 1000,
        subuids: vec![sub],
        subgids: vec![sub],
        rlimit_hard: vec![],
        oom_score_adj: 0,
    };
    let maps = vec![
        json!({"containerID": 0, "hostID": 1000, "size": 1}),
        json!({"containerID": 1, "hostID": 100_000, "size": 65536}),
    ];
    let cfg = config(maps.clone(), maps, true, true);
    assert!(validate(&cfg, &caller).is_ok());
}
