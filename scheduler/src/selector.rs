//! Label selectors: which PoPs an app (or a rollout step) applies to.
//!
//! A selector is what an operator writes in
//! `gannet apps place shop 'region=eu,tier!=canary'`: comma-separated terms,
//! all of which must hold for a PoP to match.
//!
//! | term          | a PoP matches when                                  |
//! |---------------|-----------------------------------------------------|
//! | `key=value`   | it has the label `key` with the value `value`       |
//! | `key!=value`  | it lacks the label `key`, or its value is not `value` |
//! | `key`         | it has the label `key` (any value)                  |
//! | `!key`        | it lacks the label `key`                            |
//!
//! The empty selector (an empty string, or `*`) matches every PoP. Keys and
//! values are 1-63 characters of `a-z`, `0-9`, `.`, `_` and `-`, starting and
//! ending with a letter or a digit. Whitespace around terms is ignored, a term
//! repeated exactly is kept once, and terms that contradict each other
//! (`a=1,a!=1`, `a,!a`, `a=1,a=2`, `a=1,!a`) are refused: every selector that
//! parses can match some set of labels.
//!
//! A selector has one canonical spelling (its [`Display`](fmt::Display)):
//! the terms sorted by key, `*` when there are none. It is stored and sent
//! over the wire in that spelling.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

/// The most terms a selector may have (after exact duplicates collapse).
pub const MAX_TERMS: usize = 16;

/// The longest key or value, in characters.
pub const MAX_LABEL_LEN: usize = 63;

/// A conjunction of label terms; see the [module docs](self).
///
/// The default selector has no terms and matches every PoP.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Selector {
    /// Sorted by key, then by kind of term, then by value: the canonical order.
    terms: BTreeSet<Term>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct Term {
    key: String,
    op: Op,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Op {
    /// `key`
    Has,
    /// `!key`
    Lacks,
    /// `key=value`
    Eq(String),
    /// `key!=value`
    Ne(String),
}

/// Why a selector was refused. Each message names the offending term (cut
/// to 64 characters) and says what to write instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    /// A term is empty, as in `region=eu,` or `a,,b`.
    #[error("term {index} of the selector is empty: remove the extra comma")]
    EmptyTerm {
        /// Which term, counting from 1.
        index: usize,
    },
    /// `*` appears next to other terms.
    #[error("`*` matches every PoP and must stand alone: drop it or drop the other terms")]
    Wildcard,
    /// A term has an operator but nothing before it, as in `=eu` or `!`.
    #[error("`{term}` has no label key: write `key=value`, `key!=value`, `key` or `!key`")]
    MissingKey {
        /// The term as written.
        term: String,
    },
    /// A term has an operator but nothing after it, as in `region=`.
    #[error(
        "`{term}` has no value: write `key=value` or `key!=value`, or just `key` to require the label"
    )]
    MissingValue {
        /// The term as written.
        term: String,
    },
    /// A key has characters outside `[a-z0-9._-]`, is too long, or does not
    /// start and end with a letter or digit.
    #[error(
        "`{key}` in `{term}` is not a valid label key: use 1-63 characters of a-z, 0-9, '.', '_' and '-', starting and ending with a letter or digit"
    )]
    InvalidKey {
        /// The term as written.
        term: String,
        /// The key in it.
        key: String,
    },
    /// A value has characters outside `[a-z0-9._-]`, is too long, or does
    /// not start and end with a letter or digit.
    #[error(
        "`{value}` in `{term}` is not a valid label value: use 1-63 characters of a-z, 0-9, '.', '_' and '-', starting and ending with a letter or digit"
    )]
    InvalidValue {
        /// The term as written.
        term: String,
        /// The value in it.
        value: String,
    },
    /// More than [`MAX_TERMS`] distinct terms.
    #[error(
        "the selector has {count} terms, more than 16: drop some, or give the PoPs a label that groups them"
    )]
    TooManyTerms {
        /// How many distinct terms it has.
        count: usize,
    },
    /// Two terms that no PoP could satisfy together.
    #[error(
        "`{first}` and `{second}` contradict each other, so no PoP could match: drop one of them"
    )]
    Contradiction {
        /// The first term, in canonical order.
        first: String,
        /// The second term, in canonical order.
        second: String,
    },
}

