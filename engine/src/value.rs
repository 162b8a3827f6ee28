//! Values that flow between nodes: the [`Value`] contract and its implementations for std types.
//!
//! Every parameter and output type of a node implements [`Value`]. The trait says how a value is
//! 1. encoded for the cache and decoded back ([`Value::encode`], [`Value::decode`]: required; a large
//!    value can also stream its encoding, [`Value::encode_to`], and keep the bytes it is decoded from,
//!    [`Value::decode_owned`], as [`Table`](crate::Table) does);
//! 2. written in a flow file, for `params`, `[config]` and `[inputs]` ([`Value::from_toml`]: optional);
//! 3. counted ([`Value::rows`], shown in run records), labelled as a fan-out item ([`Value::label`]),
//!    defaulted when nothing binds the parameter ([`Value::default_value`], `Option<T>` is `None`), and
//!    identified ([`Value::identity`]: files are identified by their content, not their path).
//!
//! Implemented here for `bool`, the integer and float types, `String`, `PathBuf`, `Vec<T>`, `Option<T>`,
//! `BTreeMap<String, T>`, `()`, `serde_json::Value`, [`FilePath`], [`DirPath`], [`Parallel<T>`] and
//! [`Table`](crate::Table). For your own types, derive it (serde does the encoding):
//!
//! ```
//! use flowrun_engine::Value;
//! #[derive(Clone, serde::Serialize, serde::Deserialize, Value)]
//! #[value(label = "key")] // fan-out items of this type are shown as `node[<key>]`
//! struct Dataset { key: String, url: String }
//! ```

use std::any::{Any, TypeId};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A value shared between nodes.
pub type AnyValue = Arc<dyn DynValue>;

/// Error of encoding or decoding a cached value.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

impl CodecError {
    /// Wraps any error.
    pub fn new(e: impl fmt::Display) -> Self {
        CodecError(e.to_string())
    }
}

/// What a literal in a flow file is interpreted against.
#[derive(Debug, Clone, Default)]
pub struct LiteralCx {
    /// Directory of the flow file: relative paths in a flow are relative to it.
    pub base_dir: PathBuf,
}

impl LiteralCx {
    /// Resolves `path` against the flow file's directory (absolute paths are kept).
    pub fn resolve(&self, path: &str) -> PathBuf {
        // an absolute path replaces the base
        self.base_dir.join(path)
    }
}

/// The contract of a node value. See the [module documentation](self).
pub trait Value: Send + Sync + Sized + 'static {
    /// Appends the cache encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError>;
    /// Decodes what [`Value::encode`] wrote.
    fn decode(bytes: &[u8]) -> Result<Self, CodecError>;
    /// [`Value::decode`] of bytes the value may keep (the cache maps a blob file and gives the mapping
    /// away): a table's columns then point into it instead of being copied out of it.
    fn decode_owned(bytes: bytes::Bytes) -> Result<Self, CodecError> {
        Self::decode(&bytes)
    }
    /// Writes the same bytes as [`Value::encode`] to `out`, as they are made: the cache streams a large
    /// value (a table) into its file this way instead of holding a copy in memory. The default encodes into
    /// a buffer and writes that.
    fn encode_to(&self, out: &mut dyn std::io::Write) -> Result<(), CodecError> {
        let mut bytes = Vec::new();
        self.encode(&mut bytes)?;
        out.write_all(&bytes).map_err(CodecError::new)
    }
    /// Builds the value from a flow-file literal. The default refuses.
    fn from_toml(value: &toml::Value, cx: &LiteralCx) -> Result<Self, String> {
        let _ = (value, cx);
        Err(format!("a {} cannot be written in a flow file", short_type_name(std::any::type_name::<Self>())))
    }
    /// Row count, for tables.
    fn rows(&self) -> Option<u64> {
        None
    }
    /// A short name for a fan-out item (shown as `node[label]`); `None` shows the item's index.
    fn label(&self) -> Option<String> {
        None
    }
    /// The value a parameter gets when nothing in the flow binds it; `None` makes it required.
    fn default_value() -> Option<Self> {
        None
    }
    /// The identity used in cache keys, when it is not the hash of the encoding (files: their content).
    fn identity(&self) -> Option<Result<blake3::Hash, String>> {
        None
    }
    #[doc(hidden)]
    fn fanout_items(&self) -> Option<Vec<AnyValue>> {
        None
    }
}

