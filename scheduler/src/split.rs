//! The sticky traffic split between an app's stable and canary versions.
//!
//! Each request has an affinity key, chosen by the app (a header or a
//! cookie, else the client address). [`bucket`] hashes it to one of
//! [`BUCKETS`] buckets, and [`picks_canary`] sends the lowest
//! `weight × 100` buckets to the canary. So the same key always gets the same
//! version at a fixed weight, and raising the weight only moves keys from the
//! stable version to the canary, never back.
//!
//! A tester can pin a request to a version of the current deployment with
//! the `gannet-version: <n>` header ([`parse_pin`]); whether that version is
//! reachable is for the caller to decide.
//!
//! Everything here runs on the gateway's hot path: no allocation, no lock.

use serde::{Deserialize, Serialize};
use std::fmt;

/// How many buckets [`bucket`] hashes keys into: 100 per percent of weight.
pub const BUCKETS: u32 = 10_000;

/// The request header that pins a request to a version: `gannet-version: 12`.
pub const PIN_HEADER: &str = "gannet-version";

const FNV_OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// The bucket, in `0..BUCKETS`, of an affinity key.
///
/// The hash is FNV-1a (64 bits) followed by the splitmix64 finalizer, which
/// spreads keys that differ in one byte (consecutive user ids, neighbouring
/// addresses) over the whole range. It is written out here so that it is the
/// same in every process, on every platform and in every release: gateways
/// of different versions split a rollout the same way. Changing it moves end
/// users between the stable and the canary version, so don't.
pub fn bucket(key: &[u8]) -> u32 {
    let hash = mix64(fnv1a64(key));
    // Below BUCKETS, so the cast loses nothing.
    (hash % u64::from(BUCKETS)) as u32
}

/// FNV-1a, 64 bits.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash = FNV_OFFSET_BASIS;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The splitmix64 finalizer: every input bit flips about half the output bits.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The percentage of traffic sent to the canary, 0 to 100; the stable version
/// gets the rest, so the two always sum to 100.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub struct Weight(u8);

/// A canary weight above 100 %.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a canary weight of {0} % is out of range: use 0 to 100")]
pub struct WeightError(pub u8);

impl Weight {
    /// No traffic to the canary.
    pub const ZERO: Weight = Weight(0);
    /// All traffic to the canary.
    pub const FULL: Weight = Weight(100);

    /// A weight of `percent` % to the canary; refused above 100.
    pub fn new(percent: u8) -> Result<Weight, WeightError> {
        if percent <= 100 {
            Ok(Weight(percent))
        } else {
            Err(WeightError(percent))
        }
    }

    /// The canary's share, 0 to 100.
    pub const fn percent(self) -> u8 {
        self.0
    }

    /// The stable version's share: `100 - percent()`.
    pub const fn stable_percent(self) -> u8 {
        100 - self.0
    }
}

impl TryFrom<u8> for Weight {
    type Error = WeightError;
    fn try_from(percent: u8) -> Result<Weight, WeightError> {
        Weight::new(percent)
    }
}

impl From<Weight> for u8 {
    fn from(weight: Weight) -> u8 {
        weight.0
    }
}

/// `37 %`.
impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} %", self.0)
    }
}

/// Whether a request whose key fell in `bucket` goes to the canary: the
/// buckets below `weight × BUCKETS / 100` do. Buckets at or above
/// [`BUCKETS`] never do.
pub fn picks_canary(bucket: u32, weight: Weight) -> bool {
    bucket < u32::from(weight.percent()) * (BUCKETS / 100)
}

/// A request's pin to a version, from the `gannet-version` header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Pin {
    /// No pin (no header, or one that is not a version number): split as usual.
    #[default]
    None,
    /// Serve this version, if the current deployment has it.
    Version(u32),
}