impl Selector {
    /// The selector that matches every PoP (the same as [`Selector::default`]).
    pub fn everything() -> Selector {
        Selector::default()
    }

    /// Parses a selector; see the [module docs](self) for the syntax. Never
    /// panics, whatever the input.
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let trimmed = s.trim();
        if trimmed.is_empty() || trimmed == "*" {
            return Ok(Selector::default());
        }
        let mut terms = BTreeSet::new();
        for (i, raw) in trimmed.split(',').enumerate() {
            let raw = raw.trim();
            if raw.is_empty() {
                return Err(SelectorError::EmptyTerm { index: i + 1 });
            }
            terms.insert(parse_term(raw)?);
        }
        let count = terms.len();
        if count > MAX_TERMS {
            return Err(SelectorError::TooManyTerms { count });
        }
        check_consistent(&terms)?;
        Ok(Selector { terms })
    }

    /// Whether this selector matches every PoP (it has no terms).
    pub fn is_everything(&self) -> bool {
        self.terms.is_empty()
    }

    /// Whether a PoP with these labels matches: every term holds. A
    /// `key!=value` term holds when the PoP lacks `key` altogether.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.terms.iter().all(|term| term.holds(labels))
    }
}

impl Term {
    fn holds(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Op::Has => value.is_some(),
            Op::Lacks => value.is_none(),
            Op::Eq(want) => value == Some(want),
            Op::Ne(unwanted) => value != Some(unwanted),
        }
    }
}

impl fmt::Display for Term {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            Op::Has => write!(f, "{}", self.key),
            Op::Lacks => write!(f, "!{}", self.key),
            Op::Eq(value) => write!(f, "{}={}", self.key, value),
            Op::Ne(value) => write!(f, "{}!={}", self.key, value),
        }
    }
}

/// Parses one trimmed, non-empty term.
fn parse_term(raw: &str) -> Result<Term, SelectorError> {
    if raw == "*" {
        return Err(SelectorError::Wildcard);
    }
    let (key, value, negated) = if let Some((key, value)) = raw.split_once("!=") {
        (key, value, true)
    } else if let Some((key, value)) = raw.split_once('=') {
        (key, value, false)
    } else {
        let (key, op) = match raw.strip_prefix('!') {
            Some(key) => (key.trim(), Op::Lacks),
            None => (raw, Op::Has),
        };
        check_key(raw, key)?;
        return Ok(Term {
            key: key.to_string(),
            op,
        });
    };
    let (key, value) = (key.trim(), value.trim());
    check_key(raw, key)?;
    if value.is_empty() {
        let term = excerpt(raw);
        return Err(SelectorError::MissingValue { term });
    }
    if !valid_label(value) {
        return Err(SelectorError::InvalidValue {
            term: excerpt(raw),
            value: excerpt(value),
        });
    }
    let v = value.to_string();
    Ok(Term {
        key: key.to_string(),
        op: if negated { Op::Ne(v) } else { Op::Eq(v) },
    })
}

fn check_key(raw: &str, key: &str) -> Result<(), SelectorError> {
    if key.is_empty() {
        let term = excerpt(raw);
        Err(SelectorError::MissingKey { term })
    } else if !valid_label(key) {
        Err(SelectorError::InvalidKey {
            term: excerpt(raw),
            key: excerpt(key),
        })
    } else {
        Ok(())
    }
}

/// 1-63 characters of `[a-z0-9._-]`, starting and ending alphanumeric.
fn valid_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(&first), Some(&last)) => {
            bytes.len() <= MAX_LABEL_LEN
                && alnum(first)
                && alnum(last)
                && bytes.iter().all(|&b| alnum(b) || b"._-".contains(&b))
        }
        _ => false,
    }
}

fn alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// Refuses two terms on the same key that no labels could satisfy together.
/// The check is complete: a set of terms that passes it is satisfiable.
fn check_consistent(terms: &BTreeSet<Term>) -> Result<(), SelectorError> {
    let mut by_key: BTreeMap<&str, Vec<&Term>> = BTreeMap::new();
    for term in terms {
        by_key.entry(term.key.as_str()).or_default().push(term);
    }
    for group in by_key.values() {
        for (i, first) in group.iter().enumerate() {
            for second in &group[i + 1..] {
                if contradict(&first.op, &second.op) {
                    return Err(SelectorError::Contradiction {
                        first: first.to_string(),
                        second: second.to_string(),
                    });
                }
            }
        }
    }
    Ok(())
}

