//! The config file: lease policy defaults, excludes and per-path rules, in TOML.
//!
//! ```toml
//! linger = "50ms"
//! max_hold = "10s"
//! max_wait = "60s"
//! exclude = ["*.sqlite", "*.sqlite-*"]
//!
//! [[rule]]
//! glob = "agents/*/sessions/*.json"
//! linger = "100ms"
//!
//! [[rule]]
//! glob = "logs/**"
//! exclude = true
//! ```
//!
//! Read from `--config FILE`, else `$XDG_CONFIG_HOME/lockfs/config.toml` (or
//! `~/.config/lockfs/config.toml`) when it exists. Command-line flags override the file;
//! `--exclude` globs add to its excludes. Glob syntax: [`glob`].

pub mod glob;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Deserializer};

pub use glob::Glob;

use crate::lease::Policy;
use crate::options::{LeaseOptions, checked_duration, parse_duration};

/// The policy and path rules in force for one mount.
#[derive(Clone, Debug, PartialEq)]
pub struct Resolved {
    pub policy: Policy,
    /// Files matching one of these get no lease at all.
    pub excludes: Vec<Glob>,
    /// In file order; for each setting the last matching rule that sets it wins.
    pub rules: Vec<Rule>,
    /// The config file read, if any.
    pub source: Option<PathBuf>,
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    #[serde(deserialize_with = "glob_value")]
    pub glob: Glob,
    #[serde(default, deserialize_with = "duration_value")]
    pub linger: Option<Duration>,
    #[serde(default, deserialize_with = "duration_value")]
    pub max_hold: Option<Duration>,
    #[serde(default, deserialize_with = "duration_value")]
    pub max_wait: Option<Duration>,
    #[serde(default)]
    pub exclude: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    #[serde(default, deserialize_with = "duration_value")]
    linger: Option<Duration>,
    #[serde(default, deserialize_with = "duration_value")]
    max_hold: Option<Duration>,
    #[serde(default, deserialize_with = "duration_value")]
    max_wait: Option<Duration>,
    #[serde(default, deserialize_with = "glob_list")]
    exclude: Vec<Glob>,
    #[serde(default, rename = "rule")]
    rules: Vec<Rule>,
}

impl Resolved {
    /// Whether `rel_path` (relative to the mount root) is left alone: no lease.
    pub fn is_excluded(&self, rel_path: &Path) -> bool {
        let by_rule = self
            .matching_rules(rel_path)
            .filter_map(|rule| rule.exclude)
            .last();
        by_rule.unwrap_or_else(|| self.excludes.iter().any(|glob| glob.matches(rel_path)))
    }

    /// The globs of rules that set a duration: parsed, but not applied yet (the engine
    /// runs one policy per mount), which [`resolve`] warns about.
    pub fn rules_with_unapplied_durations(&self) -> Vec<&str> {
        self.rules
            .iter()
            .filter(|rule| {
                rule.linger.is_some() || rule.max_hold.is_some() || rule.max_wait.is_some()
            })
            .map(|rule| rule.glob.as_str())
            .collect()
    }

    fn matching_rules<'a>(&'a self, rel_path: &'a Path) -> impl Iterator<Item = &'a Rule> + 'a {
        self.rules
            .iter()
            .filter(move |rule| rule.glob.matches(rel_path))
    }
}

/// The config for a mount: defaults, then the config file, then the command-line flags.
pub fn resolve(opts: &LeaseOptions) -> anyhow::Result<Resolved> {
    resolve_with_default(opts, default_config_path())
}

/// As [`resolve`], with the per-user default file given (it is read only if it exists).
pub fn resolve_with_default(
    opts: &LeaseOptions,
    default_file: Option<PathBuf>,
) -> anyhow::Result<Resolved> {
    let source = match &opts.config {
        Some(explicit) => Some(explicit.clone()),
        None => default_file.filter(|path| path.exists()),
    };
    let file = match &source {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            parse(&text).map_err(|err| {
                anyhow::anyhow!("config file {}: {}", path.display(), err.trim_end())
            })?
        }
        None => ConfigFile::default(),
    };
    let mut policy = Policy::default();
    set_policy(
        &mut policy,
        opts.linger.or(file.linger),
        opts.max_hold.or(file.max_hold),
        opts.max_wait.or(file.max_wait),
    );
    let mut excludes = file.exclude;
    for text in &opts.exclude {
        excludes.push(Glob::new(text).map_err(|why| anyhow::anyhow!("--exclude: {why}"))?);
    }
    let resolved = Resolved {
        policy,
        excludes,
        rules: file.rules,
        source,
    };
    for glob in resolved.rules_with_unapplied_durations() {
        tracing::warn!(
            "config rule for {glob}: per-path linger, max_hold and max_wait are not applied \
             yet (only exclude is); the mount's policy applies to it"
        );
    }
    Ok(resolved)
}

/// Sets the durations given; a longer linger raises the adaptive linger's cap with it.
fn set_policy(
    policy: &mut Policy,
    linger: Option<Duration>,
    max_hold: Option<Duration>,
    max_wait: Option<Duration>,
) {
    if let Some(linger) = linger {
        policy.linger = linger;
        policy.max_linger = policy.max_linger.max(linger);
    }
    if let Some(max_hold) = max_hold {
        policy.max_hold = max_hold;
    }
    if let Some(max_wait) = max_wait {
        policy.max_wait = max_wait;
    }
}

/// `$XDG_CONFIG_HOME/lockfs/config.toml`, else `~/.config/lockfs/config.toml`.
pub fn default_config_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|dir| !dir.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|dir| !dir.is_empty())
                .map(|home| PathBuf::from(home).join(".config"))
        })?;
    Some(base.join("lockfs").join("config.toml"))
}

