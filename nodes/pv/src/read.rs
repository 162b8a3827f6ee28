//! Readers: GeoJSON (decoded feature by feature; files over 256 MB streamed), ESRI Shapefile (`.prj` CRS,
//! `.cpg` encoding), GeoPackage (a named layer or all), CSV points (any encoding, title lines, thousands
//! separators, projected x/y or lat/lon).
//!
//! Each reader returns every row of the file, in file order: its attributes as typed columns plus its
//! geometry as WKB in the file's own CRS (`None` where a row has none, e.g. a CSV row with empty
//! coordinates: `standardized` drops such rows and counts them, so `raw` is the file as published).
//! A dataset's files are concatenated by column name into its `raw` table, with `source_file` and
//! `source_row` (the row's 0-based position in its file). The CRS each file's coordinates are in, and where
//! that was learned, are recorded in the schema metadata ([`SOURCE_CRS`]: a JSON object, file -> [CRS,
//! origin]; the files of one dataset may differ), in this order of precedence: the manifest's `crs`, what the
//! file declares (GeoJSON `crs` member, `.prj`, GeoPackage SRS), the format's default (GeoJSON and CSV: WGS84
//! lon/lat). Every error names the dataset and the file.
//!
//! Typing: a column whose values are all integers becomes Int64 (unless one has a leading zero: `00123`
//! stays text), all numbers Float64, all booleans Boolean, anything else text. The manifest's `id` column
//! is always text, as written.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use arrow_array::builder::{ArrayBuilder, BinaryBuilder, StringBuilder};
use arrow_array::{Array, ArrayRef, BinaryArray, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use flowrun_engine::{Table, ctx, node};
use geo::{Contains, Coord, Geometry, LineString, MultiLineString, MultiPoint, MultiPolygon, Point, Polygon};
use indexmap::IndexMap;
use serde_json::Value as J;

use super::crs::Crs;
use super::fetch::DatasetFiles;
use super::geom::{to_wkb, wkb_field};
use super::manifest::{Dataset, Format};

/// Schema metadata key holding each file's CRS, as the manifest or the file wrote it, and where that comes
/// from: a JSON object `{"<source_file>": ["<CRS>", "<origin>"]}`.
pub const SOURCE_CRS: &str = "flowrun.source_crs";

/// A typed attribute column being built.
#[derive(Debug, Clone)]
pub enum Column {
    /// Integers.
    Int(Vec<Option<i64>>),
    /// Floats.
    Float(Vec<Option<f64>>),
    /// Booleans.
    Bool(Vec<Option<bool>>),
    /// Text.
    Text(Vec<Option<String>>),
}

impl Column {
    fn len(&self) -> usize {
        match self {
            Column::Int(v) => v.len(),
            Column::Float(v) => v.len(),
            Column::Bool(v) => v.len(),
            Column::Text(v) => v.len(),
        }
    }

    fn push_nulls(&mut self, n: usize) {
        match self {
            Column::Int(v) => v.extend(std::iter::repeat_n(None, n)),
            Column::Float(v) => v.extend(std::iter::repeat_n(None, n)),
            Column::Bool(v) => v.extend(std::iter::repeat_n(None, n)),
            Column::Text(v) => v.extend(std::iter::repeat_n(None, n)),
        }
    }

    fn into_text(self) -> Vec<Option<String>> {
        match self {
            Column::Int(v) => v.into_iter().map(|x| x.map(|x| x.to_string())).collect(),
            Column::Float(v) => v.into_iter().map(|x| x.map(|x| x.to_string())).collect(),
            Column::Bool(v) => v.into_iter().map(|x| x.map(|x| x.to_string())).collect(),
            Column::Text(v) => v,
        }
    }

    /// Appends `other`, widening Int -> Float and anything else mixed -> Text.
    fn append(self, other: Column) -> Column {
        match (self, other) {
            (Column::Int(mut a), Column::Int(b)) => {
                a.extend(b);
                Column::Int(a)
            }
            (Column::Float(mut a), Column::Float(b)) => {
                a.extend(b);
                Column::Float(a)
            }
            (Column::Int(a), Column::Float(b)) => {
                let mut a: Vec<Option<f64>> = a.into_iter().map(|x| x.map(|x| x as f64)).collect();
                a.extend(b);
                Column::Float(a)
            }
            (Column::Float(mut a), Column::Int(b)) => {
                a.extend(b.into_iter().map(|x| x.map(|x| x as f64)));
                Column::Float(a)
            }
            (Column::Bool(mut a), Column::Bool(b)) => {
                a.extend(b);
                Column::Bool(a)
            }
            (a, b) => {
                let mut t = a.into_text();
                t.extend(b.into_text());
                Column::Text(t)
            }
        }
    }

    fn to_arrow(&self) -> (DataType, ArrayRef) {
        match self {
            Column::Int(v) => (DataType::Int64, Arc::new(Int64Array::from(v.clone()))),
            Column::Float(v) => (DataType::Float64, Arc::new(Float64Array::from(v.clone()))),
            Column::Bool(v) => (DataType::Boolean, Arc::new(BooleanArray::from(v.clone()))),
            Column::Text(v) => (DataType::Utf8, Arc::new(v.iter().map(|s| s.as_deref()).collect::<StringArray>())),
        }
    }

    /// Infers a column from text cells (CSV; `cells` gives them in row order, `None` for an empty one): see
    /// the module documentation. Each cell is parsed once per type tried, and no `String` is made unless
    /// the column is text.
    fn from_text<'a, I: Iterator<Item = Option<&'a str>>>(cells: impl Fn() -> I, thousands: Option<&str>) -> Column {
        let leading_zero = |s: &str| {
            let digits = s.strip_prefix('-').unwrap_or(s);
            digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.")
        };
        let text = || Column::Text(cells().map(|c| c.map(str::to_string)).collect());
        if cells().flatten().any(leading_zero) {
            return text();
        }
        // every cell that is there parses, or the column is not of that type (`None` ends the collect)
        let ints: Option<Vec<_>> = cells().map(|c| c.map_or(Some(None), |s| s.parse::<i64>().ok().map(Some))).collect();
        if let Some(ints) = ints {
            return Column::Int(ints);
        }
        let floats: Option<Vec<_>> =
            cells().map(|c| c.map_or(Some(None), |s| parse_number(s, thousands).map(Some))).collect();
        floats.map_or_else(text, Column::Float)
    }
}

/// Parses a number, allowing a thousands separator between groups of three digits (`"537,585"` with
/// `thousands = ","`). `None` for empty cells, text and non-finite values.
///
/// ```
/// use flowrun_pv::read::parse_number;
/// assert_eq!(parse_number(" 537,585 ", Some(",")), Some(537585.0));
/// assert_eq!(parse_number("1,234,567.5", Some(",")), Some(1234567.5));
/// assert_eq!(parse_number("537,585", None), None);
/// assert_eq!(parse_number("1,5", Some(",")), None, "not a thousands group");
/// ```
pub fn parse_number(s: &str, thousands: Option<&str>) -> Option<f64> {
    let t = s.trim();
    let text = match thousands {
        Some(sep) if !sep.is_empty() && t.contains(sep) => {
            let int = t.split(['.', 'e', 'E']).next().unwrap_or(t);
            let mut groups = int.trim_start_matches(['-', '+']).split(sep);
            let first_ok = groups.next().is_some_and(|g| (1..=3).contains(&g.len()));
            if !first_ok || !groups.all(|g| g.len() == 3) {
                return None;
            }
            Cow::Owned(t.replace(sep, ""))
        }
        _ => Cow::Borrowed(t),
    };
    text.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// One file (or GeoPackage layer), read.
pub struct FileTable {
    /// Attribute columns, in file order.
    pub attrs: IndexMap<String, Column>,
    /// WKB in the file's CRS, one per row (null: no geometry), end to end in one buffer (not one allocation
    /// per row: at millions of rows that was most of the reader's memory).
    pub geoms: BinaryArray,
    /// The CRS the file declares (GeoJSON `crs` member, `.prj`, GeoPackage SRS) and where it says so.
    pub declared_crs: Option<(String, &'static str)>,
}

/// Infers a column from JSON values: all integers -> Int, numbers -> Float, booleans -> Bool, else Text.
fn json_column(values: Vec<J>) -> Column {
    if values.iter().all(|v| v.is_null() || v.is_i64()) {
        return Column::Int(values.iter().map(|v| v.as_i64()).collect());
    }
    if values.iter().all(|v| v.is_null() || v.is_number()) {
        return Column::Float(values.iter().map(|v| v.as_f64()).collect());
    }
    if values.iter().all(|v| v.is_null() || v.is_boolean()) {
        return Column::Bool(values.iter().map(|v| v.as_bool()).collect());
    }
    Column::Text(
        values
            .into_iter()
            .map(|v| match v {
                J::Null => None,
                J::String(s) => Some(s),
                other => Some(other.to_string()),
            })
            .collect(),
    )
}

/// Rows of JSON-like values collected column by column (a column first seen at row `n` is null before).
#[derive(Default)]
struct JsonColumns(IndexMap<String, Vec<J>>);

impl JsonColumns {
    fn with_names(names: &[String]) -> Self {
        JsonColumns(names.iter().map(|n| (n.clone(), Vec::new())).collect())
    }

    fn push(&mut self, row: usize, key: String, value: J) {
        self.0.entry(key).or_insert_with(|| vec![J::Null; row]).push(value);
    }

    /// The index of column `key`, added (null before `row`) when new; no allocation for a known key.
    fn index(&mut self, row: usize, key: &str) -> usize {
        match self.0.get_index_of(key) {
            Some(i) => i,
            None => self.0.insert_full(key.to_string(), vec![J::Null; row]).0,
        }
    }

    /// Pads every column to `rows` (a feature without some property).
    fn end_row(&mut self, rows: usize) {
        for col in self.0.values_mut() {
            col.resize(rows, J::Null);
        }
    }

    fn into_columns(self) -> IndexMap<String, Column> {
        self.0.into_iter().map(|(k, v)| (k, json_column(v))).collect()
    }
}

/// What a GeoJSON file's features go into, one at a time as the parser reaches them.
struct GeoJsonSink<'a> {
    columns: JsonColumns,
    geoms: BinaryBuilder,
    /// The top-level `crs` member, wherever it stands in the file.
    crs: Option<J>,
    /// The manifest's id column: kept as the text the file writes (a 20-digit OSM id is not an i64).
    id: Option<&'a str>,
    /// The coordinates of the geometry being parsed (see [`GeometrySeed`]).
    nodes: Vec<Node>,
}

impl GeoJsonSink<'_> {
    /// The CRS the `crs` member names: `{"type": "name", "properties": {"name": ...}}` or the older
    /// `{"type": "EPSG", "properties": {"code": n}}`; any other form is an error, never ignored.
    fn declared_crs(&self) -> Result<Option<String>> {
        let Some(member) = &self.crs else { return Ok(None) };
        let props = &member["properties"];
        match (member["type"].as_str(), props["name"].as_str(), props["code"].as_u64()) {
            (_, _, _) if member.is_null() => Ok(None),
            (Some("name"), Some(name), _) => Ok(Some(name.to_string())),
            (Some(t), _, Some(code)) if t.eq_ignore_ascii_case("epsg") => Ok(Some(format!("EPSG:{code}"))),
            _ => bail!(
                "its `crs` member {member} names no CRS flowrun can read; set the dataset's crs = \"EPSG:<code>\""
            ),
        }
    }
}

/// The top level of a GeoJSON FeatureCollection: `features` streamed into the sink, `crs` kept, the rest
/// skipped.
struct TopLevel<'s, 'a>(&'s mut GeoJsonSink<'a>);

impl<'de> serde::de::DeserializeSeed<'de> for TopLevel<'_, '_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for TopLevel<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a GeoJSON FeatureCollection")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "features" => map.next_value_seed(Features(&mut *self.0))?,
                "crs" => self.0.crs = Some(map.next_value()?),
                "type" => {
                    let t: String = map.next_value()?;
                    if t != "FeatureCollection" {
                        return Err(serde::de::Error::custom(format!("a {t}, not a FeatureCollection")));
                    }
                }
                _ => {
                    map.next_value::<serde::de::IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

/// A seed whose value is deserialized as a map, a seq or an option (the decoders below).
macro_rules! seed_visitor {
    ($ty:ident, $deserialize:ident) => {
        impl<'de> serde::de::DeserializeSeed<'de> for $ty<'_, '_> {
            type Value = ();
            fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
                d.$deserialize(self)
            }
        }
    };
}

/// The `features` list: each feature decoded straight into the sink.
struct Features<'s, 'a>(&'s mut GeoJsonSink<'a>);
seed_visitor!(Features, deserialize_seq);

impl<'de> serde::de::Visitor<'de> for Features<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of features")
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(FeatureSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
}

/// The members of a feature the reader uses (the others, `id` and `bbox` among them, are skipped).
#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum FeatureMember {
    Type,
    Properties,
    Geometry,
    #[serde(other)]
    Other,
}