/// Reads the `gannet-version` header's value: a version number of 1 to 10
/// ASCII digits that fits in a `u32`, with optional surrounding whitespace.
/// Anything else (or no header) is [`Pin::None`]. Does not allocate.
pub fn parse_pin(header: Option<&[u8]>) -> Pin {
    let Some(value) = header else {
        return Pin::None;
    };
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 10 {
        return Pin::None;
    }
    let mut version: u32 = 0;
    for &byte in digits {
        if !byte.is_ascii_digit() {
            return Pin::None;
        }
        let digit = u32::from(byte - b'0');
        match version.checked_mul(10).and_then(|v| v.checked_add(digit)) {
            Some(v) => version = v,
            None => return Pin::None,
        }
    }
    Pin::Version(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hash_parts_match_published_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
        // splitmix64's first output from seed 0.
        assert_eq!(mix64(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
        assert_eq!(mix64(0), 0);
    }

    /// These must never change: a different bucket moves an end user to the
    /// other version in the middle of a rollout.
    #[test]
    fn buckets_are_pinned() {
        for (key, want) in [
            ("", 6203),
            ("a", 3736),
            ("user-42", 8355),
            ("203.0.113.7", 7337),
            ("session=abc123", 8091),
        ] {
            assert_eq!(bucket(key.as_bytes()), want, "{key:?}");
        }
    }

    #[test]
    fn buckets_are_uniform() {
        let families: [fn(u32) -> String; 2] = [
            |i| format!("user-{i}"),
            |i| format!("10.{}.{}.{}", i >> 16, (i >> 8) & 0xff, i & 0xff),
        ];
        for family in families {
            // One band per percent of weight: 100 buckets each.
            let mut bands = [0u32; 100];
            for i in 0..100_000 {
                let key = family(i);
                bands[(bucket(key.as_bytes()) / 100) as usize] += 1;
            }
            for (band, &count) in bands.iter().enumerate() {
                let example = family(0);
                assert!(
                    (700..=1300).contains(&count),
                    "band {band} has {count} of 100000 keys like {example}"
                );
            }
        }
    }

    #[test]
    fn a_weight_is_its_share_of_the_buckets() {
        for percent in 0..=100u8 {
            let weight = Weight::new(percent).unwrap();
            let canary = (0..BUCKETS).filter(|&b| picks_canary(b, weight)).count();
            assert_eq!(canary, usize::from(percent) * 100, "{weight}");
        }
        assert!(!picks_canary(BUCKETS, Weight::FULL));
        assert!(!picks_canary(u32::MAX, Weight::FULL));
    }

    #[test]
    fn weights() {
        assert_eq!(Weight::new(0), Ok(Weight::ZERO));
        assert_eq!(Weight::new(100), Ok(Weight::FULL));
        assert_eq!(Weight::default(), Weight::ZERO);
        let w = Weight::new(37).unwrap();
        assert_eq!((w.percent(), w.stable_percent()), (37, 63));
        assert_eq!(w.to_string(), "37 %");
        let err = Weight::new(101).unwrap_err();
        assert_eq!(err, WeightError(101));
        assert_eq!(
            err.to_string(),
            "a canary weight of 101 % is out of range: use 0 to 100"
        );
        assert_eq!(serde_json::to_string(&w).unwrap(), "37");
        assert_eq!(serde_json::from_str::<Weight>("37").unwrap(), w);
        assert!(serde_json::from_str::<Weight>("101").is_err());
    }

    #[test]
    fn pins() {
        assert_eq!(parse_pin(None), Pin::None);
        assert_eq!(Pin::default(), Pin::None);
        for (raw, want) in [
            ("12", Pin::Version(12)),
            (" 7\t", Pin::Version(7)),
            ("0", Pin::Version(0)),
            ("0012", Pin::Version(12)),
            ("4294967295", Pin::Version(u32::MAX)),
            ("4294967296", Pin::None),
            ("00000000001", Pin::None),
            ("", Pin::None),
            ("  ", Pin::None),
            ("v12", Pin::None),
            ("+1", Pin::None),
            ("-1", Pin::None),
            ("1 2", Pin::None),
            ("1.0", Pin::None),
            ("١٢", Pin::None),
        ] {
            assert_eq!(parse_pin(Some(raw.as_bytes())), want, "{raw:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        /// Raising the weight only moves keys from stable to canary, never back.
        #[test]
        fn raising_the_weight_never_moves_a_key_back(
            key in prop::collection::vec(any::<u8>(), 0..64),
            a in 0u8..=100,
            b in 0u8..=100,
        ) {
            let low = Weight::new(a.min(b)).unwrap();
            let high = Weight::new(a.max(b)).unwrap();
            let bucket = bucket(&key);
            prop_assert!(bucket < BUCKETS);
            if picks_canary(bucket, low) {
                prop_assert!(picks_canary(bucket, high), "{bucket} left the canary at {high}");
            }
        }

        #[test]
        fn zero_never_picks_the_canary_and_full_always_does(
            key in any::<Vec<u8>>(),
            b in 0..BUCKETS,
        ) {
            let k = bucket(&key);
            prop_assert!(!picks_canary(k, Weight::ZERO));
            prop_assert!(picks_canary(k, Weight::FULL));
            prop_assert!(!picks_canary(b, Weight::ZERO));
            prop_assert!(picks_canary(b, Weight::FULL));
        }

        #[test]
        fn the_two_shares_sum_to_100(p in any::<u8>()) {
            match Weight::new(p) {
                Ok(w) => {
                    prop_assert!(p <= 100);
                    prop_assert_eq!(w.percent(), p);
                    prop_assert_eq!(u32::from(w.percent()) + u32::from(w.stable_percent()), 100);
                }
                Err(e) => {
                    prop_assert!(p > 100);
                    prop_assert_eq!(e, WeightError(p));
                }
            }
        }

        #[test]
        fn pins_round_trip(n in any::<u32>()) {
            let text = n.to_string();
            prop_assert_eq!(parse_pin(Some(text.as_bytes())), Pin::Version(n));
        }

        #[test]
        fn pins_never_panic(bytes in any::<Vec<u8>>()) {
            if let Pin::Version(n) = parse_pin(Some(bytes.as_slice())) {
                let digits = bytes.trim_ascii();
                prop_assert!(!digits.is_empty() && digits.len() <= 10);
                prop_assert!(digits.iter().all(u8::is_ascii_digit));
                let text = std::str::from_utf8(digits).unwrap();
                prop_assert_eq!(text.parse::<u32>(), Ok(n));
            }
        }
    }
}
