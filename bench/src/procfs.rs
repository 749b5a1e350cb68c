//! What the bench reads of processes and of the machine, from `/proc`:
//! CPU time (utime + stime) and resident memory of a pid, the machine's
//! busy share, the pids of `tidings` and `tansu`, and the description of
//! the machine that goes with every result.

use std::time::Instant;

use anyhow::{bail, Context};
use serde::Serialize;

/// Clock ticks per second of `/proc/<pid>/stat` (`sysconf(_SC_CLK_TCK)`,
/// 100 on every Linux this runs on).
fn ticks_per_second() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100.0, |t| t as f64)
}

/// The CPU seconds (user + system) `pid` has used so far; `None` once it is
/// gone. Threads included: `/proc/<pid>/stat` sums them.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: the
    // fields are counted from the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15, i.e. 11 and 12 after the state.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / ticks_per_second())
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
pub fn memory_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

pub fn rss_mib(pid: u32) -> Option<f64> {
    memory_kib(pid, "VmRSS").map(|k| k as f64 / 1024.0)
}

/// Resets the peak resident size (`VmHWM`) of `pid` to its current size, so
/// that a peak read later belongs to what ran in between (Linux ≥ 4.0).
pub fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// CPU used by a set of processes over an interval, against wall time.
pub struct CpuWatch {
    started: Instant,
    pids: Vec<(String, u32, f64)>,
    machine: Option<(u64, u64)>,
    own: f64,
}

/// What a [`CpuWatch`] saw: per process, in % of one core.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    pub seconds: f64,
    /// `(name, CPU seconds used, % of one core)`.
    pub processes: Vec<(String, f64, f64)>,
    /// This generator's own use, % of one core.
    pub generator_pct: f64,
    /// The whole machine's busy share, % of all cores.
    pub machine_busy_pct: f64,
}

impl CpuUse {
    pub fn pct(&self, name: &str) -> Option<f64> {
        self.processes
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, pct)| *pct)
    }

    pub fn cpu_seconds(&self, name: &str) -> Option<f64> {
        self.processes
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, secs, _)| *secs)
    }

    /// Whether this one generator process may have been the bound: the
    /// machine was nearly saturated and the generator held a large share of
    /// it. Everything runs on the same cores, so a generator that takes a
    /// core from the server caps what the server can show.
    pub fn generator_bound(&self) -> bool {
        let cores = cores() as f64;
        let generator_share = self.generator_pct / (cores * 100.0);
        // Shorter than a second is a few clock ticks: too coarse to say.
        self.seconds >= 1.0 && self.machine_busy_pct >= 90.0 && generator_share >= 0.3
    }

    /// A line for the notes of a scenario.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = self
            .processes
            .iter()
            .map(|(name, _, pct)| format!("{name} {pct:.0} %"))
            .collect();
        parts.push(format!("generator {:.0} %", self.generator_pct));
        let mut line = format!(
            "CPU over {:.1} s (% of one core): {}; machine busy {:.0} % of {} cores",
            self.seconds,
            parts.join(", "),
            self.machine_busy_pct,
            cores()
        );
        if self.generator_bound() {
            line.push_str(
                " — the machine was saturated and this one generator process held a large share: it may be the bound",
            );
        }
        line
    }
}

impl CpuWatch {
    pub fn start(pids: &[(&str, u32)]) -> Self {
        CpuWatch {
            started: Instant::now(),
            pids: pids
                .iter()
                .map(|(name, pid)| ((*name).to_owned(), *pid, cpu_seconds(*pid).unwrap_or(0.0)))
                .collect(),
            machine: machine_ticks(),
            own: cpu_seconds(std::process::id()).unwrap_or(0.0),
        }
    }

    pub fn stop(&self) -> CpuUse {
        let seconds = self.started.elapsed().as_secs_f64().max(1e-9);
        let processes = self
            .pids
            .iter()
            .map(|(name, pid, before)| {
                let used = cpu_seconds(*pid).map_or(0.0, |now| now - before);
                (name.clone(), used, used / seconds * 100.0)
            })
            .collect();
        let own = cpu_seconds(std::process::id()).unwrap_or(0.0) - self.own;
        let machine_busy_pct = match (self.machine, machine_ticks()) {
            (Some((busy0, total0)), Some((busy1, total1))) if total1 > total0 => {
                (busy1 - busy0) as f64 / (total1 - total0) as f64 * 100.0
            }
            _ => 0.0,
        };
        CpuUse {
            seconds,
            processes,
            generator_pct: own / seconds * 100.0,
            machine_busy_pct,
        }
    }
}

