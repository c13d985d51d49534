//! The network configuration podnet-cni reads from stdin: parsing and validation must
//! answer every input with a configuration or a CNI error, never a panic; a parsed
//! configuration always renders a result in its own version.
#![no_main]

use libfuzzer_sys::fuzz_target;
use podnet_cni::config::{NetConf, version_hint};

fuzz_target!(|data: &[u8]| {
    let _ = version_hint(data);
    match NetConf::parse(data) {
        Ok(conf) => {
            for net in &conf.pod_cidrs {
                let _ = NetConf::gateway(net);
            }
        }
        // The error JSON a runtime reads must always serialize.
        Err(e) => {
            let _ = e.to_json(&version_hint(data));
        }
    }
});
