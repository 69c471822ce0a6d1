//! `tim-bench` through the binary, briefly: the last line's format, messages delivered, no
//! errors, and the run's Redis keys gone afterwards; and `tim bench` forwarding to it. Behaviour,
//! not speed. The nodes are `tim serve` children of the `tim` built beside `tim-bench` (the
//! workspace's default members are built before its tests run).
use std::process::Command;

use tim_tools::harness::{RedisServer, tim_exe};

/// The figures of `bench: scenario=S msgs_per_s=N p50_ms=N p99_ms=N errors=N`.
#[derive(Debug)]
struct Last {
    scenario: String,
    msgs_per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
}

/// Parses the last line strictly: these five fields, in this order, and nothing else.
fn parse_last(line: &str) -> Last {
    let rest = line.strip_prefix("bench: ").unwrap_or_else(|| panic!("last line: {line:?}"));
    let fields: Vec<(&str, &str)> =
        rest.split(' ').map(|f| f.split_once('=').expect("key=value")).collect();
    let keys: Vec<&str> = fields.iter().map(|(k, _)| *k).collect();
    assert_eq!(keys, ["scenario", "msgs_per_s", "p50_ms", "p99_ms", "errors"], "{line}");
    let num = |i: usize| -> f64 {
        let v = fields[i].1;
        assert!(v.chars().all(|c| c.is_ascii_digit() || c == '.'), "{line}");
        v.parse().unwrap()
    };
    Last {
        scenario: fields[0].1.to_string(),
        msgs_per_s: num(1),
        p50_ms: num(2),
        p99_ms: num(3),
        errors: fields[4].1.parse().expect("errors is an integer"),
    }
}

/// Runs `tim-bench <args>`, expects success, returns stdout and its parsed last line.
fn bench(args: &[&str]) -> (String, Last) {
    run(Command::new(env!("CARGO_BIN_EXE_tim-bench")).args(args))
}

/// Runs `cmd`, expects success, returns stdout and its parsed last line.
fn run(cmd: &mut Command) -> (String, Last) {
    let out = cmd.env("RUST_LOG", "warn").output().expect("run the bench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{cmd:?} failed\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let last = stdout.lines().last().expect("some output").to_string();
    (stdout.clone(), parse_last(&last))
}

#[test]
fn same_node_delivers_everything_and_reports_baselines() {
    let peers = ["--mqtt", "", "--nats", ""];
    let (out, last) =
        bench(&[&["--seconds", "1", "--warmup", "0.3", "--pairs", "2"], &peers[..]].concat());
    assert_eq!(last.scenario, "same-node");
    assert!(last.msgs_per_s > 0.0, "{out}");
    assert!(last.p50_ms > 0.0 && last.p50_ms <= last.p99_ms, "{out}");
    assert_eq!(last.errors, 0, "{out}");
    assert!(out.contains("tim/bare-relay throughput"), "{out}");
}

/// Whether something answers at `addr`.
fn listening(addr: &str) -> bool {
    let addr = addr.parse().unwrap();
    std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)).is_ok()
}

/// Mosquitto and NATS JetStream take the same load when they run here (this machine's kind runs
/// them on their standard ports); where nothing answers, the run says so and goes on.
#[test]
fn the_broker_peers_take_the_same_load_or_are_skipped_with_a_note() {
    let short = ["--seconds", "0.5", "--warmup", "0.2", "--pairs", "2"];
    let nowhere = ["--mqtt", "127.0.0.1:1", "--nats", "127.0.0.1:1"];
    let (out, last) = bench(&[&short[..], &nowhere[..]].concat());
    assert_eq!(last.errors, 0, "{out}");
    assert!(
        out.contains("mosquitto (MQTT QoS 1, stores nothing): skipped, no MQTT server"),
        "{out}"
    );
    assert!(out.contains("file storage, explicit acks): skipped, no NATS server"), "{out}");

    for (addr, flag, label) in [
        ("127.0.0.1:1883", "--mqtt", "mosquitto (MQTT QoS 1, stores nothing): "),
        ("127.0.0.1:4222", "--nats", "nats-jetstream (file storage, explicit acks): "),
    ] {
        if !listening(addr) {
            eprintln!("nothing at {addr}: {label}not measured");
            continue;
        }
        let other = if flag == "--mqtt" { "--nats" } else { "--mqtt" };
        let (out, _) = bench(&[&short[..], &[flag, addr, other, ""]].concat());
        let line = out.lines().find(|l| l.starts_with(label)).unwrap_or_else(|| panic!("{out}"));
        assert!(line.contains(" msgs/s over ") && line.ends_with("errors 0"), "{out}");
        assert!(out.contains("server CPU per delivered message"), "{out}");
    }
}

