//! The network-policy-api project's conformance suite (sigs.k8s.io/network-policy-api
//! `conformance`, ClusterNetworkPolicy) against a real-node lab: runs
//! `npapi-conformance.test` (scripts/build-tools.sh npapi-conformance: upstream's tests,
//! podnet's runner in lab/npapi-conformance) through `go tool test2json`, reads every
//! test and subtest from the event stream, and tells passed, failed, skipped and
//! SCTP-blocked checks apart — a check that could not run is never a pass.
//!
//! This kernel has no SCTP: the four SCTP-only tests are skipped (named with the reason),
//! and a subtest that mixes protocols stops at its first SCTP check (upstream's checks
//! stop a subtest at their first failure). Such a subtest is "blocked by SCTP" only when
//! its last failed check was an SCTP connection the kernel refused ("protocol not
//! supported"); any other failure is a failure.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::LabError;
use crate::conformance::{cell, utc_now};
use crate::real::RealLab;

/// Tests not run here, and why.
pub const SKIP: &[(&str, &str)] = &[
    ("CNPAdminTierEgressSCTP", SCTP_REASON),
    ("CNPAdminTierIngressSCTP", SCTP_REASON),
    ("CNPBaselineTierEgressSCTP", SCTP_REASON),
    ("CNPBaselineTierIngressSCTP", SCTP_REASON),
];

const SCTP_REASON: &str = "SCTP only: this machine's kernel has no SCTP (socket(..., IPPROTO_SCTP) fails with EPROTONOSUPPORT) and loads no modules";

/// What to run.
#[derive(Clone, Debug)]
pub struct Run {
    /// Where events.json, the output and summary.md go.
    pub report_dir: PathBuf,
    /// The whole run's time limit.
    pub timeout: Duration,
    /// `-test.run` pattern (`^TestConformance$/^<ShortName>$` selects one test).
    pub run: Option<String>,
}

/// How one check (a test without subtests, or a subtest) ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// It ran and passed.
    Passed,
    /// It ran and failed (its last failure lines).
    Failed(String),
    /// It stopped at an SCTP connection the kernel refused (the command).
    BlockedBySctp(String),
    /// It was not run (the reason).
    Skipped(String),
}

/// One check.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// The test's ShortName (`CNPAdminTierIngressTCP`).
    pub test: String,
    /// The subtest's name, spaces restored; `None` for a test without subtests.
    pub subtest: Option<String>,
    /// How it ended.
    pub verdict: Verdict,
    /// Its duration in seconds.
    pub seconds: f64,
}

/// A finished run.
#[derive(Clone, Debug)]
pub struct Report {
    /// Every check, in the order they ended.
    pub checks: Vec<Check>,
    /// Whether the suite's setup (base workload ready) failed, and how.
    pub setup_failure: Option<String>,
    /// The test2json event stream.
    pub events: PathBuf,
    /// Wall time of the run.
    pub took: Duration,
}

impl Report {
    /// Passed, failed, blocked by SCTP, skipped.
    pub fn counts(&self) -> (usize, usize, usize, usize) {
        let mut c = (0, 0, 0, 0);
        for check in &self.checks {
            match check.verdict {
                Verdict::Passed => c.0 += 1,
                Verdict::Failed(_) => c.1 += 1,
                Verdict::BlockedBySctp(_) => c.2 += 1,
                Verdict::Skipped(_) => c.3 += 1,
            }
        }
        c
    }

    /// Whether the run counts as green: setup worked, something passed, and every
    /// failure is SCTP's.
    pub fn ok(&self) -> bool {
        let (passed, failed, _, _) = self.counts();
        self.setup_failure.is_none() && passed > 0 && failed == 0
    }

