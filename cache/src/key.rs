//! Where the cache key is made.
//!
//! A node result may stand in for running the node again exactly when its [`CacheKey`] is equal. The key is
//! a plain struct so that `flowrun explain -vv` can print it, and [`CacheKey::hash`] turns it into the
//! 32-byte [`Key`] that the [`Store`](crate::Store) is indexed by.
//!
//! What goes in (and nothing else):
//! 1. the node's function (its registered path) and its *code version*, a hash of the function's own tokens
//!    made at compile time by `#[node]`, plus any explicit `#[node(version = N)]` bump;
//! 2. the name of the output type, so a changed signature never decodes an old value;
//! 3. one identity per parameter, in the function's parameter order: for a literal parameter or a config
//!    value the hash of its encoded value, for a file or directory the hash of its *content*, for an
//!    upstream node the identity of that node's result (the hash of its encoded value when it was cached,
//!    which gives early cut-off: an upstream node that re-ran but produced the same bytes does not make its
//!    consumers run), and for a fan-out item the hash of the item.
//!
//! The node's *name* is deliberately not part of the key: two instances that run the same code on the same
//! inputs share one result.

use serde::Serialize;

/// A 32-byte blake3 digest: a cache key, a content hash or a value identity.
pub type Hash = blake3::Hash;

/// The 32-byte digest of a [`CacheKey`]; the index of the result store.
pub type Key = blake3::Hash;

/// Bumped when the layout of the key or the encoding of stored values changes; old entries then miss.
///
/// Format 2 (this one) hashes the function, code version and output type into a *code digest* once per
/// function, and makes a node's key with blake3's keyed mode, the code digest being the key: a node with
/// one parameter is then a single blake3 block instead of three (format 1 hashed the three strings into
/// every key).
pub const KEY_FORMAT: u32 = 2;

/// Everything that decides whether a stored node result may be reused.
///
/// ```
/// use flowrun_cache::{CacheKey, KeyInput, InputSource};
/// let key = CacheKey {
///     function: "my_nodes::double",
///     code_version: "3f2a",
///     output_type: "i64",
///     inputs: &[KeyInput { param: "x", source: InputSource::Literal, identity: blake3::hash(b"21") }],
/// };
/// let again = key.clone();
/// assert_eq!(key.hash(), again.hash());
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct CacheKey<'a> {
    /// Registered path of the node function, for example `flowrun_nodes::generic::add`.
    pub function: &'a str,
    /// Hash of the function's tokens (and its `version = N` bump), made by `#[node]` at compile time.
    pub code_version: &'a str,
    /// `std::any::type_name` of the output.
    pub output_type: &'a str,
    /// One identity per parameter, in parameter order.
    pub inputs: &'a [KeyInput<'a>],
}

/// One parameter's contribution to a [`CacheKey`].
#[derive(Debug, Clone, Serialize)]
pub struct KeyInput<'a> {
    /// The function's parameter name.
    pub param: &'a str,
    /// Where the value came from; part of the key so that rebinding a parameter is visible in `explain`.
    pub source: InputSource<'a>,
    /// Identity of the value (see the module documentation).
    #[serde(serialize_with = "crate::key::hex")]
    pub identity: Hash,
}

