//! Kubernetes' own e2e suite against a real-node lab: runs `e2e.test` (through the ginkgo
//! CLI, built by scripts/build-tools.sh from the control plane's k8s.io/kubernetes
//! version) with the test images the lab imported (named by `lab/e2e/repo-list.yaml` as
//! `KUBE_TEST_REPO_LIST`, so nothing is pulled), reads ginkgo's JUnit report and tells
//! passed, failed and skipped tests apart — a skipped test is never a pass.
//!
//! Used by the real-node test (a bounded subset in every test run) and by
//! `podnet-lab conformance` (scripts/conformance: the whole network selection).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::LabError;
use crate::real::RealLab;

/// The registry override every run uses (relative to the workspace root).
pub const REPO_LIST: &str = "lab/e2e/repo-list.yaml";

/// The selection every test run makes: the Networking Granular Checks between pods (HTTP
/// and UDP, pod-to-pod and node-to-pod; SCTP needs a kernel module this lab does not
/// load), the dual-stack tests, cluster DNS from a pod, and the API server's proxy to a
/// pod and through a Service (the control plane's route to pods).
pub const SUBSET_FOCUS: &str = r"Networking Granular Checks: Pods|\[Feature:IPv6DualStack\]|DNS should provide DNS for the cluster \[Conformance\]|Proxy version v1 should proxy through a service and a pod";
/// What the subset leaves out: SCTP, and anything serial or disruptive.
pub const SUBSET_SKIP: &str = r"SCTP|\[Serial\]|\[Disruptive\]";

/// podnet's conformance selection (scripts/conformance): every `[sig-network]` test
/// tagged `[Conformance]`, the Granular Checks, dual-stack, HostPort and NetworkPolicy.
pub const FULL_FOCUS: &str = r"\[sig-network\].*(\[Conformance\]|Granular Checks|\[Feature:IPv6DualStack\]|HostPort|NetworkPolicy|Netpol)";
/// What the full selection leaves out, and why (also written into the report).
pub const FULL_SKIP: &[(&str, &str)] = &[
    (
        "SCTP",
        "needs SCTP in the kernel; this machine's kernel has none (socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP) fails with EPROTONOSUPPORT) and loads no modules",
    ),
    (
        r"\[Disruptive\]",
        "restarts or breaks cluster components; podnet's own fault suite covers those",
    ),
];

/// What to run.
#[derive(Clone, Debug)]
pub struct Run {
    /// ginkgo `--focus` regular expression.
    pub focus: String,
    /// ginkgo `--skip` regular expression.
    pub skip: String,
    /// Parallel ginkgo processes.
    pub procs: usize,
    /// Where the JUnit report and the suite's output go.
    pub report_dir: PathBuf,
    /// The whole run's time limit.
    pub timeout: Duration,
}

/// How one test ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It ran and passed.
    Passed,
    /// It ran and failed (the first line of the failure).
    Failed(String),
    /// It was selected but skipped itself (the reason it gave).
    Skipped(String),
}

/// One test of the selection.
#[derive(Clone, Debug, PartialEq)]
pub struct Case {
    /// The full ginkgo name (`[sig-network] ... [Conformance]`).
    pub name: String,
    /// How it ended.
    pub outcome: Outcome,
    /// Its duration in seconds.
    pub seconds: f64,
}

/// A finished run.
#[derive(Clone, Debug)]
pub struct Report {
    /// Every selected test, in report order.
    pub cases: Vec<Case>,
    /// The JUnit file.
    pub junit: PathBuf,
    /// The suite's output.
    pub log: PathBuf,
    /// Wall time of the run.
    pub took: Duration,
    /// The exit status of ginkgo.
    pub exit_ok: bool,
}

