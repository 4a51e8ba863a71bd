//! Usages kept in Waldur's listing order, per filter the agent uses.
//!
//! At benchmark scale (10,000 resources, 100,000 per-user usages, a thousand listing
//! pages) sorting the whole table for every page made the simulator the thing being
//! measured. Component usages list by `("-date", "component__type")` and per-user usages
//! by their component usage's same two fields; rows that tie stay in creation order, as
//! the stable sort of the creation-ordered table that defines the order would leave them.
//! So each row has an [`OrderKey`] ending in its row number, and the keys live in ordered
//! sets: one for everything, one per offering, per billing period and per (offering,
//! period) — the buckets the `offering_uuid` and `billing_period` filters pick. A write
//! that moves a row (a new `date`) removes and re-inserts its keys: O(log n).
//!
//! A listing is read page by page, and a `BTreeSet` cannot jump to the n-th key, so the
//! first page of a bucket takes a snapshot of its rows (of one component type, where the
//! `type` filter asks) that the following pages slice, until the next change of that
//! bucket drops it: a write into one month leaves a listing of another month alone, as
//! an index leaves it alone in the real database.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use crate::time::{Date, Timestamp};

/// A row's place in the listing order: newest `date` first, then component type, then
/// creation order (the row's index in its table).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct OrderKey {
    date: Reverse<Timestamp>,
    component_type: Arc<str>,
    pub(crate) row: usize,
}

impl OrderKey {
    pub(crate) fn new(date: Timestamp, component_type: &Arc<str>, row: usize) -> OrderKey {
        OrderKey { date: Reverse(date), component_type: Arc::clone(component_type), row }
    }
}

/// A snapshot's filter values: offering, billing period and component type, each
/// optional.
type SnapshotKey = (Option<String>, Option<Date>, Option<String>);

/// One table's rows in listing order, bucketed by offering and billing period, which
/// never change for a row.
#[derive(Default)]
pub(crate) struct Ordered {
    all: BTreeSet<OrderKey>,
    by_offering: HashMap<String, BTreeSet<OrderKey>>,
    by_period: HashMap<Date, BTreeSet<OrderKey>>,
    by_offering_period: HashMap<(String, Date), BTreeSet<OrderKey>>,
    /// Rows of the buckets listed since their last change.
    snapshots: HashMap<SnapshotKey, Arc<[usize]>>,
}

/// An empty bucket, for filters nothing matches.
static EMPTY: BTreeSet<OrderKey> = BTreeSet::new();

impl Ordered {
    pub(crate) fn insert(&mut self, offering: &str, period: Date, key: OrderKey) {
        self.changed(offering, period);
        self.by_offering.entry(offering.to_owned()).or_default().insert(key.clone());
        self.by_period.entry(period).or_default().insert(key.clone());
        self.by_offering_period.entry((offering.to_owned(), period)).or_default().insert(key.clone());
        self.all.insert(key);
    }

    /// Removes `key`; buckets stay allocated (offerings and periods are few).
    pub(crate) fn remove(&mut self, offering: &str, period: Date, key: &OrderKey) {
        self.changed(offering, period);
        self.all.remove(key);
        if let Some(set) = self.by_offering.get_mut(offering) {
            set.remove(key);
        }
        if let Some(set) = self.by_period.get_mut(&period) {
            set.remove(key);
        }
        if let Some(set) = self.by_offering_period.get_mut(&(offering.to_owned(), period)) {
            set.remove(key);
        }
    }

    /// Drops the snapshots that hold rows of `offering` and `period`.
    fn changed(&mut self, offering: &str, period: Date) {
        self.snapshots
            .retain(|(o, p, _), _| o.as_deref().is_some_and(|o| o != offering) || p.is_some_and(|p| p != period));
    }

    /// The rows of `offering`, `period` and `component_type` (each may be unfiltered), in
    /// order; kept until the next change of their bucket so that the pages of one listing
    /// do not walk the set again.
    pub(crate) fn snapshot(
        &mut self,
        offering: Option<&str>,
        period: Option<Date>,
        component_type: Option<&str>,
    ) -> Arc<[usize]> {
        let key: SnapshotKey = (offering.map(str::to_owned), period, component_type.map(str::to_owned));
        if let Some(rows) = self.snapshots.get(&key) {
            return Arc::clone(rows);
        }
        let rows: Arc<[usize]> = self
            .bucket(offering, period)
            .iter()
            .filter(|k| component_type.is_none_or(|t| &*k.component_type == t))
            .map(|k| k.row)
            .collect();
        self.snapshots.insert(key, Arc::clone(&rows));
        rows
    }

