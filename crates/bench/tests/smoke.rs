//! Every benchmark scenario at tiny sizes, and the report, so that the
//! benchmark cannot rot. No figure is asserted, only that each scenario
//! measured what it says. Needs the workspace's binaries and the stack's images built
//! (`scripts/test` builds them first).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn bench(out: &Path, args: &[&str]) {
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_portolan-bench"));
    let bin_dir = exe.parent().unwrap();
    for needed in ["registrator", "haproxy-sync", "demo-service"] {
        assert!(bin_dir.join(needed).exists(), "{needed} is not built in {} (run scripts/test)", bin_dir.display());
    }
    let status = Command::new(&exe).arg("--out").arg(out).arg("--bin-dir").arg(bin_dir).args(args).status().unwrap();
    assert!(status.success(), "portolan-bench {args:?}: {status}");
}

fn json(out: &Path, name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(out.join(format!("{name}.json"))).unwrap()).unwrap()
}

#[test]
fn every_scenario_runs_small_and_the_report_is_written() {
    let out = std::env::temp_dir().join(format!("portolan-bench-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();

    bench(&out, &["registrator", "--starts", "2", "--running", "2,3", "--kill", "1", "--refused-secs", "4"]);
    let reg = json(&out, "registrator");
    assert_eq!(reg["start_to_consul"]["n"], 2);
    assert_eq!(reg["resyncs"].as_array().unwrap().len(), 2);
    assert_eq!(reg["kill_to_gone"]["n"], 1);
    assert!(reg["refused"]["attempts_first_minute"].as_u64().unwrap() >= 1, "{reg}");
    assert_eq!(reg["refused"]["log_lines"], 1, "{reg}");
    assert_eq!(reg["refused"]["start_to_consul_beside"]["n"], 1);

    bench(
        &out,
        &[
            "haproxy-sync",
            "--changes",
            "2",
            "--cycles",
            "1",
            "--sizes",
            "5",
            "--checked",
            "3",
            "--instances",
            "2",
            "--node-losses",
            "1",
        ],
    );
    let hs = json(&out, "haproxy-sync");
    assert_eq!(hs["change_to_serving"]["n"], 2);
    assert!(hs["requests"].as_u64().unwrap() > 0);
    assert_eq!(hs["large"][0]["services"], 3);
    assert_eq!(hs["large"][0]["active_checks"], true);
    assert_eq!(hs["large"][1]["services"], 5);
    assert_eq!(hs["large"][1]["active_checks"], false);

    bench(&out, &["apply-modes", "--cycles", "1"]);
    let modes = json(&out, "apply-modes");
    let names: Vec<&str> = modes.as_array().unwrap().iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(names, ["runtime", "reload", "sf"]);
    for run in modes.as_array().unwrap() {
        assert!(run["max"]["requests"].as_u64().unwrap() > 0, "{run}");
        assert!(run["fixed"]["requests"].as_u64().unwrap() > 0, "{run}");
        assert_eq!(run["events"].as_array().unwrap().len(), 4, "{run}");
    }

    bench(&out, &["hosts", "--starts", "2", "--cuts", "1", "--leader-kills", "1", "--swarm-scales", "1"]);
    let hosts = json(&out, "hosts");
    assert_eq!(hosts["start_to_routed"]["n"], 2, "{hosts}");
    assert_eq!(hosts["cut_to_last_answer"]["n"], 1, "{hosts}");
    assert_eq!(hosts["passing_to_routed"]["n"], 1, "{hosts}");
    assert_eq!(hosts["leader_to_new_leader"]["n"], 1, "{hosts}");
    assert_eq!(hosts["swarm_start_to_routed"]["n"], 3, "{hosts}");

    bench(&out, &["kill", "--instances", "2", "--kills", "1", "--every-ms", "500", "--connections", "2"]);
    let kill = json(&out, "kill");
    let templates: Vec<&str> = kill.as_array().unwrap().iter().map(|r| r["template"].as_str().unwrap()).collect();
    assert_eq!(templates, ["before", "retries"]);
    for run in kill.as_array().unwrap() {
        assert!(run["load"]["requests"].as_u64().unwrap() > 0, "{run}");
    }

    bench(&out, &["worker", "--kills", "1", "--connections", "2", "--instances", "1"]);
    let worker = json(&out, "worker");
    let listeners: Vec<&str> = worker.as_array().unwrap().iter().map(|r| r["listener"].as_str().unwrap()).collect();
    assert_eq!(listeners, ["own", "held"]);
    for run in worker.as_array().unwrap() {
        assert_eq!(run["replaced_ms"].as_array().unwrap().len(), 1, "{run}");
        assert!(run["load"]["requests"].as_u64().unwrap() > 0, "{run}");
    }

    bench(&out, &["tls", "--seconds", "1", "--connections", "1", "--renewals", "1"]);
    let tls = json(&out, "tls");
    assert_eq!(tls["throughput"].as_array().unwrap().len(), 4, "{tls}");
    assert_eq!(tls["renewed_to_served"]["n"], 1, "{tls}");
    for run in tls["throughput"].as_array().unwrap() {
        assert!(run["load"]["requests"].as_u64().unwrap() > 0, "{run}");
    }
    assert!(tls["renewal_load"]["requests"].as_u64().unwrap() > 0, "{tls}");

    bench(&out, &["footprint"]);
    let footprint = json(&out, "footprint");
    assert!(footprint["demo_service_rss_mib"].as_f64().unwrap() > 0.0);
    let started = footprint["startup"].as_array().unwrap();
    assert_eq!(started.len(), 3, "every image started: {started:?}");
    assert!(started.iter().all(|s| s["run_to_healthy"]["n"].as_u64() == Some(5)), "{started:?}");

    let dir = out.join("report");
    bench(&out, &["report", "--dir", dir.to_str().unwrap()]);
    let report = std::fs::read_to_string(dir.join("REPORT.md")).unwrap();
    for section in [
        "## Machine",
        "## Across hosts",
        "## registrator",
        "## haproxy-sync",
        "## Zero loss under change",
        "## Instances SIGKILLed under load",
        "## HAProxy's worker SIGKILLed under load",
        "## TLS",
        "## Footprint",
    ] {
        assert!(report.contains(section), "{section} missing from\n{report}");
    }
    for png in ["hosts-latency.png", "latency.png", "growth.png", "registrator-growth.png", "apply-modes.png"] {
        assert!(std::fs::metadata(dir.join(png)).unwrap().len() > 1000, "{png}");
    }
    let _ = std::fs::remove_dir_all(&out);
}