/// The object-safe face of [`Value`], implemented for every `T: Value`.
pub trait DynValue: Send + Sync + 'static {
    /// As `Any`, for downcasting.
    fn as_any(&self) -> &dyn Any;
    /// As an `Arc<dyn Any>`, for downcasting without a copy.
    fn into_any_arc(self: Arc<Self>) -> Arc<dyn Any + Send + Sync>;
    /// See [`Value::encode_to`].
    fn dyn_encode_to(&self, out: &mut dyn std::io::Write) -> Result<(), CodecError>;
    /// See [`Value::rows`].
    fn dyn_rows(&self) -> Option<u64>;
    /// See [`Value::label`].
    fn dyn_label(&self) -> Option<String>;
    /// See [`Value::identity`].
    fn dyn_identity(&self) -> Option<Result<blake3::Hash, String>>;
    /// The items of a [`Parallel`] value.
    fn dyn_items(&self) -> Option<Vec<AnyValue>>;
    /// `std::any::type_name` of the value.
    fn dyn_type_name(&self) -> &'static str;
}

impl<T: Value> DynValue for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any_arc(self: Arc<Self>) -> Arc<dyn Any + Send + Sync> {
        self
    }
    fn dyn_encode_to(&self, out: &mut dyn std::io::Write) -> Result<(), CodecError> {
        self.encode_to(out)
    }
    fn dyn_rows(&self) -> Option<u64> {
        self.rows()
    }
    fn dyn_label(&self) -> Option<String> {
        self.label()
    }
    fn dyn_identity(&self) -> Option<Result<blake3::Hash, String>> {
        self.identity()
    }
    fn dyn_items(&self) -> Option<Vec<AnyValue>> {
        self.fanout_items()
    }
    fn dyn_type_name(&self) -> &'static str {
        std::any::type_name::<T>()
    }
}

impl dyn DynValue {
    /// Borrows the value as a `T`.
    pub fn downcast_ref<T: Value>(&self) -> Option<&T> {
        self.as_any().downcast_ref()
    }
}

/// Encodes a value into a fresh buffer.
pub fn encode_value(value: &dyn DynValue) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    value.dyn_encode_to(&mut out)?;
    Ok(out)
}

/// Describes a value type at run time: its name and how to decode it, build it from TOML, default it.
/// Made by `#[node]` for every parameter and output; compared by [`TypeId`] when the flow is validated.
#[derive(Clone, Copy)]
pub struct TypeDesc {
    name: fn() -> &'static str,
    id: fn() -> TypeId,
    decode: fn(bytes::Bytes) -> Result<AnyValue, CodecError>,
    from_toml: fn(&toml::Value, &LiteralCx) -> Result<AnyValue, String>,
    default: fn() -> Option<AnyValue>,
}

impl TypeDesc {
    /// The descriptor of `T`.
    pub const fn of<T: Value>() -> TypeDesc {
        TypeDesc {
            name: std::any::type_name::<T>,
            id: TypeId::of::<T>,
            decode: |bytes| Ok(Arc::new(T::decode_owned(bytes)?)),
            from_toml: |v, cx| Ok(Arc::new(T::from_toml(v, cx)?)),
            default: || T::default_value().map(|v| Arc::new(v) as AnyValue),
        }
    }
    /// Full type name.
    pub fn name(&self) -> &'static str {
        (self.name)()
    }
    /// Type name without module paths (`Vec<Table>` rather than `alloc::vec::Vec<flowrun_engine::table::Table>`).
    pub fn short_name(&self) -> String {
        short_type_name(self.name())
    }
    /// The `TypeId`.
    pub fn id(&self) -> TypeId {
        (self.id)()
    }
    /// Decodes a cached value of this type (see [`Value::decode_owned`]).
    pub fn decode(&self, bytes: bytes::Bytes) -> Result<AnyValue, CodecError> {
        (self.decode)(bytes)
    }
    /// Builds a value of this type from a flow-file literal.
    pub fn from_toml(&self, v: &toml::Value, cx: &LiteralCx) -> Result<AnyValue, String> {
        (self.from_toml)(v, cx)
    }
    /// The value an unbound parameter of this type gets, if any.
    pub fn default_value(&self) -> Option<AnyValue> {
        (self.default)()
    }
}

