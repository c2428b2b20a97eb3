//! A bounded buffer of items waiting to be claimed by key, oldest evicted first.
//!
//! Socket-less evidence (resets, drops, ICMP errors) often arrives before the attempt it
//! explains is known; it waits here, findable by its key, until claimed, expired or evicted.

use std::collections::BTreeMap;
use std::hash::Hash;
use super::Map;

#[derive(Debug)]
pub struct KeyedBuffer<K, V> {
    /// Arrival order (seq) -> item.
    items: BTreeMap<u64, (K, V)>,
    index: Map<K, Vec<u64>>,
    next_seq: u64,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> KeyedBuffer<K, V> {
    pub fn new(capacity: usize) -> Self {
        KeyedBuffer { items: BTreeMap::new(), index: Map::default(), next_seq: 0, capacity: capacity.max(1) }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Adds an item; the oldest one goes when full.
    pub fn push(&mut self, key: K, value: V) {
        if self.items.len() >= self.capacity {
            if let Some((&seq, _)) = self.items.first_key_value() {
                self.remove(seq);
            }
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.index.entry(key.clone()).or_default().push(seq);
        self.items.insert(seq, (key, value));
    }

    /// Items under `key`, oldest first, with their handle for `remove`.
    pub fn get(&self, key: &K) -> Vec<(u64, &V)> {
        self.index
            .get(key)
            .map(|seqs| seqs.iter().filter_map(|s| self.items.get(s).map(|(_, v)| (*s, v))).collect())
            .unwrap_or_default()
    }

    /// Removes and returns every item under `key`, oldest first.
    pub fn take_all(&mut self, key: &K) -> Vec<V> {
        let seqs = self.index.remove(key).unwrap_or_default();
        seqs.into_iter().filter_map(|s| self.items.remove(&s).map(|(_, v)| v)).collect()
    }

    pub fn remove(&mut self, seq: u64) -> Option<V> {
        let (key, value) = self.items.remove(&seq)?;
        if let Some(seqs) = self.index.get_mut(&key) {
            seqs.retain(|s| *s != seq);
            if seqs.is_empty() {
                self.index.remove(&key);
            }
        }
        Some(value)
    }

    /// Drops every item for which `expired` holds.
    pub fn expire(&mut self, expired: impl Fn(&V) -> bool) {
        let old: Vec<u64> = self.items.iter().filter(|(_, (_, v))| expired(v)).map(|(s, _)| *s).collect();
        for seq in old {
            self.remove(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::KeyedBuffer;

    #[test]
    fn bounded_oldest_first_and_claimable_by_key() {
        let mut b = KeyedBuffer::new(3);
        b.push("a", 1);
        b.push("b", 2);
        b.push("a", 3);
        b.push("c", 4); // evicts ("a", 1)
        assert_eq!(b.len(), 3);
        assert_eq!(b.get(&"a").into_iter().map(|(_, v)| *v).collect::<Vec<_>>(), [3]);
        assert_eq!(b.take_all(&"a"), [3]);
        assert!(b.get(&"a").is_empty());
        b.expire(|v| *v < 4);
        assert_eq!(b.len(), 1);
        assert_eq!(b.take_all(&"c"), [4]);
    }
}