/// `(busy, total)` ticks of all cores, from the first line of `/proc/stat`.
fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().next()?.strip_prefix("cpu ")?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect();
    let total: u64 = ticks.iter().sum();
    // idle and iowait are the 4th and 5th.
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The machine the figures come from.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu_model: String,
    pub memory_gib: f64,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let memory_gib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            })
            .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|k| k.trim().to_owned())
            .unwrap_or_default();
        Machine {
            cores: cores(),
            cpu_model,
            memory_gib,
            kernel,
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "{} cores ({}), {:.1} GiB memory, Linux {}",
            self.cores, self.cpu_model, self.memory_gib, self.kernel
        )
    }
}

/// The processes whose command name (`/proc/<pid>/comm`) is `name`, with
/// their command lines.
fn processes_named(name: &str) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == name)
        })
        .map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            (pid, cmdline)
        })
        .collect()
}

/// How many `tidings serve` processes run on the machine.
pub fn tidings_running() -> usize {
    processes_named("tidings")
        .iter()
        .filter(|(_, cmd)| cmd.contains("serve"))
        .count()
}

/// The tansu broker listening on `addr` (`host:port`): the one process named
/// `tansu` whose listener URL names that port.
pub fn find_broker(addr: &str) -> anyhow::Result<u32> {
    let port = addr.rsplit(':').next().unwrap_or(addr);
    let all = processes_named("tansu");
    let on_port: Vec<_> = all
        .iter()
        .filter(|(_, cmd)| cmd.contains(&format!(":{port} ")) || cmd.ends_with(&format!(":{port}")))
        .collect();
    match (on_port.as_slice(), all.as_slice()) {
        ([(pid, _)], _) => Ok(*pid),
        ([], [(pid, _)]) => Ok(*pid),
        ([], []) => bail!("no process named tansu: give --broker-pid"),
        _ => bail!("several tansu processes match {addr}: give --broker-pid"),
    }
}

/// The `tidings` process serving on `port`: the only one named `tidings`,
/// or the one whose command line or environment names the port.
pub fn find_tidings(port: u16) -> anyhow::Result<u32> {
    let all: Vec<_> = processes_named("tidings")
        .into_iter()
        .filter(|(_, cmd)| cmd.contains("serve"))
        .collect();
    if let [(pid, _)] = all.as_slice() {
        return Ok(*pid);
    }
    let needle = format!(":{port}");
    let matching: Vec<u32> = all
        .iter()
        .filter(|(pid, cmd)| {
            cmd.contains(&needle)
                || std::fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| {
                    env.split(|b| *b == 0).any(|var| {
                        var.starts_with(b"TIDINGS_HTTP_ADDR=") && var.ends_with(needle.as_bytes())
                    })
                })
        })
        .map(|(pid, _)| *pid)
        .collect();
    match matching.as_slice() {
        [pid] => Ok(*pid),
        [] => bail!("no tidings process serves port {port}: give --tidings-pid"),
        _ => bail!("several tidings processes serve port {port}: give --tidings-pid"),
    }
}

/// Raises this process's open-file limit to its hard limit (and the hard
/// limit too, where allowed): 10,000 sockets need more than the usual 1,024,
/// and the processes this one starts inherit the limit.
pub fn raise_open_files(wanted: u64) -> anyhow::Result<u64> {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("getrlimit")?;
    if soft >= wanted {
        return Ok(soft);
    }
    // Root may raise the hard limit; anyone may raise the soft one to it.
    if hard < wanted && setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        return Ok(wanted);
    }
    let soft = wanted.min(hard);
    setrlimit(Resource::RLIMIT_NOFILE, soft, hard).context("setrlimit")?;
    Ok(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_cpu_time_and_memory() {
        let pid = std::process::id();
        assert!(cpu_seconds(pid).is_some());
        assert!(memory_kib(pid, "VmRSS").is_some_and(|k| k > 0));
    }

    #[test]
    fn the_machine_is_described() {
        let machine = Machine::read();
        assert!(machine.cores >= 1);
        assert!(machine.memory_gib > 0.0);
    }
}