impl fmt::Debug for TypeDesc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.short_name())
    }
}

impl PartialEq for TypeDesc {
    fn eq(&self, other: &Self) -> bool {
        self.id() == other.id()
    }
}

/// Strips module paths from a type name: `alloc::vec::Vec<alloc::string::String>` -> `Vec<String>`.
pub fn short_type_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for part in name.split("::") {
        // what came before this `::` back to the last non-identifier character is a module: drop it
        out.truncate(out.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |i| i + 1));
        out.push_str(part);
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// serde-encoded values

/// Encodes a serde value (CBOR: self-describing, exact floats). Used by `#[derive(Value)]`.
pub fn serde_encode<T: serde::Serialize>(value: &T, out: &mut Vec<u8>) -> Result<(), CodecError> {
    ciborium::into_writer(value, out).map_err(CodecError::new)
}

/// Decodes what [`serde_encode`] wrote.
pub fn serde_decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    ciborium::from_reader(bytes).map_err(CodecError::new)
}

/// Builds a serde value from a TOML literal.
pub fn serde_from_toml<T: serde::de::DeserializeOwned>(value: &toml::Value) -> Result<T, String> {
    T::deserialize(value.clone()).map_err(|e| e.message().to_string())
}

/// Serde-encoded values, built from a literal by `$from_toml(value, cx)`.
macro_rules! serde_values {
    ($($t:ty),* => $from_toml:expr) => {$(
        impl Value for $t {
            fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> { serde_encode(self, out) }
            fn decode(bytes: &[u8]) -> Result<Self, CodecError> { serde_decode(bytes) }
            fn from_toml(value: &toml::Value, cx: &LiteralCx) -> Result<Self, String> { ($from_toml)(value, cx) }
        }
    )*};
}
serde_values!(bool, i8, i16, i32, i64, u8, u16, u32, u64, usize, isize, f32, f64, () => |v, _| serde_from_toml(v));
serde_values!(PathBuf => |v, cx: &LiteralCx| serde_from_toml(v).map(|s: String| cx.resolve(&s)));

impl Value for String {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.extend_from_slice(self.as_bytes());
        Ok(())
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        String::from_utf8(bytes.to_vec()).map_err(CodecError::new)
    }
    fn from_toml(value: &toml::Value, _cx: &LiteralCx) -> Result<Self, String> {
        serde_from_toml(value)
    }
    fn label(&self) -> Option<String> {
        Some(self.clone())
    }
}

impl Value for serde_json::Value {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        serde_json::to_writer(out, self).map_err(CodecError::new)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        serde_json::from_slice(bytes).map_err(CodecError::new)
    }
    fn from_toml(value: &toml::Value, _cx: &LiteralCx) -> Result<Self, String> {
        serde_json::to_value(value).map_err(|e| e.to_string())
    }
}

// ---------------------------------------------------------------------------------------------------------
// containers: encoded item by item, so they hold any Value (tables too)

fn put_len(out: &mut Vec<u8>, n: usize) {
    out.extend_from_slice(&(n as u64).to_le_bytes());
}

fn take_len(bytes: &mut &[u8]) -> Result<usize, CodecError> {
    let (head, rest) = bytes.split_first_chunk::<8>().ok_or_else(|| CodecError("truncated container".into()))?;
    *bytes = rest;
    Ok(u64::from_le_bytes(*head) as usize)
}

fn take_bytes<'a>(bytes: &mut &'a [u8]) -> Result<&'a [u8], CodecError> {
    let n = take_len(bytes)?;
    let (item, rest) = bytes.split_at_checked(n).ok_or_else(|| CodecError("truncated container item".into()))?;
    *bytes = rest;
    Ok(item)
}

fn put_item<T: Value>(out: &mut Vec<u8>, item: &T) -> Result<(), CodecError> {
    let at = out.len();
    out.extend_from_slice(&[0; 8]);
    item.encode(out)?;
    let n = (out.len() - at - 8) as u64;
    out[at..at + 8].copy_from_slice(&n.to_le_bytes());
    Ok(())
}

