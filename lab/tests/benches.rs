//! Every benchmark program that needs no real-node lab runs once at a tiny size, so that
//! none of them rots between benchmark runs (issue 18). Each must exit 0 and print its
//! result line. bench-lab and bench-policy need the real-node lab and are run by their
//! own commands (docs/benchmarks.md). Needs root and the tool cache (etcd,
//! kube-apiserver), like the other lab tests.

use std::process::Command;

use podnet_lab::testing::{require_root, workspace_bins};

fn run(program: &str, args: &[&str], expect: &str) {
    require_root("the benchmark smoke tests").unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "{program} {} failed:\n{stdout}\n{stderr}",
        args.join(" ")
    );
    assert!(
        stdout.contains(expect) || stderr.contains(expect),
        "{program} printed no {expect:?}:\n{stdout}\n{stderr}"
    );
}

fn bin(name: &str) -> String {
    let dir = workspace_bins().unwrap_or_else(|e| panic!("{e}"));
    dir.join(name).display().to_string()
}

#[test]
fn bench_netlink_runs() {
    let dir = workspace_bins().unwrap_or_else(|e| panic!("{e}"));
    run(
        env!("CARGO_BIN_EXE_bench-netlink"),
        &[
            "--routes",
            "30",
            "--pods",
            "2",
            "--runs",
            "1",
            "--probes",
            &dir.display().to_string(),
        ],
        "ADD netlink part, exec'd",
    );
}

#[test]
fn bench_cni_runs() {
    run(
        env!("CARGO_BIN_EXE_bench-cni"),
        &[
            "--pods",
            "3",
            "--concurrent",
            "2",
            "--plugin",
            &bin("podnet-cni"),
        ],
        "kernel floor",
    );
}

#[test]
fn bench_daemon_runs() {
    run(
        env!("CARGO_BIN_EXE_bench-daemon"),
        &[
            "--peers",
            "20",
            "--runs",
            "1",
            "--non-masq",
            "3",
            "--edits",
            "1",
            "--daemon",
            &bin("podnet-daemon"),
        ],
        "median ip -batch",
    );
}

#[test]
fn bench_operator_runs() {
    run(
        env!("CARGO_BIN_EXE_bench-operator"),
        &[
            "--nodes",
            "20",
            "--runs",
            "1",
            "--operator",
            &bin("podnet-operator"),
        ],
        "ratio",
    );
}