/// One feature: its properties go into the sink's columns as they are parsed, its geometry is parsed into coordinates and written as WKB.
struct FeatureSeed<'s, 'a>(&'s mut GeoJsonSink<'a>);
seed_visitor!(FeatureSeed, deserialize_map);

impl<'de> serde::de::Visitor<'de> for FeatureSeed<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a GeoJSON Feature")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        use serde::de::Error;
        let sink = self.0;
        let row = sink.geoms.len();
        let mut wkb = None;
        while let Some(member) = map.next_key::<FeatureMember>()? {
            match member {
                FeatureMember::Type => {
                    let t: Cow<str> = map.next_value()?;
                    if t != "Feature" {
                        return Err(A::Error::custom(format!("feature {row}: a {t}, not a Feature")));
                    }
                }
                FeatureMember::Properties => map.next_value_seed(Properties(&mut *sink))?,
                FeatureMember::Geometry => wkb = map.next_value_seed(GeometrySeed(&mut sink.nodes, row))?,
                FeatureMember::Other => drop(map.next_value::<serde::de::IgnoredAny>()?),
            }
        }
        sink.geoms.append_option(wkb);
        sink.columns.end_row(row + 1);
        Ok(())
    }
}

/// A feature's `properties` (an object or null), into the sink's columns.
struct Properties<'s, 'a>(&'s mut GeoJsonSink<'a>);
seed_visitor!(Properties, deserialize_option);

impl<'de> serde::de::Visitor<'de> for Properties<'_, '_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("the feature's properties (an object or null)")
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let sink = self.0;
        let row = sink.geoms.len();
        while let Some(column) = map.next_key_seed(ColumnKey(&mut sink.columns, row))? {
            let value = match map.next_value()? {
                // the manifest's id column keeps the text the file writes (a 20-digit OSM id is not an i64)
                J::Number(n) if sink.id.is_some_and(|id| sink.columns.0.get_index_of(id) == Some(column)) => {
                    J::String(n.to_string())
                }
                v => v,
            };
            sink.columns.0[column].push(value);
        }
        Ok(())
    }
}

/// A property's key, looked up among the columns as it is parsed (no `String` made for a known key).
struct ColumnKey<'s>(&'s mut JsonColumns, usize);

impl<'de> serde::de::DeserializeSeed<'de> for ColumnKey<'_> {
    type Value = usize;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<usize, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ColumnKey<'_> {
    type Value = usize;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a property name")
    }
    fn visit_str<E>(self, key: &str) -> Result<usize, E> {
        Ok(self.0.index(self.1, key))
    }
}

/// A geometry's coordinates as parsed, flat and in document order: an array is `List(n)` followed by its
/// `n` elements; a position (x, y: a third and further numbers are dropped) is `At`; `Short` is a position
/// of one number, an error once the feature is known. One list per reader, reused for every feature.
#[derive(Clone, Copy)]
enum Node {
    List(u32),
    At(f64, f64),
    Short,
}

/// A GeoJSON geometry object (or null: `None`), written as WKB (little-endian, 2D) straight from its members
/// as they are parsed: its type, its coordinates (into the reader's flat list), or its member geometries (each written
/// at once). No tree of the coordinates is built. `.1` is the feature's row, for errors.
struct GeometrySeed<'s>(&'s mut Vec<Node>, usize);