/// Where a parameter's value came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum InputSource<'a> {
    /// The result of another node.
    Node(&'a str),
    /// The current item of a fan-out node.
    Item(&'a str),
    /// All items' results of a node inside a fan-out, gathered by a collect node.
    Collect(&'a str),
    /// A `[config]` value.
    Config(&'a str),
    /// An external `[inputs]` value.
    Input(&'a str),
    /// A literal from the node's `params` in the flow file.
    Literal,
}

impl InputSource<'_> {
    fn tag(&self) -> (u8, &str) {
        match self {
            InputSource::Node(n) => (1, n),
            InputSource::Item(n) => (2, n),
            InputSource::Collect(n) => (3, n),
            InputSource::Config(n) => (4, n),
            InputSource::Input(n) => (5, n),
            InputSource::Literal => (6, ""),
        }
    }
}

impl CacheKey<'_> {
    /// The digest the store is indexed by: blake3, keyed with the [code digest](CacheKey::code_digest),
    /// over a length-prefixed encoding of the parameters, so no two different keys can encode to the same
    /// bytes.
    pub fn hash(&self) -> Key {
        self.hash_with_code(&Self::code_digest(self.function, self.code_version, self.output_type))
    }

    /// The digest of a node's code: its function, code version and output type. It is the same for every
    /// node that runs this function, so a scheduler makes it once per function and passes it to
    /// [`CacheKey::hash_with_code`].
    pub fn code_digest(function: &str, code_version: &str, output_type: &str) -> Hash {
        let mut h = blake3::Hasher::new();
        for s in [function, code_version, output_type] {
            put_str(&mut h, s);
        }
        h.finalize()
    }

    /// [`CacheKey::hash`] with the code digest already made (`code` must be
    /// [`CacheKey::code_digest`] of this key's function, code version and output type).
    ///
    /// ```
    /// use flowrun_cache::{CacheKey, KeyInput, InputSource};
    /// let key = CacheKey { function: "f", code_version: "1", output_type: "i64", inputs: &[] };
    /// let code = CacheKey::code_digest("f", "1", "i64");
    /// assert_eq!(key.hash_with_code(&code), key.hash());
    /// ```
    pub fn hash_with_code(&self, code: &Hash) -> Key {
        debug_assert_eq!(*code, Self::code_digest(self.function, self.code_version, self.output_type));
        let mut h = blake3::Hasher::new_keyed(code.as_bytes());
        h.update(&KEY_FORMAT.to_le_bytes());
        h.update(&(self.inputs.len() as u32).to_le_bytes());
        for input in self.inputs {
            put_str(&mut h, input.param);
            let (tag, name) = input.source.tag();
            h.update(&[tag]);
            put_str(&mut h, name);
            h.update(input.identity.as_bytes());
        }
        h.finalize()
    }
}

/// A length-prefixed string (u32, little endian), so no two different keys encode to the same bytes.
fn put_str(h: &mut blake3::Hasher, s: &str) {
    h.update(&(s.len() as u32).to_le_bytes());
    h.update(s.as_bytes());
}

/// Serializes a [`Hash`] as lowercase hex (serde helper).
pub fn hex<S: serde::Serializer>(hash: &Hash, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(hash.to_hex().as_str())
}

/// Serializes an optional [`Hash`] as lowercase hex (serde helper).
pub fn hex_opt<S: serde::Serializer>(hash: &Option<Hash>, s: S) -> Result<S::Ok, S::Error> {
    match hash {
        Some(h) => hex(h, s),
        None => s.serialize_none(),
    }
}

/// A [`CacheKey`] read back from its JSON form (as `explain` stores the last key of every node).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct StoredKey {
    /// See [`CacheKey::function`].
    pub function: String,
    /// See [`CacheKey::code_version`].
    pub code_version: String,
    /// See [`CacheKey::output_type`].
    pub output_type: String,
    /// See [`CacheKey::inputs`].
    pub inputs: Vec<StoredInput>,
}

/// A [`KeyInput`] read back.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct StoredInput {
    /// Parameter name.
    pub param: String,
    /// Where the value came from.
    pub source: StoredSource,
    /// Identity (hex).
    pub identity: String,
}

/// An [`InputSource`] read back.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct StoredSource {
    /// `node`, `item`, `collect`, `config`, `input` or `literal`.
    pub kind: String,
    /// The node, config key or input name.
    #[serde(default)]
    pub name: Option<String>,
}

/// One difference between the last key of a node and its key now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// Another function, another code version or another output type.
    Code,
    /// The value of parameter `param` changed; `source` says where it comes from now.
    Input {
        /// The parameter.
        param: String,
        /// Its source now: `node`, `item`, `collect`, `config`, `input` or `literal`.
        kind: String,
        /// The node, config key or input name.
        name: Option<String>,
    },
}

impl StoredKey {
    /// Parses the JSON of a [`CacheKey`].
    pub fn parse(json: &str) -> Option<StoredKey> {
        serde_json::from_str(json).ok()
    }

