//! Globs over paths relative to the mount root, with gitignore-like anchoring:
//!
//! - `*` matches within one path component, `?` one character, `[abc]`, `[a-z]`, `[!x]` a
//!   class; `**` as a whole component matches any number of components.
//! - A glob without a `/` matches a component at any depth (`*.sqlite`, `cache`); one with
//!   a `/` is anchored at the mount root (a leading `/` is allowed and ignored).
//! - A path matches when the glob matches it or any directory above it, so `logs` and
//!   `logs/**` both cover everything under `logs/`.

use std::path::{Component, Path};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    text: String,
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    AnyDepth,
    Pattern(Vec<Token>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Token {
    Literal(char),
    AnyChar,
    AnyRun,
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl Glob {
    pub fn new(text: &str) -> Result<Glob, String> {
        let trimmed = text.trim_end_matches('/');
        if trimmed.is_empty() {
            return Err(format!("`{text}` is an empty glob"));
        }
        let anchored = trimmed.contains('/');
        let body = trimmed.trim_start_matches('/');
        let mut segments = Vec::new();
        if !anchored {
            segments.push(Segment::AnyDepth);
        }
        for part in body.split('/').filter(|part| !part.is_empty()) {
            if part == "**" {
                segments.push(Segment::AnyDepth);
            } else {
                segments.push(Segment::Pattern(
                    tokens(part).map_err(|why| format!("bad glob `{text}`: {why}"))?,
                ));
            }
        }
        Ok(Glob {
            text: text.to_string(),
            segments,
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `rel_path` (relative to the mount root) or a directory above it matches.
    pub fn matches(&self, rel_path: &Path) -> bool {
        let parts: Vec<String> = rel_path
            .components()
            .filter_map(|component| match component {
                Component::Normal(part) => Some(part.to_string_lossy().into_owned()),
                _ => None,
            })
            .collect();
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        (1..=parts.len()).any(|len| match_segments(&self.segments, &parts[..len]))
    }
}

fn match_segments(segments: &[Segment], parts: &[&str]) -> bool {
    match segments.split_first() {
        None => parts.is_empty(),
        Some((Segment::AnyDepth, rest)) => {
            (0..=parts.len()).any(|skip| match_segments(rest, &parts[skip..]))
        }
        Some((Segment::Pattern(tokens), rest)) => match parts.split_first() {
            Some((first, others)) => {
                let chars: Vec<char> = first.chars().collect();
                match_tokens(tokens, &chars) && match_segments(rest, others)
            }
            None => false,
        },
    }
}

fn match_tokens(tokens: &[Token], text: &[char]) -> bool {
    match tokens.split_first() {
        None => text.is_empty(),
        Some((Token::AnyRun, rest)) => {
            (0..=text.len()).any(|skip| match_tokens(rest, &text[skip..]))
        }
        Some((token, rest)) => match text.split_first() {
            Some((c, others)) => token_matches(token, *c) && match_tokens(rest, others),
            None => false,
        },
    }
}

fn token_matches(token: &Token, c: char) -> bool {
    match token {
        Token::Literal(expected) => *expected == c,
        Token::AnyChar | Token::AnyRun => true,
        Token::Class { negated, ranges } => {
            ranges.iter().any(|(low, high)| (*low..=*high).contains(&c)) != *negated
        }
    }
}

fn tokens(part: &str) -> Result<Vec<Token>, String> {
    let mut out = Vec::new();
    let mut chars = part.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '*' => {
                if out.last() != Some(&Token::AnyRun) {
                    out.push(Token::AnyRun);
                }
            }
            '?' => out.push(Token::AnyChar),
            '\\' => out.push(Token::Literal(chars.next().ok_or("trailing backslash")?)),
            '[' => {
                let negated = chars.next_if(|c| *c == '!' || *c == '^').is_some();
                let mut ranges = Vec::new();
                let mut first = true;
                loop {
                    let low = chars.next().ok_or("unclosed `[`")?;
                    if low == ']' && !first {
                        break;
                    }
                    first = false;
                    if chars.next_if_eq(&'-').is_some() {
                        match chars.next().ok_or("unclosed `[`")? {
                            ']' => {
                                ranges.push((low, low));
                                ranges.push(('-', '-'));
                                break;
                            }
                            high => ranges.push((low, high)),
                        }
                    } else {
                        ranges.push((low, low));
                    }
                }
                out.push(Token::Class { negated, ranges });
            }
            other => out.push(Token::Literal(other)),
        }
    }
    Ok(out)
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
