//! Byte sizes as people write them: `64MiB`, `10MB`, `512KiB`, `1048576`.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A number of bytes. Parses `"64MiB"`, `"10MB"`, `"512 KiB"`, `"1GiB"` or a
/// bare integer (bytes); serializes as an integer of bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a size string could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SizeError {
    /// The string is empty or has no digits.
    #[error("`{0}` is not a size: write a number with an optional unit, e.g. 64MiB")]
    NotANumber(String),
    /// The unit is not one of B, KB, MB, GB, KiB, MiB, GiB.
    #[error("`{0}` has an unknown unit: use B, KB, MB, GB, KiB, MiB or GiB")]
    UnknownUnit(String),
    /// The value does not fit in 64 bits.
    #[error("`{0}` is too large")]
    Overflow(String),
}

impl ByteSize {
    /// `n` mebibytes.
    pub const fn mib(n: u64) -> Self {
        ByteSize(n << 20)
    }
    /// `n` kibibytes.
    pub const fn kib(n: u64) -> Self {
        ByteSize(n << 10)
    }
    /// The size in bytes.
    pub const fn bytes(self) -> u64 {
        self.0
    }
}

impl FromStr for ByteSize {
    type Err = SizeError;
    fn from_str(s: &str) -> Result<Self, SizeError> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (digits, unit) = t.split_at(split);
        if digits.is_empty() {
            return Err(SizeError::NotANumber(s.to_string()));
        }
        let n: u64 = digits
            .parse()
            .map_err(|_| SizeError::Overflow(s.to_string()))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" | "kB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(SizeError::UnknownUnit(s.to_string())),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| SizeError::Overflow(s.to_string()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b >= 1 << 30 && b.is_multiple_of(1 << 30) {
            write!(f, "{}GiB", b >> 30)
        } else if b >= 1 << 20 && b.is_multiple_of(1 << 20) {
            write!(f, "{}MiB", b >> 20)
        } else if b >= 1 << 10 && b.is_multiple_of(1 << 10) {
            write!(f, "{}KiB", b >> 10)
        } else {
            write!(f, "{b}B")
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ByteSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"64MiB\" or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                Ok(ByteSize(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                u64::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom("a size cannot be negative"))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for ByteSize {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::Integer)
            .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
                utoipa::openapi::KnownFormat::Int64,
            )))
            .minimum(Some(0))
            .description(Some(
                "A number of bytes. Accepted on input also as a string such as \"64MiB\".",
            ))
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for ByteSize {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("64MiB".parse(), Ok(ByteSize(64 << 20)));
        assert_eq!("10MB".parse(), Ok(ByteSize(10_000_000)));
        assert_eq!("512 KiB".parse(), Ok(ByteSize(512 << 10)));
        assert_eq!("1GiB".parse(), Ok(ByteSize(1 << 30)));
        assert_eq!("1234".parse(), Ok(ByteSize(1234)));
        assert_eq!(ByteSize::mib(64).to_string(), "64MiB");
    }

    #[test]
    fn rejects_bad_sizes() {
        assert!(matches!(
            "".parse::<ByteSize>(),
            Err(SizeError::NotANumber(_))
        ));
        assert!(matches!(
            "MiB".parse::<ByteSize>(),
            Err(SizeError::NotANumber(_))
        ));
        assert!(matches!(
            "10XB".parse::<ByteSize>(),
            Err(SizeError::UnknownUnit(_))
        ));
        assert!(matches!(
            "-5".parse::<ByteSize>(),
            Err(SizeError::NotANumber(_))
        ));
        assert!(matches!(
            "99999999999999999999GiB".parse::<ByteSize>(),
            Err(SizeError::Overflow(_))
        ));
    }
}
