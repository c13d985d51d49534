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

/// A scratch directory of this test's own, removed at the end.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        let d = std::env::temp_dir().join(format!("pn-benches-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display()));
        Self(d)
    }
    fn json(&self) -> String {
        self.0.join("results.jsonl").display().to_string()
    }
    /// Runs bench-report on the results: the document gets the table `heading`, and
    /// every curve named is a well-formed SVG with a line in it.
    fn report(&self, heading: &str, curves: &[&str]) {
        let doc = self.0.join("benchmarks.md");
        std::fs::write(&doc, "# Benchmarks\n\nIntro.\n\n## Older section\n")
            .unwrap_or_else(|e| panic!("{e}"));
        let svg = self.0.join("bench");
        for _ in 0..2 {
            // Twice: the second run replaces the generated section, it does not add one.
            run(
                env!("CARGO_BIN_EXE_bench-report"),
                &[
                    "--input",
                    &self.json(),
                    "--doc",
                    &doc.display().to_string(),
                    "--svg-dir",
                    &svg.display().to_string(),
                ],
                "wrote",
            );
        }
        let text = std::fs::read_to_string(&doc).unwrap_or_else(|e| panic!("{e}"));
        assert!(text.contains(heading), "no {heading:?} in:\n{text}");
        assert_eq!(text.matches("scripts/bench: begin").count(), 1, "{text}");
        assert!(text.contains("## Older section"), "{text}");
        for c in curves {
            let s = std::fs::read_to_string(svg.join(c)).unwrap_or_else(|e| panic!("{c}: {e}"));
            assert!(
                s.starts_with("<svg") && s.trim_end().ends_with("</svg>"),
                "{c}"
            );
            assert!(s.contains("<polyline"), "{c} has no curve");
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
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
    let scratch = Scratch::new("cni");
    run(
        env!("CARGO_BIN_EXE_bench-cni"),
        &[
            "--pods",
            "3",
            "--concurrent",
            "2",
            "--plugin",
            &bin("podnet-cni"),
            "--json",
            &scratch.json(),
        ],
        "kernel floor",
    );
    // The scale-curve form: pods already held, exec'd through `ip netns exec`.
    run(
        env!("CARGO_BIN_EXE_bench-cni"),
        &[
            "--pods",
            "2",
            "--concurrent",
            "0",
            "--preload",
            "2",
            "--harness",
            "ip-netns",
            "--no-hostport",
            "--plugin",
            &bin("podnet-cni"),
            "--json",
            &scratch.json(),
        ],
        "harness: ip netns exec",
    );
    scratch.report("podnet-cni: ADD and DEL", &["cni.svg"]);
}

#[test]
fn bench_daemon_runs() {
    let scratch = Scratch::new("daemon");
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
            "--json",
            &scratch.json(),
        ],
        "median ip -batch",
    );
    scratch.report(
        "podnet-daemon: first sync",
        &["daemon.svg", "daemon-rss.svg"],
    );
}

#[test]
fn bench_operator_runs() {
    let scratch = Scratch::new("operator");
    run(
        env!("CARGO_BIN_EXE_bench-operator"),
        &[
            "--nodes",
            "20",
            "--runs",
            "1",
            "--operator",
            &bin("podnet-operator"),
            "--json",
            &scratch.json(),
        ],
        "ratio",
    );
    scratch.report(
        "podnet-operator: allocation",
        &["operator.svg", "operator-rss.svg"],
    );
}
