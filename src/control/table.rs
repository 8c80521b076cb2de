//! The `lockfs status` table, made to fit 80 columns.

use std::fmt::Write;

use super::report::{LeaseReport, StatusReport};

const WIDTH: usize = 80;
const PATH_WIDTH: usize = 28;
const STATE_WIDTH: usize = 9;
const HELD_WIDTH: usize = 7;
/// What is left of 80 after the other columns and their separating spaces.
const HOLDER_WIDTH: usize = WIDTH - PATH_WIDTH - STATE_WIDTH - HELD_WIDTH - 3;

pub fn render(report: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{}",
        fit(
            &format!(
                "{}  (daemon pid {}, up {}, passthrough {})",
                report.mount,
                report.pid,
                duration(report.uptime_ms),
                if report.passthrough { "on" } else { "off" }
            ),
            WIDTH
        )
    );
    if report.leases.is_empty() {
        out.push_str("no leases\n");
    } else {
        let _ = writeln!(
            out,
            "{:<PATH_WIDTH$} {:<STATE_WIDTH$} {:>HELD_WIDTH$} HOLDER",
            "PATH", "STATE", "HELD"
        );
        for lease in &report.leases {
            render_lease(&mut out, lease);
        }
    }
    render_counters(&mut out, report);
    if let Some(cluster) = &report.cluster {
        let state = match &cluster.problem {
            None => "connected".to_string(),
            Some(why) => format!("NOT usable ({why}); managed files wait, then fail"),
        };
        let _ = writeln!(
            out,
            "{}",
            fit(
                &format!(
                    "etcd {}: {state}; {} files held here, {} waiting for another host",
                    cluster.endpoints.join(","),
                    cluster.files_held,
                    cluster.files_queued
                ),
                WIDTH
            )
        );
    }
    out
}

fn render_lease(out: &mut String, lease: &LeaseReport) {
    let holder = match lease.holders.len() {
        0 => "-".to_string(),
        1 => format!("{} {}", lease.holders[0].pid, lease.holders[0].cmd),
        n => format!(
            "{} {} (+{} more)",
            lease.holders[0].pid,
            lease.holders[0].cmd,
            n - 1
        ),
    };
    let _ = writeln!(
        out,
        "{:<PATH_WIDTH$} {:<STATE_WIDTH$} {:>HELD_WIDTH$} {}",
        fit_left(&lease.path, PATH_WIDTH),
        lease.state,
        duration(lease.held_ms),
        fit(&holder, HOLDER_WIDTH)
    );
    for (place, waiter) in lease.waiters.iter().enumerate() {
        let line = format!(
            "  {}. waits {} ({}): {} {}",
            place + 1,
            duration(waiter.waited_ms),
            waiter.intent,
            waiter.pid,
            waiter.cmd
        );
        let _ = writeln!(out, "{}", fit(&line, WIDTH));
    }
}

/// Counters in a fixed, readable order, then any the engine added since.
fn render_counters(out: &mut String, report: &StatusReport) {
    let c = |name: &str| report.counters.get(name).copied().unwrap_or(0);
    let waits = c("waits");
    let average = c("wait_total_ms").checked_div(waits).unwrap_or(0);
    let parts = [
        format!(
            "cycles {} committed, {} read-only",
            c("cycles_committed"),
            c("cycles_read_only")
        ),
        format!("appends {}", c("appends")),
        format!(
            "waits {waits} (avg {}, longest {})",
            duration(average),
            duration(c("wait_longest_ms"))
        ),
        format!("timeouts {}", c("wait_timeouts")),
        format!("revocations {}", c("revocations")),
        format!("fenced commits {}", c("fenced_commits")),
        format!("holder exits mid-cycle {}", c("holder_exits_mid_cycle")),
        format!("handoffs {}", c("handoffs")),
    ];
    const SHOWN: [&str; 11] = [
        "cycles_committed",
        "cycles_read_only",
        "appends",
        "waits",
        "wait_total_ms",
        "wait_longest_ms",
        "wait_timeouts",
        "revocations",
        "fenced_commits",
        "holder_exits_mid_cycle",
        "handoffs",
    ];
    let extra = report
        .counters
        .iter()
        .filter(|(name, _)| !SHOWN.contains(&name.as_str()))
        .map(|(name, value)| format!("{} {value}", name.replace('_', " ")));
    let mut line = String::new();
    for part in parts.into_iter().chain(extra) {
        if !line.is_empty() && line.len() + 2 + part.len() > WIDTH {
            let _ = writeln!(out, "{line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push_str(", ");
        }
        line.push_str(&part);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{line}");
    }
}

/// `text` cut at the end to `width` characters, marked with "...".
fn fit(text: &str, width: usize) -> String {
    let text = printable(text);
    if text.chars().count() <= width {
        return text;
    }
    let kept: String = text.chars().take(width.saturating_sub(3)).collect();
    format!("{kept}...")
}

/// `text` cut at the start: the end of a path says more than its beginning.
fn fit_left(text: &str, width: usize) -> String {
    let text = printable(text);
    let count = text.chars().count();
    if count <= width {
        return text;
    }
    let kept: String = text.chars().skip(count - width.saturating_sub(3)).collect();
    format!("...{kept}")
}

/// Control characters in file names or command lines must not reach the terminal.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// 850ms, 12.3s, 4m05s, 2h10m.
pub fn duration(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::control::report::{PolicyReport, ProcessReport, WaiterReport};

    fn sample() -> StatusReport {
        let holder = ProcessReport {
            pid: 4242,
            start_time: 1,
            cmd: format!("node /usr/lib/openclaw/gateway.js {}", "--flag ".repeat(20)),
        };
        StatusReport {
            version: 1,
            mount: "/home/ann/.openclaw".into(),
            pid: 10,
            uptime_ms: 3_725_000,
            passthrough: true,
            cluster: None,
            policy: PolicyReport {
                linger_ms: 50,
                max_hold_ms: 10_000,
                max_wait_ms: 60_000,
            },
            leases: vec![LeaseReport {
                path: "agents/a-very-long-agent-identifier/sessions/sessions.json".into(),
                state: "writing".into(),
                held_ms: 1234,
                generation: 9,
                holder: Some(holder.clone()),
                holders: vec![holder],
                waiters: vec![WaiterReport {
                    pid: 77,
                    start_time: 2,
                    cmd: "python3 tool.py".into(),
                    waited_ms: 900,
                    intent: "read".into(),
                }],
            }],
            counters: BTreeMap::from([("waits".into(), 4), ("wait_total_ms".into(), 100)]),
        }
    }

    #[test]
    fn table_fits_80_columns_and_names_everyone() {
        let table = render(&sample());
        for line in table.lines() {
            assert!(line.chars().count() <= WIDTH, "too wide: {line:?}");
        }
        assert!(table.contains("...er/sessions/sessions.json"), "{table}");
        assert!(table.contains("4242 node"), "{table}");
        assert!(
            table.contains("1. waits 900ms (read): 77 python3 tool.py"),
            "{table}"
        );
        assert!(table.contains("waits 4 (avg 25ms"), "{table}");
        assert!(table.contains("up 1h02m"), "{table}");
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(5), "5ms");
        assert_eq!(duration(1500), "1.5s");
        assert_eq!(duration(245_000), "4m05s");
    }
}
