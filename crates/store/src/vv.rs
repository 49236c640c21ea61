//! Version vectors: `{node: counter}` maps that order the edits of one path
//! across nodes without trusting anyone's clock.

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    /// Both saw exactly the same edits.
    Equal,
    /// `self` has seen every edit of the other and more: `self` wins.
    Dominates,
    /// The other has seen every edit of `self` and more: the other wins.
    DominatedBy,
    /// Each saw an edit the other did not: a conflict to merge.
    Concurrent,
}

/// A version vector keyed by a node's short id (16 hex digits of its public key).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct VersionVector(BTreeMap<String, u64>);

impl VersionVector {
    /// An empty vector (no edits seen).
    pub fn new() -> Self {
        Self::default()
    }

    /// How many nodes this vector names.
    pub fn nodes(&self) -> usize {
        self.0.len()
    }

    /// The counter for `node`, 0 when absent.
    pub fn get(&self, node: &str) -> u64 {
        self.0.get(node).copied().unwrap_or(0)
    }

    /// Records one more edit by `node`.
    pub fn increment(&mut self, node: &str) {
        *self.0.entry(node.to_owned()).or_insert(0) += 1;
    }

    /// Records one more edit by `node`, its counter raised to at least
    /// `floor` (a clock: milliseconds since the epoch). A node restored
    /// from an old copy of its store would otherwise hand out counters it
    /// already used, and its new writes would look older than states that
    /// only built on its lost ones.
    pub fn advance(&mut self, node: &str, floor: u64) {
        let c = self.0.entry(node.to_owned()).or_insert(0);
        *c = (*c + 1).max(floor);
    }

    /// The least upper bound of both vectors (element-wise maximum).
    pub fn merge(&mut self, other: &VersionVector) {
        for (node, &counter) in &other.0 {
            let entry = self.0.entry(node.clone()).or_insert(0);
            *entry = (*entry).max(counter);
        }
    }

    /// Compares two vectors in the causal partial order.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let mut greater = false;
        let mut less = false;
        for node in self.0.keys().chain(other.0.keys()) {
            match self.get(node).cmp(&other.get(node)) {
                Ordering::Greater => greater = true,
                Ordering::Less => less = true,
                Ordering::Equal => {}
            }
        }
        match (greater, less) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Dominates,
            (false, true) => Causality::DominatedBy,
            (true, true) => Causality::Concurrent,
        }
    }

    /// Whether no edit was ever recorded.
    pub fn is_empty(&self) -> bool {
        self.0.values().all(|&c| c == 0)
    }

    /// Iterates `(node, counter)` pairs in node order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0.iter().map(|(k, &v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vv(pairs: &[(u8, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(n, c) in pairs {
            v.0.insert(format!("n{n}"), c);
        }
        v
    }

    fn arb_vv() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0u8..4, 0u64..5), 0..5).prop_map(|p| vv(&p))
    }

    #[test]
    fn increments_dominate() {
        let a = vv(&[(1, 1)]);
        let mut b = a.clone();
        b.increment("n2");
        assert_eq!(b.compare(&a), Causality::Dominates);
        assert_eq!(a.compare(&b), Causality::DominatedBy);
        let mut c = a.clone();
        c.increment("n3");
        assert_eq!(b.compare(&c), Causality::Concurrent);
    }

    proptest! {
        #[test]
        fn merge_is_a_lattice_join(a in arb_vv(), b in arb_vv(), c in arb_vv()) {
            let mut ab = a.clone(); ab.merge(&b);
            let mut ba = b.clone(); ba.merge(&a);
            prop_assert_eq!(ab.compare(&ba), Causality::Equal);
            prop_assert!(matches!(ab.compare(&a), Causality::Dominates | Causality::Equal));
            prop_assert!(matches!(ab.compare(&b), Causality::Dominates | Causality::Equal));
            let mut ab_c = ab.clone(); ab_c.merge(&c);
            let mut bc = b.clone(); bc.merge(&c);
            let mut a_bc = a.clone(); a_bc.merge(&bc);
            prop_assert_eq!(ab_c.compare(&a_bc), Causality::Equal);
            let mut aa = a.clone(); aa.merge(&a);
            prop_assert_eq!(aa.compare(&a), Causality::Equal);
        }

        #[test]
        fn compare_is_antisymmetric(a in arb_vv(), b in arb_vv()) {
            let expected = match a.compare(&b) {
                Causality::Equal => Causality::Equal,
                Causality::Dominates => Causality::DominatedBy,
                Causality::DominatedBy => Causality::Dominates,
                Causality::Concurrent => Causality::Concurrent,
            };
            prop_assert_eq!(b.compare(&a), expected);
        }
    }
}
