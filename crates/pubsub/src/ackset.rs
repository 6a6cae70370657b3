//! The acknowledged offsets of one subscription: a floor below which everything is acknowledged,
//! and disjoint ranges above it. Acks arrive mostly in order, so the ranges stay few and merge
//! into the floor as the gaps close.

use ferrocore_model::pubsub::SubscriptionCursor;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct AckSet {
    floor: u64,
    /// start -> end (exclusive), all above `floor`, never adjacent to each other or the floor.
    ranges: BTreeMap<u64, u64>,
}

impl AckSet {
    pub fn from_cursor(c: &SubscriptionCursor) -> Self {
        let mut set = AckSet { floor: c.floor, ranges: BTreeMap::new() };
        for &(start, end) in &c.acked {
            set.insert_range(start, end);
        }
        set
    }

    pub fn to_cursor(&self) -> SubscriptionCursor {
        SubscriptionCursor { floor: self.floor, acked: self.ranges.iter().map(|(&s, &e)| (s, e)).collect() }
    }

    pub fn floor(&self) -> u64 {
        self.floor
    }

    pub fn contains(&self, offset: u64) -> bool {
        offset < self.floor || self.ranges.range(..=offset).next_back().is_some_and(|(_, &end)| offset < end)
    }

    pub fn insert(&mut self, offset: u64) {
        self.insert_range(offset, offset.saturating_add(1));
    }

    /// Marks `[start, end)` acknowledged.
    pub fn insert_range(&mut self, start: u64, end: u64) {
        let mut start = start.max(self.floor);
        let mut end = end;
        if start >= end {
            return;
        }
        // Absorb every range that overlaps or touches [start, end).
        if let Some((&s, &e)) = self.ranges.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
        }
        let absorbed: Vec<u64> = self.ranges.range(start..=end).map(|(&s, _)| s).collect();
        for s in absorbed {
            if let Some(e) = self.ranges.remove(&s) {
                end = end.max(e);
            }
        }
        if start == self.floor {
            self.floor = end;
        } else {
            self.ranges.insert(start, end);
        }
    }

    /// Everything below `offset` is acknowledged (or gone): used when retention trimmed the log.
    pub fn raise_floor(&mut self, offset: u64) {
        if offset > self.floor {
            self.insert_range(self.floor, offset);
        }
    }

    #[cfg(test)]
    pub fn range_count(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_merge_into_the_floor() {
        let mut a = AckSet::default();
        a.insert(2);
        a.insert(4);
        assert_eq!(a.floor(), 0);
        assert!(a.contains(2) && !a.contains(3) && a.contains(4) && !a.contains(0));
        a.insert(3);
        assert_eq!(a.range_count(), 1);
        a.insert(0);
        a.insert(1);
        assert_eq!(a.floor(), 5);
        assert_eq!(a.range_count(), 0);
        a.insert(1);
        assert_eq!(a.floor(), 5);
    }

    #[test]
    fn ranges_round_trip_through_the_cursor() {
        let mut a = AckSet::default();
        for o in [10, 11, 12, 20, 30, 31, 5] {
            a.insert(o);
        }
        let c = a.to_cursor();
        assert_eq!(c.acked, vec![(5, 6), (10, 13), (20, 21), (30, 32)]);
        assert_eq!(AckSet::from_cursor(&c), a);
        a.insert_range(6, 30);
        assert_eq!(a.to_cursor().acked, vec![(5, 32)]);
        a.raise_floor(40);
        assert_eq!(a.to_cursor(), SubscriptionCursor { floor: 40, acked: vec![] });
    }

    #[test]
    fn matches_a_naive_set() {
        // Deterministic pseudo-random acks compared with a plain set.
        let mut a = AckSet::default();
        let mut naive = std::collections::BTreeSet::new();
        let mut x: u64 = 12345;
        for _ in 0..5000 {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let o = (x >> 33) % 500;
            a.insert(o);
            naive.insert(o);
        }
        for o in 0..600 {
            assert_eq!(a.contains(o), naive.contains(&o), "{o}");
        }
    }
}