impl Report {
    /// Number of passed, failed and skipped tests.
    pub fn counts(&self) -> (usize, usize, usize) {
        let mut c = (0, 0, 0);
        for case in &self.cases {
            match case.outcome {
                Outcome::Passed => c.0 += 1,
                Outcome::Failed(_) => c.1 += 1,
                Outcome::Skipped(_) => c.2 += 1,
            }
        }
        c
    }

    /// One line: "N passed, M failed, K skipped of T selected in S s".
    pub fn summary(&self) -> String {
        let (p, f, s) = self.counts();
        format!(
            "{p} passed, {f} failed, {s} skipped of {} selected in {:.0} s",
            self.cases.len(),
            self.took.as_secs_f64()
        )
    }

    /// A markdown table of every selected test.
    pub fn table(&self) -> String {
        let mut out = String::from("| test | result | time |\n|---|---|---|\n");
        for c in &self.cases {
            let result = match &c.outcome {
                Outcome::Passed => "pass".to_string(),
                Outcome::Failed(m) => format!("**FAIL**: {}", cell(m)),
                Outcome::Skipped(m) => format!("skipped: {}", cell(m)),
            };
            let _ = writeln!(out, "| {} | {result} | {:.0} s |", cell(&c.name), c.seconds);
        }
        out
    }
}

/// The markdown summary of a run: when, what was selected, what was left out and why,
/// the counts and every test.
pub fn summary_markdown(report: &Report, run: &Run) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Run {}: {}.\n", utc_now(), report.summary());
    let _ = writeln!(out, "- focus: `{}`", run.focus);
    let _ = writeln!(out, "- skip: `{}`", run.skip);
    for (re, why) in FULL_SKIP {
        if run.skip.contains(re) {
            let _ = writeln!(out, "  - `{re}`: {why}");
        }
    }
    let _ = writeln!(out, "- ginkgo processes: {}\n", run.procs);
    out.push_str(&report.table());
    out
}

/// Now, as a report's header says it (`2026-12-03 09:42 UTC`).
pub(crate) fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// A report table's cell: the first line, `|` escaped, at most 300 characters.
pub(crate) fn cell(s: &str) -> String {
    s.lines()
        .next()
        .unwrap_or_default()
        .replace('|', "\\|")
        .chars()
        .take(300)
        .collect()
}

/// The workspace root (where `lab/e2e/repo-list.yaml` lives).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs the selection against `lab` and reads its report. An error means the suite could
/// not run or left no report; test failures are in the [`Report`].
pub fn run(lab: &RealLab, run: &Run) -> Result<Report, LabError> {
    let ginkgo = lab.tools_bin.join("ginkgo");
    let e2e = lab.tools_bin.join("e2e.test");
    for (name, path) in [("ginkgo", &ginkgo), ("e2e.test", &e2e)] {
        if !path.exists() {
            return Err(LabError::MissingTool {
                name,
                path: path.clone(),
                hint: "run scripts/build-tools.sh",
            });
        }
    }
    let repo_list = workspace_root().join(REPO_LIST);
    std::fs::create_dir_all(&run.report_dir)
        .map_err(LabError::io("creating", run.report_dir.clone()))?;
    let junit = run.report_dir.join("junit.xml");
    let log = run.report_dir.join("e2e.log");
    let _ = std::fs::remove_file(&junit);
    let out = std::fs::File::create(&log).map_err(LabError::io("creating", log.clone()))?;
    let err = out
        .try_clone()
        .map_err(LabError::io("opening", log.clone()))?;
    let kubeconfig = lab.control_plane.kubeconfig.display().to_string();
    let started = Instant::now();
    // --foreground: timeout stays in the caller's process group, so a Ctrl-C (or a
    // signal to the group) reaches ginkgo too, which interrupts its test processes;
    // without it, stopping podnet-lab left the suite running.
    let mut child = Command::new("timeout")
        .arg("--foreground")
        .arg("--signal=INT")
        .arg("--kill-after=60")
        .arg(format!("{}", run.timeout.as_secs()))
        .arg(&ginkgo)
        .arg(format!("--procs={}", run.procs.max(1)))
        .arg("--no-color")
        .arg("--silence-skips")
        .arg(format!("--focus={}", run.focus))
        .arg(format!("--skip={}", run.skip))
        .arg("--junit-report=junit.xml")
        .arg(format!("--output-dir={}", run.report_dir.display()))
        .arg(&e2e)
        .arg("--")
        .arg("--provider=local")
        .arg(format!("--kubeconfig={kubeconfig}"))
        .arg(format!(
            "--kubectl-path={}",
            lab.tools_bin.join("kubectl").display()
        ))
        .arg(format!("--report-dir={}", run.report_dir.display()))
        // The nodes are the lab's; none may be missing from the start. Without the
        // count, multi-node tests skip themselves ("Requires at least 2 nodes").
        .arg("--allowed-not-ready-nodes=0")
        .arg(format!("--num-nodes={}", lab.nodes.len()))
        .env("KUBE_TEST_REPO_LIST", &repo_list)
        .env("KUBECONFIG", &kubeconfig)
        .env(
            "PATH",
            format!("{}:/usr/sbin:/usr/bin:/sbin:/bin", lab.tools_bin.display()),
        )
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(LabError::io("starting", ginkgo.clone()))?;
    let status = child.wait().map_err(LabError::io("waiting for", ginkgo))?;
    let took = started.elapsed();
    let xml = std::fs::read_to_string(&junit).map_err(|source| LabError::NoReport {
        junit: junit.clone(),
        log: log.clone(),
        source,
    })?;
    Ok(Report {
        cases: parse_junit(&xml),
        junit,
        log,
        took,
        exit_ok: status.success(),
    })
}

