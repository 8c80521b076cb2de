//! Globs over paths relative to the mount root, with gitignore-like anchoring, matched by
//! `globset` (the matcher ripgrep and the `ignore` crate use):
//!
//! - `*` matches within one path component, `?` one character, `[abc]`, `[a-z]`, `[!x]` a
//!   class; `**` as a whole component matches any number of components.
//! - A glob without a `/` matches a component at any depth (`*.sqlite`, `cache`); one with
//!   a `/` is anchored at the mount root (a leading `/` is allowed and ignored).
//! - A path matches when the glob matches it or any directory above it, so `logs` and
//!   `logs/**` both cover everything under `logs/`.

use std::path::{Component, Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

#[derive(Clone, Debug)]
pub struct Glob {
    text: String,
    matcher: GlobMatcher,
}

impl PartialEq for Glob {
    fn eq(&self, other: &Glob) -> bool {
        self.text == other.text
    }
}

impl Eq for Glob {}

impl Glob {
    pub fn new(text: &str) -> Result<Glob, String> {
        let trimmed = text.trim_end_matches('/');
        if trimmed.is_empty() {
            return Err(format!("`{text}` is an empty glob"));
        }
        let anchored = trimmed.contains('/');
        let body = trimmed.trim_start_matches('/');
        let pattern = if anchored {
            body.to_string()
        } else {
            format!("**/{body}")
        };
        let matcher = GlobBuilder::new(&pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .build()
            .map_err(|err| format!("bad glob `{text}`: {}", err.kind()))?
            .compile_matcher();
        Ok(Glob {
            text: text.to_string(),
            matcher,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `rel_path` (relative to the mount root) or a directory above it matches.
    pub fn matches(&self, rel_path: &Path) -> bool {
        let mut prefix = PathBuf::new();
        rel_path.components().any(|component| {
            let Component::Normal(part) = component else {
                return false;
            };
            prefix.push(part);
            self.matcher.is_match(&prefix)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(glob: &str, path: &str) -> bool {
        Glob::new(glob).unwrap().matches(Path::new(path))
    }

    #[test]
    fn unanchored_globs_match_at_any_depth() {
        assert!(matches("*.sqlite", "openclaw-agent.sqlite"));
        assert!(matches("*.sqlite", "a/b/x.sqlite"));
        assert!(!matches("*.sqlite", "x.sqlite-wal"));
        assert!(matches("*.sqlite-*", "x.sqlite-wal"));
        assert!(matches("cache", "a/cache/file"));
    }

    #[test]
    fn anchored_globs_start_at_the_root() {
        assert!(matches(
            "agents/*/sessions/*.json",
            "agents/a1/sessions/sessions.json"
        ));
        assert!(!matches(
            "agents/*/sessions/*.json",
            "x/agents/a1/sessions/s.json"
        ));
        assert!(!matches(
            "agents/*/sessions/*.json",
            "agents/a/b/sessions/s.json"
        ));
        assert!(matches("/logs", "logs/today.log"));
        assert!(matches("logs/**", "logs/a/b/c.log"));
        assert!(matches("a/**/z.json", "a/z.json"));
        assert!(matches("a/**/z.json", "a/b/c/z.json"));
    }

    #[test]
    fn classes_and_single_characters() {
        assert!(matches("f?.json", "f1.json"));
        assert!(!matches("f?.json", "f12.json"));
        assert!(matches("[ab]*.lock", "b.lock"));
        assert!(!matches("[!ab]*.lock", "b.lock"));
        assert!(matches("v[0-9].txt", "v7.txt"));
        assert!(Glob::new("[oops").is_err());
        assert!(Glob::new("").is_err());
    }
}
