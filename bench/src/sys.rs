//! Process measurements and placement: RSS, CPU time, CPU pinning, file-descriptor limit.

use std::process::Command;

/// Resident set size of `pid`, KiB (`VmRSS` in /proc).
pub(crate) fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for {pid}"))
}

/// The fields of `/proc/<pid>/stat` after the parenthesised command name: index 0 is field 3 (1-based, `state`).
fn stat_fields(pid: u32) -> anyhow::Result<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).ok_or_else(|| anyhow::anyhow!("bad stat"))?;
    Ok(after.split_whitespace().map(str::to_owned).collect())
}

/// The sum of stat fields `a` and `b` (indexes as in [`stat_fields`]), clock ticks in seconds.
fn stat_seconds(pid: u32, a: usize, b: usize) -> anyhow::Result<f64> {
    let fields = stat_fields(pid)?;
    let field = |i: usize| -> anyhow::Result<f64> {
        Ok(fields.get(i).ok_or_else(|| anyhow::anyhow!("short stat for {pid}"))?.parse::<f64>()?)
    };
    Ok((field(a)? + field(b)?) / clock_ticks_per_second())
}

/// User + system CPU seconds consumed by `pid` so far (all threads): utime and stime, fields 14 and 15.
pub(crate) fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    stat_seconds(pid, 11, 12)
}

/// User + system CPU seconds consumed so far by each thread of `pid`, by thread name (threads of one name
/// summed).
pub(crate) fn thread_cpu_seconds(pid: u32) -> anyhow::Result<std::collections::BTreeMap<String, f64>> {
    let mut threads = std::collections::BTreeMap::new();
    let per_tick = 1.0 / clock_ticks_per_second();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(stat) = std::fs::read_to_string(task?.path().join("stat")) else { continue };
        // The name is between the first '(' and the last ')'; utime and stime follow as fields 14 and 15.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].to_owned();
        let fields: Vec<&str> = stat[close + 1..].split_whitespace().collect();
        let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
        *threads.entry(name).or_insert(0.0) += ticks * per_tick;
    }
    Ok(threads)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Pins every thread of this process (and threads started later) to `cpu`, with `taskset`.
pub(crate) fn pin_self(cpu: usize) -> anyhow::Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", &cpu.to_string(), &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status()?;
    anyhow::ensure!(status.success(), "taskset failed to pin this process to CPU {cpu}");
    Ok(())
}

/// Raises the open-file limit to the hard limit (10 000 connections need 10 000 descriptors per side).
pub(crate) fn raise_fd_limit() -> anyhow::Result<u64> {
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    rlimit::Resource::NOFILE.set(hard, hard)?;
    Ok(hard)
}

/// The CPU model, from /proc/cpuinfo.
pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Number of online CPUs.
pub(crate) fn nproc() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// Nanoseconds since the Unix epoch (the clock shared by the server child and the client parent).
pub(crate) fn wall_ns() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Time counters of each CPU from /proc/stat, in clock ticks: `(total, steal)` per `cpuN` line, in CPU order.
/// Steal is time the hypervisor ran something else while this VM's CPU had work; `total` is the sum of the
/// first eight columns (user … steal; guest time is already inside user).
pub(crate) fn cpu_ticks() -> Vec<(u64, u64)> {
    std::fs::read_to_string("/proc/stat").map(|s| parse_cpu_ticks(&s)).unwrap_or_default()
}

fn parse_cpu_ticks(stat: &str) -> Vec<(u64, u64)> {
    stat.lines()
        .filter(|l| l.strip_prefix("cpu").and_then(|r| r.chars().next()).is_some_and(|c| c.is_ascii_digit()))
        .map(|l| {
            let v: Vec<u64> = l.split_whitespace().skip(1).take(8).map(|x| x.parse().unwrap_or(0)).collect();
            (v.iter().sum(), v.get(7).copied().unwrap_or(0))
        })
        .collect()
}

/// Steal time of CPU 0 and CPU 1 between two [`cpu_ticks`] readings, as a percentage of each CPU's time
/// (`null` for a CPU without readings or without time between them).
pub(crate) fn steal_percent(before: &[(u64, u64)], after: &[(u64, u64)]) -> serde_json::Value {
    let pct = |cpu: usize| match (before.get(cpu), after.get(cpu)) {
        (Some(&(t0, s0)), Some(&(t1, s1))) if t1 > t0 => {
            Some((s1.saturating_sub(s0) as f64 * 1000.0 / (t1 - t0) as f64).round() / 10.0)
        }
        _ => None,
    };
    serde_json::json!({"cpu0": pct(0), "cpu1": pct(1)})
}

/// `pid` and its children (one level: every PostgreSQL process is a child of the postmaster).
pub(crate) fn with_children(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        // The parent is field 4.
        let parent = stat_fields(child).ok().and_then(|f| f.get(1)?.parse::<u32>().ok());
        if parent == Some(pid) {
            pids.push(child);
        }
    }
    pids
}

/// User + system CPU seconds of `pid`, of its children alive now (see [`with_children`]) and of those it reaped
/// (a child that exits between two readings moves its time into its parent's `cutime`/`cstime`).
pub(crate) fn tree_cpu_seconds(pid: u32) -> f64 {
    // cutime and cstime, fields 16 and 17.
    let reaped = stat_seconds(pid, 13, 14).unwrap_or(0.0);
    with_children(pid).into_iter().filter_map(|p| cpu_seconds(p).ok()).sum::<f64>() + reaped
}

/// Pins `pid` and its children to `cpu` (`taskset`); processes forked later inherit the affinity.
pub(crate) fn pin_tree(pid: u32, cpu: u32) -> anyhow::Result<()> {
    for p in with_children(pid) {
        let status = std::process::Command::new("taskset")
            .args(["-p", "-c", &cpu.to_string(), &p.to_string()])
            .stdout(std::process::Stdio::null())
            .status()?;
        anyhow::ensure!(status.success(), "taskset -p -c {cpu} {p} failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steal_is_the_share_of_each_cpus_time_between_two_readings() {
        let before = parse_cpu_ticks(
            "cpu  300 0 100 1000 0 0 0 60 0 0\ncpu0 100 0 50 500 0 0 0 10 7 0\ncpu1 200 0 50 500 0 0 0 50 0 0\nintr 1 2\n",
        );
        assert_eq!(before, [(660, 10), (800, 50)]);
        // CPU 0: 200 ticks pass, 20 stolen; CPU 1: 100 ticks, none stolen.
        let after = [(860, 30), (900, 50)];
        assert_eq!(steal_percent(&before, &after), serde_json::json!({"cpu0": 10.0, "cpu1": 0.0}));
        assert_eq!(steal_percent(&before, &before), serde_json::json!({"cpu0": null, "cpu1": null}));
        assert_eq!(steal_percent(&[], &after), serde_json::json!({"cpu0": null, "cpu1": null}));
    }
}
