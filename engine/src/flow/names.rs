//! [`NameIndex`]: node name -> node id, for a flow that may have 100,000 nodes.

use std::hash::BuildHasher;

use super::NodeId;

/// Node name -> id: a hash table of ids whose names live in a list kept beside it (the flow's nodes, or
/// the builder's declarations), so the table holds no key of its own.
///
/// Building a flow probes it once per declaration and once per edge, at random places: at 100,000 nodes
/// the table is larger than what the caches keep of it, and a probe that waits for memory took a sixth of
/// a build. So the table is open-addressed (linear probing, at most 4/5 full) with one 8-byte slot per
/// entry, the id and 32 bits of the name's hash, which makes a slot's address a function of the hash
/// alone: [`NameIndex::prefetch`] asks the CPU for it a node ahead of the probe. A name is read from the
/// list only when the stored hash bits match (BENCHMARKS.md).
///
/// ```
/// use flowrun_engine::flow::NameIndex;
/// let names = ["a", "b"];
/// let mut index = NameIndex::with_capacity(2);
/// for (id, name) in names.iter().enumerate() {
///     assert_eq!(index.insert(name, id, |i| names[i]), Ok(()));
/// }
/// assert_eq!(index.insert("a", 5, |i| names[i]), Err(0)); // taken by node 0
/// index.prefetch("b"); // a hint only: it changes no result
/// assert_eq!(index.get("b", |i| names[i]), Some(1));
/// assert_eq!(index.get("c", |i| names[i]), None);
/// ```
#[derive(Clone, Default)]
pub struct NameIndex {
    /// `0`: empty; else the hash's high 32 bits, then the id + 1 in the low 32 bits. A power of two long
    /// (or empty).
    slots: Box<[u64]>,
    len: usize,
    hasher: foldhash::fast::RandomState,
}

impl NameIndex {
    /// An empty index with room for `n` names.
    pub fn with_capacity(n: usize) -> Self {
        NameIndex { slots: vec![0; slots_for(n)].into_boxed_slice(), len: 0, hasher: Default::default() }
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Asks the CPU to bring the slot where a probe for `name` starts into its cache, without waiting:
    /// a later [`get`](Self::get) or [`insert`](Self::insert) of `name` then finds it there.
    pub fn prefetch(&self, name: &str) {
        if let Some(slot) = self.slots.get(self.start(self.hasher.hash_one(name))) {
            prefetch(slot);
        }
    }

    /// The id of `name`; `name_of(id)` is the name of each id in the index.
    pub fn get<'n>(&self, name: &str, name_of: impl Fn(NodeId) -> &'n str) -> Option<NodeId> {
        if self.slots.is_empty() {
            return None;
        }
        let hash = self.hasher.hash_one(name);
        self.probe(hash, name, &name_of).ok()
    }

    /// Adds `name` as `id`, or gives the id that already has it.
    ///
    /// # Panics
    /// When `id` does not fit in 32 bits (four billion nodes).
    pub fn insert<'n>(&mut self, name: &str, id: NodeId, name_of: impl Fn(NodeId) -> &'n str) -> Result<(), NodeId> {
        if (self.len + 1) * 5 > self.slots.len() * 4 {
            self.grow(&name_of);
        }
        let hash = self.hasher.hash_one(name);
        let empty = match self.probe(hash, name, &name_of) {
            Ok(first) => return Err(first),
            Err(empty) => empty,
        };
        let id = u32::try_from(id + 1).expect("fewer than 2^32 nodes");
        self.slots[empty] = tag(hash) | u64::from(id);
        self.len += 1;
        Ok(())
    }

    /// Where the probe for `hash` starts.
    fn start(&self, hash: u64) -> usize {
        hash as usize & self.slots.len().wrapping_sub(1)
    }

    /// `Ok(id)` of `name`, or `Err(slot)`: the empty slot where it would go. The table is never full.
    fn probe<'n>(&self, hash: u64, name: &str, name_of: &impl Fn(NodeId) -> &'n str) -> Result<NodeId, usize> {
        let mask = self.slots.len() - 1;
        let mut at = self.start(hash);
        loop {
            let slot = self.slots[at];
            if slot == 0 {
                return Err(at);
            }
            let id = (slot as u32 - 1) as NodeId;
            if slot & !u64::from(u32::MAX) == tag(hash) && name_of(id) == name {
                return Ok(id);
            }
            at = (at + 1) & mask;
        }
    }

    /// Twice the slots, every entry moved by its name's hash.
    fn grow<'n>(&mut self, name_of: &impl Fn(NodeId) -> &'n str) {
        let old = std::mem::replace(&mut self.slots, vec![0; slots_for(self.len + 1).max(8)].into_boxed_slice());
        let mask = self.slots.len() - 1;
        for slot in old.iter().copied().filter(|&s| s != 0) {
            let hash = self.hasher.hash_one(name_of((slot as u32 - 1) as NodeId));
            let mut at = self.start(hash);
            while self.slots[at] != 0 {
                at = (at + 1) & mask;
            }
            self.slots[at] = slot;
        }
    }
}

/// Slots for `n` names: a power of two, at most 4/5 full (none for none).
fn slots_for(n: usize) -> usize {
    if n == 0 { 0 } else { (n * 5 / 4 + 1).next_power_of_two() }
}

/// A hash's high 32 bits, where a slot keeps them.
fn tag(hash: u64) -> u64 {
    hash & !u64::from(u32::MAX)
}

/// A prefetch hint for `value`'s cache line (nothing on targets without one).
fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it reads nothing the program sees and cannot fault.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use super::NameIndex;

    #[test]
    fn finds_every_name_through_growth_and_refuses_duplicates() {
        let names: Vec<String> = (0..5000).map(|i| format!("n{i}")).collect();
        let name_of = |i: usize| names[i].as_str();
        for start in [0, 1, 5000] {
            let mut index = NameIndex::with_capacity(start);
            for (id, name) in names.iter().enumerate() {
                assert_eq!(index.get(name, name_of), None);
                assert_eq!(index.insert(name, id, name_of), Ok(()));
                assert_eq!(index.insert(name, id + 1, name_of), Err(id));
            }
            assert_eq!(index.len(), names.len());
            for (id, name) in names.iter().enumerate() {
                index.prefetch(name);
                assert_eq!(index.get(name, name_of), Some(id));
            }
            assert_eq!(index.get("n5000", name_of), None);
            assert_eq!(index.get("", name_of), None);
        }
    }

    #[test]
    fn an_empty_index_finds_nothing() {
        let index = NameIndex::default();
        index.prefetch("a");
        assert!(index.is_empty());
        assert_eq!(index.get("a", |_| unreachable!()), None);
    }
}