    /// The keys of `offering` and `period` (either may be unfiltered), in order.
    fn bucket(&self, offering: Option<&str>, period: Option<Date>) -> &BTreeSet<OrderKey> {
        let found = match (offering, period) {
            (None, None) => Some(&self.all),
            (Some(o), None) => self.by_offering.get(o),
            (None, Some(p)) => self.by_period.get(&p),
            (Some(o), Some(p)) => self.by_offering_period.get(&(o.to_owned(), p)),
        };
        found.unwrap_or(&EMPTY)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Timestamp {
        Timestamp { secs, micros: 0 }
    }

    #[test]
    fn keys_order_newest_first_then_type_then_creation() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let mut keys = [
            OrderKey::new(at(1), &a, 0),
            OrderKey::new(at(2), &b, 1),
            OrderKey::new(at(2), &a, 3),
            OrderKey::new(at(2), &a, 2),
        ];
        keys.sort();
        let rows: Vec<usize> = keys.iter().map(|k| k.row).collect();
        assert_eq!(rows, [2, 3, 1, 0]);
    }

    #[test]
    fn buckets_follow_inserts_and_removals() {
        let t: Arc<str> = Arc::from("t");
        let (march, april) = (Date::new(2024, 3, 1).expect("date"), Date::new(2024, 4, 1).expect("date"));
        let mut ordered = Ordered::default();
        ordered.insert("o1", march, OrderKey::new(at(5), &t, 0));
        ordered.insert("o2", march, OrderKey::new(at(6), &t, 1));
        ordered.insert("o1", april, OrderKey::new(at(7), &t, 2));
        let rows = |set: &BTreeSet<OrderKey>| set.iter().map(|k| k.row).collect::<Vec<_>>();
        assert_eq!(rows(ordered.bucket(None, None)), [2, 1, 0]);
        assert_eq!(rows(ordered.bucket(Some("o1"), None)), [2, 0]);
        assert_eq!(rows(ordered.bucket(None, Some(march))), [1, 0]);
        assert_eq!(rows(ordered.bucket(Some("o1"), Some(march))), [0]);
        assert!(ordered.bucket(Some("o3"), None).is_empty());

        // Row 0 gets a newer date: it moves ahead everywhere.
        ordered.remove("o1", march, &OrderKey::new(at(5), &t, 0));
        ordered.insert("o1", march, OrderKey::new(at(9), &t, 0));
        assert_eq!(rows(ordered.bucket(None, None)), [0, 2, 1]);
        assert_eq!(rows(ordered.bucket(None, Some(march))), [0, 1]);
        assert_eq!(rows(ordered.bucket(Some("o1"), Some(march))), [0]);
    }

    #[test]
    fn snapshots_last_until_the_next_change() {
        let t: Arc<str> = Arc::from("t");
        let march = Date::new(2024, 3, 1).expect("date");
        let mut ordered = Ordered::default();
        ordered.insert("o1", march, OrderKey::new(at(5), &t, 0));
        let first = ordered.snapshot(Some("o1"), None, None);
        assert_eq!(&*first, [0]);
        assert!(Arc::ptr_eq(&first, &ordered.snapshot(Some("o1"), None, None)));
        assert_eq!(&*ordered.snapshot(Some("o2"), Some(march), None), [] as [usize; 0]);

        ordered.insert("o1", march, OrderKey::new(at(6), &t, 1));
        assert_eq!(&*ordered.snapshot(Some("o1"), None, None), [1, 0]);
        assert_eq!(&*first, [0], "a page being served keeps its snapshot");
        ordered.remove("o1", march, &OrderKey::new(at(5), &t, 0));
        assert_eq!(&*ordered.snapshot(Some("o1"), Some(march), None), [1]);
    }

    #[test]
    fn a_change_drops_only_the_snapshots_holding_its_bucket() {
        let (a, b): (Arc<str>, Arc<str>) = (Arc::from("a"), Arc::from("b"));
        let (march, april) = (Date::new(2024, 3, 1).expect("date"), Date::new(2024, 4, 1).expect("date"));
        let mut ordered = Ordered::default();
        ordered.insert("o1", march, OrderKey::new(at(5), &a, 0));
        ordered.insert("o1", march, OrderKey::new(at(5), &b, 1));
        let of_type_a = ordered.snapshot(Some("o1"), Some(march), Some("a"));
        assert_eq!(&*of_type_a, [0]);
        assert_eq!(&*ordered.snapshot(Some("o1"), Some(march), Some("b")), [1]);
        let everything = ordered.snapshot(None, None, None);
        // April's write leaves March's listings alone, not the unfiltered one.
        ordered.insert("o1", april, OrderKey::new(at(9), &a, 2));
        assert!(Arc::ptr_eq(&of_type_a, &ordered.snapshot(Some("o1"), Some(march), Some("a"))));
        assert!(!Arc::ptr_eq(&everything, &ordered.snapshot(None, None, None)));
        assert_eq!(&*ordered.snapshot(None, None, None), [2, 0, 1]);
        // A write into March drops them.
        ordered.insert("o1", march, OrderKey::new(at(6), &a, 3));
        assert_eq!(&*ordered.snapshot(Some("o1"), Some(march), Some("a")), [3, 0]);
    }
}
