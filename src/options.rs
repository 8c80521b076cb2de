//! Options shared by several commands: logging and the lease policy knobs.

use std::time::Duration;

use clap::Args;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Sets up tracing from `-v` and `RUST_LOG` (which wins when set).
pub fn init_tracing(verbose: u8, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "warn,lockfs=info",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// The lease policy a user can tune; defaults are explained in the README.
#[derive(Args, Clone, Debug, Default)]
pub struct LeaseOptions {
    /// Shortest time a lease stays with a process after a cycle that wrote nothing
    /// (e.g. 20ms). The linger adapts upward per file from the read-to-save gaps it has seen.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub linger: Option<Duration>,
    /// Longest a process may hold a lease before it is revoked (e.g. 10s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub max_hold: Option<Duration>,
    /// Longest an open waits in line before it fails with ETIMEDOUT (e.g. 60s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub max_wait: Option<Duration>,
    /// Leave files matching GLOB alone (no lease), relative to the mount root; repeatable.
    #[arg(long, value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Read defaults, excludes and per-path rules from this TOML file instead of
    /// $XDG_CONFIG_HOME/lockfs/config.toml (~/.config/lockfs/config.toml). Flags win.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
}

/// Parses `250ms`, `10s`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration; write e.g. 250ms, 10s or 2m"))?;
    let seconds = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" => value / 1_000_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`; use ms, s, m or h"
            ));
        }
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{text}` is not a valid duration"));
    }
    checked_duration(seconds).map_err(|e| format!("`{text}`: {e}"))
}

/// The longest duration any lockfs setting takes (a lease held or awaited longer than a
/// week is a hang, and far larger values overflow the engine's clock arithmetic).
pub const LONGEST_DURATION: Duration = Duration::from_secs(7 * 24 * 3600);

/// `seconds` as a Duration, or why it is not a usable one.
pub fn checked_duration(seconds: f64) -> Result<Duration, String> {
    if seconds > LONGEST_DURATION.as_secs_f64() {
        return Err(format!(
            "longer than the longest allowed duration ({} hours)",
            LONGEST_DURATION.as_secs() / 3600
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
        assert!(parse_duration("1e400").is_err());
        assert_eq!(parse_duration("168h"), Ok(LONGEST_DURATION));
        assert!(parse_duration("169h").is_err());
    }
}