impl<T: Value> Value for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        put_len(out, self.len());
        self.iter().try_for_each(|item| put_item(out, item))
    }
    fn decode(mut bytes: &[u8]) -> Result<Self, CodecError> {
        (0..take_len(&mut bytes)?).map(|_| T::decode(take_bytes(&mut bytes)?)).collect()
    }
    fn from_toml(value: &toml::Value, cx: &LiteralCx) -> Result<Self, String> {
        let items = value.as_array().ok_or_else(|| format!("expected an array, found {}", value.type_str()))?;
        items.iter().enumerate().map(|(i, v)| T::from_toml(v, cx).map_err(|e| format!("item {i}: {e}"))).collect()
    }
    fn rows(&self) -> Option<u64> {
        Some(self.len() as u64)
    }
}

impl<T: Value> Value for Option<T> {
    /// A 0 byte for `None`, else a 1 byte then the value.
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        out.push(self.is_some() as u8);
        self.as_ref().map_or(Ok(()), |v| v.encode(out))
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        match bytes.split_first() {
            Some((0, _)) => Ok(None),
            Some((1, rest)) => Ok(Some(T::decode(rest)?)),
            _ => Err(CodecError("bad Option encoding".into())),
        }
    }
    fn from_toml(value: &toml::Value, cx: &LiteralCx) -> Result<Self, String> {
        T::from_toml(value, cx).map(Some)
    }
    fn rows(&self) -> Option<u64> {
        self.as_ref().and_then(|v| v.rows())
    }
    fn default_value() -> Option<Self> {
        Some(None)
    }
    fn identity(&self) -> Option<Result<blake3::Hash, String>> {
        self.as_ref().and_then(|v| v.identity())
    }
}

impl<T: Value> Value for BTreeMap<String, T> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        put_len(out, self.len());
        self.iter().try_for_each(|(k, v)| put_item(out, k).and_then(|()| put_item(out, v)))
    }
    fn decode(mut bytes: &[u8]) -> Result<Self, CodecError> {
        (0..take_len(&mut bytes)?)
            .map(|_| Ok((String::decode(take_bytes(&mut bytes)?)?, T::decode(take_bytes(&mut bytes)?)?)))
            .collect()
    }
    fn from_toml(value: &toml::Value, cx: &LiteralCx) -> Result<Self, String> {
        let t = value.as_table().ok_or_else(|| format!("expected a table, found {}", value.type_str()))?;
        t.iter().map(|(k, v)| Ok((k.clone(), T::from_toml(v, cx).map_err(|e| format!("{k}: {e}"))?))).collect()
    }
}

// ---------------------------------------------------------------------------------------------------------
// fan-out and fan-in

/// The output of a fan-out node (Hamilton's `Parallelizable`): the nodes downstream of it that take a `T`
/// run once per item, until a node takes [`Collect<T>`] of them.
///
/// ```
/// use flowrun_engine::{node, Parallel, Collect};
/// #[node]
/// fn ints(n: i64) -> Parallel<i64> { (0..n).collect() }
/// #[node]
/// fn squared(ints: i64) -> i64 { ints * ints }                      // runs once per item
/// #[node]
/// fn sum_squares(squared: Collect<i64>) -> i64 { squared.iter().sum() } // gathers, in item order
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Parallel<T>(pub Vec<T>);

impl<T> FromIterator<T> for Parallel<T> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Parallel(iter.into_iter().collect())
    }
}

impl<T> From<Vec<T>> for Parallel<T> {
    fn from(v: Vec<T>) -> Self {
        Parallel(v)
    }
}

/// Encoded, written and counted as a `Vec<T>`.
impl<T: Value + Clone> Value for Parallel<T> {
    fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
        self.0.encode(out)
    }
    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        Vec::decode(bytes).map(Parallel)
    }
    fn from_toml(value: &toml::Value, cx: &LiteralCx) -> Result<Self, String> {
        Vec::from_toml(value, cx).map(Parallel)
    }
    fn rows(&self) -> Option<u64> {
        self.0.rows()
    }
    fn fanout_items(&self) -> Option<Vec<AnyValue>> {
        Some(self.0.iter().map(|item| Arc::new(item.clone()) as AnyValue).collect())
    }
}