/// Whether two terms on the same key exclude each other.
fn contradict(a: &Op, b: &Op) -> bool {
    match (a, b) {
        (Op::Has, Op::Lacks) | (Op::Lacks, Op::Has) => true,
        (Op::Eq(_), Op::Lacks) | (Op::Lacks, Op::Eq(_)) => true,
        (Op::Eq(x), Op::Eq(y)) => x != y,
        (Op::Eq(x), Op::Ne(y)) | (Op::Ne(y), Op::Eq(x)) => x == y,
        _ => false,
    }
}

/// At most 64 characters of `s` for an error message, control characters
/// escaped, `…` when cut.
fn excerpt(s: &str) -> String {
    const MAX_CHARS: usize = 64;
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == MAX_CHARS {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl FromStr for Selector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Selector, SelectorError> {
        Selector::parse(s)
    }
}

impl TryFrom<String> for Selector {
    type Error = SelectorError;
    fn try_from(s: String) -> Result<Selector, SelectorError> {
        Selector::parse(&s)
    }
}

impl From<Selector> for String {
    fn from(selector: Selector) -> String {
        selector.to_string()
    }
}

/// The canonical spelling: terms sorted by key, joined by commas, no
/// spaces; `*` for the selector that matches everything.
impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.terms.is_empty() {
            return f.write_str("*");
        }
        for (i, term) in self.terms.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{term}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn sel(s: &str) -> Selector {
        match Selector::parse(s) {
            Ok(selector) => selector,
            Err(e) => panic!("{s:?} should parse: {e}"),
        }
    }

    #[test]
    fn everything() {
        for s in ["", "   ", "*", " * "] {
            let selector = sel(s);
            assert!(selector.is_everything(), "{s:?}");
            assert_eq!(selector, Selector::everything());
            assert_eq!(selector.to_string(), "*");
            assert!(selector.matches(&BTreeMap::new()));
            assert!(selector.matches(&labels(&[("region", "eu")])));
        }
        assert_eq!(Selector::default().to_string(), "*");
    }

    #[test]
    fn canonical_spelling() {
        let selector = sel(" tier!=canary , region=eu,!gpu,ssd,region=eu ");
        assert_eq!(selector.to_string(), "!gpu,region=eu,ssd,tier!=canary");
        assert_eq!(sel(&selector.to_string()), selector);
        assert!(!selector.is_everything());
        assert_eq!(sel("b,a"), sel("a,b"));
        assert_eq!(sel("region = eu").to_string(), "region=eu");
        assert_eq!("a=1,b".parse::<Selector>(), Ok(sel("b,a=1")));
    }

    #[test]
    fn matching() {
        let selector = sel("region=eu,tier!=canary");
        let fra = labels(&[("region", "eu"), ("tier", "edge")]);
        let ams = labels(&[("region", "eu")]);
        let canary = labels(&[("region", "eu"), ("tier", "canary")]);
        let iad = labels(&[("region", "us")]);
        assert!(selector.matches(&fra));
        assert!(selector.matches(&ams), "`!=` holds without the label");
        assert!(!selector.matches(&canary));
        assert!(!selector.matches(&iad));
        assert!(!selector.matches(&BTreeMap::new()));

        let has = sel("gpu");
        assert!(has.matches(&labels(&[("gpu", "a100")])));
        assert!(!has.matches(&ams));
        let lacks = sel("!gpu");
        assert!(!lacks.matches(&labels(&[("gpu", "a100")])));
        assert!(lacks.matches(&ams));
    }

    #[test]
    fn label_syntax() {
        let longest_key = format!("{}=v", "k".repeat(63));
        for ok in [
            "a=b",
            "k8s.io_zone-1=eu-west.1_b",
            "0=9",
            longest_key.as_str(),
        ] {
            sel(ok);
        }
        let long_key = format!("{}=v", "k".repeat(64));
        let long_value = format!("k={}", "v".repeat(64));
        for (bad, want) in [
            ("Region=eu", "not a valid label key"),
            ("region=EU", "not a valid label value"),
            ("-a=b", "not a valid label key"),
            ("a.=b", "not a valid label key"),
            ("a=b_", "not a valid label value"),
            ("a=b=c", "not a valid label value"),
            ("a==b", "not a valid label value"),
            ("a b=c", "not a valid label key"),
            ("rég=eu", "not a valid label key"),
            (long_key.as_str(), "not a valid label key"),
            (long_value.as_str(), "not a valid label value"),
            ("=eu", "has no label key"),
            ("!", "has no label key"),
            ("!=eu", "has no label key"),
            ("region=", "has no value"),
            ("region!=", "has no value"),
            ("!!a", "not a valid label key"),
            ("a,*", "must stand alone"),
            ("a,,b", "term 2 of the selector is empty"),
            ("region=eu,", "term 2 of the selector is empty"),
            (",", "term 1 of the selector is empty"),
        ] {
            let err = Selector::parse(bad).expect_err(bad).to_string();
            assert!(err.contains(want), "{bad:?}: {err}");
        }
    }

    #[test]
    fn errors_quote_the_term() {
        let err = Selector::parse("region=eu,tier=Canary").unwrap_err();
        assert_eq!(
            err,
            SelectorError::InvalidValue {
                term: "tier=Canary".into(),
                value: "Canary".into(),
            }
        );
        assert!(err.to_string().starts_with("`Canary` in `tier=Canary`"));

        let long = format!("{}=x", "a".repeat(100));
        let err = Selector::parse(&long).unwrap_err().to_string();
        assert!(err.contains('…'), "{err}");
        assert!(!err.contains(&long), "{err}");

        let err = Selector::parse("a\nb=x").unwrap_err().to_string();
        assert!(err.contains("`a\\nb=x`"), "{err}");
    }

    #[test]
    fn contradictions() {
        for (bad, first, second) in [
            ("a=1,a!=1", "a=1", "a!=1"),
            ("a!=1,a=1", "a=1", "a!=1"),
            ("a,!a", "a", "!a"),
            ("!a,a", "a", "!a"),
            ("a=1,a=2", "a=1", "a=2"),
            ("a=1,!a", "!a", "a=1"),
        ] {
            let want = SelectorError::Contradiction {
                first: first.into(),
                second: second.into(),
            };
            assert_eq!(Selector::parse(bad), Err(want), "{bad}");
        }
        let msg = Selector::parse("region=eu,region=us")
            .unwrap_err()
            .to_string();
        assert!(
            msg.contains("`region=eu` and `region=us` contradict each other"),
            "{msg}"
        );
        // Redundant is not contradictory.
        for ok in [
            "a=1,a",
            "a=1,a!=2",
            "a!=1,!a",
            "a!=1,a!=2",
            "a,a!=1",
            "a=1,a=1",
        ] {
            sel(ok);
        }
    }

    #[test]
    fn term_limit() {
        let sixteen: Vec<String> = (0..16).map(|i| format!("k{i}=v")).collect();
        assert!(Selector::parse(&sixteen.join(",")).is_ok());
        // Exact duplicates do not count.
        let doubled = format!("{0},{0}", sixteen.join(","));
        assert!(Selector::parse(&doubled).is_ok());
        let seventeen = format!("{},k16=v", sixteen.join(","));
        assert_eq!(
            Selector::parse(&seventeen),
            Err(SelectorError::TooManyTerms { count: 17 })
        );
    }

    #[test]
    fn serde_uses_the_canonical_string() {
        let selector = sel("tier!=canary, region=eu");
        let json = serde_json::to_string(&selector).unwrap();
        assert_eq!(json, r#""region=eu,tier!=canary""#);
        assert_eq!(serde_json::from_str::<Selector>(&json).unwrap(), selector);
        assert_eq!(
            serde_json::to_string(&Selector::everything()).unwrap(),
            r#""*""#
        );
        let err = serde_json::from_str::<Selector>(r#""a,!a""#).unwrap_err();
        assert!(err.to_string().contains("contradict"), "{err}");
    }

    // Property tests.

    const KEYS: &[&str] = &["region", "tier", "zone", "k8s.io_x-y", "a"];
    const VALUES: &[&str] = &["eu", "us", "canary", "1", "a.b-c_d"];

    fn token(pool: &'static [&'static str]) -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(pool).prop_map(String::from),
            1 => "[a-z0-9]([a-z0-9._-]{0,6}[a-z0-9])?",
        ]
    }

    /// A term as (key, kind, value): kind 0 is `key`, 1 `!key`, 2
    /// `key=value`, 3 `key!=value`.
    type RawTerm = (String, u8, String);

    fn raw_term() -> impl Strategy<Value = RawTerm> {
        (token(KEYS), 0u8..4, token(VALUES))
    }

    fn spell((key, kind, value): &RawTerm) -> String {
        match kind {
            0 => key.clone(),
            1 => format!("!{key}"),
            2 => format!("{key}={value}"),
            _ => format!("{key}!={value}"),
        }
    }

    fn naive((key, kind, value): &RawTerm, labels: &BTreeMap<String, String>) -> bool {
        match kind {
            0 => labels.contains_key(key),
            1 => !labels.contains_key(key),
            2 => labels.get(key) == Some(value),
            _ => labels.get(key) != Some(value),
        }
    }

    fn label_map() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map(token(KEYS), token(VALUES), 0..5)
    }

    /// Labels and terms that all hold for them (so they never contradict
    /// each other), spelled out.
    fn consistent_terms() -> impl Strategy<Value = (BTreeMap<String, String>, Vec<String>)> {
        let raw_terms = prop::collection::vec(raw_term(), 0..10);
        (label_map(), raw_terms).prop_map(|(witness, raw_terms)| {
            let terms = raw_terms
                .into_iter()
                .map(|(key, kind, value)| {
                    let raw = match (kind, witness.get(&key)) {
                        (0 | 1, Some(_)) => (key, 0, value),
                        (0 | 1, None) => (key, 1, value),
                        (_, Some(v)) if kind == 2 || *v == value => (key, 2, v.clone()),
                        _ => (key, 3, value),
                    };
                    spell(&raw)
                })
                .collect();
            (witness, terms)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn display_round_trips((witness, terms) in consistent_terms(), pad in "[ \t]{0,2}") {
            let spelled: Vec<String> = terms.iter().map(|t| format!("{pad}{t}{pad}")).collect();
            let spelled = spelled.join(",");
            let selector = Selector::parse(&spelled)
                .map_err(|e| TestCaseError::fail(format!("{spelled:?}: {e}")))?;
            prop_assert!(selector.matches(&witness), "{selector} vs {witness:?}");
            let canonical = selector.to_string();
            prop_assert_eq!(Selector::parse(&canonical), Ok(selector));
            prop_assert_eq!(sel(&canonical).to_string(), canonical);
        }

        #[test]
        fn matches_agrees_with_naive(
            raws in prop::collection::vec(raw_term(), 0..8),
            pop_labels in label_map(),
        ) {
            let spelled: Vec<String> = raws.iter().map(spell).collect();
            let spelled = spelled.join(",");
            let holds = raws.iter().all(|raw| naive(raw, &pop_labels));
            match Selector::parse(&spelled) {
                Ok(selector) => {
                    let matched = selector.matches(&pop_labels);
                    prop_assert_eq!(matched, holds, "{} on {:?}", spelled, pop_labels);
                    prop_assert_eq!(Selector::parse(&selector.to_string()), Ok(selector));
                }
                Err(e) => {
                    let contradiction = matches!(e, SelectorError::Contradiction { .. });
                    prop_assert!(contradiction, "{spelled:?}: {e}");
                    // Contradictory terms hold for no labels at all.
                    prop_assert!(!holds);
                }
            }
        }

        #[test]
        fn arbitrary_strings_never_panic(s in any::<String>()) {
            if let Ok(selector) = Selector::parse(&s) {
                prop_assert_eq!(Selector::parse(&selector.to_string()), Ok(selector));
            }
        }

        #[test]
        fn selector_like_strings_never_panic(s in "[a-z0-9=!,* ._\\-A]{0,48}") {
            match Selector::parse(&s) {
                Ok(selector) => {
                    prop_assert_eq!(Selector::parse(&selector.to_string()), Ok(selector));
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