impl<'de> serde::de::DeserializeSeed<'de> for GeometrySeed<'_> {
    type Value = Option<Vec<u8>>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> serde::de::Visitor<'de> for GeometrySeed<'_> {
    type Value = Option<Vec<u8>>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a GeoJSON geometry or null")
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let (nodes, row) = (self.0, self.1);
        let (mut kind, mut coordinates, mut members) = (None::<String>, false, None::<(u32, Vec<u8>)>);
        while let Some(key) = map.next_key::<GeometryMember>()? {
            match key {
                GeometryMember::Type => kind = Some(map.next_value()?),
                GeometryMember::Coordinates => {
                    nodes.clear();
                    coordinates = map.next_value_seed(CoordinatesSeed(&mut *nodes))?;
                }
                // its own list: a foreign `geometries` member beside `coordinates` leaves them alone
                GeometryMember::Geometries => members = map.next_value_seed(MembersSeed(&mut Vec::new(), row))?,
                GeometryMember::Other => drop(map.next_value::<serde::de::IgnoredAny>()?),
            }
        }
        let kind = kind.ok_or_else(|| A::Error::custom(format!("feature {row}: a geometry without a type")))?;
        if coordinates && nodes.iter().any(|n| matches!(n, Node::Short)) {
            return Err(A::Error::custom(format!(
                "feature {row}: a position with fewer than two coordinates (the file is damaged?)"
            )));
        }
        let mut out = Vec::with_capacity(9 + if coordinates { 16 * nodes.len() } else { 0 });
        let written = match (kind.as_str(), coordinates) {
            ("GeometryCollection", _) => {
                let (n, wkb) = members.unwrap_or_default();
                header(&mut out, 7, n);
                out.extend(wkb);
                Some(())
            }
            (_, false) => None,
            (kind, true) => Wkb { nodes, at: 0, out: &mut out }.geometry(kind),
        };
        written.ok_or_else(|| {
            A::Error::custom(format!(
                "feature {row}: unsupported geometry: a {kind} with coordinates nested as no {kind} is"
            ))
        })?;
        Ok(Some(out))
    }
}

#[derive(serde::Deserialize)]
#[serde(field_identifier, rename_all = "lowercase")]
enum GeometryMember {
    Type,
    Coordinates,
    Geometries,
    #[serde(other)]
    Other,
}

/// A `coordinates` member (an array, else not coordinates: `false`), into the flat list.
struct CoordinatesSeed<'s>(&'s mut Vec<Node>);

impl<'de> serde::de::DeserializeSeed<'de> for CoordinatesSeed<'_> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for CoordinatesSeed<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("coordinates (nested arrays of numbers)")
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        use serde::de::Error;
        let nodes = self.0;
        let at = nodes.len();
        nodes.push(Node::List(0));
        // a list of numbers is a position; a list of lists is a list
        let (mut numbers, mut xy, mut lists) = (0, [0.0; 2], 0);
        while let Some(number) = seq.next_element_seed(ElementSeed(&mut *nodes))? {
            match number {
                Some(v) if lists == 0 => {
                    if numbers < 2 {
                        xy[numbers] = v;
                    }
                    numbers += 1;
                }
                None if numbers == 0 => lists += 1,
                _ => return Err(A::Error::custom("coordinates that mix numbers and arrays")),
            }
        }
        nodes[at] = match numbers {
            0 => Node::List(lists),
            1 => Node::Short,
            _ => Node::At(xy[0], xy[1]),
        };
        Ok(true)
    }
}

/// One element of a coordinate array: a number (`Some`), or an array, added to the flat list (`None`).
struct ElementSeed<'s>(&'s mut Vec<Node>);

impl<'de> serde::de::DeserializeSeed<'de> for ElementSeed<'_> {
    type Value = Option<f64>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Option<f64>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> serde::de::Visitor<'de> for ElementSeed<'_> {
    type Value = Option<f64>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a number or an array")
    }
    fn visit_f64<E>(self, v: f64) -> Result<Option<f64>, E> {
        Ok(Some(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Option<f64>, E> {
        Ok(Some(v as f64))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Option<f64>, E> {
        Ok(Some(v as f64))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, seq: A) -> Result<Option<f64>, A::Error> {
        CoordinatesSeed(self.0).visit_seq(seq).map(|_| None)
    }
}

/// A GeometryCollection's `geometries` (of feature `.1`): how many, and their WKB one after the other.
struct MembersSeed<'s>(&'s mut Vec<Node>, usize);

impl<'de> serde::de::DeserializeSeed<'de> for MembersSeed<'_> {
    type Value = Option<(u32, Vec<u8>)>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_option(self)
    }
}

impl<'de> serde::de::Visitor<'de> for MembersSeed<'_> {
    type Value = Option<(u32, Vec<u8>)>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of geometries")
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let (mut n, mut out) = (0, Vec::new());
        while let Some(wkb) = seq.next_element_seed(GeometrySeed(&mut *self.0, self.1))? {
            let wkb =
                wkb.ok_or_else(|| A::Error::custom(format!("feature {}: a null in a GeometryCollection", self.1)))?;
            out.extend(wkb);
            n += 1;
        }
        Ok(Some((n, out)))
    }
}

/// The WKB byte order mark (little-endian), a geometry type and a count.
fn header(out: &mut Vec<u8>, wkb_type: u32, count: u32) {
    out.push(1);
    out.extend(wkb_type.to_le_bytes());
    out.extend(count.to_le_bytes());
}

/// Writes WKB from the flat coordinate list, from `at` on, as the geo types and the `wkb` crate do (a
/// polygon's rings closed, a polygon with an empty exterior counted as having no ring); `None` when the
/// nesting does not fit the type.
struct Wkb<'a> {
    nodes: &'a [Node],
    at: usize,
    out: &'a mut Vec<u8>,
}

impl<'a> Wkb<'a> {
    fn geometry(&mut self, kind: &str) -> Option<()> {
        match kind {
            "Point" => {
                let Node::At(x, y) = *self.nodes.get(self.at)? else { return None };
                self.start(1);
                self.xy(x, y);
            }
            "LineString" => {
                self.start(2);
                self.positions(false)?;
            }
            "Polygon" => self.polygon()?,
            "MultiPoint" => {
                let n = self.list()?;
                header(self.out, 4, n);
                for _ in 0..n {
                    let Node::At(x, y) = *self.nodes.get(self.at)? else { return None };
                    self.at += 1;
                    self.start(1);
                    self.xy(x, y);
                }
            }
            "MultiLineString" => {
                let n = self.list()?;
                header(self.out, 5, n);
                for _ in 0..n {
                    self.start(2);
                    self.positions(false)?;
                }
            }
            "MultiPolygon" => {
                let n = self.list()?;
                header(self.out, 6, n);
                for _ in 0..n {
                    self.polygon()?;
                }
            }
            _ => return None,
        }
        Some(())
    }

    /// The byte order mark (little-endian) and a geometry type.
    fn start(&mut self, wkb_type: u32) {
        self.out.push(1);
        self.out.extend(wkb_type.to_le_bytes());
    }

    fn xy(&mut self, x: f64, y: f64) {
        self.out.extend(x.to_le_bytes());
        self.out.extend(y.to_le_bytes());
    }

    /// The count of the list at the cursor, which moves past it.
    fn list(&mut self) -> Option<u32> {
        let Node::List(n) = *self.nodes.get(self.at)? else { return None };
        self.at += 1;
        Some(n)
    }

    /// The positions of the list at the cursor, which moves past them (`None`: not a list of positions).
    fn take_positions(&mut self) -> Option<&'a [Node]> {
        let n = self.list()? as usize;
        let nodes: &'a [Node] = self.nodes;
        let points = nodes.get(self.at..self.at + n)?;
        if !points.iter().all(|p| matches!(p, Node::At(..))) {
            return None;
        }
        self.at += n;
        Some(points)
    }

    /// A list of positions: their count and coordinates; `close` repeats the first at the end if the last
    /// is not it (geo's `Polygon::new` closes its rings).
    fn positions(&mut self, close: bool) -> Option<()> {
        let points = self.take_positions()?;
        let xy = |p: &Node| if let Node::At(x, y) = *p { (x, y) } else { (f64::NAN, f64::NAN) };
        let n = points.len();
        let open = close && n > 0 && xy(&points[0]) != xy(&points[n - 1]);
        self.out.extend((n as u32 + u32::from(open)).to_le_bytes());
        for p in points.iter().chain(points.first().filter(|_| open)) {
            let (x, y) = xy(p);
            self.xy(x, y);
        }
        Some(())
    }

    /// A polygon; one whose exterior ring has no positions is empty, its holes (inside nothing) dropped.
    fn polygon(&mut self) -> Option<()> {
        let rings = self.list()?;
        let empty = rings == 0 || matches!(self.nodes.get(self.at), Some(Node::List(0)));
        header(self.out, 3, if empty { 0 } else { rings });
        for _ in 0..rings {
            if empty {
                self.take_positions()?;
            } else {
                self.positions(true)?;
            }
        }
        Some(())
    }
}

/// GeoJSON files up to this size are read into memory and parsed there; larger ones are streamed.
const IN_MEMORY: u64 = 256 << 20;

/// Reads a GeoJSON FeatureCollection in one pass (features are decoded one at a time into columns and WKB,
/// never into a document tree), with its top-level `crs` member wherever the file puts it.
pub fn read_geojson(path: &Path, id: Option<&str>) -> Result<FileTable> {
    read_geojson_up_to(path, id, IN_MEMORY)
}