/// Errors carry toml's line and column, with the offending line quoted.
fn parse(text: &str) -> Result<ConfigFile, String> {
    toml::from_str(text).map_err(|err| err.to_string())
}

fn duration_value<'de, D: Deserializer<'de>>(de: D) -> Result<Option<Duration>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(u64),
    }
    match Raw::deserialize(de).map_err(|_| {
        serde::de::Error::custom("expected a duration such as \"250ms\", \"10s\" or \"2m\"")
    })? {
        Raw::Text(text) => parse_duration(&text)
            .map(Some)
            .map_err(serde::de::Error::custom),
        Raw::Seconds(seconds) => checked_duration(seconds as f64)
            .map(Some)
            .map_err(|e| serde::de::Error::custom(format!("{seconds} seconds is {e}"))),
    }
}

fn glob_value<'de, D: Deserializer<'de>>(de: D) -> Result<Glob, D::Error> {
    Glob::new(&String::deserialize(de)?).map_err(serde::de::Error::custom)
}

fn glob_list<'de, D: Deserializer<'de>>(de: D) -> Result<Vec<Glob>, D::Error> {
    Vec::<String>::deserialize(de)?
        .iter()
        .map(|text| Glob::new(text))
        .collect::<Result<_, _>>()
        .map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve_text(text: &str, opts: LeaseOptions) -> anyhow::Result<Resolved> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, text).unwrap();
        resolve_with_default(&opts, Some(path))
    }

    const SAMPLE: &str = r#"
linger = "20ms"
max_hold = "5s"
exclude = ["*.sqlite", "*.sqlite-*"]

[[rule]]
glob = "agents/*/sessions/*.json"
linger = "100ms"

[[rule]]
glob = "logs/**"
exclude = true
"#;

    #[test]
    fn file_values_apply_and_flags_override_them() {
        let resolved = resolve_text(SAMPLE, LeaseOptions::default()).unwrap();
        assert_eq!(resolved.policy.linger, Duration::from_millis(20));
        assert_eq!(resolved.policy.max_hold, Duration::from_secs(5));
        assert_eq!(resolved.policy.max_wait, Policy::default().max_wait);
        let flags = LeaseOptions {
            max_hold: Some(Duration::from_secs(30)),
            exclude: vec!["tmp/**".into()],
            ..LeaseOptions::default()
        };
        let resolved = resolve_text(SAMPLE, flags).unwrap();
        assert_eq!(resolved.policy.max_hold, Duration::from_secs(30));
        assert_eq!(resolved.policy.linger, Duration::from_millis(20));
        assert!(resolved.is_excluded(Path::new("tmp/x")));
        assert!(resolved.is_excluded(Path::new("openclaw-agent.sqlite")));
    }

    #[test]
    fn rules_exclude_and_tune_paths() {
        let resolved = resolve_text(SAMPLE, LeaseOptions::default()).unwrap();
        assert!(resolved.is_excluded(Path::new("logs/gateway.log")));
        assert!(!resolved.is_excluded(Path::new("openclaw.json")));
        assert_eq!(
            resolved.rules_with_unapplied_durations(),
            vec!["agents/*/sessions/*.json"]
        );
    }

    #[test]
    fn a_rule_can_include_what_an_exclude_leaves_out() {
        let text = "exclude = [\"*.json\"]\n[[rule]]\nglob = \"openclaw.json\"\nexclude = false\n";
        let resolved = resolve_text(text, LeaseOptions::default()).unwrap();
        assert!(!resolved.is_excluded(Path::new("openclaw.json")));
        assert!(resolved.is_excluded(Path::new("other.json")));
    }

    #[test]
    fn unknown_key_names_its_line() {
        let err = resolve_text(
            "linger = \"20ms\"\n\nlinnger = \"1s\"\n",
            LeaseOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("linnger"), "{err}");
        assert!(err.contains("config.toml"), "{err}");
    }

    #[test]
    fn bad_value_names_its_line() {
        let text = "[[rule]]\nglob = \"a/*\"\nlinger = \"fast\"\n";
        let err = resolve_text(text, LeaseOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 3"), "{err}");
        assert!(err.contains("not a duration"), "{err}");
        let err = resolve_text("exclude = [\"[oops\"]\n", LeaseOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1") && err.contains("unclosed"), "{err}");
        let err = resolve_text("\nmax_wait = true\n", LeaseOptions::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("line 2") && err.contains("expected a duration"),
            "{err}"
        );
    }

    #[test]
    fn missing_default_file_is_fine_but_missing_explicit_file_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let absent = dir.path().join("none.toml");
        let resolved =
            resolve_with_default(&LeaseOptions::default(), Some(absent.clone())).unwrap();
        assert_eq!(resolved.policy, Policy::default());
        assert!(resolved.source.is_none());
        let explicit = LeaseOptions {
            config: Some(absent),
            ..LeaseOptions::default()
        };
        let err = resolve_with_default(&explicit, None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read config file"), "{err}");
    }
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn a_huge_duration_is_an_error_naming_the_value_not_a_panic() {
        let err = parse("max_hold = 18446744073709551615\n").unwrap_err();
        assert!(err.contains("18446744073709551615 seconds"), "{err}");
        assert!(err.contains("longest allowed"), "{err}");
        let err = parse("max_wait = \"99999999999999999999s\"\n").unwrap_err();
        assert!(err.contains("max_wait"), "{err}");
        assert!(parse("max_hold = 604800\n").is_ok());
    }
}
