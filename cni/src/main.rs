//! podnet-cni: the podnet CNI plugin. Reads CNI_* variables and the network
//! configuration on stdin; prints the result or the error JSON on stdout; logs on stderr.

use std::io::Read;
use std::process::ExitCode;

use podnet_cni::config::{Env, MAX_STDIN};
use podnet_cni::error::{CniError, Code};
use podnet_cni::plugin;

fn main() -> ExitCode {
    if std::env::args().nth(1).as_deref() == Some("--version") {
        println!("podnet-cni {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    // Run by hand (no runtime sets CNI_COMMAND): say what this is, as the reference
    // plugins do, and do not wait for a configuration on a terminal.
    if std::env::var_os("CNI_COMMAND").is_none() {
        eprintln!(
            "podnet-cni {}: the podnet CNI plugin (bridge, veth pair and built-in IPAM per pod), run by a container runtime\nCNI protocol versions supported: {}",
            env!("CARGO_PKG_VERSION"),
            podnet_cni::config::SUPPORTED_VERSIONS.join(", ")
        );
        let e = CniError::new(
            Code::InvalidEnvironment,
            "invalid CNI_COMMAND",
            "CNI_COMMAND is not set",
        );
        println!("{}", plugin::error_json(&e, b""));
        return ExitCode::FAILURE;
    }
    let mut stdin = Vec::new();
    let read = std::io::stdin()
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut stdin)
        .map_err(|e| e.to_string());
    let outcome = std::panic::catch_unwind(|| {
        read.clone()
            .map_err(|e| CniError::new(Code::Io, "cannot read stdin", e))?;
        let env = Env::from_vars(|k| std::env::var(k).ok())?;
        plugin::run(&env, &stdin)
    })
    .unwrap_or_else(|_| {
        Err(CniError::new(
            Code::Io,
            "internal error",
            "the plugin panicked; see stderr",
        ))
    });
    match outcome {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("podnet-cni: {e}");
            println!("{}", plugin::error_json(&e, &stdin));
            ExitCode::FAILURE
        }
    }
}