/// [`read_geojson`], reading a file of at most `in_memory` bytes into memory first.
fn read_geojson_up_to(path: &Path, id: Option<&str>, in_memory: u64) -> Result<FileTable> {
    use serde::de::DeserializeSeed;
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let size = file.metadata().map(|m| m.len()).ok();
    let mut sink =
        GeoJsonSink { columns: JsonColumns::default(), geoms: BinaryBuilder::new(), crs: None, id, nodes: Vec::new() };
    let mut progress = ProgressReader { inner: file, done: 0, total: size };
    let parsed = if size.is_some_and(|s| s <= in_memory) {
        // serde_json parses a slice faster than a reader (1.3x less CPU on a synthetic 18 MB file)
        let mut bytes = Vec::with_capacity(size.unwrap_or(0) as usize);
        progress.read_to_end(&mut bytes)?;
        TopLevel(&mut sink).deserialize(&mut serde_json::Deserializer::from_slice(&bytes))
    } else {
        // streamed: the buffer is the outer layer (serde_json reads a reader byte by byte), so the progress
        // count runs once per megabyte, not once per byte
        let reader = BufReader::with_capacity(1 << 20, progress);
        TopLevel(&mut sink).deserialize(&mut serde_json::Deserializer::from_reader(reader))
    };
    parsed.map_err(|e| anyhow!("{e} (truncated or invalid GeoJSON?)"))?;
    let declared_crs = sink.declared_crs()?.map(|c| (c, "the GeoJSON `crs` member"));
    Ok(FileTable { attrs: sink.columns.into_columns(), geoms: finish(sink.geoms), declared_crs })
}

struct ProgressReader<R> {
    inner: R,
    done: u64,
    total: Option<u64>,
}

impl<R: Read> Read for ProgressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let before = self.done;
        self.done += n as u64;
        if self.done >> 22 != before >> 22 {
            ctx::progress(self.done, self.total);
        }
        Ok(n)
    }
}

/// A sidecar of `shp` with another extension, its name matched case-insensitively (`Parcels.shp` finds
/// `PARCELS.DBF`), as `files` matches the sidecars it fetches.
pub fn sidecar(shp: &Path, ext: &str) -> Option<PathBuf> {
    let stem = shp.file_stem()?.to_string_lossy().to_string();
    let dir = shp.parent()?;
    std::fs::read_dir(dir).ok()?.flatten().map(|e| e.path()).find(|p| {
        p.file_stem().is_some_and(|s| s.to_string_lossy().eq_ignore_ascii_case(&stem))
            && p.extension().is_some_and(|e| e.to_string_lossy().eq_ignore_ascii_case(ext))
    })
}

fn points_to_coords<P: shapefile::record::traits::HasXY>(pts: &[P]) -> Vec<Coord<f64>> {
    pts.iter().map(|p| Coord { x: p.x(), y: p.y() }).collect()
}

/// A shapefile polygon's rings as polygons: each inner ring goes to the outer ring holding it; an inner
/// ring no outer ring holds becomes a polygon of its own (as GDAL reads it) and is counted in `orphans`.
fn rings_to_multipolygon<P: shapefile::record::traits::HasXY>(
    rings: &[shapefile::PolygonRing<P>],
    orphans: &mut usize,
) -> MultiPolygon<f64> {
    let mut polys: Vec<(LineString<f64>, Vec<LineString<f64>>)> = Vec::new();
    let mut holes = Vec::new();
    for r in rings {
        match r {
            shapefile::PolygonRing::Outer(pts) => polys.push((LineString::new(points_to_coords(pts)), Vec::new())),
            shapefile::PolygonRing::Inner(pts) => holes.push(LineString::new(points_to_coords(pts))),
        }
    }
    for hole in holes {
        let owner = hole.0.first().and_then(|&c| {
            polys.iter().position(|(outer, _)| Polygon::new(outer.clone(), vec![]).contains(&Point::from(c)))
        });
        match owner {
            Some(i) => polys[i].1.push(hole),
            None => {
                *orphans += 1;
                polys.push((hole, Vec::new()));
            }
        }
    }
    MultiPolygon::new(polys.into_iter().map(|(o, h)| Polygon::new(o, h)).collect())
}

fn shape_to_geo(shape: shapefile::Shape, orphans: &mut usize) -> Option<Geometry<f64>> {
    use shapefile::Shape as S;
    let line = |parts: Vec<Vec<Coord<f64>>>| {
        Geometry::MultiLineString(MultiLineString::new(parts.into_iter().map(LineString::new).collect()))
    };
    let points = |c: Vec<Coord<f64>>| Geometry::MultiPoint(MultiPoint::new(c.into_iter().map(Point::from).collect()));
    Some(match shape {
        S::NullShape | S::Multipatch(_) => return None,
        S::Point(p) => Geometry::Point(Point::new(p.x, p.y)),
        S::PointM(p) => Geometry::Point(Point::new(p.x, p.y)),
        S::PointZ(p) => Geometry::Point(Point::new(p.x, p.y)),
        S::Multipoint(m) => points(points_to_coords(m.points())),
        S::MultipointM(m) => points(points_to_coords(m.points())),
        S::MultipointZ(m) => points(points_to_coords(m.points())),
        S::Polyline(l) => line(l.parts().iter().map(|p| points_to_coords(p)).collect()),
        S::PolylineM(l) => line(l.parts().iter().map(|p| points_to_coords(p)).collect()),
        S::PolylineZ(l) => line(l.parts().iter().map(|p| points_to_coords(p)).collect()),
        S::Polygon(p) => Geometry::MultiPolygon(rings_to_multipolygon(p.rings(), orphans)),
        S::PolygonM(p) => Geometry::MultiPolygon(rings_to_multipolygon(p.rings(), orphans)),
        S::PolygonZ(p) => Geometry::MultiPolygon(rings_to_multipolygon(p.rings(), orphans)),
    })
}

fn dbf_value(v: Option<shapefile::dbase::FieldValue>) -> J {
    use shapefile::dbase::FieldValue as F;
    let date = |d: shapefile::dbase::Date| J::String(format!("{:04}-{:02}-{:02}", d.year(), d.month(), d.day()));
    match v {
        Some(F::Character(s)) => s.map(J::String).unwrap_or(J::Null),
        Some(F::Memo(s)) => J::String(s),
        Some(F::Numeric(n)) => n
            .map(|n| if n.fract() == 0.0 && n.abs() < 9e15 { J::from(n as i64) } else { J::from(n) })
            .unwrap_or(J::Null),
        Some(F::Float(f)) => f.map(|f| J::from(f as f64)).unwrap_or(J::Null),
        Some(F::Double(f)) | Some(F::Currency(f)) => J::from(f),
        Some(F::Integer(n)) => J::from(n),
        Some(F::Logical(b)) => b.map(J::from).unwrap_or(J::Null),
        Some(F::Date(d)) => d.map(date).unwrap_or(J::Null),
        Some(F::DateTime(dt)) => date(dt.date()),
        None => J::Null,
    }
}

/// A DBF record read field by field: a value that does not parse (`***` in a number, GDAL's `00000000` for a
/// null date, which `read_shapefile` then takes as null) is kept as its error, so one bad cell does not fail
/// the whole file.
struct LenientRecord(Vec<Result<shapefile::dbase::FieldValue, String>>);

impl shapefile::dbase::ReadableRecord for LenientRecord {
    fn read_using<S: Read + std::io::Seek, M: Read + std::io::Seek>(
        fields: &mut shapefile::dbase::FieldIterator<S, M>,
    ) -> Result<Self, shapefile::dbase::FieldError> {
        use shapefile::dbase::ErrorKind;
        let mut values = Vec::new();
        loop {
            match fields.read_next_field() {
                Ok(v) => values.push(Ok(v.value)),
                Err(e) => match e.kind() {
                    ErrorKind::EndOfRecord => return Ok(LenientRecord(values)),
                    ErrorKind::IoError(_) => return Err(e),
                    _ => values.push(Err(e.to_string())),
                },
            }
        }
    }
}

