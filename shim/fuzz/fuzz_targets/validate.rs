//! Fuzz the bundle validator with arbitrary `config.json` bytes: it must
//! never panic, and whatever passes must map only the caller's own ids.
#![no_main]

use libfuzzer_sys::fuzz_target;
use locald_shim::policy::{validate_bytes, Caller, IdRange};

fn caller() -> Caller {
    let sub = IdRange {
        start: 100_000,
        count: 65536,
    };
    Caller {
        uid: 1000,
        gid: 1000,
        subuids: vec![sub],
        subgids: vec![sub],
        rlimit_hard: Vec::new(),
        oom_score_adj: 0,
    }
}

fn allowed(id: u64) -> bool {
    id == 1000 || (100_000..165_536).contains(&id)
}

fuzz_target!(|data: &[u8]| {
    if let Ok(plan) = validate_bytes(data, &caller()) {
        let linux = plan.spec.linux().clone().expect("a passing spec has linux");
        let maps = linux
            .uid_mappings()
            .iter()
            .flatten()
            .chain(linux.gid_mappings().iter().flatten());
        for m in maps {
            let h0 = u64::from(m.host_id());
            let h1 = h0 + u64::from(m.size());
            assert!(h1 > h0, "empty mapping passed");
            // Own id or inside the one subordinate range, end to end.
            let ok =
                (h0 == 1000 && h1 == 1001) || (allowed(h0) && allowed(h1 - 1) && h0 >= 100_000);
            assert!(ok, "mapping {h0}..{h1} passed");
        }
    }
});
