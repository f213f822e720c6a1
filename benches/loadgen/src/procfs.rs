//! CPU time, memory, threads and open files of a process, from /proc.

/// CPU, memory and threads of a process, from /proc.
#[derive(Debug, Clone, Copy)]
pub struct ProcSample {
    /// utime + stime since the process started.
    pub cpu_seconds: f64,
    /// VmRSS.
    pub rss_kib: u64,
    /// VmHWM: the peak resident set since the process started.
    pub hwm_kib: u64,
    pub threads: u64,
}

/// Clock ticks a second (`getconf CLK_TCK`), the unit of /proc/PID/stat's CPU times.
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// `pid` is a process id or `self`.
pub fn read_proc(pid: &str, ticks: f64) -> Result<ProcSample, String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map_err(|e| format!("/proc/{pid}/stat: {e}"))?;
    // Fields after the command name, which is in parentheses and may hold spaces:
    // state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')').ok_or("unexpected /proc stat format")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let cpu_seconds = (tick(11) + tick(12)) as f64 / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| format!("/proc/{pid}/status: {e}"))?;
    let kib = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok(ProcSample {
        cpu_seconds,
        rss_kib: kib("VmRSS:"),
        hwm_kib: kib("VmHWM:"),
        threads: kib("Threads:"),
    })
}

/// Files the process has open (entries of /proc/PID/fd).
pub fn open_fds(pid: &str) -> Result<u64, String> {
    let entries =
        std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| format!("/proc/{pid}/fd: {e}"))?;
    Ok(entries.count() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_self_is_readable() {
        let sample = read_proc("self", 100.0).unwrap();
        assert!(sample.rss_kib > 0 && sample.hwm_kib >= sample.rss_kib);
        assert!(sample.threads >= 1);
        let before = open_fds("self").unwrap();
        let file = std::fs::File::open("/proc/self/status").unwrap();
        assert_eq!(open_fds("self").unwrap(), before + 1);
        drop(file);
    }
}