/// The input of a fan-in node (Hamilton's `Collect`): the results of a node inside a fan-out, one per
/// item, in item order.
#[derive(Debug, Clone, PartialEq)]
pub struct Collect<T>(pub Vec<T>);

impl<T> std::ops::Deref for Collect<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        &self.0
    }
}

impl<T> IntoIterator for Collect<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<T> Collect<T> {
    /// The gathered results.
    pub fn into_inner(self) -> Vec<T> {
        self.0
    }
}

// ---------------------------------------------------------------------------------------------------------
// files

/// A path to a file whose **content** identifies it in cache keys: edit the file and every node reading it
/// runs again; touch it without changing it and nothing does. In a flow file it is a string, relative to
/// the flow file's directory.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilePath(pub PathBuf);

/// A directory whose content (every file below it, by relative path and content) identifies it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DirPath(pub PathBuf);

macro_rules! path_value {
    ($t:ident, $fingerprint:ident) => {
        impl std::ops::Deref for $t {
            type Target = Path;
            fn deref(&self) -> &Path {
                &self.0
            }
        }
        impl Value for $t {
            fn encode(&self, out: &mut Vec<u8>) -> Result<(), CodecError> {
                serde_encode(self, out)
            }
            fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
                serde_decode(bytes)
            }
            fn from_toml(value: &toml::Value, cx: &LiteralCx) -> Result<Self, String> {
                PathBuf::from_toml(value, cx).map($t)
            }
            fn identity(&self) -> Option<Result<blake3::Hash, String>> {
                Some(crate::ctx::$fingerprint(&self.0).map_err(|e| format!("{}: {e}", self.0.display())))
            }
            fn label(&self) -> Option<String> {
                self.0.file_name().map(|n| n.to_string_lossy().into_owned())
            }
        }
    };
}
path_value!(FilePath, fingerprint_file);
path_value!(DirPath, fingerprint_dir);

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Value + PartialEq + fmt::Debug>(v: T) {
        let mut buf = Vec::new();
        v.encode(&mut buf).unwrap();
        assert_eq!(T::decode(&buf).unwrap(), v);
    }

    #[test]
    fn std_values_round_trip() {
        round_trip(42i64);
        round_trip(f64::NAN.to_bits() as f64);
        round_trip(0.1f64);
        round_trip(String::from("héllo"));
        round_trip(vec![1u32, 2, 3]);
        round_trip(vec![vec![String::from("a")], vec![]]);
        round_trip(Some(3i64));
        round_trip(Option::<i64>::None);
        round_trip(BTreeMap::from([(String::from("a"), 1.5f64)]));
        round_trip(serde_json::json!({"a": [1, 2, null]}));
        round_trip(Parallel(vec![1i64, 2]));
    }

    #[test]
    fn literals_from_toml() {
        let cx = LiteralCx { base_dir: PathBuf::from("/flows") };
        let v: toml::Value = toml::Value::Integer(3);
        assert_eq!(i64::from_toml(&v, &cx).unwrap(), 3);
        assert!(String::from_toml(&v, &cx).is_err());
        let arr = toml::Value::Array(vec![toml::Value::Integer(1), toml::Value::String("x".into())]);
        let err = Vec::<i64>::from_toml(&arr, &cx).unwrap_err();
        assert!(err.starts_with("item 1:"), "{err}");
        let p = toml::Value::String("data/x.csv".into());
        assert_eq!(FilePath::from_toml(&p, &cx).unwrap().0, PathBuf::from("/flows/data/x.csv"));
    }

    #[test]
    fn short_names() {
        assert_eq!(short_type_name("alloc::vec::Vec<alloc::string::String>"), "Vec<String>");
        assert_eq!(short_type_name("core::option::Option<flowrun_engine::table::Table>"), "Option<Table>");
        assert_eq!(short_type_name("i64"), "i64");
        assert_eq!(short_type_name("(i64, a::B)"), "(i64, B)");
    }

    #[test]
    fn option_defaults_to_none() {
        let d = TypeDesc::of::<Option<i64>>().default_value().unwrap();
        assert_eq!(d.downcast_ref::<Option<i64>>(), Some(&None));
        assert!(TypeDesc::of::<i64>().default_value().is_none());
    }
}