/// Reads an ESRI Shapefile with its `.dbf` (required), `.prj` (CRS) and `.cpg` (text encoding; else the
/// manifest's `encoding`, else the DBF's own code page mark). A cell that cannot be read is null, counted
/// and reported per column with an example.
pub fn read_shapefile(path: &Path, encoding: Option<&str>) -> Result<FileTable> {
    use shapefile::dbase;
    let dbf = sidecar(path, "dbf").ok_or_else(|| {
        let beside: Vec<String> = path
            .parent()
            .and_then(|d| std::fs::read_dir(d).ok())
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        anyhow!("the shapefile has no .dbf file beside it (files there: {})", beside.join(", "))
    })?;
    let declared_crs = match sidecar(path, "prj") {
        Some(prj) => {
            let text = std::fs::read_to_string(&prj).with_context(|| format!("cannot read {}", prj.display()))?;
            Some((text.trim().to_string(), "the .prj file"))
        }
        None => None,
    };
    let from_cpg = sidecar(path, "cpg")
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|label| dbase::encoding::DynEncoding::from_name(label.trim().trim_start_matches('\u{feff}')));
    let from_manifest = encoding
        .and_then(|e| encoding_rs::Encoding::for_label(e.as_bytes()))
        .map(|e| dbase::encoding::DynEncoding::from(dbase::encoding::EncodingRs::from(e)));
    let dbf_file = BufReader::new(File::open(&dbf).with_context(|| format!("cannot open {}", dbf.display()))?);
    let dbf_reader = match from_cpg.or(from_manifest) {
        Some(e) => dbase::ReaderBuilder::new().with_encoding(e).build(dbf_file),
        None => dbase::Reader::new(dbf_file),
    }
    .map_err(|e| anyhow!("{}: {e}", dbf.display()))?;
    let field_names: Vec<String> = dbf_reader.fields().iter().map(|f| f.name().to_string()).collect();
    let is_date: Vec<bool> = dbf_reader.fields().iter().map(|f| f.field_type() == dbase::FieldType::Date).collect();
    let records = dbf_reader.header().num_records as usize;
    let shp = BufReader::new(File::open(path).with_context(|| format!("cannot open {}", path.display()))?);
    let shape_reader = shapefile::ShapeReader::new(shp).map_err(|e| anyhow!("{e}"))?;
    let mut reader = shapefile::Reader::new(shape_reader, dbf_reader);
    let mut columns = JsonColumns::with_names(&field_names);
    let mut geoms = BinaryBuilder::new();
    let (mut orphans, mut orphan_records) = (0, Vec::new());
    // per column: unreadable cells, and the first one
    let mut unreadable: Vec<(usize, Option<String>)> = vec![(0, None); field_names.len()];
    let mut no_date = vec![0usize; field_names.len()];
    for (i, item) in reader.iter_shapes_and_records_as::<shapefile::Shape, LenientRecord>().enumerate() {
        let (shape, LenientRecord(values)) = item.map_err(|e| anyhow!("record {i}: {e}"))?;
        let before = orphans;
        geoms.append_option(shape_to_geo(shape, &mut orphans).map(|g| to_wkb(&g)));
        if orphans > before && orphan_records.len() < 5 {
            orphan_records.push(i.to_string());
        }
        for (j, (name, value)) in field_names.iter().zip(values).enumerate() {
            let value = value.unwrap_or_else(|e| {
                // GDAL writes a null date as `00000000` (month 0): a null, counted in a note, not a warning
                if is_date[j] && e.contains("Month must be 1..=12, got 0") {
                    no_date[j] += 1;
                    return dbase::FieldValue::Date(None);
                }
                unreadable[j].0 += 1;
                unreadable[j].1.get_or_insert_with(|| format!("record {i}: {e}"));
                dbase::FieldValue::Character(None)
            });
            columns.push(i, name.clone(), dbf_value(Some(value)));
        }
    }
    // shapes and records are read in pairs: where one file ends, the pairs end, so count both
    if records != geoms.len() {
        bail!(
            "{} holds {records} records but {} holds {} shapes: the two files do not belong together (or one is \
             damaged)",
            dbf.display(),
            path.display(),
            geoms.len()
        );
    }
    for (name, n) in field_names.iter().zip(no_date).filter(|(_, n)| *n > 0) {
        ctx::note(format!("{}: column `{name}`: {n} dates of month 00 (`00000000`: no date) are null", path.display()));
    }
    for (name, (n, example)) in field_names.iter().zip(unreadable) {
        if let Some(example) = example {
            ctx::warn(format!(
                "{}: column `{name}`: {n} values cannot be read and are null (e.g. {example})",
                path.display()
            ));
        }
    }
    if orphans > 0 {
        ctx::warn(format!(
            "{}: {orphans} inner rings (holes) lie in no outer ring of their record (records {}{}); each was read \
             as a polygon of its own, as GDAL does",
            path.display(),
            orphan_records.join(", "),
            if orphans > orphan_records.len() { ", ..." } else { "" }
        ));
    }
    Ok(FileTable { attrs: columns.into_columns(), geoms: finish(geoms), declared_crs })
}

