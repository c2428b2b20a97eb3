//! A bounded buffer of items waiting to be claimed by key, oldest evicted first.
//!
//! Socket-less evidence (resets, drops, ICMP errors) often arrives before the attempt it
//! explains is known; it waits here, findable by its key, until claimed, expired or evicted.

use std::collections::VecDeque;
use std::hash::Hash;
use super::Map;

#[derive(Debug)]
pub struct KeyedBuffer<K, V> {
    /// Items by key, oldest first, each with its arrival number (seq): claiming a key's items
    /// is one lookup, whatever their number.
    by_key: Map<K, Vec<(u64, V)>>,
    /// (seq, key) in arrival order, for evicting the oldest. Entries of items already gone
    /// stay until they reach the front or outnumber the items (then they are swept).
    order: VecDeque<(u64, K)>,
    len: usize,
    next_seq: u64,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> KeyedBuffer<K, V> {
    pub fn new(capacity: usize) -> Self {
        KeyedBuffer { by_key: Map::default(), order: VecDeque::new(), len: 0, next_seq: 0, capacity: capacity.max(1) }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Adds an item; the oldest one goes when full.
    pub fn push(&mut self, key: K, value: V) {
        if self.len >= self.capacity {
            while let Some((seq, key)) = self.order.pop_front() {
                if self.remove(&key, seq).is_some() {
                    break;
                }
            }
        }
        if self.order.len() > 2 * self.len + 16 {
            let by_key = &self.by_key;
            self.order.retain(|(seq, key)| by_key.get(key).is_some_and(|items| items.iter().any(|(s, _)| s == seq)));
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.by_key.entry(key.clone()).or_default().push((seq, value));
        self.order.push_back((seq, key));
        self.len += 1;
    }

    /// Items under `key`, oldest first, with their handle for `remove`.
    pub fn get<'a>(&'a self, key: &K) -> impl DoubleEndedIterator<Item = (u64, &'a V)> + 'a {
        let items = self.by_key.get(key).map(Vec::as_slice).unwrap_or_default();
        items.iter().map(|(seq, v)| (*seq, v))
    }

    /// Removes and returns every item under `key`, oldest first.
    pub fn take_all(&mut self, key: &K) -> impl Iterator<Item = V> {
        let items = self.by_key.remove(key).unwrap_or_default();
        self.len -= items.len();
        items.into_iter().map(|(_, v)| v)
    }

    /// Removes the item `seq` of `key` (a handle from `get`).
    pub fn remove(&mut self, key: &K, seq: u64) -> Option<V> {
        let items = self.by_key.get_mut(key)?;
        let i = items.iter().position(|(s, _)| *s == seq)?;
        let (_, value) = items.remove(i);
        if items.is_empty() {
            self.by_key.remove(key);
        }
        self.len -= 1;
        Some(value)
    }

    /// Drops every item for which `expired` holds.
    pub fn expire(&mut self, expired: impl Fn(&V) -> bool) {
        let mut gone = 0;
        self.by_key.retain(|_, items| {
            let before = items.len();
            items.retain(|(_, v)| !expired(v));
            gone += before - items.len();
            !items.is_empty()
        });
        self.len -= gone;
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