/// The selected tests of a ginkgo JUnit report: every `<testcase>` that ran or was
/// skipped by its own decision — specs filtered out by focus/skip (ginkgo marks them
/// `status="skipped"` with no reason of their own) and the suite's setup nodes are left
/// out.
pub fn parse_junit(xml: &str) -> Vec<Case> {
    let mut cases = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find("<testcase ") {
        rest = &rest[start..];
        let head_end = rest.find('>').unwrap_or(rest.len());
        let head = &rest[..head_end];
        let self_closing = head.ends_with('/');
        let body_end = if self_closing {
            head_end
        } else {
            rest.find("</testcase>").unwrap_or(rest.len())
        };
        let body = &rest[head_end.min(body_end)..body_end];
        let name = attr(head, "name").unwrap_or_default();
        let status = attr(head, "status").unwrap_or_default();
        let seconds = attr(head, "time")
            .and_then(|t| t.parse().ok())
            .unwrap_or(0.0);
        rest = &rest[body_end.min(rest.len())..];
        rest = rest.get(1..).unwrap_or("");
        // Setup and teardown nodes of the suite are not tests.
        let Some(name) = name.strip_prefix("[It] ") else {
            continue;
        };
        let outcome = match status.as_str() {
            "passed" => Outcome::Passed,
            "failed" | "panicked" | "interrupted" | "aborted" | "timedout" => {
                let msg = element_attr(body, "failure", "message")
                    .or_else(|| element_attr(body, "error", "message"))
                    .unwrap_or_else(|| status.clone());
                Outcome::Failed(msg)
            }
            "skipped" => match element_attr(body, "skipped", "message") {
                // ginkgo writes "skipped" for a filtered spec; a spec that skipped itself
                // says why ("skipped - <reason>").
                Some(m) if m != "skipped" && !m.is_empty() => {
                    Outcome::Skipped(m.trim_start_matches("skipped - ").to_string())
                }
                _ => continue,
            },
            "pending" => continue,
            other => Outcome::Failed(format!("unknown status {other:?}")),
        };
        cases.push(Case {
            name: name.to_string(),
            outcome,
            seconds,
        });
    }
    cases
}

