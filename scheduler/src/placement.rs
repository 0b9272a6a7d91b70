//! Placement: the PoPs an app is served at, from its selector and the PoPs'
//! labels.
//!
//! Placement is a pure function of its inputs, recomputed whenever a PoP's
//! labels or an app's selector change: a PoP that stops matching leaves the
//! set, and its gateways drop the app. An app whose selector matches no PoP
//! is refused rather than silently served nowhere.

use crate::selector::Selector;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A PoP as placement sees it: its name and its labels.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PopLabels {
    /// The PoP's name, such as `fra1`. Names are expected to be unique; if
    /// one appears twice, it is placed when either entry matches.
    pub name: String,
    /// The PoP's labels, such as `region=eu`.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Why an app could not be placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// No PoP matches the selector.
    NoMatch {
        /// The selector, in its canonical spelling.
        selector: String,
        /// How many PoPs there were to choose from.
        pops: usize,
    },
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlacementError::NoMatch { selector, pops } => {
                let noun = if *pops == 1 { "PoP" } else { "PoPs" };
                write!(
                    f,
                    "no PoP matches `{selector}` (of {pops} {noun}): label a PoP or change the selector"
                )
            }
        }
    }
}

impl std::error::Error for PlacementError {}

/// The names of the PoPs whose labels match `selector`, in name order; an
/// error when there are none.
pub fn place(selector: &Selector, pops: &[PopLabels]) -> Result<BTreeSet<String>, PlacementError> {
    let mut placed = BTreeSet::new();
    for pop in pops {
        if selector.matches(&pop.labels) {
            placed.insert(pop.name.clone());
        }
    }
    if placed.is_empty() {
        return Err(PlacementError::NoMatch {
            selector: selector.to_string(),
            pops: pops.len(),
        });
    }
    Ok(placed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pop(name: &str, labels: &[(&str, &str)]) -> PopLabels {
        PopLabels {
            name: name.to_string(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn fleet() -> Vec<PopLabels> {
        vec![
            pop("fra1", &[("region", "eu"), ("tier", "canary")]),
            pop("ams1", &[("region", "eu")]),
            pop("iad1", &[("region", "us")]),
        ]
    }

    fn names(list: &[&str]) -> BTreeSet<String> {
        list.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn places_by_labels() {
        let pops = fleet();
        let eu: Selector = "region=eu".parse().unwrap();
        assert_eq!(place(&eu, &pops), Ok(names(&["ams1", "fra1"])));
        let eu_stable: Selector = "region=eu,tier!=canary".parse().unwrap();
        assert_eq!(place(&eu_stable, &pops), Ok(names(&["ams1"])));
        let everywhere = Selector::everything();
        assert_eq!(
            place(&everywhere, &pops),
            Ok(names(&["ams1", "fra1", "iad1"]))
        );
    }

    #[test]
    fn no_match_is_an_error() {
        let pops = fleet();
        let apac: Selector = "region=apac".parse().unwrap();
        let err = place(&apac, &pops).unwrap_err();
        assert_eq!(
            err,
            PlacementError::NoMatch {
                selector: "region=apac".into(),
                pops: 3,
            }
        );
        assert_eq!(
            err.to_string(),
            "no PoP matches `region=apac` (of 3 PoPs): label a PoP or change the selector"
        );
        let one = place(&apac, &pops[..1]).unwrap_err().to_string();
        assert!(one.contains("(of 1 PoP)"), "{one}");
        let none = place(&Selector::everything(), &[]).unwrap_err();
        assert!(none.to_string().contains("no PoP matches `*` (of 0 PoPs)"));
    }

    const KEYS: &[&str] = &["region", "tier", "zone"];
    const VALUES: &[&str] = &["eu", "us", "canary"];

    fn term() -> impl Strategy<Value = String> {
        let key = prop::sample::select(KEYS);
        let value = prop::sample::select(VALUES);
        (key, 0u8..4, value).prop_map(|(key, kind, value)| match kind {
            0 => key.to_string(),
            1 => format!("!{key}"),
            2 => format!("{key}={value}"),
            _ => format!("{key}!={value}"),
        })
    }

    fn fleets() -> impl Strategy<Value = Vec<PopLabels>> {
        let labels = prop::collection::btree_map(
            prop::sample::select(KEYS).prop_map(String::from),
            prop::sample::select(VALUES).prop_map(String::from),
            0..3,
        );
        prop::collection::vec(labels, 0..8).prop_map(|label_sets| {
            label_sets
                .into_iter()
                .enumerate()
                .map(|(i, labels)| PopLabels {
                    name: format!("pop{i}"),
                    labels,
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn placement_is_exactly_the_matching_pops(
            terms in prop::collection::vec(term(), 0..4),
            pops in fleets(),
        ) {
            // Contradictory selectors are refused before placement.
            let Ok(selector) = Selector::parse(&terms.join(",")) else {
                return Ok(());
            };
            let matching: BTreeSet<String> = pops
                .iter()
                .filter(|pop| selector.matches(&pop.labels))
                .map(|pop| pop.name.clone())
                .collect();
            match place(&selector, &pops) {
                Ok(placed) => {
                    for name in &placed {
                        let pop = pops.iter().find(|pop| pop.name == *name);
                        prop_assert!(pop.is_some_and(|pop| selector.matches(&pop.labels)));
                    }
                    prop_assert_eq!(placed, matching);
                }
                Err(PlacementError::NoMatch { selector: shown, pops: n }) => {
                    prop_assert!(matching.is_empty());
                    prop_assert_eq!(n, pops.len());
                    prop_assert_eq!(shown, selector.to_string());
                }
            }
        }
    }
}