    /// One line of counts.
    pub fn summary(&self) -> String {
        let (p, f, b, s) = self.counts();
        let tests: std::collections::BTreeSet<&str> =
            self.checks.iter().map(|c| c.test.as_str()).collect();
        let setup = match &self.setup_failure {
            Some(e) => format!("; SETUP FAILED: {}", cell(e)),
            None => String::new(),
        };
        format!(
            "{} checks of {} tests: {p} passed, {f} failed, {b} blocked by SCTP, {s} skipped, in {:.0} s{setup}",
            self.checks.len(),
            tests.len(),
            self.took.as_secs_f64()
        )
    }

    /// A markdown table: a row per check.
    pub fn table(&self) -> String {
        let mut out = String::from("| test | check | result | time |\n|---|---|---|---|\n");
        for c in &self.checks {
            let result = match &c.verdict {
                Verdict::Passed => "pass".to_string(),
                Verdict::Failed(m) => format!("**FAIL**: {}", cell(m)),
                Verdict::BlockedBySctp(cmd) => {
                    format!(
                        "blocked by SCTP at `{}` (checks before it passed)",
                        cell(cmd)
                    )
                }
                Verdict::Skipped(m) => format!("skipped: {}", cell(m)),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {result} | {:.0} s |",
                c.test,
                cell(c.subtest.as_deref().unwrap_or("(whole test)")),
                c.seconds
            );
        }
        out
    }
}

/// The markdown summary of a run.
pub fn summary_markdown(report: &Report) -> String {
    let mut out = format!("Run {}: {}.\n\nNot run:\n", utc_now(), report.summary());
    for (test, why) in SKIP {
        let _ = writeln!(out, "- `{test}`: {why}");
    }
    out.push('\n');
    out.push_str(&report.table());
    out
}

/// Runs the suite against `lab`. An error means it could not run or left no events;
/// test failures are in the [`Report`].
pub fn run(lab: &RealLab, run: &Run) -> Result<Report, LabError> {
    let suite = lab.tools_bin.join("npapi-conformance.test");
    if !suite.exists() {
        return Err(LabError::MissingTool {
            name: "npapi-conformance.test",
            path: suite,
            hint: "run scripts/build-tools.sh npapi-conformance",
        });
    }
    std::fs::create_dir_all(&run.report_dir)
        .map_err(LabError::io("creating", run.report_dir.clone()))?;
    let events = run.report_dir.join("events.json");
    let stderr = run.report_dir.join("stderr.log");
    let out = std::fs::File::create(&events).map_err(LabError::io("creating", events.clone()))?;
    let err = std::fs::File::create(&stderr).map_err(LabError::io("creating", stderr.clone()))?;
    let skip: Vec<&str> = SKIP.iter().map(|(t, _)| *t).collect();
    let kubeconfig = lab.control_plane.kubeconfig.display().to_string();
    let started = Instant::now();
    let mut cmd = Command::new("timeout");
    cmd.arg("--foreground")
        .arg("--signal=INT")
        .arg("--kill-after=60")
        .arg(format!("{}", run.timeout.as_secs()))
        .args(["go", "tool", "test2json", "-t", "-p", "npapi-conformance"])
        .arg(&suite)
        .arg("-test.v=test2json")
        .arg(format!("-test.timeout={}s", run.timeout.as_secs()))
        .arg(format!("-skip-tests={}", skip.join(",")))
        .arg(format!("-skip-reason={SCTP_REASON}"));
    if let Some(pattern) = &run.run {
        cmd.arg(format!("-test.run={pattern}"));
    }
    let status = cmd
        .env("KUBECONFIG", &kubeconfig)
        .env(
            "PATH",
            format!(
                "{}:{}",
                lab.tools_bin.display(),
                std::env::var("PATH").unwrap_or_else(|_| "/usr/sbin:/usr/bin:/sbin:/bin".into())
            ),
        )
        .stdout(out)
        .stderr(err)
        .status()
        .map_err(LabError::io("starting", suite.clone()))?;
    let took = started.elapsed();
    let text = std::fs::read_to_string(&events).map_err(LabError::io("reading", events.clone()))?;
    let (checks, setup_failure) = parse_events(&text);
    if checks.is_empty() && setup_failure.is_none() {
        let tail = std::fs::read_to_string(&stderr).unwrap_or_default();
        return Err(LabError::NotReady {
            component: "network-policy-api conformance suite",
            reason: format!("it reported no test ({status})"),
            tail: tail.lines().rev().take(20).collect::<Vec<_>>().join("\n"),
            log: stderr,
        });
    }
    Ok(Report {
        checks,
        setup_failure,
        events,
        took,
    })
}

