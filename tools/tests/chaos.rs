//! `tim-chaos` through the binary: a short run with every kind of fault ends in a clean
//! `chaos: …` line that counts each kind.
use std::collections::HashMap;
use std::process::Command;

#[test]
fn tim_chaos_reports_a_clean_run_with_every_fault_kind_in_its_last_line() {
    let args = ["--nodes", "3", "--users", "6", "--seconds", "20", "--fault-every", "1"];
    let out = Command::new(env!("CARGO_BIN_EXE_tim-chaos"))
        .args(args)
        .args(["--hold", "2"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().to_string();
    assert!(out.status.success(), "{last}\n{}", String::from_utf8_lossy(&out.stderr));
    let fields: HashMap<&str, &str> = last
        .strip_prefix("chaos: ")
        .expect("last line starts with `chaos: `")
        .split(' ')
        .map(|kv| kv.split_once('=').unwrap())
        .collect();
    let n = |k: &str| fields[k].parse::<u64>().unwrap();
    assert!(n("acked") > 0 && n("acked") == n("sent") && n("delivered") >= n("acked"), "{last}");
    for k in ["lost", "duplicated", "out_of_order"] {
        assert_eq!(n(k), 0, "{last}");
    }
    assert!(fields.contains_key("max_reconnect_ms"), "{last}");
    let faults: HashMap<&str, u64> = fields["faults"]
        .split(',')
        .map(|kv| kv.split_once(':').unwrap())
        .map(|(k, v)| (k, v.parse().unwrap()))
        .collect();
    for kind in ["node_kill", "node_drain", "redis_kill", "redis_failover", "partition"] {
        assert!(faults[kind] >= 1, "no {kind} fault: {last}");
    }
}
