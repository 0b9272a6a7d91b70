//! CPU time a server process has used (all its threads, user and system),
//! from `/proc/PID/stat`: divided by the requests or connections served in
//! a window, it is the server's cost per operation, which unlike a rate does
//! not depend on how much of the machine the load generator takes.

use anyhow::{Context, Result};

/// Seconds of CPU process `pid` has used so far.
pub fn process_cpu_secs(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The command name (field 2) is in parentheses and may hold spaces:
    // count from after its closing one, where field 3 (state) is index 0,
    // utime (field 14) index 11 and stime (field 15) index 12.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path}: no command name"))?
        .split_whitespace()
        .collect();
    let ticks = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .with_context(|| format!("{path}: too few fields"))?
            .parse::<u64>()
            .with_context(|| format!("{path}: field {} is not a number", i + 3))
    };
    Ok((ticks(11)? + ticks(12)?) as f64 / clock_ticks_per_sec())
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}