#[derive(Default)]
struct Node {
    output: Vec<String>,
    action: Option<String>,
    seconds: f64,
    children: usize,
}

/// The checks of a test2json event stream, and the setup's failure if the top-level
/// test failed before or outside any test. Tests are `TestConformance/<ShortName>`, their
/// subtests one level below.
pub fn parse_events(text: &str) -> (Vec<Check>, Option<String>) {
    let mut nodes: BTreeMap<String, Node> = BTreeMap::new();
    let mut ended: Vec<String> = Vec::new();
    for line in text.lines() {
        let Ok(e) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(test) = e.get("Test").and_then(|t| t.as_str()) else {
            continue;
        };
        let action = e.get("Action").and_then(|a| a.as_str()).unwrap_or_default();
        let node = nodes.entry(test.to_string()).or_default();
        match action {
            "output" => {
                if let Some(o) = e.get("Output").and_then(|o| o.as_str()) {
                    node.output.push(o.to_string());
                }
            }
            "pass" | "fail" | "skip" => {
                node.action = Some(action.to_string());
                node.seconds = e
                    .get("Elapsed")
                    .and_then(|s| s.as_f64())
                    .or_else(|| result_seconds(&node.output))
                    .unwrap_or(0.0);
                ended.push(test.to_string());
            }
            _ => {}
        }
    }
    let parents: Vec<String> = nodes
        .keys()
        .filter_map(|k| k.rsplit_once('/').map(|(p, _)| p.to_string()))
        .collect();
    for p in parents {
        if let Some(n) = nodes.get_mut(&p) {
            n.children += 1;
        }
    }
    let mut checks = Vec::new();
    for name in &ended {
        let node = &nodes[name];
        let parts: Vec<&str> = name.splitn(3, '/').collect();
        // Leaves only: a test with subtests is what its subtests are.
        let (test, subtest) = match parts.as_slice() {
            [_, test] if node.children == 0 => (test.to_string(), None),
            [_, test, sub] => (test.to_string(), Some(sub.replace('_', " "))),
            _ => continue,
        };
        let verdict = match node.action.as_deref() {
            Some("pass") => Verdict::Passed,
            Some("skip") => Verdict::Skipped(skip_reason(&node.output)),
            _ => failure(&node.output),
        };
        checks.push(Check {
            test,
            subtest,
            verdict,
            seconds: node.seconds,
        });
    }
    // The top-level test failing without a failed check below it: the setup failed.
    let setup_failure = nodes.iter().find_map(|(name, n)| {
        let top = !name.contains('/');
        let failed = n.action.as_deref() == Some("fail");
        let explained = checks
            .iter()
            .any(|c| matches!(c.verdict, Verdict::Failed(_) | Verdict::BlockedBySctp(_)));
        (top && failed && !explained).then(|| last_error(&n.output))
    });
    (checks, setup_failure)
}

/// The duration on a test's result line (`--- PASS: name (6.33s)`): test2json leaves
/// `Elapsed` out of the events of a binary run with `-test.v=test2json`.
fn result_seconds(output: &[String]) -> Option<f64> {
    output.iter().rev().find_map(|l| {
        let l = l.trim();
        if !l.starts_with("--- ") {
            return None;
        }
        l.rsplit_once('(')?.1.strip_suffix("s)")?.parse().ok()
    })
}

fn skip_reason(output: &[String]) -> String {
    output
        .iter()
        .rev()
        .map(|l| l.trim())
        .find(|l| !l.is_empty() && !l.starts_with("=== ") && !l.starts_with("--- "))
        .map(|l| l.split_once(": ").map_or(l, |(_, r)| r).to_string())
        .unwrap_or_else(|| "skipped".into())
}

