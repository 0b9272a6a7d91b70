//! Identifiers.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An app's id: 1–63 characters of `a-z`, `0-9` and `-`, not starting or
/// ending with `-` (so it fits in a DNS label). It shows in logs and in
/// metric labels.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AppId(String);

/// Why an id was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "`{0}` is not a valid id: use 1-63 characters of a-z, 0-9 and '-', not starting or ending with '-'"
)]
pub struct IdError(pub String);

impl AppId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

fn valid_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

impl AppId {
    /// A valid id derived from any string: `app-` and the first 12 hex
    /// digits of its sha256. For names that do not fit the id rules.
    pub fn hashed(from: &str) -> AppId {
        AppId(format!(
            "app-{}",
            crate::Sha256Digest::of(from.as_bytes()).short()
        ))
    }
}

impl FromStr for AppId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, IdError> {
        if valid_label(s) {
            Ok(AppId(s.to_string()))
        } else {
            Err(IdError(s.to_string()))
        }
    }
}

impl TryFrom<String> for AppId {
    type Error = IdError;
    fn try_from(s: String) -> Result<Self, IdError> {
        if valid_label(&s) {
            Ok(AppId(s))
        } else {
            Err(IdError(s))
        }
    }
}

impl From<AppId> for String {
    fn from(id: AppId) -> String {
        id.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_ids() {
        assert!("hello".parse::<AppId>().is_ok());
        assert!("shop-2".parse::<AppId>().is_ok());
        for bad in ["", "-a", "a-", "Hello", "a_b", "a.b", &"x".repeat(64)] {
            assert!(bad.parse::<AppId>().is_err(), "{bad} should be refused");
            let hashed = AppId::hashed(bad);
            assert_eq!(hashed.as_str().parse::<AppId>(), Ok(hashed.clone()));
        }
    }
}
