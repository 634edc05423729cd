//! A client's filters and what each was granted, sorted by filter. Most clients have one or a few: a
//! sorted vector holds one in ~40 bytes, where a `BTreeMap` allocates a whole node (~400) for it, and
//! every kept session has one.

use crate::protocol::SubscriptionOptions;

#[derive(Debug, Default)]
pub struct Filters(Vec<(Box<str>, SubscriptionOptions)>);

impl Filters {
    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Sets the options of `filter`, adding it if it is new.
    pub fn insert(&mut self, filter: &str, options: SubscriptionOptions) {
        match self.0.binary_search_by(|(f, _)| (**f).cmp(filter)) {
            Ok(i) => self.0[i].1 = options,
            Err(i) => {
                // Room for exactly what is held: most clients never subscribe again.
                self.0.reserve_exact(1);
                self.0.insert(i, (filter.into(), options));
            }
        }
    }

    /// Removes `filter`: whether it was there.
    pub fn remove(&mut self, filter: &str) -> bool {
        match self.0.binary_search_by(|(f, _)| (**f).cmp(filter)) {
            Ok(i) => {
                self.0.remove(i);
                true
            }
            Err(_) => false,
        }
    }

    /// In filter order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &SubscriptionOptions)> {
        self.0.iter().map(|(f, o)| (&**f, o))
    }

    pub fn into_filters(self) -> impl Iterator<Item = Box<str>> {
        self.0.into_iter().map(|(f, _)| f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::QoS;

    #[test]
    fn sorted_unique_and_replaced() {
        let mut filters = Filters::default();
        filters.insert("b/#", SubscriptionOptions::qos(QoS::AtMostOnce));
        filters.insert("a", SubscriptionOptions::qos(QoS::AtLeastOnce));
        filters.insert("b/#", SubscriptionOptions::qos(QoS::ExactlyOnce));
        let listed: Vec<(&str, QoS)> = filters.iter().map(|(f, o)| (f, o.qos)).collect();
        assert_eq!(listed, [("a", QoS::AtLeastOnce), ("b/#", QoS::ExactlyOnce)]);
        assert!(filters.remove("a") && !filters.remove("a"));
        assert_eq!(filters.len(), 1);
    }
}