/// The feature layers of a GeoPackage: (table, geometry column, srs id).
fn gpkg_layers(conn: &rusqlite::Connection) -> Result<Vec<(String, String, i64)>> {
    let mut stmt = conn.prepare(
        "SELECT c.table_name, g.column_name, g.srs_id FROM gpkg_contents c \
         JOIN gpkg_geometry_columns g ON g.table_name = c.table_name \
         WHERE c.data_type = 'features' ORDER BY c.table_name",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Reads the layers of a GeoPackage that `layer` selects (a name, or `"*"` for all; without one the file
/// must hold exactly one feature layer), one [`FileTable`] per layer, with its name.
pub fn read_gpkg(path: &Path, layer: Option<&str>) -> Result<Vec<(String, FileTable)>> {
    let conn = rusqlite::Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("cannot open GeoPackage {}", path.display()))?;
    let layers = gpkg_layers(&conn).context("not a GeoPackage with feature layers")?;
    let names = || layers.iter().map(|l| l.0.as_str()).collect::<Vec<_>>().join(", ");
    let chosen: Vec<&(String, String, i64)> =
        match layer {
            Some("*") => layers.iter().collect(),
            Some(name) => vec![layers.iter().find(|l| l.0 == name).ok_or_else(|| {
                anyhow!("no feature layer `{name}` (layers: {}); set the dataset's `layer`", names())
            })?],
            None if layers.len() == 1 => vec![&layers[0]],
            None if layers.is_empty() => bail!("the GeoPackage has no feature layer"),
            None => bail!(
                "the GeoPackage has {} feature layers ({}); set the dataset's `layer` to one, or \"*\"",
                layers.len(),
                names()
            ),
        };
    chosen
        .into_iter()
        .map(|(table, column, srs)| Ok((table.clone(), read_gpkg_layer(&conn, table, column, *srs)?)))
        .collect()
}

fn read_gpkg_layer(conn: &rusqlite::Connection, table: &str, column: &str, srs_id: i64) -> Result<FileTable> {
    let crs: String = conn
        .query_row(
            "SELECT organization, organization_coordsys_id, definition FROM gpkg_spatial_ref_sys WHERE srs_id = ?1",
            [srs_id],
            |r| {
                let org: String = r.get(0)?;
                let code: i64 = r.get(1)?;
                let def: String = r.get(2)?;
                Ok(if org.eq_ignore_ascii_case("EPSG") { format!("EPSG:{code}") } else { def })
            },
        )
        .with_context(|| format!("layer `{table}`: srs_id {srs_id} is not in gpkg_spatial_ref_sys"))?;
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut stmt = conn.prepare(&format!("SELECT * FROM {}", quote(table)))?;
    let names: Vec<String> = stmt.column_names().map(|s| s.to_string()).collect();
    let geom_idx = names.iter().position(|n| n == column).context("geometry column missing")?;
    let attr_names: Vec<String> = names.iter().filter(|n| *n != column).cloned().collect();
    let mut columns = JsonColumns::with_names(&attr_names);
    let mut geoms = BinaryBuilder::new();
    let mut rows = stmt.query([])?;
    let mut row_no = 0;
    while let Some(row) = rows.next()? {
        for (i, name) in names.iter().enumerate() {
            use rusqlite::types::ValueRef as V;
            let v = row.get_ref(i)?;
            if i == geom_idx {
                geoms.append_option(match v {
                    V::Blob(b) => Some(gpkg_to_wkb(b).with_context(|| format!("layer `{table}`, row {row_no}"))?),
                    _ => None,
                });
                continue;
            }
            let j = match v {
                V::Null | V::Blob(_) => J::Null,
                V::Integer(n) => J::from(n),
                V::Real(f) => J::from(f),
                V::Text(t) => J::String(String::from_utf8_lossy(t).into_owned()),
            };
            columns.push(row_no, name.clone(), j);
        }
        row_no += 1;
    }
    let geoms = finish(geoms);
    Ok(FileTable { attrs: columns.into_columns(), geoms, declared_crs: Some((crs, "the GeoPackage layer's SRS")) })
}

/// The WKB inside a GeoPackage geometry blob ("GP", version, flags, srs id, envelope, WKB).
pub fn gpkg_to_wkb(b: &[u8]) -> Result<Vec<u8>> {
    if b.len() < 8 || &b[..2] != b"GP" {
        bail!("not a GeoPackage geometry (no GP header)");
    }
    let flags = b[3];
    let envelope = match (flags >> 1) & 0b111 {
        0 => 0,
        1 => 32,
        2 | 3 => 48,
        4 => 64,
        other => bail!("invalid envelope indicator {other}"),
    };
    let start = 8 + envelope;
    if b.len() < start {
        bail!("truncated GeoPackage geometry");
    }
    Ok(b[start..].to_vec())
}

/// Reads a CSV of points: decoded from the dataset's `encoding` (UTF-8 by default, a BOM ignored), `skip_rows`
/// lines skipped before the header, coordinates from the `x`/`y` (or `lon`/`lat`) columns, numbers with the
/// `thousands` separator. A row whose coordinates are empty or not numbers gets no geometry.
pub fn read_csv_points(path: &Path, d: &Dataset) -> Result<FileTable> {
    let (xcol, ycol) = d.coordinate_columns()?;
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let text = match &d.encoding {
        Some(label) => {
            let enc = encoding_rs::Encoding::for_label(label.as_bytes())
                .ok_or_else(|| anyhow!("unknown encoding `{label}`"))?;
            enc.decode_with_bom_removal(&bytes).0
        }
        None => match std::str::from_utf8(&bytes) {
            Ok(s) => Cow::Borrowed(s.strip_prefix('\u{feff}').unwrap_or(s)),
            Err(e) => bail!(
                "not UTF-8 (byte {} is not valid); set the dataset's `encoding`, e.g. \"windows-1252\"",
                e.valid_up_to()
            ),
        },
    };
    let mut body: &str = &text;
    for _ in 0..d.skip_rows {
        body = body.split_once('\n').map(|(_, rest)| rest).unwrap_or("");
    }
    let delimiter = d.delimiter.unwrap_or(',');
    let mut rdr = csv::ReaderBuilder::new().flexible(true).delimiter(delimiter as u8).from_reader(body.as_bytes());
    let headers: Vec<String> = rdr.headers()?.iter().map(|h| h.trim().to_string()).collect();
    let find = |name: &str| {
        headers.iter().position(|h| h == name).ok_or_else(|| {
            let other =
                [';', '\t', '|'].into_iter().find(|c| *c != delimiter && headers.iter().any(|h| h.contains(*c)));
            let hint = match other {
                Some(c) => {
                    format!("; the header looks delimited by {c:?}: set the dataset's delimiter = {:?}", c.to_string())
                }
                None if d.skip_rows == 0 => "; is the header on another line? (`skip_rows`)".to_string(),
                None => String::new(),
            };
            anyhow!("no coordinate column `{name}` (columns: {}){hint}", headers.join(", "))
        })
    };
    let (ix, iy) = (find(xcol)?, find(ycol)?);
    let thousands = d.thousands.as_deref();
    // each column's cells (trimmed; empty = missing) end to end in one string, typed column by column after:
    // no allocation per row or per cell
    let mut columns: Vec<(String, Vec<usize>)> = vec![(String::new(), Vec::new()); headers.len()];
    let mut geoms = BinaryBuilder::new();
    // coordinates that are there but not numbers: how many, and the first
    let (mut unreadable, mut example) = (0, None);
    let mut rec = csv::StringRecord::new();
    for i in 0.. {
        if !rdr.read_record(&mut rec).with_context(|| format!("data row {i} (counting from 0)"))? {
            break;
        }
        let mut num = |j: usize| {
            let cell = rec.get(j).map(str::trim).filter(|s| !s.is_empty())?;
            let v = parse_number(cell, thousands);
            if v.is_none() {
                unreadable += 1;
                example.get_or_insert_with(|| format!("`{}` = \"{cell}\" in data row {i}", headers[j]));
            }
            v
        };
        let (x, y) = (num(ix), num(iy));
        geoms.append_option(match (x, y) {
            (Some(x), Some(y)) => Some(to_wkb(&Geometry::Point(Point::new(x, y)))),
            _ => None,
        });
        for (j, (text, ends)) in columns.iter_mut().enumerate() {
            text.push_str(rec.get(j).map_or("", str::trim));
            ends.push(text.len());
        }
    }
    if let Some(example) = example {
        let hint = if thousands.is_none() { " (if they use a thousands separator, set `thousands`)" } else { "" };
        ctx::warn(format!(
            "{}: {unreadable} coordinates are not numbers, e.g. {example}; those rows have no geometry{hint}",
            path.display()
        ));
    }
    let attrs = headers
        .into_iter()
        .zip(&columns)
        .map(|(h, (text, ends))| {
            let cells = || {
                let starts = std::iter::once(0).chain(ends.iter().copied());
                starts.zip(ends).map(|(a, &b)| (a < b).then(|| &text[a..b]))
            };
            let col = if Some(&h) == d.id.as_ref() {
                Column::Text(cells().map(|c| c.map(str::to_string)).collect())
            } else {
                Column::from_text(cells, thousands)
            };
            (h, col)
        })
        .collect();
    Ok(FileTable { attrs, geoms: finish(geoms), declared_crs: None })
}

/// A reader's geometries as one array, without the builder's spare capacity (up to half of it).
fn finish(mut geoms: BinaryBuilder) -> BinaryArray {
    let mut geoms = geoms.finish();
    geoms.shrink_to_fit();
    geoms
}

/// Reads one file of a dataset: one table, or one per GeoPackage layer (with the layer's name).
pub fn read_file(d: &Dataset, path: &Path) -> Result<Vec<(Option<String>, FileTable)>> {
    let one = |t: FileTable| vec![(None, t)];
    Ok(match d.format {
        Format::Geojson => one(read_geojson(path, d.id.as_deref())?),
        Format::Shp => one(read_shapefile(path, d.encoding.as_deref())?),
        Format::Csv => one(read_csv_points(path, d)?),
        Format::Gpkg => read_gpkg(path, d.layer.as_deref())?.into_iter().map(|(l, t)| (Some(l), t)).collect(),
    })
}

/// The format's default CRS, when neither the manifest nor the file says.
fn default_crs(format: Format) -> Option<(&'static str, &'static str)> {
    match format {
        Format::Geojson => Some(("OGC:CRS84", "the GeoJSON default (RFC 7946: WGS84 lon/lat)")),
        Format::Csv => Some(("EPSG:4326", "the CSV default (lon/lat in degrees)")),
        Format::Shp | Format::Gpkg => None,
    }
}

/// The CRS of one file: the manifest's, else the file's own, else the format's default.
fn file_crs(d: &Dataset, declared: Option<(String, &'static str)>) -> Result<(String, String)> {
    if let Some(c) = &d.crs {
        return Ok((c.clone(), "the manifest's `crs`".into()));
    }
    if let Some((c, origin)) = declared {
        return Ok((c, origin.into()));
    }
    match default_crs(d.format) {
        Some((c, origin)) => Ok((c.into(), origin.into())),
        None => bail!("no .prj file and no `crs` in the manifest: give the dataset crs = \"EPSG:<code>\""),
    }
}

/// Concatenates the files of one dataset into its raw table (columns by name, then `geometry`,
/// `source_file`, `source_row`), every row of every file.
pub fn raw_table(files: &DatasetFiles) -> Result<Table> {
    let d = &files.dataset;
    let mut attrs: IndexMap<String, Column> = IndexMap::new();
    // each file's geometries as read (one file, the usual case, is not copied again), the file's name per row
    let mut geoms: Vec<BinaryArray> = Vec::new();
    let mut sources = StringBuilder::new();
    let mut rows: Vec<i64> = Vec::new();
    let mut crs: BTreeMap<String, (String, String)> = BTreeMap::new(); // file -> (spec, origin)
    for f in &files.files {
        let tables = read_file(d, &f.path).with_context(|| format!("dataset `{}`, file {}", d.key, f.name))?;
        for (layer, t) in tables {
            let name = match &layer {
                Some(l) if d.layer.as_deref() == Some("*") => format!("{}#{l}", f.name),
                _ => f.name.clone(),
            };
            let (spec, origin) =
                file_crs(d, t.declared_crs).with_context(|| format!("dataset `{}`, file {name}", d.key))?;
            Crs::parse(&spec)
                .with_context(|| format!("dataset `{}`, file {name}: its CRS (from {origin}) cannot be used", d.key))?;
            crs.insert(name.clone(), (spec, origin));
            let before = rows.len();
            let n = t.geoms.len();
            for (col_name, col) in t.attrs {
                let col_name = match col_name.as_str() {
                    "geometry" | "source_file" | "source_row" => format!("{col_name}_attr"),
                    _ => col_name,
                };
                let mut base = attrs.shift_remove(&col_name).unwrap_or_else(|| Column::Int(Vec::new()));
                if base.len() < before {
                    base.push_nulls(before - base.len());
                }
                attrs.insert(col_name, base.append(col));
            }
            for col in attrs.values_mut() {
                let len = col.len();
                if len < before + n {
                    col.push_nulls(before + n - len);
                }
            }
            geoms.push(t.geoms);
            (0..n).for_each(|_| sources.append_value(&name));
            rows.extend(0..n as i64);
        }
    }
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (name, col) in &attrs {
        let (dt, arr) = col.to_arrow();
        fields.push(Field::new(name, dt, true));
        columns.push(arr);
    }
    fields.push(wkb_field("geometry", true, None));
    columns.push(match geoms.len() {
        0 => Arc::new(BinaryArray::new_null(0)),
        1 => Arc::new(geoms.remove(0)),
        _ => arrow_select::concat::concat(&geoms.iter().map(|g| g as &dyn Array).collect::<Vec<_>>())
            .with_context(|| format!("dataset `{}`: its geometries do not fit one column (2 GiB of WKB)", d.key))?,
    });
    fields.push(Field::new("source_file", DataType::Utf8, false));
    columns.push(Arc::new(sources.finish()));
    fields.push(Field::new("source_row", DataType::Int64, false));
    columns.push(Arc::new(Int64Array::from(rows)));
    // the table's columns are sliced, not copied, all the way to the lake: no builder's spare capacity
    // rides along
    columns.iter_mut().for_each(Array::shrink_to_fit);
    let meta = HashMap::from([
        (SOURCE_CRS.to_string(), serde_json::to_string(&crs)?),
        ("flowrun.dataset".to_string(), d.key.clone()),
    ]);
    let schema = Arc::new(Schema::new_with_metadata(fields, meta));
    Ok(Table::from_batch(RecordBatch::try_new(schema, columns)?))
}

/// A dataset's label files as one table, in their own CRS: the `raw_<dataset>` layer of the lake.
#[node(tags(stage = "raw"))]
pub fn raw(files: &DatasetFiles) -> Result<Table> {
    raw_table(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csv_dataset(extra: &str) -> Dataset {
        let text = format!("repository = \"direct\"\nsource = \"x\"\nformat = \"csv\"\n{extra}");
        let mut d: Dataset = toml::from_str(&text).unwrap();
        d.key = "d".into();
        d
    }

    #[test]
    fn a_geojson_file_read_in_memory_or_streamed_gives_the_same_rows() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.geojson");
        std::fs::write(
            &p,
            r#"{"type": "FeatureCollection", "features": [
            {"type": "Feature", "id": 7, "bbox": [0, 0, 1, 1], "properties": {"fid": 1, "name": "a\u00e9", "w": 2.5},
             "geometry": {"type": "Polygon", "coordinates": [[[0, 0, 9], [1, 0, 9], [1, 1, 9], [0, 0, 9]]]}},
            {"type": "Feature", "properties": null, "geometry": {"type": "GeometryCollection", "geometries": [
                {"type": "Point", "coordinates": [3, 4]}, {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]]]}]}},
            {"type": "Feature", "properties": {"name": "c", "fid": 3, "new": true}, "geometry": null},
            {"type": "Feature", "properties": {"fid": 4}, "geometry": {"type": "MultiPolygon", "coordinates": []}}]}"#,
        )
        .unwrap();
        let memory = read_geojson_up_to(&p, Some("fid"), u64::MAX).unwrap();
        let streamed = read_geojson_up_to(&p, Some("fid"), 0).unwrap();
        assert_eq!(format!("{:?}", memory.attrs), format!("{:?}", streamed.attrs));
        assert_eq!(memory.geoms, streamed.geoms);
        assert!(
            matches!(&memory.attrs["fid"], Column::Text(v) if v[..] == [Some("1".into()), None, Some("3".into()), Some("4".into())])
        );
        assert!(matches!(&memory.attrs["name"], Column::Text(v) if v[0].as_deref() == Some("a\u{e9}")));
        assert!(matches!(&memory.attrs["new"], Column::Bool(v) if v[..] == [None, None, Some(true), None]));
        let geoms: Vec<Option<Geometry<f64>>> =
            memory.geoms.iter().map(|g| g.map(|w| crate::geom::from_wkb(w).unwrap().unwrap())).collect();
        let square = Polygon::new(LineString::from(vec![(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 0.0)]), vec![]);
        assert_eq!(geoms[0], Some(Geometry::Polygon(square)), "z dropped");
        assert!(matches!(&geoms[1], Some(Geometry::GeometryCollection(c)) if c.0.len() == 2));
        assert_eq!(geoms[2], None);
        // a type its coordinates do not fit, and a feature that is not one: errors naming the feature
        for (bad, says) in [
            (r#"{"type": "Point", "coordinates": [[1, 2]]}"#, "feature 0: unsupported geometry: a Point"),
            (r#"{"type": "Circle", "coordinates": [1, 2]}"#, "feature 0: unsupported geometry: a Circle"),
            (r#"{"coordinates": [1, 2]}"#, "feature 0: a geometry without a type"),
            (r#"{"type": "LineString", "coordinates": [[1, 2], [3]]}"#, "feature 0: a position with fewer than two"),
            (r#"{"type": "GeometryCollection", "geometries": [null]}"#, "feature 0: a null in a GeometryCollection"),
            (
                r#"{"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [7]}]}"#,
                "feature 0: a position with fewer than two",
            ),
            (r#"{"type": "LineString", "coordinates": [[1, 2], 3]}"#, "coordinates that mix numbers and arrays"),
        ] {
            let text =
                format!(r#"{{"type": "FeatureCollection", "features": [{{"type": "Feature", "geometry": {bad}}}]}}"#);
            std::fs::write(&p, text).unwrap();
            let err = format!("{:#}", read_geojson(&p, None).err().unwrap());
            assert!(err.contains(says), "{err}");
        }
        std::fs::write(&p, r#"{"type": "FeatureCollection", "features": [{"type": "Topology"}]}"#).unwrap();
        let err = format!("{:#}", read_geojson(&p, None).err().unwrap());
        assert!(err.contains("feature 0: a Topology, not a Feature"), "{err}");
    }

    #[test]
    fn geojson_geometries_are_written_as_the_geo_types_and_the_wkb_crate_write_them() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("g.geojson");
        let cases = [
            r#"{"type": "Point", "coordinates": [1.5, -2, 7]}"#,
            r#"{"type": "LineString", "coordinates": [[0, 0], [1, 1e-7], [2, 1]]}"#,
            r#"{"type": "LineString", "coordinates": []}"#,
            r#"{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]}"#,
            r#"{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1]]]}"#,
            r#"{"type": "Polygon", "bbox": [0, 0, 4, 4], "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]],
                [[1, 1], [2, 1], [2, 2]], [[3, 3], [3.5, 3], [3.5, 3.5], [3, 3]]]}"#,
            r#"{"type": "Polygon", "coordinates": [[]]}"#,
            r#"{"type": "MultiPoint", "coordinates": [[1, 2], [3, 4, 5]]}"#,
            r#"{"type": "MultiPoint", "coordinates": []}"#,
            r#"{"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]], [], [[2, 2], [3, 3], [4, 4]]]}"#,
            r#"{"type": "MultiPolygon", "coordinates": [[[[0, 0], [1, 0], [1, 1]]], [[[5, 5], [6, 5], [6, 6], [5, 5]],
                [[5.2, 5.1], [5.8, 5.1], [5.8, 5.5]]]]}"#,
            r#"{"type": "MultiPolygon", "coordinates": []}"#,
            r#"{"coordinates": [[0, 0], [1, 1]], "type": "LineString"}"#,
            r#"{"type": "GeometryCollection", "geometries": [{"type": "Point", "coordinates": [3, 4]},
                {"type": "GeometryCollection", "geometries": [{"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [0, 1]]]}]},
                {"type": "MultiLineString", "coordinates": [[[0, 0], [1, 1]]]}]}"#,
            r#"{"type": "GeometryCollection", "geometries": []}"#,
        ];
        for case in cases {
            let expected: geojson::Geometry = serde_json::from_str(case).unwrap();
            let expected = to_wkb(&Geometry::<f64>::try_from(expected).unwrap());
            let text =
                format!(r#"{{"type": "FeatureCollection", "features": [{{"type": "Feature", "geometry": {case}}}]}}"#);
            std::fs::write(&p, text).unwrap();
            let read = read_geojson(&p, None).unwrap();
            assert_eq!(read.geoms.value(0), expected.as_slice(), "{case}");
        }
        // a polygon with holes but no exterior is empty (the wkb crate would count no ring, then write the
        // holes); the other polygon of its multipolygon stays whole; a foreign `geometries` member is ignored
        let read = |geometry: &str| {
            let text = format!(
                r#"{{"type": "FeatureCollection", "features": [{{"type": "Feature", "geometry": {geometry}}}]}}"#
            );
            std::fs::write(&p, text).unwrap();
            let wkb = read_geojson(&p, None).unwrap().geoms.value(0).to_vec();
            crate::geom::from_wkb(&wkb).unwrap()
        };
        let square = || Polygon::new(LineString::from(vec![(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 0.0)]), vec![]);
        let hole_only = r#"[[], [[0.2, 0.2], [0.4, 0.2], [0.4, 0.4], [0.2, 0.2]]]"#;
        let empty = read(&format!(r#"{{"type": "Polygon", "coordinates": {hole_only}}}"#));
        assert!(matches!(&empty, Some(Geometry::Polygon(p)) if p.exterior().0.is_empty() && p.interiors().is_empty()));
        let multi =
            format!(r#"{{"type": "MultiPolygon", "coordinates": [{hole_only}, [[[0, 0], [1, 0], [1, 1], [0, 0]]]]}}"#);
        let Some(Geometry::MultiPolygon(m)) = read(&multi) else { panic!("a multipolygon") };
        assert_eq!(m.0.last(), Some(&square()));
        let point =
            r#"{"type": "Point", "coordinates": [1, 2], "geometries": [{"type": "Point", "coordinates": [5, 6]}]}"#;
        assert_eq!(read(point), Some(Geometry::Point(Point::new(1.0, 2.0))));
    }

    #[test]
    fn a_geojson_crs_member_is_read_wherever_it_stands() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.geojson");
        let read = |text: &str| {
            std::fs::write(&p, text).unwrap();
            read_geojson(&p, Some("osm_id")).map(|t| (t.declared_crs.map(|c| c.0), t.attrs))
        };
        let named = r#"{"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::3857"}}"#;
        let feature =
            r#"{"type": "Feature", "properties": {"osm_id": 18446744073709551000, "crs": 1}, "geometry": null}"#;
        for text in [
            format!(r#"{{"type": "FeatureCollection", "crs": {named}, "features": [{feature}]}}"#),
            format!(r#"{{"type": "FeatureCollection", "features": [{feature}], "crs": {named}}}"#),
        ] {
            let (crs, attrs) = read(&text).unwrap();
            assert_eq!(crs.as_deref(), Some("urn:ogc:def:crs:EPSG::3857"), "{text}");
            assert!(matches!(&attrs["osm_id"], Column::Text(v) if v[0].as_deref() == Some("18446744073709551000")));
        }
        let old =
            r#"{"type": "FeatureCollection", "features": [], "crs": {"type": "EPSG", "properties": {"code": 3035}}}"#;
        assert_eq!(read(old).unwrap().0.as_deref(), Some("EPSG:3035"));
        let link = r#"{"type": "FeatureCollection", "features": [], "crs": {"type": "link", "properties": {"href": "x.prj"}}}"#;
        let err = read(link).err().unwrap().to_string();
        assert!(err.contains("set the dataset's crs"), "{err}");
        let none = format!(r#"{{"type": "FeatureCollection", "features": [{feature}]}}"#);
        assert_eq!(read(&none).unwrap().0, None, "a property called crs is not the member");
    }

    #[test]
    fn gpkg_header_is_stripped() {
        let wkb = to_wkb(&Geometry::Point(Point::new(1.0, 2.0)));
        let mut blob = vec![b'G', b'P', 0, 0b0000_0011];
        blob.extend_from_slice(&4326i32.to_le_bytes());
        blob.extend_from_slice(&[0u8; 32]);
        blob.extend_from_slice(&wkb);
        assert_eq!(gpkg_to_wkb(&blob).unwrap(), wkb);
        assert!(gpkg_to_wkb(b"XX").is_err());
    }

    #[test]
    fn column_widening_and_text_inference() {
        let c = Column::Int(vec![Some(1)]).append(Column::Float(vec![Some(2.5)]));
        assert!(matches!(c, Column::Float(ref v) if v == &vec![Some(1.0), Some(2.5)]));
        let t = Column::Int(vec![Some(1)]).append(Column::Text(vec![Some("a".into())]));
        assert!(matches!(t, Column::Text(ref v) if v == &vec![Some("1".to_string()), Some("a".to_string())]));
        fn infer(cells: &[Option<&str>], thousands: Option<&str>) -> Column {
            Column::from_text(|| cells.iter().copied(), thousands)
        }
        assert!(matches!(infer(&[Some("00123"), Some("7")], None), Column::Text(_)), "leading zeros stay text");
        assert!(
            matches!(infer(&[Some("0"), None, Some("-7")], None), Column::Int(ref v) if v == &[Some(0), None, Some(-7)])
        );
        assert!(matches!(
            infer(&[Some("537,585"), None, Some("1.5")], Some(",")),
            Column::Float(ref v) if v == &[Some(537585.0), None, Some(1.5)]
        ));
        assert!(matches!(infer(&[Some("1"), Some("2.5")], None), Column::Float(ref v) if v == &[Some(1.0), Some(2.5)]));
        assert!(matches!(
            infer(&[Some("537,585"), None], None),
            Column::Text(ref v) if v == &[Some("537,585".to_string()), None]
        ));
    }

    #[test]
    fn csv_with_title_line_encoding_thousands_and_projected_coordinates() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        let text = "Register of things \u{2013} 2026\r\nRef ID,Name,X,Y,Note\r\n00123,Caf\u{e9},\"651,410\",\"313,177\",\"two\nlines\"\r\n00124,B,,,\r\n";
        let (bytes, _, _) = encoding_rs::WINDOWS_1252.encode(text);
        std::fs::write(&p, &bytes).unwrap();
        let d = csv_dataset(
            "encoding = \"windows-1252\"\nskip_rows = 1\nx = \"X\"\ny = \"Y\"\ncrs = \"EPSG:27700\"\nthousands = \",\"\nid = \"Ref ID\"\n",
        );
        let t = read_csv_points(&p, &d).unwrap();
        assert_eq!(t.geoms.len(), 2, "every row is kept; the second has no coordinates");
        assert!(t.geoms.is_null(1));
        assert_eq!(
            crate::geom::from_wkb(t.geoms.value(0)).unwrap(),
            Some(Geometry::Point(Point::new(651410.0, 313177.0)))
        );
        assert!(matches!(&t.attrs["Ref ID"], Column::Text(v) if v[0].as_deref() == Some("00123")));
        assert!(matches!(&t.attrs["Name"], Column::Text(v) if v[0].as_deref() == Some("Caf\u{e9}")));
        assert!(matches!(&t.attrs["Note"], Column::Text(v) if v[0].as_deref() == Some("two\nlines")));
        // without the encoding: a clear error naming the fix
        let err = read_csv_points(&p, &csv_dataset("x = \"X\"\ny = \"Y\"\ncrs = \"EPSG:27700\"\n"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("set the dataset's `encoding`"), "{err}");
    }

    #[test]
    fn csv_missing_coordinate_column_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.csv");
        std::fs::write(&p, "\u{feff}id,y,x\n1,2,3\n").unwrap();
        let err = read_csv_points(&p, &csv_dataset("lat = \"lat\"\nlon = \"x\"\n")).err().unwrap().to_string();
        assert!(err.contains("no coordinate column `lat` (columns: id, y, x)"), "{err}");
        let ok = read_csv_points(&p, &csv_dataset("lat = \"y\"\nlon = \"x\"\n")).unwrap();
        assert_eq!(ok.geoms.len(), 1);
        assert!(ok.attrs.contains_key("id"), "the BOM is not part of the first header");
    }

    #[test]
    fn a_hole_in_no_shell_is_its_own_polygon_and_counted() {
        use shapefile::{Point as P, PolygonRing};
        let square = |x: f64, y: f64, d: f64| {
            vec![P::new(x, y), P::new(x, y + d), P::new(x + d, y + d), P::new(x + d, y), P::new(x, y)]
        };
        let rings = vec![
            PolygonRing::Outer(square(0.0, 0.0, 10.0)),
            PolygonRing::Inner(square(1.0, 1.0, 1.0).into_iter().rev().collect()),
            PolygonRing::Inner(square(50.0, 50.0, 1.0).into_iter().rev().collect()),
        ];
        let mut orphans = 0;
        let mp = rings_to_multipolygon(&rings, &mut orphans);
        assert_eq!(orphans, 1);
        assert_eq!(mp.0.len(), 2);
        assert_eq!(mp.0[0].interiors().len(), 1, "the hole inside the shell stays its hole");
    }
}
