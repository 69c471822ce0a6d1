//! `tim-chaos` through the binary: a short run with faults ends in a clean `chaos: …` line.
use std::collections::HashMap;
use std::process::Command;

#[test]
fn tim_chaos_reports_a_clean_run_in_its_last_line() {
    let out = Command::new(env!("CARGO_BIN_EXE_tim-chaos"))
        .args(["--nodes", "3", "--users", "6", "--seconds", "8", "--fault-every", "2"])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default().to_string();
    assert!(out.status.success(), "{last}\n{}", String::from_utf8_lossy(&out.stderr));
    let fields: HashMap<&str, u64> = last
        .strip_prefix("chaos: ")
        .expect("last line starts with `chaos: `")
        .split(' ')
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap();
            (k, v.parse().unwrap())
        })
        .collect();
    assert!(fields["acked"] > 0 && fields["delivered"] >= fields["acked"], "{last}");
    for k in ["lost", "duplicated", "out_of_order"] {
        assert_eq!(fields[k], 0, "{last}");
    }
    assert!(fields.contains_key("max_reconnect_ms") && fields.contains_key("sent"), "{last}");
}