    /// What differs between this (earlier) key and `now`.
    pub fn diff(&self, now: &CacheKey<'_>) -> Vec<KeyChange> {
        let mut out = Vec::new();
        if self.function != now.function || self.code_version != now.code_version || self.output_type != now.output_type
        {
            out.push(KeyChange::Code);
        }
        for input in now.inputs {
            let (kind, name) = match input.source {
                InputSource::Node(n) => ("node", Some(n)),
                InputSource::Item(n) => ("item", Some(n)),
                InputSource::Collect(n) => ("collect", Some(n)),
                InputSource::Config(n) => ("config", Some(n)),
                InputSource::Input(n) => ("input", Some(n)),
                InputSource::Literal => ("literal", None),
            };
            let same = self.inputs.iter().any(|old| {
                old.param == input.param
                    && old.source.kind == kind
                    && old.source.name.as_deref() == name
                    && old.identity == input.identity.to_hex().as_str()
            });
            if !same {
                out.push(KeyChange::Input {
                    param: input.param.to_string(),
                    kind: kind.to_string(),
                    name: name.map(str::to_string),
                });
            }
        }
        if out.is_empty() && self.inputs.len() != now.inputs.len() {
            out.push(KeyChange::Code);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key<'a>(inputs: &'a [KeyInput<'a>]) -> CacheKey<'a> {
        CacheKey { function: "f", code_version: "v1", output_type: "i64", inputs }
    }

    #[test]
    fn every_field_changes_the_hash() {
        let x = KeyInput { param: "x", source: InputSource::Node("a"), identity: blake3::hash(b"1") };
        let inputs = [x.clone()];
        let base = key(&inputs);
        let h = base.hash();
        let mut k = base.clone();
        k.code_version = "v2";
        assert_ne!(k.hash(), h);
        let mut k = base.clone();
        k.function = "g";
        assert_ne!(k.hash(), h);
        let mut k = base.clone();
        k.output_type = "u64";
        assert_ne!(k.hash(), h);
        let changed = [
            KeyInput { identity: blake3::hash(b"2"), ..x.clone() },
            KeyInput { source: InputSource::Node("b"), ..x.clone() },
            KeyInput { param: "y", ..x.clone() },
        ];
        for input in &changed {
            assert_ne!(key(std::slice::from_ref(input)).hash(), h, "{input:?}");
        }
    }

    #[test]
    fn digest_is_stable() {
        // The encoding of KEY_FORMAT 2 fed to blake3 field by field: caches written by an earlier build of
        // this format must keep hitting, so the layout may only change together with KEY_FORMAT.
        let inputs = [KeyInput { param: "x", source: InputSource::Config("n"), identity: blake3::hash(b"1") }];
        let k = key(&inputs);
        let mut code = blake3::Hasher::new();
        for s in [k.function, k.code_version, k.output_type] {
            code.update(&(s.len() as u32).to_le_bytes()).update(s.as_bytes());
        }
        let mut h = blake3::Hasher::new_keyed(code.finalize().as_bytes());
        h.update(&2u32.to_le_bytes());
        h.update(&1u32.to_le_bytes());
        h.update(&1u32.to_le_bytes()).update(b"x").update(&[4]).update(&1u32.to_le_bytes()).update(b"n");
        h.update(blake3::hash(b"1").as_bytes());
        assert_eq!(k.hash(), h.finalize());
        // a key too long for the stack buffer takes the same path through the heap
        let long = "p".repeat(600);
        let inputs = [KeyInput { param: &long, source: InputSource::Literal, identity: blake3::hash(b"1") }];
        let k = key(&inputs);
        let mut h = blake3::Hasher::new_keyed(code.finalize().as_bytes());
        h.update(&2u32.to_le_bytes()).update(&1u32.to_le_bytes());
        h.update(&600u32.to_le_bytes()).update(long.as_bytes()).update(&[6]).update(&0u32.to_le_bytes());
        h.update(blake3::hash(b"1").as_bytes());
        assert_eq!(k.hash(), h.finalize());
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        let a = CacheKey { function: "ab", code_version: "c", output_type: "t", inputs: &[] };
        let b = CacheKey { function: "a", code_version: "bc", output_type: "t", inputs: &[] };
        assert_ne!(a.hash(), b.hash());
    }

    #[test]
    fn diff_names_what_changed() {
        let mut inputs = [
            KeyInput { param: "x", source: InputSource::Config("n"), identity: blake3::hash(b"1") },
            KeyInput { param: "y", source: InputSource::Node("a"), identity: blake3::hash(b"2") },
        ];
        let old = key(&inputs);
        let stored = StoredKey::parse(&serde_json::to_string(&old).unwrap()).unwrap();
        assert!(stored.diff(&old).is_empty());
        inputs[1].identity = blake3::hash(b"3");
        let mut now = key(&inputs);
        assert_eq!(
            stored.diff(&now),
            [KeyChange::Input { param: "y".into(), kind: "node".into(), name: Some("a".into()) }]
        );
        now.code_version = "v2";
        assert_eq!(stored.diff(&now)[0], KeyChange::Code);
    }

    #[test]
    fn key_serializes_for_verbose_output() {
        let inputs = [KeyInput { param: "x", source: InputSource::Config("n"), identity: blake3::hash(b"1") }];
        let k = key(&inputs);
        let json = serde_json::to_string(&k).unwrap();
        assert!(json.contains(r#""source":{"kind":"config","name":"n"}"#), "{json}");
        assert!(json.contains(&blake3::hash(b"1").to_hex().to_string()));
    }
}
