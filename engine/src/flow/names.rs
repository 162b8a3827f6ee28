//! [`NameIndex`]: node name -> node id, for a flow that may have 100,000 nodes.

use std::hash::BuildHasher;

use super::NodeId;

/// Node name -> id: a hash table of ids (4 bytes a slot) whose names live in a list kept beside it (the
/// flow's nodes, or the builder's declarations), so the table holds no key of its own.
///
/// Building a flow probes it once per declaration and once per edge. A map with `Arc<str>` keys took
/// 24 bytes a slot, 3.3 MB for 100,000 nodes, and each probe read a slot and a key from memory outside
/// the caches; this table is a fifth of that, and a key is read from the list only when the hash's tag
/// matches (BENCHMARKS.md).
///
/// ```
/// use flowrun_engine::flow::NameIndex;
/// let names = ["a", "b"];
/// let mut index = NameIndex::with_capacity(2);
/// for (id, name) in names.iter().enumerate() {
///     assert_eq!(index.insert(name, id, |i| names[i]), Ok(()));
/// }
/// assert_eq!(index.insert("a", 5, |i| names[i]), Err(0)); // taken by node 0
/// assert_eq!(index.get("b", |i| names[i]), Some(1));
/// assert_eq!(index.get("c", |i| names[i]), None);
/// ```
#[derive(Clone, Default)]
pub struct NameIndex {
    table: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
}

impl NameIndex {
    /// An empty index with room for `n` names.
    pub fn with_capacity(n: usize) -> Self {
        NameIndex { table: hashbrown::HashTable::with_capacity(n), hasher: Default::default() }
    }

    /// Number of names.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The id of `name`; `name_of(id)` is the name of each id in the index.
    pub fn get<'n>(&self, name: &str, name_of: impl Fn(NodeId) -> &'n str) -> Option<NodeId> {
        let hash = self.hasher.hash_one(name);
        self.table.find(hash, |&id| name_of(id as NodeId) == name).map(|&id| id as NodeId)
    }

    /// Adds `name` as `id`, or gives the id that already has it.
    ///
    /// # Panics
    /// When `id` does not fit in 32 bits (four billion nodes).
    pub fn insert<'n>(&mut self, name: &str, id: NodeId, name_of: impl Fn(NodeId) -> &'n str) -> Result<(), NodeId> {
        let hash = self.hasher.hash_one(name);
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |&other| name_of(other as NodeId) == name,
            |&other| hasher.hash_one(name_of(other as NodeId)),
        ) {
            hashbrown::hash_table::Entry::Occupied(first) => Err(*first.get() as NodeId),
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(u32::try_from(id).expect("fewer than 2^32 nodes"));
                Ok(())
            }
        }
    }
}