fn element_attr(body: &str, element: &str, name: &str) -> Option<String> {
    let start = body.find(&format!("<{element}"))?;
    let rest = &body[start..];
    let end = rest.find('>')?;
    attr(&rest[..end], name)
}

fn attr(tag: &str, name: &str) -> Option<String> {
    let needle = format!(" {name}=\"");
    let start = tag.find(&needle)? + needle.len();
    let len = tag[start..].find('"')?;
    Some(unescape(&tag[start..start + len]))
}

fn unescape(s: &str) -> String {
    s.replace("&#xA;", "\n")
        .replace("&#x9;", "\t")
        .replace("&#34;", "\"")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&apos;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<testsuites tests="5" disabled="2" errors="0" failures="1" time="10">
  <testsuite name="Kubernetes e2e suite" tests="5">
    <testcase name="[SynchronizedBeforeSuite]" classname="Kubernetes e2e suite" status="passed" time="1"></testcase>
    <testcase name="[It] [sig-network] Networking Granular Checks: Pods should function for intra-pod communication: http [NodeConformance] [Conformance]" classname="Kubernetes e2e suite" status="passed" time="31.5">
      <system-err>log</system-err>
    </testcase>
    <testcase name="[It] [sig-network] Networking Granular Checks: Pods should function for node-pod communication: udp [LinuxOnly]" classname="Kubernetes e2e suite" status="failed" time="60">
      <failure message="Error dialing UDP from node to pod: failed to find expected endpoints, &#xA;tries 39" type="failed">details</failure>
    </testcase>
    <testcase name="[It] [sig-network] Services should be rejected &lt;a&gt; &amp; b" classname="Kubernetes e2e suite" status="skipped" time="0">
      <skipped message="skipped"></skipped>
    </testcase>
    <testcase name="[It] [sig-network] [Feature:IPv6DualStack] should have ipv4 and ipv6 node podCIDRs" classname="Kubernetes e2e suite" status="skipped" time="0.2">
      <skipped message="skipped - Only supported for providers [gce] (not local)"></skipped>
    </testcase>
    <testcase name="[It] pending one" classname="Kubernetes e2e suite" status="pending" time="0"></testcase>
  </testsuite>
</testsuites>"#;

    #[test]
    fn selected_tests_are_read_and_filtered_ones_are_not() {
        let cases = parse_junit(REPORT);
        assert_eq!(cases.len(), 3, "{cases:#?}");
        assert_eq!(cases[0].outcome, Outcome::Passed);
        assert!(
            cases[0]
                .name
                .starts_with("[sig-network] Networking Granular")
        );
        assert_eq!(cases[0].seconds, 31.5);
        assert_eq!(
            cases[1].outcome,
            Outcome::Failed(
                "Error dialing UDP from node to pod: failed to find expected endpoints, \ntries 39"
                    .into()
            )
        );
        assert_eq!(
            cases[2].outcome,
            Outcome::Skipped("Only supported for providers [gce] (not local)".into())
        );
    }

    #[test]
    fn the_summary_and_table_count_every_outcome() {
        let report = Report {
            cases: parse_junit(REPORT),
            junit: PathBuf::new(),
            log: PathBuf::new(),
            took: Duration::from_secs(10),
            exit_ok: false,
        };
        assert_eq!(report.counts(), (1, 1, 1));
        assert_eq!(
            report.summary(),
            "1 passed, 1 failed, 1 skipped of 3 selected in 10 s"
        );
        let table = report.table();
        assert_eq!(table.lines().count(), 5, "{table}");
        assert!(table.contains("| **FAIL**: Error dialing UDP from node to pod: failed to find expected endpoints,  |"), "{table}");
        assert!(table.contains("skipped: Only supported for providers [gce] (not local)"));
    }

    #[test]
    fn an_empty_or_truncated_report_has_no_cases() {
        assert!(parse_junit("").is_empty());
        assert!(parse_junit("<testsuites><testcase name=\"[It] x\" status=\"passed\"").len() <= 1);
    }
}
