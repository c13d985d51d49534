//! The CNI_* environment (command, container ID, ifname, netns path, CNI_ARGS): every
//! combination is accepted as valid or refused with code 4, never a panic, and what is
//! accepted is never path-like.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podnet_cni::config::{Env, parse_cni_args};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    // Lines of KEY=VALUE become the environment; the whole input is also tried as CNI_ARGS.
    let vars: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let get = |k: &str| {
        vars.iter()
            .rev()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
    };
    // VERSION needs nothing but CNI_COMMAND: whatever else is set (libcni sets
    // placeholders), it is answered.
    let version = |k: &str| {
        if k == "CNI_COMMAND" {
            Some("VERSION".to_string())
        } else {
            get(k)
        }
    };
    assert!(
        Env::from_vars(version).is_ok(),
        "VERSION refused because of another variable"
    );
    if let Ok(env) = Env::from_vars(get) {
        assert!(
            !env.container_id.contains('/'),
            "path-like container ID accepted"
        );
        assert!(!env.ifname.contains('/') && env.ifname != ".." && env.ifname.len() <= 15);
        if let Some(ns) = &env.netns {
            assert!(ns.is_absolute());
        }
    }
    if let Ok(pairs) = parse_cni_args(&text) {
        for (k, v) in pairs {
            assert!(!k.is_empty() && !k.contains(';') && !k.contains('='));
            assert!(!v.contains(';'));
        }
    }
});
