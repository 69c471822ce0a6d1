//! CPU and memory of the processes in a run: the node(s) and the generator from `/proc`, Redis
//! from its `INFO`. Linux only; elsewhere the figures are left out.
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// `/proc/<pid>/stat` counts CPU time in clock ticks of 1/100 s (USER_HZ is 100 on Linux for
/// every mainstream architecture).
const TICKS_PER_SECOND: f64 = 100.0;

/// A process to watch: `None` is this process.
#[derive(Debug, Clone)]
pub struct Watched {
    pub label: String,
    pub pid: Option<u32>,
}

fn proc_path(pid: Option<u32>, file: &str) -> String {
    match pid {
        Some(p) => format!("/proc/{p}/{file}"),
        None => format!("/proc/self/{file}"),
    }
}

/// User + system CPU time of a process so far, in seconds.
pub fn cpu_seconds(pid: Option<u32>) -> Option<f64> {
    let stat = std::fs::read_to_string(proc_path(pid, "stat")).ok()?;
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 14 (utime) and 15 (stime) of proc(5); `fields[0]` is field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// Resident set size now and at its peak (VmRSS, VmHWM), in KiB.
pub fn rss_kib(pid: Option<u32>) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(proc_path(pid, "status")).ok()?;
    let get = |key: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].trim().trim_end_matches("kB").trim().parse().ok()
    };
    Some((get("VmRSS:")?, get("VmHWM:")?))
}

/// Busy and total CPU time of the whole machine so far, in ticks, from `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<u64> = cpu.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).unwrap_or(&0);
    Some((total - idle, total))
}

/// Redis's own CPU seconds (user + sys) from `INFO cpu`.
async fn redis_cpu(conn: &mut redis::aio::MultiplexedConnection) -> Option<f64> {
    let info: String = redis::cmd("INFO").arg("cpu").query_async(conn).await.ok()?;
    let get = |key: &str| -> Option<f64> {
        info.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok())
    };
    Some(get("used_cpu_user:")? + get("used_cpu_sys:")?)
}

/// CPU over a window for each watched process (and Redis), and their RSS at its end.
pub struct Meter {
    procs: Vec<Watched>,
    redis: Option<redis::aio::MultiplexedConnection>,
    start: Option<Start>,
}

struct Start {
    at: Instant,
    procs: Vec<Option<f64>>,
    redis: Option<f64>,
    machine: Option<(u64, u64)>,
}

/// One process over a window: label, CPU % of one core, (RSS, peak RSS) in KiB at its end.
pub type ProcUsage = (String, Option<f64>, Option<(u64, u64)>);

/// What a [`Meter`] saw over a window.
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub procs: Vec<ProcUsage>,
    pub redis_cpu: Option<f64>,
    /// The whole machine's busy share of all its cores, in %.
    pub machine_busy: Option<f64>,
}

impl Meter {
    /// Watches `procs`, and Redis at `redis_url` when given (a failure to reach it only drops
    /// the Redis figure).
    pub async fn new(procs: Vec<Watched>, redis_url: Option<&str>) -> Meter {
        let redis = match redis_url {
            Some(url) => match redis::Client::open(url) {
                Ok(c) => c.get_multiplexed_async_connection().await.ok(),
                Err(_) => None,
            },
            None => None,
        };
        Meter { procs, redis, start: None }
    }

    pub async fn start(&mut self) {
        let cpu = self.procs.iter().map(|p| cpu_seconds(p.pid)).collect();
        let redis = match self.redis.as_mut() {
            Some(c) => redis_cpu(c).await,
            None => None,
        };
        self.start =
            Some(Start { at: Instant::now(), procs: cpu, redis, machine: machine_ticks() });
    }

    pub async fn stop(&mut self) -> Usage {
        let Some(start) = self.start.take() else { return Usage::default() };
        let secs = start.at.elapsed().as_secs_f64().max(1e-3);
        let pct = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / secs * 100.0);
        let procs = self
            .procs
            .iter()
            .zip(start.procs)
            .map(|(p, c0)| (p.label.clone(), pct(c0, cpu_seconds(p.pid)), rss_kib(p.pid)))
            .collect();
        let redis1 = match self.redis.as_mut() {
            Some(c) => redis_cpu(c).await,
            None => None,
        };
        let machine_busy = match (start.machine, machine_ticks()) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                Some((b1 - b0) as f64 / (t1 - t0) as f64 * 100.0)
            }
            _ => None,
        };
        Usage { procs, redis_cpu: pct(start.redis, redis1), machine_busy }
    }
}

impl Usage {
    /// CPU time per delivered message of each server process (all but the generator) and of
    /// Redis, and their sum, e.g. `node 31.2 µs + redis 25.0 µs = 56.2 µs`.
    pub fn per_message(&self, delivered: u64, window: Duration) -> Option<String> {
        if delivered == 0 {
            return None;
        }
        let us = |pct: f64| pct / 100.0 * window.as_secs_f64() / delivered as f64 * 1e6;
        let servers = self.procs.iter().filter(|p| !p.0.contains("generator"));
        let mut parts: Vec<(String, f64)> =
            servers.filter_map(|(label, cpu, _)| Some((label.clone(), us((*cpu)?)))).collect();
        if let Some(c) = self.redis_cpu {
            parts.push(("redis".into(), us(c)));
        }
        if parts.is_empty() {
            return None;
        }
        let total: f64 = parts.iter().map(|p| p.1).sum();
        let each: Vec<String> = parts.iter().map(|(l, v)| format!("{l} {v:.1} µs")).collect();
        Some(format!("{} = {total:.1} µs", each.join(" + ")))
    }

    /// One line: CPU of each process and Redis, RSS of each process.
    pub fn describe(&self) -> String {
        let mut s = String::from("cpu (% of one core):");
        for (label, cpu, _) in &self.procs {
            match cpu {
                Some(c) => write!(s, " {label} {c:.0}%,").unwrap_or(()),
                None => write!(s, " {label} n/a,").unwrap_or(()),
            }
        }
        if let Some(c) = self.redis_cpu {
            write!(s, " redis {c:.0}%,").unwrap_or(());
        }
        s.pop();
        if let Some(b) = self.machine_busy {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let ours: f64 =
                self.procs.iter().filter_map(|p| p.1).sum::<f64>() + self.redis_cpu.unwrap_or(0.0);
            let other = (b * cores as f64 - ours).max(0.0);
            write!(s, " (machine {b:.0}% busy of {cores} cores; {other:.0}% of a core elsewhere)")
                .unwrap_or(());
        }
        s.push_str("; rss:");
        for (label, _, rss) in &self.procs {
            if let Some((now, peak)) = rss {
                let mib = |k: &u64| *k as f64 / 1024.0;
                write!(s, " {label} {:.1} MiB (peak {:.1}),", mib(now), mib(peak)).unwrap_or(());
            }
        }
        s.pop();
        s
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        if cfg!(target_os = "linux") {
            assert!(super::cpu_seconds(None).is_some());
            let (rss, peak) = super::rss_kib(None).unwrap();
            assert!(rss > 0 && peak >= rss);
        }
    }
}
