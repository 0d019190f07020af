//! The daemon's (and our own) CPU time and resident memory, from /proc.

use std::fs;

/// A process to watch: `--pid`, or this process itself.
#[derive(Clone, Copy)]
pub struct Proc {
    pid: Option<u32>,
}

impl Proc {
    pub fn daemon(pid: Option<u32>) -> Self {
        Self { pid }
    }

    pub fn current() -> Self {
        Self {
            pid: Some(std::process::id()),
        }
    }

    pub fn known(&self) -> bool {
        self.pid.is_some()
    }

    /// Resident set size (VmRSS) in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// User + system CPU seconds used so far.
    pub fn cpu_secs(&self) -> Option<f64> {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.pid?)).ok()?;
        // The command name (field 2) may hold spaces and parentheses: count from the last ')'.
        // After it come field 3 (state) onwards; utime and stime are fields 14 and 15.
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let utime: u64 = fields.get(11)?.parse().ok()?;
        let stime: u64 = fields.get(12)?.parse().ok()?;
        Some((utime + stime) as f64 / clock_ticks())
    }
}

/// `getconf CLK_TCK`: the unit of utime/stime, 100 on Linux in practice.
fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// KiB as MiB, or "n/a".
pub fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "n/a".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

/// Raises the open-file limit as far as allowed (10,000 sockets need it); returns the soft limit.
pub fn raise_nofile(want: u64) -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < want {
            // Root may raise the hard limit too; anyone may go up to the hard limit.
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: limit.rlim_max.max(want),
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) != 0 {
                let to_hard = libc::rlimit {
                    rlim_cur: limit.rlim_max,
                    rlim_max: limit.rlim_max,
                };
                libc::setrlimit(libc::RLIMIT_NOFILE, &to_hard);
            }
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit);
        }
    }
    limit.rlim_cur
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = Proc::current();
        assert!(me.rss_kib().unwrap() > 0);
        assert!(me.cpu_secs().unwrap() >= 0.0);
        assert!(!Proc::daemon(None).known());
    }
}
