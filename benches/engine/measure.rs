//! Measuring: medians, percentiles, CPU per item, memory and file descriptors.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The median time of `f` over `batches` batches of `n` calls; and the
/// process's CPU time (every thread) per call over all of them, which the
/// machine's other tenants move less than time.
pub(crate) async fn per_iter<F: AsyncFnMut()>(n: u32, batches: usize, mut f: F) -> PerIter {
    for _ in 0..n / 10 {
        f().await; // warm-up
    }
    let mut times = Vec::with_capacity(batches);
    let (cpu, faults) = (cpu_seconds(), minor_faults());
    for _ in 0..batches {
        let start = Instant::now();
        for _ in 0..n {
            f().await;
        }
        times.push(start.elapsed() / n);
    }
    let calls = (n as usize * batches) as f64;
    let cpu = Duration::from_secs_f64((cpu_seconds() - cpu) / calls);
    let faults = (minor_faults() - faults) as f64 / calls;
    times.sort();
    PerIter {
        time: times[batches / 2],
        cpu,
        faults,
    }
}

#[derive(Clone, Copy, Default)]
pub(crate) struct PerIter {
    pub(crate) time: Duration,
    pub(crate) cpu: Duration,
    /// Minor page faults per call: pages mapped in on first touch (a fresh
    /// instance's memory beyond what the pool keeps resident).
    pub(crate) faults: f64,
}

pub(crate) fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The `p`-th percentile of `times` (sorted in place), in µs.
pub(crate) fn percentile(times: &mut [Duration], p: f64) -> f64 {
    times.sort();
    let i = ((times.len() as f64 * p / 100.0) as usize).min(times.len() - 1);
    micros(times[i])
}

/// Peak resident memory (VmHWM) of this process, in MiB.
pub(crate) fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// Resident memory (VmRSS) of this process now, in MiB.
pub(crate) fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// A memory figure of `/proc/self/status` (`field` with its colon), in MiB.
fn status_mib(field: &str) -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

/// Wall time and the process's CPU time since it was started.
pub(crate) struct Stopwatch {
    start: Instant,
    cpu: f64,
}

impl Stopwatch {
    pub(crate) fn start() -> Stopwatch {
        Stopwatch {
            start: Instant::now(),
            cpu: cpu_seconds(),
        }
    }

    /// For `n` items done since the start: items per second, and µs of CPU
    /// (every thread) per item.
    pub(crate) fn per_item(&self, n: usize) -> (f64, f64) {
        let cpu_us = 1e6 * (cpu_seconds() - self.cpu) / n as f64;
        (n as f64 / self.start.elapsed().as_secs_f64(), cpu_us)
    }
}

/// CPU time (user + system) this process has used so far, in seconds.
pub(crate) fn cpu_seconds() -> f64 {
    let (user, system) = cpu_split();
    user + system
}

/// Minor page faults this process has taken so far (`minflt`).
pub(crate) fn minor_faults() -> u64 {
    stat_fields(|fields| fields.get(7).and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// Reads `/proc/self/stat`'s fields after the command name.
fn stat_fields<T>(read: impl FnOnce(&[String]) -> T) -> T {
    let (_, fields) = read_stat(Path::new("/proc/self/stat")).unwrap_or_default();
    read(&fields)
}

/// A `stat` file of /proc, a process's or a thread's: the command name, and
/// the fields after it (the name is in parentheses, and may hold spaces).
/// `None` if it is gone (a thread that has exited).
fn read_stat(path: &Path) -> Option<(String, Vec<String>)> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (head, rest) = stat.rsplit_once(')')?;
    let name = head.split_once('(').map_or("", |(_, name)| name);
    Some((
        name.to_owned(),
        rest.split_whitespace().map(str::to_owned).collect(),
    ))
}

/// The CPU time in `stat`'s fields, in seconds: in user space, and in the
/// kernel on the task's behalf.
fn cpu_of(fields: &[String]) -> (f64, f64) {
    // utime and stime, in clock ticks (100 per second on Linux).
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (ticks(11) / 100.0, ticks(12) / 100.0)
}

/// CPU time this process has used so far, in seconds: in user space, and
/// in the kernel on its behalf (system calls: writes, fsync, wake-ups).
pub(crate) fn cpu_split() -> (f64, f64) {
    stat_fields(cpu_of)
}

pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// CPU time (user + system) each thread of this process has used so far,
/// in seconds, summed by thread name (truncated by Linux to 15 bytes).
/// Threads that have exited are not in it.
pub(crate) fn cpu_by_thread() -> BTreeMap<String, f64> {
    let mut by_name = BTreeMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Some((name, seconds)) = task_cpu(&task.path().join("stat")) {
            *by_name.entry(name).or_default() += seconds;
        }
    }
    by_name
}

/// CPU time per thread name since it was started (see [`cpu_by_thread`]).
pub(crate) struct ThreadClock(BTreeMap<String, f64>);

impl ThreadClock {
    pub(crate) fn start() -> ThreadClock {
        ThreadClock(cpu_by_thread())
    }

    /// For `n` items done since the start: µs of CPU per item, by thread
    /// name (those that used any).
    pub(crate) fn per_item(&self, n: usize) -> BTreeMap<String, f64> {
        cpu_by_thread()
            .into_iter()
            .map(|(name, after)| {
                let before = self.0.get(&name).copied().unwrap_or(0.0);
                (name, 1e6 * (after - before) / n as f64)
            })
            .filter(|(_, us)| *us > 0.0)
            .collect()
    }
}

/// CPU time (user + system) the calling thread has used so far, in seconds.
pub(crate) fn thread_cpu_seconds() -> f64 {
    task_cpu(Path::new("/proc/thread-self/stat")).map_or(0.0, |(_, seconds)| seconds)
}

/// A task's name and CPU time in seconds, from its `stat` file; `None` if
/// it has exited.
fn task_cpu(stat: &Path) -> Option<(String, f64)> {
    let (name, fields) = read_stat(stat)?;
    let (user, system) = cpu_of(&fields);
    Some((name, user + system))
}

/// While it lives, perf samples the part of a section called `what`: with
/// `BENCH_PERF_CTL` set to the control FIFO of a `perf record -D -1
/// --control fifo:PATH`, it enables perf when opened and disables it when
/// dropped, if `BENCH_PERF_WHAT` is `what` (or unset and `what` is
/// `engine`). A guard, not a wrapper, so a loop can open it after its
/// warm-up.
pub(crate) struct PerfWindow(Option<std::ffi::OsString>);

impl PerfWindow {
    pub(crate) fn open(what: &str) -> Self {
        let chosen = std::env::var("BENCH_PERF_WHAT").unwrap_or_else(|_| "engine".into());
        let window = Self(std::env::var_os("BENCH_PERF_CTL").filter(|_| chosen == what));
        window.say("enable\n");
        window
    }

    fn say(&self, command: &str) {
        if let Some(path) = &self.0 {
            std::fs::write(path, command).expect("BENCH_PERF_CTL names perf's control FIFO");
        }
    }
}

impl Drop for PerfWindow {
    fn drop(&mut self) {
        self.say("disable\n");
    }
}
