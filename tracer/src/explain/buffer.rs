//! A bounded buffer of items waiting to be claimed by key, oldest evicted first.
//!
//! Socket-less evidence (resets, drops, ICMP errors) often arrives before the attempt it
//! explains is known; it waits here, findable by its key, until claimed, expired or evicted.

use std::collections::VecDeque;
use std::hash::Hash;
use super::Map;

#[derive(Debug)]
pub struct KeyedBuffer<K, V> {
    /// Arrival number (seq) -> item. A hash map, not a tree: in a flood the buffer empties
    /// and fills again for every attempt, and a tree frees and allocates its node each time.
    items: Map<u64, (K, V)>,
    /// Seqs in arrival order, for evicting the oldest. Seqs of items already gone stay until
    /// they reach the front or outnumber the items (then they are swept).
    order: VecDeque<u64>,
    index: Map<K, Vec<u64>>,
    next_seq: u64,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> KeyedBuffer<K, V> {
    pub fn new(capacity: usize) -> Self {
        KeyedBuffer {
            items: Map::default(),
            order: VecDeque::new(),
            index: Map::default(),
            next_seq: 0,
            capacity: capacity.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Adds an item; the oldest one goes when full.
    pub fn push(&mut self, key: K, value: V) {
        if self.items.len() >= self.capacity {
            while let Some(seq) = self.order.pop_front() {
                if self.remove(seq).is_some() {
                    break;
                }
            }
        }
        if self.order.len() > 2 * self.items.len() + 16 {
            let items = &self.items;
            self.order.retain(|seq| items.contains_key(seq));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.index.entry(key.clone()).or_default().push(seq);
        self.items.insert(seq, (key, value));
        self.order.push_back(seq);
    }

    /// Items under `key`, oldest first, with their handle for `remove`.
    pub fn get<'a>(&'a self, key: &K) -> impl DoubleEndedIterator<Item = (u64, &'a V)> + 'a {
        let seqs = self.index.get(key).map(Vec::as_slice).unwrap_or_default();
        seqs.iter().filter_map(|s| self.items.get(s).map(|(_, v)| (*s, v)))
    }

    /// Removes every item under `key` and returns them, oldest first. They are unreachable by
    /// `key` at once and leave the buffer as the iterator reaches them: run it to its end.
    pub fn take_all(&mut self, key: &K) -> impl Iterator<Item = V> + '_ {
        let seqs = self.index.remove(key).unwrap_or_default();
        seqs.into_iter().filter_map(|s| self.items.remove(&s).map(|(_, v)| v))
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
        assert_eq!(b.take_all(&"a").collect::<Vec<_>>(), [3]);
        assert!(b.get(&"a").next().is_none());
        b.expire(|v| *v < 4);
        assert_eq!(b.len(), 1);
        assert_eq!(b.take_all(&"c").collect::<Vec<_>>(), [4]);
    }
}
