//! The client's own CPU time (user + system, all threads), read from
//! `/proc/self/stat` (the workspace forbids `unsafe`, so no `getrusage`).

use std::time::Instant;

/// Linux reports `/proc` times in USER_HZ ticks, fixed at 100 per second by the ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU seconds consumed by this process so far.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTime {
    pub user: f64,
    pub sys: f64,
}

impl CpuTime {
    pub fn now() -> Self {
        std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s))
            .unwrap_or_default()
    }
}

/// Fields 14 (utime) and 15 (stime) of `/proc/<pid>/stat`; the command name
/// (field 2) may contain spaces, so count from the last `)`.
fn parse_stat(stat: &str) -> Option<CpuTime> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let sys: f64 = fields.next()?.parse().ok()?;
    Some(CpuTime {
        user: user / TICKS_PER_SECOND,
        sys: sys / TICKS_PER_SECOND,
    })
}

/// Wall clock and CPU time of one measured phase.
#[derive(Debug)]
pub struct Meter {
    wall: Instant,
    cpu: CpuTime,
}

/// What a [`Meter`] saw between start and stop.
#[derive(Debug, Clone, Copy)]
pub struct Measured {
    pub seconds: f64,
    pub cpu_user: f64,
    pub cpu_sys: f64,
}

impl Meter {
    pub fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu: CpuTime::now(),
        }
    }

    pub fn stop(&self) -> Measured {
        let seconds = self.wall.elapsed().as_secs_f64();
        let cpu = CpuTime::now();
        Measured {
            seconds,
            cpu_user: cpu.user - self.cpu.user,
            cpu_sys: cpu.sys - self.cpu.sys,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_spaces_in_name() {
        let line = "42 (a b) R 1 2 3 4 5 6 7 8 9 10 250 31 0 0 20 0 1 0";
        let t = parse_stat(line).unwrap();
        assert!((t.user - 2.5).abs() < 1e-9);
        assert!((t.sys - 0.31).abs() < 1e-9);
    }
}