/// A failed check's verdict: blocked by SCTP when its last failed command was an SCTP
/// connection and the kernel refused the protocol.
fn failure(output: &[String]) -> Verdict {
    let last_command = output
        .iter()
        .rev()
        .position(|l| l.contains("FAILED Command was") || l.contains("FAILED to execute command"));
    if let Some(from_end) = last_command {
        let i = output.len() - 1 - from_end;
        let cmd = &output[i];
        let refused = output[i..]
            .iter()
            .take(3)
            .any(|l| l.contains("protocol not supported"));
        if cmd.contains("--protocol=sctp") && refused {
            let command = cmd
                .split_once('[')
                .and_then(|(_, r)| r.rsplit_once(']'))
                .map_or(cmd.trim(), |(c, _)| c);
            return Verdict::BlockedBySctp(command.to_string());
        }
    }
    Verdict::Failed(last_error(output))
}

fn last_error(output: &[String]) -> String {
    let lines: Vec<&str> = output.iter().map(|l| l.trim()).collect();
    if let Some(i) = lines.iter().rposition(|l| l.starts_with("Error:")) {
        let mut msg = lines[i].trim_start_matches("Error:").trim().to_string();
        // testify continues the message on the next lines until "Test:".
        for l in &lines[i + 1..] {
            if l.starts_with("Test:") || l.starts_with("Messages:") || l.is_empty() {
                break;
            }
            msg.push(' ');
            msg.push_str(l);
        }
        if let Some(m) = lines[i..].iter().find(|l| l.starts_with("Messages:")) {
            msg.push_str(" — ");
            msg.push_str(m.trim_start_matches("Messages:").trim());
        }
        return msg;
    }
    lines
        .iter()
        .rev()
        .find(|l| !l.is_empty() && !l.starts_with("=== ") && !l.starts_with("--- "))
        .map(|l| l.to_string())
        .unwrap_or_else(|| "failed (no message)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(action: &str, test: &str, output: &str) -> String {
        serde_json::json!({"Action": action, "Package": "p", "Test": test, "Output": output, "Elapsed": 1.5})
            .to_string()
    }

    fn stream() -> String {
        let t = "TestConformance";
        [
            ev("run", t, ""),
            ev("output", t, "    suite.go:157: Test Setup: Applying base manifests\n"),
            ev("run", &format!("{t}/CNPAdminTierIngressTCP/Should_allow"), ""),
            ev("output", &format!("{t}/CNPAdminTierIngressTCP/Should_allow"), "--- PASS: TestConformance/CNPAdminTierIngressTCP/Should_allow (6.33s)\n"),
            serde_json::json!({"Action": "pass", "Test": format!("{t}/CNPAdminTierIngressTCP/Should_allow")}).to_string(),
            ev("pass", &format!("{t}/CNPAdminTierIngressTCP"), ""),
            ev("output", &format!("{t}/CNPAdminTierGress/Should_pass"), "    helper.go:71: FAILED Command was [/agnhost connect --timeout=3s --protocol=tcp 10.244.1.6:80]\n"),
            ev("output", &format!("{t}/CNPAdminTierGress/Should_pass"), "    helper.go:71: Expected connection to succeed ... stderr: TIMEOUT\n"),
            ev("output", &format!("{t}/CNPAdminTierGress/Should_pass"), "    helper.go:71: FAILED Command was [/agnhost connect --timeout=3s --protocol=sctp 10.244.1.6:9003]\n"),
            ev("output", &format!("{t}/CNPAdminTierGress/Should_pass"), "    helper.go:71: Expected connection to succeed from a to b, but instead it miserably failed. stderr: OTHER: protocol not supported\n"),
            ev("output", &format!("{t}/CNPAdminTierGress/Should_pass"), "        \tError:      \tCondition never satisfied\n"),
            ev("fail", &format!("{t}/CNPAdminTierGress/Should_pass"), ""),
            ev("output", &format!("{t}/CNPAdminTierGress/Should_deny"), "    helper.go:71: FAILED Command was [/agnhost connect --timeout=3s --protocol=udp 10.244.1.6:53]\n"),
            ev("output", &format!("{t}/CNPAdminTierGress/Should_deny"), "    helper.go:71: Expected connection to fail from a to b, but instead it successfully connected.\n"),
            ev("output", &format!("{t}/CNPAdminTierGress/Should_deny"), "        \tError:      \tCondition never satisfied\n"),
            ev("output", &format!("{t}/CNPAdminTierGress/Should_deny"), "        \tTest:       \tx\n"),
            ev("fail", &format!("{t}/CNPAdminTierGress/Should_deny"), ""),
            ev("fail", &format!("{t}/CNPAdminTierGress"), ""),
            ev("output", &format!("{t}/CNPAdminTierEgressSCTP"), "    conformance_test.go:80: SCTP only: no SCTP\n"),
            ev("skip", &format!("{t}/CNPAdminTierEgressSCTP"), ""),
            ev("fail", t, ""),
        ]
        .join("\n")
    }

    #[test]
    fn checks_are_leaves_and_sctp_refusals_are_told_from_failures() {
        let (checks, setup) = parse_events(&stream());
        assert_eq!(setup, None);
        assert_eq!(checks.len(), 4, "{checks:#?}");
        assert_eq!(checks[0].test, "CNPAdminTierIngressTCP");
        assert_eq!(checks[0].subtest.as_deref(), Some("Should allow"));
        assert_eq!(checks[0].verdict, Verdict::Passed);
        assert_eq!(checks[0].seconds, 6.33, "read from the result line");
        assert_eq!(
            checks[1].verdict,
            Verdict::BlockedBySctp(
                "/agnhost connect --timeout=3s --protocol=sctp 10.244.1.6:9003".into()
            )
        );
        assert_eq!(
            checks[2].verdict,
            Verdict::Failed("Condition never satisfied".into())
        );
        assert_eq!(checks[3].subtest, None);
        assert_eq!(
            checks[3].verdict,
            Verdict::Skipped("SCTP only: no SCTP".into())
        );
        let report = Report {
            checks,
            setup_failure: None,
            events: PathBuf::new(),
            took: Duration::from_secs(3),
        };
        assert_eq!(report.counts(), (1, 1, 1, 1));
        assert!(!report.ok(), "a real failure fails the run");
        let table = report.table();
        assert!(
            table.contains(
                "| CNPAdminTierGress | Should deny | **FAIL**: Condition never satisfied | 2 s |"
            ),
            "{table}"
        );
    }

    #[test]
    fn an_sctp_command_that_timed_out_is_a_failure_not_a_block() {
        let out = vec![
            "FAILED Command was [/agnhost connect --protocol=sctp 10.0.0.1:9003]".to_string(),
            "Expected connection to succeed ... stderr: TIMEOUT".to_string(),
        ];
        assert!(matches!(failure(&out), Verdict::Failed(_)));
    }

    #[test]
    fn a_failure_outside_every_test_is_the_setup() {
        let t = "TestConformance";
        let text = [
            ev(
                "output",
                t,
                "    helper.go:137: StatefulSet replicas not rolled out yet.\n",
            ),
            ev(
                "output",
                t,
                "        \tError:      \tCondition never satisfied\n",
            ),
            ev("fail", t, ""),
        ]
        .join("\n");
        let (checks, setup) = parse_events(&text);
        assert!(checks.is_empty());
        assert_eq!(setup.as_deref(), Some("Condition never satisfied"));
        let report = Report {
            checks,
            setup_failure: setup,
            events: PathBuf::new(),
            took: Duration::ZERO,
        };
        assert!(!report.ok());
        assert!(report.summary().contains("SETUP FAILED"));
    }
}