/// scale-out starts its own clusters and nodes for each layout and reports them side by side.
#[test]
fn scale_out_runs_every_layout_on_clusters_of_its_own() {
    let args = ["--scenario", "scale-out", "--seconds", "0.5", "--warmup", "0.2", "--pairs", "2"];
    let (out, last) = bench(&args);
    assert_eq!(last.scenario, "scale-out", "{out}");
    assert_eq!(last.errors, 0, "{out}");
    for layout in [
        "1 node(s) × 1 master(s):",
        "1 node(s) × 3 master(s):",
        "2 node(s) × 1 master(s):",
        "2 node(s) × 3 master(s):",
    ] {
        assert_eq!(out.matches(layout).count(), 2, "{layout} measured and in the table\n{out}");
    }
    assert!(out.contains("redis3 "), "each master's CPU is read: {out}");
}

/// group: one group per size, most members offline; AOF bytes per message grow with the size
/// (each message goes into every member's inbox), and the run leaves no key behind.
#[test]
fn group_measures_each_size_and_what_redis_writes_per_message() {
    let server = RedisServer::start("redis-server", true, Vec::new).expect("redis-server");
    let url = server.url();
    let args = ["--scenario", "group", "--group-sizes", "3,40", "--online", "5", "--pairs", "2"];
    let (out, last) =
        bench(&[&args[..], &["--seconds", "0.5", "--warmup", "0.2", "--redis", &url]].concat());
    assert_eq!((last.scenario.as_str(), last.errors), ("group", 0), "{out}");
    assert!(last.msgs_per_s > 0.0, "{out}");
    let bytes: Vec<f64> = out
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Redis AOF per stored message: "))
        .filter_map(|l| l.split(' ').next()?.parse().ok())
        .collect();
    assert_eq!(bytes.len(), 2, "{out}");
    assert!(bytes[1] > bytes[0] * 5.0, "40 members write more than 3: {bytes:?}\n{out}");
    assert!(out.contains("group of 3 (3 online") && out.contains("group of 40 (5 online"), "{out}");
    let keys = Command::new("redis-cli").args(["-p", &server.port.to_string(), "DBSIZE"]).output();
    let keys = String::from_utf8_lossy(&keys.expect("redis-cli").stdout).trim().to_string();
    assert_eq!(keys, "0", "{out}");
}

#[test]
fn in_process_offline_drain_reads_the_whole_backlog() {
    let args = ["--scenario", "offline-drain", "--seconds", "1", "--pairs", "2", "--backlog"];
    let (out, last) = bench(&[&args[..], &["50", "--in-process"]].concat());
    assert_eq!(last.scenario, "offline-drain");
    assert!(out.contains("tim drain:") && out.contains("(100 of 100 in"), "{out}");
    assert!(last.msgs_per_s > 0.0, "{out}");
    assert_eq!(last.errors, 0, "{out}");
}

#[test]
fn with_redis_compares_with_the_store_script_and_cleans_up() {
    let server = RedisServer::start("redis-server", false, Vec::new).expect("redis-server");
    let url = server.url();
    let (out, last) =
        bench(&["--seconds", "1", "--warmup", "0.3", "--pairs", "2", "--redis", &url]);
    assert_eq!(last.errors, 0, "{out}");
    assert!(last.msgs_per_s > 0.0, "{out}");
    assert!(out.contains("tim/store-script throughput"), "{out}");
    // Every key the run wrote (node and store baseline) was under its own prefix, now deleted.
    let keys = Command::new("redis-cli").args(["-p", &server.port.to_string(), "DBSIZE"]).output();
    let keys = String::from_utf8_lossy(&keys.expect("redis-cli").stdout).trim().to_string();
    assert_eq!(keys, "0", "{out}");
}

#[test]
fn tim_bench_runs_tim_bench_beside_it_and_passes_its_status_on() {
    let tim = tim_exe(None).expect("tim is built beside tim-bench");
    let args = ["bench", "--seconds", "0.5", "--warmup", "0", "--pairs", "1", "--no-baselines"];
    let (out, last) = run(Command::new(&tim).args(args));
    assert_eq!(last.scenario, "same-node", "{out}");
    assert_eq!(last.errors, 0, "{out}");
    // Flags are the tool's: --help is its help, and its failure is tim's.
    let help = Command::new(&tim).args(["bench", "--help"]).output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--scenario"));
    let bad = Command::new(&tim).args(["bench", "--pairs", "0"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("--pairs must be at least 1") && !stderr.contains("tim: "), "{stderr}");
}
