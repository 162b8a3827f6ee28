//! Coordinate reference systems: resolving what a dataset says its CRS is (an EPSG code or URN, a PROJ string,
//! or WKT from a `.prj` file or a GeoPackage) and reprojecting its geometries to WGS84 lon/lat degrees with
//! proj4rs, using the EPSG definitions (PROJ.4 strings and WKT) of `crs-definitions`.
//!
//! **Resolving a WKT.** OGC/GDAL WKT1, ESRI WKT1 and the basics of WKT2 are parsed into a tree. The EPSG code
//! comes from (a) `AUTHORITY["EPSG",n]` / `ID["EPSG",n]` on the root CRS, or else from the definitions whose
//! PROJ.4 parameters match the WKT's (projection method in its OGC, ESRI or EPSG spelling, parameters,
//! ellipsoid with 1/f = 0 a sphere, prime meridian, unit); among those, the ones with the same datum name are
//! preferred, then (b) the ones with the same CRS name, normalized (case, punctuation, `WGS_1984` = `WGS 84`,
//! ESRI's `GCS_`/`D_` prefixes, a few ESRI aliases). A name thus never wins against the parameters or the
//! datum, and (c) parameters alone identify a CRS whose name is unknown. Matches that still differ in datum
//! shift identify nothing. An identified code is reprojected with its definition's PROJ.4 string, anything else
//! with a PROJ string built from the WKT's own parameters and its `TOWGS84`, if any.
//!
//! **Datum policy: never a silent null shift.** No shift is applied for WGS84-compatible datums (WGS84, ETRS89,
//! NAD83, GDA94/GDA2020, NZGD2000, SIRGAS, ITRF; `+towgs84=0,0,0`, `+datum=WGS84`/`NAD83`, or a WGS84/GRS80
//! ellipsoid with no other datum information; they agree with WGS84 within a metre or two) and for spheres,
//! which are projection surfaces rather than datums (PROJ's "ballpark" transformation applies no shift to them
//! either). Every other datum needs a known shift: `+towgs84`, or a `+datum=` that proj4rs resolves to one
//! without grid files. NAD27, grid shifts (`+nadgrids` other than `@null`) and datums without any shift are
//! refused, with an error that names the CRS and datum and says what to give instead (`crs = "EPSG:<code>"`, or
//! a PROJ string with `+towgs84`).
//!
//! **Bounds.** Every reprojected coordinate must be finite and within lon [-180, 180], lat [-90, 90].
//!
//! **Axis order** is never read from the CRS: x is the longitude or easting unless the dataset says otherwise
//! ([`Crs::with_lat_lon_order`]).
//!
//! Two proj4rs 0.1 bugs are worked around: it ignores `+k_0` (so it is passed as `+k`), and it adds `+pm` in
//! degrees to radians (and ignores it for lon/lat CRSs), so prime meridians are folded into `+lon_0` or applied
//! here.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock, OnceLock};

use anyhow::{Result, anyhow, bail};
use geo::{Coord, Geometry, MapCoordsInPlace};
use proj4rs::Proj;

/// The target of every reprojection, built once.
static WGS84: LazyLock<Proj> =
    LazyLock::new(|| Proj::from_proj_string("+proj=longlat +datum=WGS84 +no_defs").expect("a valid PROJ string"));

/// A resolved CRS. Clones share the resolution.
#[derive(Clone)]
pub struct Crs {
    inner: Arc<Resolved>,
    lat_lon: bool,
}

#[derive(Clone)]
struct Resolved {
    label: String,
    epsg: Option<u32>,
    /// `None` for WGS84-compatible geographic CRSs, which need only `to_deg` and `pm`.
    proj: Option<Proj>,
    /// Degrees per angular unit of geographic source coordinates (1, or 0.9 for grads).
    to_deg: f64,
    /// Prime meridian of geographic sources, degrees east of Greenwich (proj4rs ignores `+pm` for them).
    pm: f64,
    /// The datum shift applied, for reports: `none (WGS84-compatible)`, `+towgs84=...`.
    shift: String,
}

impl std::fmt::Debug for Crs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.inner.label)?;
        if self.lat_lon { f.write_str(" (lat/lon order)") } else { Ok(()) }
    }
}

impl Crs {
    /// WGS84 lon/lat degrees: nothing to do.
    pub fn wgs84() -> Crs {
        let inner = Resolved {
            label: "EPSG:4326 (WGS 84)".into(),
            epsg: Some(4326),
            proj: None,
            to_deg: 1.0,
            pm: 0.0,
            shift: "none (WGS84)".into(),
        };
        Crs { inner: Arc::new(inner), lat_lon: false }
    }

    /// Resolves `EPSG:n`, `urn:ogc:def:crs:EPSG::n` (and the 2008 GeoJSON URN forms), OGC:CRS84, a PROJ string
    /// (`+proj=...`), or WKT (OGC/GDAL WKT1, ESRI WKT1 as in `.prj` files, WKT2 basics).
    pub fn parse(spec: &str) -> Result<Crs> {
        let s = spec.trim_start_matches('\u{feff}').trim();
        let upper = s.to_ascii_uppercase();
        let crs84 = upper.starts_with("URN:OGC:DEF:CRS:OGC:") && upper.ends_with(":CRS84");
        let resolved = if s.is_empty() {
            bail!("empty CRS")
        } else if crs84 || matches!(upper.as_str(), "WGS84" | "WGS 84" | "CRS84" | "OGC:CRS84") {
            let mut crs = Crs::wgs84();
            Arc::make_mut(&mut crs.inner).label = "OGC:CRS84 (WGS 84, lon/lat)".into();
            return Ok(crs);
        } else if let Some(code) = epsg_code(&upper) {
            from_epsg(code.map_err(|_| anyhow!("unknown CRS `{s}`"))?)?
        } else if s.starts_with('+') {
            from_proj_string(s, s.to_string(), None, 1.0)?
        } else if s.contains(['[', '(']) {
            from_wkt(s)?
        } else {
            bail!("unknown CRS `{s}`: give EPSG:<code>, a PROJ string (+proj=...) or WKT")
        };
        Ok(Crs { inner: Arc::new(resolved), lat_lon: false })
    }

    /// Whether coordinates are already WGS84 lon/lat degrees (or WGS84-compatible ones), so that nothing needs
    /// reprojecting.
    pub fn is_wgs84(&self) -> bool {
        let r = &self.inner;
        r.proj.is_none() && r.to_deg == 1.0 && r.pm == 0.0 && !self.lat_lon
    }

    /// The identified EPSG code, if any.
    pub fn epsg(&self) -> Option<u32> {
        self.inner.epsg
    }

    /// `EPSG:27700 (OSGB 1936 / British National Grid)`, the WKT's name, or the PROJ string.
    pub fn label(&self) -> String {
        self.inner.label.clone()
    }

    /// The datum shift to WGS84 this CRS is reprojected with: `+towgs84=446.448,...` (a Helmert shift),
    /// `+datum=OSGB36`, or `none (...)` with the reason.
    pub fn datum_shift(&self) -> &str {
        &self.inner.shift
    }

    /// Axis order of the source coordinates: x is the longitude or easting (the GIS order, the default), or,
    /// with `yes`, x is the latitude (northing) and y the longitude (easting).
    pub fn with_lat_lon_order(mut self, yes: bool) -> Crs {
        self.lat_lon = yes;
        self
    }

    /// Reprojects one coordinate to WGS84 lon/lat degrees, refusing results outside [-180, 180] x [-90, 90].
    pub fn transform(&self, x: f64, y: f64) -> Result<(f64, f64)> {
        let r = &*self.inner;
        let (u, v) = if self.lat_lon { (y, x) } else { (x, y) };
        let (lon, lat) = match &r.proj {
            None => (u * r.to_deg + r.pm, v * r.to_deg),
            Some(p) => {
                let mut c = if p.is_latlong() {
                    ((u * r.to_deg + r.pm).to_radians(), (v * r.to_deg).to_radians(), 0.0)
                } else {
                    (u, v, 0.0)
                };
                proj4rs::transform::transform(p, &WGS84, &mut c)
                    .map_err(|e| anyhow!("coordinate ({x}, {y}) cannot be reprojected from {}: {e}", r.label))?;
                (c.0.to_degrees(), c.1.to_degrees())
            }
        };
        if !(lon.abs() <= 180.0 && lat.abs() <= 90.0) {
            bail!("coordinate ({x}, {y}) in {} reprojects to lon {lon}, lat {lat}: not a WGS84 position", r.label);
        }
        Ok((lon, lat))
    }

    /// Reprojects `g` in place to WGS84 lon/lat degrees. Errors name the coordinate (its index in the geometry,
    /// counting from 1); the geometry is then partly reprojected.
    pub fn to_wgs84(&self, g: &mut Geometry<f64>) -> Result<()> {
        // Not `try_map_coords_in_place`: in geo 0.33 it recurses without end through GeometryCollection
        // (`&func`, `&&func`, ...) and fails to compile for `Geometry`.
        let n = Cell::new(0usize);
        let error = RefCell::new(None);
        g.map_coords_in_place(|c| {
            if error.borrow().is_some() {
                return c;
            }
            n.set(n.get() + 1);
            self.transform(c.x, c.y).map_or_else(
                |e| {
                    *error.borrow_mut() = Some(anyhow!("coordinate #{}: {e}", n.get()));
                    c
                },
                |(x, y)| Coord { x, y },
            )
        });
        error.into_inner().map_or(Ok(()), Err)
    }
}

/// The code of `EPSG:n`, `urn:ogc:def:crs:EPSG::n` (or with a version, `...:EPSG:6.6:n`) and
/// `http://www.opengis.net/def/crs/EPSG/0/n`, given upper-cased.
fn epsg_code(upper: &str) -> Option<Result<u32, std::num::ParseIntError>> {
    let rest = ["EPSG:", "URN:OGC:DEF:CRS:EPSG:", "HTTP://WWW.OPENGIS.NET/DEF/CRS/EPSG/"]
        .iter()
        .find_map(|p| upper.strip_prefix(p))?;
    Some(rest.rsplit([':', '/']).next().unwrap_or(rest).trim().parse())
}

/// The `crs-definitions` entry of an EPSG code, if it has a PROJ.4 string.
fn definition(code: u32) -> Option<crs_definitions::Def> {
    u16::try_from(code).ok().and_then(crs_definitions::from_code).filter(|d| !d.proj4.is_empty())
}

fn from_epsg(code: u32) -> Result<Resolved> {
    let def = definition(code).ok_or_else(|| anyhow!("unknown CRS EPSG:{code}: not in the EPSG tables"))?;
    // The definition's WKT gives the name, and the angular unit of geographic CRSs (EPSG:4807 is in grads).
    let wkt = parse_wkt(def.wkt)?;
    let root = wkt.first().ok_or_else(|| anyhow!("EPSG:{code} has no WKT"))?;
    let to_deg = if root.is(GEOGRAPHIC) { degrees_per_unit(root) } else { 1.0 };
    from_proj_string(def.proj4, format!("EPSG:{code} ({})", root.name()), Some(code), to_deg)
}

/// Resolves a PROJ string under the datum policy.
fn from_proj_string(text: &str, label: String, epsg: Option<u32>, to_deg: f64) -> Result<Resolved> {
    let toks = tokens(text);
    let shift = shift_of(&toks).map_err(|why| refuse(&label, &why, None, text, None))?;
    let (fixed, pm) = for_proj4rs(&toks)?;
    let proj = Proj::from_proj_string(&fixed).map_err(|e| anyhow!("CRS `{label}` ({fixed}): proj4rs: {e}"))?;
    // Lon/lat on WGS84 or GRS80 without a shift is WGS84 already. Not on another ellipsoid, even with a zero
    // +towgs84: latitudes then change by up to ~100 m from one ellipsoid to the other.
    let identity = proj.is_latlong() && shift == Shift::None && is_wgs84_ellipsoid(&toks);
    let proj = (!identity).then_some(proj);
    let shift = match shift {
        Shift::Known(s) => s,
        Shift::None if is_sphere(&toks) => "none (coordinates on a sphere, as PROJ's ballpark operation)".into(),
        Shift::None => "none (WGS84-compatible datum)".into(),
    };
    Ok(Resolved { label, epsg, proj, to_deg, pm, shift })
}

fn from_wkt(text: &str) -> Result<Resolved> {
    let nodes = parse_wkt(text)?;
    let (root, bound_towgs84) =
        horizontal(&nodes).ok_or_else(|| anyhow!("unknown CRS: the WKT has no projected or geographic CRS"))?;
    let mut w = WktCrs::read(root)?;
    w.towgs84 = w.towgs84.or(bound_towgs84);
    let shape = w.shape.as_ref().map_err(|e| anyhow!("CRS `{}`: {e}", w.name));
    let ident = match (w.authority.filter(|&c| definition(c).is_some()), &shape) {
        (Some(code), _) => Ident::Code(code as u16),
        (None, Ok(shape)) => identify(&w, shape),
        (None, Err(_)) => Ident::Unknown,
    };
    if let Ident::Code(code) = ident {
        let r = from_epsg(code.into());
        // A definition without a usable shift (NAD27) yields to the WKT's own TOWGS84, if it has one.
        if r.is_ok() || w.towgs84.is_none() {
            return r;
        }
    }
    let proj = w.proj_string(shape?);
    let codes = match ident {
        Ident::Code(c) => vec![c],
        Ident::Ambiguous(c) => c,
        Ident::Unknown => vec![],
    };
    if shift_of(&tokens(&proj)).is_err() {
        let why = format!("datum `{}` has no TOWGS84 and no EPSG code flowrun can identify", w.datum);
        return Err(refuse(&w.name, &why, Some(&codes), &proj, base_shift(root)));
    }
    // A named datum on a WGS84 or GRS80 ellipsoid is not WGS84 for that alone (a local datum can be
    // hundreds of metres off): only the datums known to be WGS84-compatible, or an unnamed one, pass.
    let unnamed = matches!(norm_name(&w.datum).as_str(), "" | "unknown" | "none" | "notspecified" | "undefined");
    if w.towgs84.is_none() && !unnamed && !is_wgs84_datum(&w.datum) && !is_sphere(&tokens(&proj)) {
        let why =
            format!("datum `{}` is not one flowrun knows to be WGS84-compatible, and the WKT has no TOWGS84", w.datum);
        return Err(refuse(&w.name, &why, Some(&codes), &proj, base_shift(root)));
    }
    from_proj_string(&proj, w.name.clone(), None, w.to_deg)
}

/// The datum shift of a projected WKT CRS's geographic CRS, when that one is identified (to suggest it), and
/// whose it is.
fn base_shift(root: &Node) -> Option<(String, String)> {
    let base = WktCrs::read(root.child(GEOGRAPHIC).filter(|_| root.is(PROJECTED))?).ok()?;
    let Ident::Code(code) = identify(&base, base.shape.as_ref().ok()?) else { return None };
    let e = entry(code)?;
    let Ok(Shift::Known(shift)) = &e.shift else { return None };
    Some((shift.clone(), format!(" (the shift of EPSG:{code}, {})", e.name)))
}

/// The error for a datum with no usable shift to WGS84: names the CRS and datum, and says what to give instead,
/// an EPSG code (`codes`: those the WKT matched; `None` when the CRS came as one) or a PROJ string with a
/// shift (`hint`: a known one, and whose it is).
fn refuse(label: &str, why: &str, codes: Option<&[u16]>, proj: &str, hint: Option<(String, String)>) -> anyhow::Error {
    let base: Vec<String> = tokens(proj)
        .into_iter()
        .filter(|(k, _)| !matches!(*k, "towgs84" | "nadgrids" | "no_defs" | "type" | "wktext"))
        .map(|(k, v)| match (k, v) {
            ("datum", _) => "+ellps=clrk66".to_string(), // NAD27, the only datum= refused
            (k, "") => format!("+{k}"),
            (k, v) => format!("+{k}={v}"),
        })
        .collect();
    let (shift, whose) = hint.unwrap_or_else(|| ("+towgs84=dx,dy,dz".into(), String::new()));
    let example = format!("\"{} {shift}\"{whose}", base.join(" "));
    let epsg = match codes {
        None => String::new(),
        Some([]) => "crs = \"EPSG:<code>\" with its EPSG code, or ".into(),
        Some(c) => {
            let mut list: Vec<String> = c.iter().take(8).map(|c| format!("EPSG:{c}")).collect();
            if c.len() > 8 {
                list.push(format!("{} more", c.len() - 8));
            }
            format!("crs = \"EPSG:<code>\" (it matches {}), or ", list.join(", "))
        }
    };
    anyhow!(
        "CRS `{label}`: {why}; reprojecting it without a datum shift would misplace coordinates by up to \
         hundreds of metres. Give the dataset {epsg}a PROJ string with the datum's shift to WGS84 for its area, \
         such as crs = {example}"
    )
}

// ---------------------------------------------------------------------------------------------------------
// PROJ strings: datum policy and proj4rs workarounds

/// `+key=value` pairs of a PROJ string (value "" for flags such as `+no_defs`).
fn tokens(text: &str) -> Vec<(&str, &str)> {
    text.split_whitespace()
        .map(|t| {
            let t = t.trim_start_matches('+');
            t.split_once('=').unwrap_or((t, ""))
        })
        .collect()
}

fn value<'a>(toks: &[(&str, &'a str)], key: &str) -> Option<&'a str> {
    toks.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn number(toks: &[(&str, &str)], key: &str) -> Option<f64> {
    value(toks, key).and_then(|v| v.parse().ok())
}

/// How a datum reaches WGS84.
#[derive(Clone, Debug, PartialEq)]
enum Shift {
    /// WGS84-compatible, or a sphere: no shift.
    None,
    /// A Helmert shift proj4rs applies, as the PROJ token that gives it (`+towgs84=...`, `+datum=potsdam`).
    Known(String),
}

/// The datum shift of a PROJ string, or why it has no usable one.
fn shift_of(toks: &[(&str, &str)]) -> Result<Shift, String> {
    if let Some(grids) = value(toks, "nadgrids") {
        // proj4rs reads `@null` as "no datum": no shift, as PROJ does for EPSG:3857's sphere.
        return match grids {
            "@null" => Ok(Shift::None),
            _ => Err(format!("its datum shift needs the grid file(s) {grids}, which flowrun does not ship")),
        };
    }
    if let Some(t) = value(toks, "towgs84") {
        let mut v: Vec<f64> = t
            .split(',')
            .map(|x| x.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|_| format!("+towgs84={t} is not a list of numbers"))?;
        if v.len() == 7 && v[3..].iter().all(|x| *x == 0.0) {
            v.truncate(3);
        }
        if v.iter().all(|x| *x == 0.0) {
            return Ok(Shift::None);
        }
        let v: Vec<String> = v.iter().map(f64::to_string).collect();
        return Ok(Shift::Known(format!("+towgs84={}", v.join(","))));
    }
    match value(toks, "datum") {
        Some(d) if d.eq_ignore_ascii_case("WGS84") || d.eq_ignore_ascii_case("NAD83") => Ok(Shift::None),
        // proj4rs maps it to optional grids and fails without them: "NAD grid not available".
        Some(d) if d.eq_ignore_ascii_case("NAD27") => Err("its datum NAD27 needs the NADCON grid files, which \
            flowrun does not ship (the contiguous US's Helmert shift, good to about 10 m, is +towgs84=-8,160,176)"
            .into()),
        Some(d) => Ok(Shift::Known(format!("+datum={d}"))),
        None if is_sphere(toks) || is_wgs84_ellipsoid(toks) => Ok(Shift::None),
        None => Err(format!(
            "its datum has no known shift to WGS84 (ellipsoid {}, no +towgs84)",
            value(toks, "ellps").unwrap_or("given by +a")
        )),
    }
}

/// `+R`, `+a` alone, or `+a` = `+b`: a sphere.
fn is_sphere(toks: &[(&str, &str)]) -> bool {
    let shaped = ["b", "rf", "f", "es", "e", "ellps", "datum"].iter().any(|k| value(toks, k).is_some());
    value(toks, "R").is_some()
        || value(toks, "ellps") == Some("sphere")
        || (number(toks, "a").is_some() && (!shaped || number(toks, "a") == number(toks, "b")))
}

/// The WGS84 or GRS80 ellipsoid (or proj4rs's default, WGS84, when none is given).
fn is_wgs84_ellipsoid(toks: &[(&str, &str)]) -> bool {
    match (value(toks, "ellps"), number(toks, "a"), number(toks, "rf"), number(toks, "b")) {
        (Some(e), None, ..) => e.eq_ignore_ascii_case("WGS84") || e.eq_ignore_ascii_case("GRS80"),
        (None, None, ..) => value(toks, "R").is_none(),
        (None, Some(a), Some(rf), _) => a == 6_378_137.0 && (rf - 298.2572).abs() < 1e-4,
        (None, Some(a), None, Some(b)) => a == 6_378_137.0 && (b - 6_356_752.314).abs() < 1e-2,
        _ => false,
    }
}

/// Prime meridians by PROJ name, degrees east of Greenwich.
const PRIME_MERIDIANS: [(&str, f64); 14] = [
    ("greenwich", 0.0),
    ("lisbon", -9.131906111111),
    ("paris", 2.337229166667),
    ("bogota", -74.080916666667),
    ("madrid", -3.687938888889),
    ("rome", 12.452333333333),
    ("bern", 7.439583333333),
    ("jakarta", 106.807719444444),
    ("ferro", -17.666666666667),
    ("brussels", 4.367975),
    ("stockholm", 18.058277777778),
    ("athens", 23.7163375),
    ("oslo", 10.722916666667),
    ("copenhagen", 12.57788),
];

fn prime_meridian(v: &str) -> Option<f64> {
    PRIME_MERIDIANS.iter().find(|(n, _)| n.eq_ignore_ascii_case(v)).map(|(_, d)| *d).or_else(|| v.parse().ok())
}

fn is_latlong(proj: &str) -> bool {
    matches!(proj, "longlat" | "latlong" | "lonlat" | "latlon")
}

/// Rewrites a PROJ string around proj4rs 0.1 bugs: `+k_0` becomes `+k` (proj4rs reads only `k` and `k0`), and
/// `+pm` is folded into `+lon_0` (proj4rs adds it, in degrees, to radians). Returns the string and, for lon/lat
/// CRSs, the prime meridian that the caller adds to longitudes (proj4rs ignores it there).
fn for_proj4rs(toks: &[(&str, &str)]) -> Result<(String, f64)> {
    let pm = match value(toks, "pm") {
        Some(v) => prime_meridian(v).ok_or_else(|| anyhow!("unknown prime meridian +pm={v}"))?,
        None => 0.0,
    };
    let latlong = is_latlong(value(toks, "proj").unwrap_or(""));
    let fold = pm != 0.0 && !latlong;
    let mut out = Vec::with_capacity(toks.len() + 1);
    for &(k, v) in toks {
        out.push(match k {
            "pm" => continue,
            "k_0" if value(toks, "k").is_none() => format!("+k={v}"),
            "lon_0" | "lonc" if fold => {
                let lon: f64 = v.parse().map_err(|_| anyhow!("+{k}={v} is not a number"))?;
                format!("+{k}={}", lon + pm)
            }
            _ if v.is_empty() => format!("+{k}"),
            _ => format!("+{k}={v}"),
        });
    }
    if fold && value(toks, "lon_0").is_none() {
        out.push(format!("+lon_0={pm}"));
    }
    Ok((out.join(" "), if latlong { pm } else { 0.0 }))
}

// ---------------------------------------------------------------------------------------------------------
// CRS shapes: what identification compares

/// The PROJ parameters identification compares (with `+k_0` read as `k`, `+lonc` as `lon_0`).
const PARAMS: [&str; 10] = ["lat_0", "lon_0", "lat_1", "lat_2", "lat_ts", "k", "x_0", "y_0", "alpha", "gamma"];

/// A CRS reduced to what identification compares, in PROJ terms.
#[derive(Clone, Debug, PartialEq)]
struct Shape {
    /// PROJ projection name; `utm` is `tmerc`, every lon/lat alias `longlat`.
    proj: String,
    /// Angles in degrees with longitudes from Greenwich (the prime meridian folded in: for `longlat`, `lon_0`
    /// is the prime meridian), false easting and northing in metres.
    params: BTreeMap<&'static str, f64>,
    /// Semi-major axis in metres.
    a: f64,
    /// Inverse flattening, 0 for a sphere.
    rf: f64,
    /// Metres per linear unit; for `longlat`, degrees per angular unit.
    unit: f64,
    /// PROJ's `+axis`: `enu`, or `wsu` for south-orientated Transverse Mercator.
    axis: String,
}

/// Linear units of PROJ's `+units=` that EPSG definitions use, in metres.
const UNITS: [(&str, f64); 5] =
    [("m", 1.0), ("km", 1000.0), ("ft", 0.3048), ("us-ft", 1200.0 / 3937.0), ("link", 0.201168)];

/// WKT projection method names (OGC, ESRI and EPSG spellings, normalized by `key`) by PROJ projection. The
/// pseudo-projections `tmercso` (south-orientated), `webmerc` (Mercator on the sphere of radius a) and
/// `polar`, `north`, `south` (polar stereographic) are resolved in `Shape::from_wkt`.
const METHODS: [(&str, &str); 19] = [
    ("tmerc", "transversemercator gausskruger"),
    ("tmercso", "transversemercatorsouthorientated transversemercatorsouthoriented"),
    ("laea", "lambertazimuthalequalarea"),
    ("lcc", "lambertconformalconic lambertconformalconic1sp lambertconformalconic2sp"),
    ("lcc", "lambertconicconformal1sp lambertconicconformal2sp"),
    ("aea", "albers albersconicequalarea albersequalarea"),
    ("merc", "mercator mercator1sp mercator2sp mercatorvarianta mercatorvariantb"),
    ("webmerc", "mercatorauxiliarysphere popularvisualisationpseudomercator mercator1spspherical"),
    ("omerc", "hotineobliquemercator hotineobliquemercatorazimuthcenter obliquemercator"),
    ("omerc", "hotineobliquemercatorvarianta hotineobliquemercatorvariantb rectifiedskeworthomorphicnaturalorigin"),
    ("somerc", "swissobliquecylindrical swissobliquemercator"),
    ("sterea", "obliquestereographic doublestereographic"),
    ("stere", "stereographic"),
    ("polar", "polarstereographic polarstereographicvarianta polarstereographicvariantb"),
    ("north", "stereographicnorthpole"),
    ("south", "stereographicsouthpole"),
    ("krovak", "krovak"),
    ("eqc", "equirectangular equidistantcylindrical platecarree"),
    ("cea", "cylindricalequalarea lambertcylindricalequalarea behrmann"),
];

/// WKT parameter names (OGC, ESRI and EPSG spellings, normalized by `key`) by PROJ parameter.
const PARAM_NAMES: [(&str, &str); 12] = [
    ("lat_0", "latitudeoforigin latitudeofcenter latitudeofcentre latitudeofnaturalorigin latitudeoffalseorigin"),
    ("lat_0", "latitudeofprojectioncentre latitudeofprojectioncenter"),
    ("lon_0", "centralmeridian longitudeofcenter longitudeofcentre longitudeoforigin longitudeofnaturalorigin"),
    ("lon_0", "longitudeoffalseorigin longitudeofprojectioncentre longitudeofprojectioncenter"),
    ("lat_1", "standardparallel1 latitudeof1ststandardparallel"),
    ("lat_2", "standardparallel2 latitudeof2ndstandardparallel"),
    ("lat_ts", "latitudeofstandardparallel"),
    ("k", "scalefactor scalefactoratnaturalorigin scalefactoroninitialline scalefactoronpseudostandardparallel"),
    ("x_0", "falseeasting eastingatfalseorigin eastingatprojectioncentre"),
    ("y_0", "falsenorthing northingatfalseorigin northingatprojectioncentre"),
    ("alpha", "azimuth azimuthofinitialline colatitudeofconeaxis"),
    ("gamma", "rectifiedgridangle anglefromrectifiedtoskewgrid xyplanerotation"),
];

/// The PROJ name of a WKT method or parameter name in `table`.
fn lookup(table: &[(&'static str, &str)], name: &str) -> Option<&'static str> {
    let name = key(name);
    table.iter().find(|(_, names)| names.split(' ').any(|n| n == name)).map(|(proj, _)| *proj)
}

/// Lower-case letters and digits only: how method and parameter names are compared.
fn key(s: &str) -> String {
    s.chars().filter(char::is_ascii_alphanumeric).map(|c| c.to_ascii_lowercase()).collect()
}

/// Snaps a unit factor that is 1 up to rounding (`0.0174532925199433` rad is one degree) to 1.
fn snap(f: f64) -> f64 {
    if (f - 1.0).abs() < 1e-12 { 1.0 } else { f }
}

impl Shape {
    /// From a PROJ string. `wkt` = (a, rf, degrees per unit) from the definition's WKT stands in for `+ellps=` and
    /// `+datum=` (proj4rs's ellipsoid table is private) and gives the angular unit of lon/lat CRSs.
    fn from_proj(text: &str, wkt: (f64, f64, f64)) -> Option<Shape> {
        let t = tokens(text);
        let num = |k: &str| number(&t, k);
        let mut proj = value(&t, "proj")?;
        let mut params: BTreeMap<&'static str, f64> = PARAMS.iter().filter_map(|&k| Some((k, num(k)?))).collect();
        if let Some(k) = num("k_0") {
            params.entry("k").or_insert(k);
        }
        if let Some(lonc) = num("lonc") {
            params.insert("lon_0", lonc);
        }
        if proj == "utm" {
            let south = value(&t, "south").is_some();
            let lon_0 = num("zone")? * 6.0 - 183.0;
            let y_0 = if south { 10_000_000.0 } else { 0.0 };
            params = BTreeMap::from([("lon_0", lon_0), ("k", 0.9996), ("x_0", 500_000.0), ("y_0", y_0)]);
            proj = "tmerc";
        } else if proj == "etmerc" {
            proj = "tmerc";
        } else if is_latlong(proj) {
            proj = "longlat";
        }
        *params.entry("lon_0").or_insert(0.0) += value(&t, "pm").map_or(Some(0.0), prime_meridian)?;
        let (a, rf) = match (num("R"), num("a"), num("b"), num("rf")) {
            (Some(r), ..) => (r, 0.0),
            (_, Some(a), Some(b), _) => (a, if a == b { 0.0 } else { a / (a - b) }),
            (_, Some(a), _, Some(rf)) => (a, rf),
            (_, Some(a), ..) if is_sphere(&t) => (a, 0.0),
            _ => (wkt.0, wkt.1),
        };
        let unit = match (proj, num("to_meter"), value(&t, "units")) {
            ("longlat", ..) => wkt.2,
            (_, Some(m), _) => m,
            (_, None, Some(u)) => UNITS.iter().find(|(n, _)| *n == u)?.1,
            _ => 1.0,
        };
        let axis = value(&t, "axis").unwrap_or("enu").into();
        Some(Shape { proj: proj.into(), params, a, rf, unit, axis }.canonical())
    }

    /// From a WKT projection method and its parameters. Angles are in the geographic CRS's unit (`to_deg`
    /// degrees) and lengths in the projected CRS's unit (`to_meter` metres) unless a parameter gives its own
    /// (WKT2). `pm`: the prime meridian, degrees east of Greenwich.
    fn from_wkt<'a>(
        method: &str,
        params: impl Iterator<Item = &'a Node>,
        (to_deg, to_meter, pm): (f64, f64, f64),
        (a, rf): (f64, f64),
    ) -> Result<Shape> {
        let proj = lookup(&METHODS, method).ok_or_else(|| anyhow!("projection method `{method}` is not supported"))?;
        let mut p = BTreeMap::new();
        for node in params {
            let (Some(k), Some(v)) = (lookup(&PARAM_NAMES, node.name()), node.num(0)) else { continue };
            let unit = node.child(&["ANGLEUNIT", "LENGTHUNIT", "SCALEUNIT", "UNIT"]).and_then(|u| u.num(0));
            let v = match k {
                "k" => v * unit.unwrap_or(1.0),
                "x_0" | "y_0" => v * unit.unwrap_or(to_meter),
                _ => v * unit.map_or(to_deg, |u| snap(u.to_degrees())),
            };
            p.insert(k, v);
        }
        *p.entry("lon_0").or_insert(0.0) += pm;
        let (proj, rf, axis) = match proj {
            "tmercso" => ("tmerc", rf, "wsu"),
            "webmerc" => ("merc", 0.0, "enu"),
            "polar" | "north" | "south" => {
                // ESRI: Standard_Parallel_1; WKT1: latitude_of_origin, unless ±90 (variant A); WKT2 (B): lat_ts.
                let lat_0 = p.get("lat_0").copied();
                let ts = p.remove("lat_1").or(p.get("lat_ts").copied()).or(lat_0.filter(|l| l.abs() != 90.0));
                let north = match proj {
                    "north" => true,
                    "south" => false,
                    _ => ts.or(lat_0).unwrap_or(90.0) > 0.0,
                };
                p.insert("lat_0", if north { 90.0 } else { -90.0 });
                if let Some(ts) = ts {
                    p.insert("lat_ts", ts);
                }
                ("stere", rf, "enu")
            }
            proj => (proj, rf, "enu"),
        };
        Ok(Shape { proj: proj.into(), params: p, a, rf, unit: to_meter, axis: axis.into() }.canonical())
    }

    /// Lon/lat on an ellipsoid.
    fn longlat(pm: f64, (a, rf): (f64, f64), to_deg: f64) -> Shape {
        let params = BTreeMap::from([("lon_0", pm)]);
        Shape { proj: "longlat".into(), params, a, rf, unit: to_deg, axis: "enu".into() }
    }

    /// One spelling for equivalent parameter sets (LCC 1SP as 2SP, Mercator's standard parallel as `lat_ts`,
    /// Hotine oblique Mercator with a 90° azimuth as Swiss oblique Mercator, as PROJ does for EPSG:2056).
    fn canonical(mut self) -> Shape {
        let p = &mut self.params;
        match self.proj.as_str() {
            "lcc" => {
                let lat_1 = p.get("lat_1").or(p.get("lat_0")).copied().unwrap_or(0.0);
                p.insert("lat_1", lat_1);
                p.entry("lat_2").or_insert(lat_1);
            }
            "merc" | "cea" | "eqc" => {
                if let Some(lat_1) = p.remove("lat_1") {
                    p.entry("lat_ts").or_insert(lat_1);
                }
                if self.proj == "merc" {
                    p.remove("lat_0");
                    // Mercator 2SP as 1SP: the scale at the equator of the standard parallel.
                    if let Some(ts) = p.remove("lat_ts").map(f64::to_radians) {
                        let es = if self.rf == 0.0 { 0.0 } else { (2.0 - 1.0 / self.rf) / self.rf };
                        p.entry("k").or_insert(ts.cos() / (1.0 - es * ts.sin().powi(2)).sqrt());
                    }
                }
            }
            "stere" => {
                if let Some(lat_0) = p.get("lat_0").copied().filter(|l| l.abs() == 90.0) {
                    p.entry("lat_ts").or_insert(lat_0);
                }
            }
            "omerc"
                if p.get("alpha").is_some_and(|a| (a - 90.0).abs() < 1e-9)
                    && p.get("gamma").is_none_or(|g| (g - 90.0).abs() < 1e-9) =>
            {
                self.proj = "somerc".into();
                p.remove("alpha");
                p.remove("gamma");
            }
            "krovak" => {
                p.remove("gamma"); // ESRI's XY_Plane_Rotation of Krovak East North
            }
            "longlat" => p.retain(|k, _| *k == "lon_0"),
            _ => {}
        }
        self
    }

    fn param(&self, k: &str) -> f64 {
        self.params.get(k).copied().unwrap_or(if k == "k" { 1.0 } else { 0.0 })
    }

    /// Same projection, within about a centimetre on the ground.
    fn same_as(&self, o: &Shape) -> bool {
        let f = |rf: f64| if rf == 0.0 { 0.0 } else { 1.0 / rf };
        let close = |k: &str| {
            let tol = match k {
                "x_0" | "y_0" => 1e-3,
                "k" => 1e-9,
                _ => 1e-7,
            };
            (self.param(k) - o.param(k)).abs() <= tol
        };
        self.proj == o.proj
            && self.axis == o.axis
            && PARAMS.iter().all(|k| close(k))
            && (self.a - o.a).abs() <= 1e-3
            && (f(self.rf) - f(o.rf)).abs() <= 1e-10
            && (self.unit / o.unit - 1.0).abs() <= 1e-9
    }

    /// The PROJ string, without datum (the caller adds it). Longitudes are from Greenwich, so `+pm` appears
    /// only for lon/lat.
    fn to_proj(&self) -> String {
        let mut s = format!("+proj={}", self.proj);
        for (k, v) in &self.params {
            match (self.proj.as_str(), *k) {
                ("longlat", _) if *v != 0.0 => s += &format!(" +pm={v}"),
                ("longlat", _) => {}
                ("omerc", "lon_0") => s += &format!(" +lonc={v}"),
                _ => s += &format!(" +{k}={v}"),
            }
        }
        s += &if self.rf == 0.0 { format!(" +R={}", self.a) } else { format!(" +a={} +rf={}", self.a, self.rf) };
        if self.proj != "longlat" && self.unit != 1.0 {
            s += &format!(" +to_meter={}", self.unit);
        }
        if self.axis != "enu" {
            s += &format!(" +axis={}", self.axis);
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------------------
// WKT

/// A WKT node, `KEYWORD[arg, ...]` (or with parentheses), keyword upper-cased.
#[derive(Debug)]
struct Node {
    key: String,
    args: Vec<Arg>,
}

#[derive(Debug)]
enum Arg {
    Text(String),
    Num(f64),
    /// A bare word, such as `EAST` in `AXIS["Easting",EAST]`.
    Word,
    Node(Node),
}

const PROJECTED: &[&str] = &["PROJCS", "PROJCRS", "PROJECTEDCRS"];
const GEOGRAPHIC: &[&str] =
    &["GEOGCS", "GEOGCRS", "GEOGRAPHICCRS", "GEODCRS", "GEODETICCRS", "BASEGEOGCRS", "BASEGEODCRS"];

impl Node {
    fn is(&self, keys: &[&str]) -> bool {
        keys.contains(&self.key.as_str())
    }

    /// The first argument, when quoted: the name of CRSs, datums, parameters.
    fn name(&self) -> &str {
        match self.args.first() {
            Some(Arg::Text(s)) => s,
            _ => "",
        }
    }

    fn nums(&self) -> impl Iterator<Item = f64> + '_ {
        self.args.iter().filter_map(|a| if let Arg::Num(n) = a { Some(*n) } else { None })
    }

    fn num(&self, i: usize) -> Option<f64> {
        self.nums().nth(i)
    }

    fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.args.iter().filter_map(|a| if let Arg::Node(n) = a { Some(n) } else { None })
    }

    fn child(&self, keys: &[&str]) -> Option<&Node> {
        self.nodes().find(|n| n.is(keys))
    }

    fn children<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Node> {
        self.nodes().filter(move |n| n.key == key)
    }

    /// The factor of this node's unit (`UNIT["metre",1]`, `ANGLEUNIT["degree",0.01745...]`), given directly or
    /// on its axes (WKT2).
    fn unit(&self, keys: &[&str]) -> Option<f64> {
        self.child(keys).or_else(|| self.children("AXIS").find_map(|a| a.child(keys))).and_then(|u| u.num(0))
    }
}

/// Degrees per angular unit of a geographic CRS: 1, or 0.9 for grads.
fn degrees_per_unit(geog: &Node) -> f64 {
    geog.unit(&["UNIT", "ANGLEUNIT"]).map_or(1.0, |u| snap(u.to_degrees()))
}

/// Parses WKT into its top-level nodes (ESRI puts a vertical CRS after the horizontal one: `GEOGCS[..],VERTCS[..]`).
fn parse_wkt(text: &str) -> Result<Vec<Node>> {
    let mut p = WktParser { s: text.trim_start_matches('\u{feff}'), pos: 0 };
    let mut nodes = vec![];
    loop {
        p.skip(|c| c.is_whitespace() || c == ',');
        if p.pos == p.s.len() {
            return Ok(nodes);
        }
        nodes.push(p.node(0)?);
    }
}

struct WktParser<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> WktParser<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn skip(&mut self, f: impl Fn(char) -> bool) -> &'a str {
        let start = self.pos;
        while let Some(c) = self.peek().filter(|&c| f(c)) {
            self.pos += c.len_utf8();
        }
        &self.s[start..self.pos]
    }

    fn fail<T>(&self, what: &str) -> Result<T> {
        let near: String = self.s[self.pos..].chars().take(20).collect();
        bail!("invalid WKT: expected {what} at byte {} (near `{near}`)", self.pos)
    }

    fn node(&mut self, depth: usize) -> Result<Node> {
        let key = self.skip(|c| c.is_ascii_alphanumeric() || c == '_').to_ascii_uppercase();
        self.skip(char::is_whitespace);
        let close = match self.peek() {
            _ if key.is_empty() => return self.fail("a keyword"),
            _ if depth > 32 => return self.fail("less nesting"),
            Some('[') => ']',
            Some('(') => ')',
            _ => return self.fail("`[`"),
        };
        self.pos += 1;
        let mut args = vec![];
        loop {
            self.skip(char::is_whitespace);
            match self.peek() {
                Some(c) if c == close && args.is_empty() => {}
                Some('"') => args.push(Arg::Text(self.text()?)),
                Some(c) if c.is_ascii_digit() || "+-.".contains(c) => {
                    let t = self.skip(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
                    args.push(Arg::Num(t.parse().or_else(|_| self.fail("a number"))?));
                }
                Some(c) if c.is_ascii_alphabetic() => {
                    let start = self.pos;
                    self.skip(|c| c.is_ascii_alphanumeric() || c == '_');
                    self.skip(char::is_whitespace);
                    if matches!(self.peek(), Some('[' | '(')) {
                        self.pos = start;
                        args.push(Arg::Node(self.node(depth + 1)?));
                    } else {
                        args.push(Arg::Word);
                    }
                }
                _ => return self.fail("a value"),
            }
            self.skip(char::is_whitespace);
            match self.peek() {
                Some(',') => self.pos += 1,
                Some(c) if c == close => {
                    self.pos += 1;
                    return Ok(Node { key, args });
                }
                _ => return self.fail(&format!("`,` or `{close}`")),
            }
        }
    }

    /// A quoted string; `""` inside is a quote (WKT2).
    fn text(&mut self) -> Result<String> {
        let mut out = String::new();
        loop {
            self.pos += 1;
            let Some(end) = self.s[self.pos..].find('"') else { return self.fail("a closing quote") };
            out.push_str(&self.s[self.pos..self.pos + end]);
            self.pos += end + 1;
            if self.peek() != Some('"') {
                return Ok(out);
            }
            out.push('"');
        }
    }
}

/// The horizontal CRS among top-level WKT nodes: the first projected or geographic CRS, looking inside compound
/// CRSs and WKT2 bound CRSs, whose Helmert transformation to WGS84 is returned as TOWGS84 parameters.
fn horizontal(nodes: &[Node]) -> Option<(&Node, Option<Vec<f64>>)> {
    for n in nodes {
        if n.is(PROJECTED) || n.is(GEOGRAPHIC) {
            return Some((n, None));
        }
        let found = match n.key.as_str() {
            "COMPD_CS" | "COMPOUNDCRS" => n.nodes().find(|c| c.is(PROJECTED) || c.is(GEOGRAPHIC)),
            "BOUNDCRS" => n.child(&["SOURCECRS"]).and_then(|s| s.child(PROJECTED).or(s.child(GEOGRAPHIC))),
            _ => None,
        };
        if let Some(crs) = found {
            return Some((crs, n.child(&["ABRIDGEDTRANSFORMATION"]).map(helmert)));
        }
    }
    None
}

/// TOWGS84 parameters (m, arc-seconds, ppm) of a WKT2 abridged transformation. PROJ writes the scale as a
/// factor (1.0000067) without unit; coordinate-frame rotations are the position-vector ones negated.
fn helmert(t: &Node) -> Vec<f64> {
    let frame = t.child(&["METHOD"]).is_some_and(|m| key(m.name()).contains("coordinateframe"));
    let params = t.children("PARAMETER").filter_map(|p| Some((p, p.num(0)?)));
    params
        .enumerate()
        .map(|(i, (p, v))| {
            let unit = p.child(&["SCALEUNIT", "ANGLEUNIT", "LENGTHUNIT", "UNIT"]).and_then(|u| u.num(0));
            match (i, unit) {
                (3..=5, Some(u)) => (v * u).to_degrees() * 3600.0 * if frame { -1.0 } else { 1.0 },
                (3..=5, None) => v * if frame { -1.0 } else { 1.0 },
                (6, Some(u)) => v * u * 1e6,
                (6, None) if v > 0.5 => (v - 1.0) * 1e6,
                _ => v,
            }
        })
        .collect()
}

/// A WKT CRS, read: what identification and the PROJ string need.
struct WktCrs {
    name: String,
    geog_name: String,
    datum: String,
    /// `AUTHORITY["EPSG",n]` or `ID["EPSG",n]` of the root CRS.
    authority: Option<u32>,
    /// An error for projection methods that identification and proj4rs do not know.
    shape: Result<Shape>,
    /// GDAL's `EXTENSION["PROJ4","..."]`, authoritative when present (GDAL writes EPSG:3857 so).
    proj4: Option<String>,
    towgs84: Option<Vec<f64>>,
    /// Degrees per angular unit of the geographic CRS.
    to_deg: f64,
}

impl WktCrs {
    fn read(root: &Node) -> Result<WktCrs> {
        let projected = root.is(PROJECTED);
        let geog = if projected { root.child(GEOGRAPHIC) } else { Some(root).filter(|r| r.is(GEOGRAPHIC)) };
        let geog = geog.ok_or_else(|| anyhow!("{} CRSs are not supported, only projected and geographic", root.key))?;
        let datum = geog.child(&["DATUM", "GEODETICDATUM", "ENSEMBLE"]);
        let ellipsoid = datum.and_then(|d| d.child(&["SPHEROID", "ELLIPSOID"]));
        let (a, rf) = ellipsoid
            .and_then(|e| Some((e.num(0)? * e.unit(&["LENGTHUNIT"]).unwrap_or(1.0), e.num(1)?)))
            .ok_or_else(|| anyhow!("WKT `{}` has no ellipsoid", root.name()))?;
        let to_deg = degrees_per_unit(geog);
        // WKT1 writers (GDAL, ESRI) give the prime meridian in degrees whatever the angular unit.
        let pm = geog
            .child(&["PRIMEM", "PRIMEMERIDIAN"])
            .map_or(0.0, |p| p.num(0).unwrap_or(0.0) * p.unit(&["ANGLEUNIT"]).map_or(1.0, |u| snap(u.to_degrees())));
        let proj4 = root
            .children("EXTENSION")
            .find(|e| e.name() == "PROJ4")
            .and_then(|e| e.args.get(1))
            .and_then(|a| if let Arg::Text(s) = a { Some(s.clone()) } else { None });
        let shape = match (&proj4, projected) {
            (_, false) => Ok(Shape::longlat(pm, (a, rf), to_deg)),
            (Some(p), true) => Shape::from_proj(p, (a, rf, to_deg)).ok_or_else(|| anyhow!("bad PROJ4 extension {p}")),
            (None, true) => {
                let (method, holder) = match root.child(&["PROJECTION"]) {
                    Some(p) => (p.name(), root),
                    None => {
                        let conversion = root.child(&["CONVERSION"]);
                        let method = conversion.and_then(|c| c.child(&["METHOD"]));
                        let (Some(c), Some(m)) = (conversion, method) else {
                            bail!("WKT `{}` has no projection method", root.name())
                        };
                        (m.name(), c)
                    }
                };
                let to_meter = snap(root.unit(&["UNIT", "LENGTHUNIT"]).unwrap_or(1.0));
                Shape::from_wkt(method, holder.children("PARAMETER"), (to_deg, to_meter, pm), (a, rf))
            }
        };
        let authority =
            root.child(&["AUTHORITY", "ID"]).filter(|a| a.name().eq_ignore_ascii_case("EPSG")).and_then(|a| {
                match a.args.get(1) {
                    Some(Arg::Text(s)) => s.trim().parse().ok(),
                    Some(Arg::Num(n)) => Some(*n as u32),
                    _ => None,
                }
            });
        Ok(WktCrs {
            name: root.name().to_string(),
            geog_name: geog.name().to_string(),
            datum: datum.map_or("", |d| d.name()).to_string(),
            authority,
            shape,
            proj4,
            towgs84: datum.and_then(|d| d.child(&["TOWGS84"])).map(|t| t.nums().collect()),
            to_deg,
        })
    }

    /// The PROJ string built from the WKT's own parameters, with its TOWGS84 (or a null one for a
    /// WGS84-compatible datum name).
    fn proj_string(&self, shape: &Shape) -> String {
        let mut s = self.proj4.clone().unwrap_or_else(|| shape.to_proj());
        if self.proj4.is_none() {
            match &self.towgs84 {
                Some(t) => s += &format!(" +towgs84={}", t.iter().map(f64::to_string).collect::<Vec<_>>().join(",")),
                None if shape.rf != 0.0 && is_wgs84_datum(&self.datum) => s += " +towgs84=0,0,0",
                None => {}
            }
        }
        s + " +no_defs"
    }
}

// ---------------------------------------------------------------------------------------------------------
// Identification

/// ESRI names that `norm_name` cannot derive from EPSG's.
const ESRI_ALIASES: [(&str, u16); 4] = [
    ("ETRS_1989_LAEA", 3035),
    ("ETRS_1989_LCC", 3034),
    ("WGS_1984_Web_Mercator_Auxiliary_Sphere", 3857),
    ("WGS_1984_Web_Mercator", 3857),
];

/// Long datum names as ESRI and EPSG abbreviate them, after `norm_name`'s other steps.
const ABBREVIATIONS: [(&str, &str); 9] = [
    ("northamericandatum", "nad"),
    ("northamerican", "nad"),
    ("europeandatum", "ed"),
    ("european", "ed"),
    ("worldgeodeticsystem", "wgs"),
    ("geocentricdatumofaustralia", "gda"),
    ("newzealandgeodeticdatum", "nzgd"),
    ("deutscheshauptdreiecksnetz", "dhdn"),
    ("adj", ""), // Pulkovo_1942_Adj_1983 is Pulkovo 1942(83)
];

/// Normalized names of WGS84-compatible datums (prefixes): WGS84, ETRS89, NAD83 and its realizations, GDA94,
/// GDA2020, NZGD2000, SIRGAS, ITRF.
const WGS84_DATUMS: [&str; 10] =
    ["wgs84", "etrs89", "edterrestrial", "etrf", "nad83", "gda94", "gda20", "nzgd00", "sirgas", "itrf"];

fn is_wgs84_datum(name: &str) -> bool {
    let n = norm_name(name);
    WGS84_DATUMS.iter().any(|p| n.starts_with(p))
}

/// A CRS or datum name normalized for matching: ESRI's `GCS_`/`D_` prefixes dropped, lower-case letters and
/// digits only, four-digit years after a letter shortened (`WGS_1984` and `WGS 84` both become `wgs84`,
/// `OSGB 1936` becomes `osgb36`), long datum names abbreviated (`North_American_1983` becomes `nad83`).
fn norm_name(name: &str) -> String {
    let mut out = String::new();
    for word in words(name) {
        let c: Vec<char> = word.chars().collect();
        let mut i = 0;
        while i < c.len() {
            let digits = c[i..].iter().take_while(|d| d.is_ascii_digit()).count();
            let after_letter = out.chars().next_back().is_some_and(|l| l.is_ascii_alphabetic());
            let year = digits == 4 && after_letter && matches!(&c[i..i + 2], ['1', '8' | '9'] | ['2', '0']);
            let (from, to) = if year { (i + 2, i + 4) } else { (i, i + digits.max(1)) };
            out.extend(&c[from..to]);
            i += digits.max(1);
        }
    }
    ABBREVIATIONS.iter().fold(out, |s, (long, short)| s.replace(long, short))
}

/// The lower-case words of a name, without ESRI's `GCS_`/`D_` prefixes.
fn words(name: &str) -> impl Iterator<Item = String> + '_ {
    let mut w = name.split(|c: char| !c.is_ascii_alphanumeric()).filter(|w| !w.is_empty()).peekable();
    w.next_if(|first| first.eq_ignore_ascii_case("gcs") || first.eq_ignore_ascii_case("d"));
    w.map(|w| w.to_ascii_lowercase())
}

/// Whether two datum names (or geographic CRS names) name the same datum: equal once normalized, or, when not
/// `exact`, the words of one among those of the other (ESRI's `D_Australian_1966` and EPSG's
/// `Australian_Geodetic_Datum_1966`).
fn same_datum(a: &str, b: &str, exact: bool) -> bool {
    let (wa, wb): (Vec<String>, Vec<String>) = (words(a).collect(), words(b).collect());
    let within = |x: &[String], y: &[String]| x.iter().all(|w| w == "datum" || y.contains(w));
    !wa.is_empty()
        && !wb.is_empty()
        && (norm_name(a) == norm_name(b) || !exact && (within(&wa, &wb) || within(&wb, &wa)))
}

/// An EPSG definition, indexed for identification.
struct Entry {
    code: u16,
    name: String,
    /// Names of its datum and geographic CRS.
    datum: String,
    geog: String,
    shape: Shape,
    shift: Result<Shift, String>,
}

#[derive(Default)]
struct Index {
    /// By code.
    entries: Vec<Entry>,
    /// Codes by normalized name (whole, and the part after ` / `) and ESRI alias.
    by_name: HashMap<String, Vec<u16>>,
}

/// The definitions of `crs-definitions`, parsed once on first use.
fn index() -> &'static Index {
    static INDEX: OnceLock<Index> = OnceLock::new();
    INDEX.get_or_init(|| {
        let mut idx = Index::default();
        for def in (0..=u16::MAX).filter_map(|c| definition(c.into())) {
            let Some(entry) = index_entry(def) else { continue };
            let name = &entry.name;
            for n in [Some(name.as_str()), name.split_once(" / ").map(|(_, p)| p)].into_iter().flatten() {
                idx.by_name.entry(norm_name(n)).or_default().push(entry.code);
            }
            idx.entries.push(entry);
        }
        for (alias, code) in ESRI_ALIASES {
            idx.by_name.entry(norm_name(alias)).or_default().push(code);
        }
        idx
    })
}

fn index_entry(def: crs_definitions::Def) -> Option<Entry> {
    let wkt = parse_wkt(def.wkt).ok()?;
    let root = wkt.first()?;
    let geog = if root.is(GEOGRAPHIC) { root } else { root.child(GEOGRAPHIC)? };
    let datum = geog.child(&["DATUM"])?;
    let ellipsoid = datum.child(&["SPHEROID"])?;
    let wkt_shape = (ellipsoid.num(0)?, ellipsoid.num(1)?, degrees_per_unit(geog));
    Some(Entry {
        code: def.code,
        name: root.name().to_string(),
        datum: datum.name().to_string(),
        geog: geog.name().to_string(),
        shape: Shape::from_proj(def.proj4, wkt_shape)?,
        shift: shift_of(&tokens(def.proj4)),
    })
}

fn entry(code: u16) -> Option<&'static Entry> {
    let idx = index();
    idx.entries.binary_search_by_key(&code, |e| e.code).ok().map(|i| &idx.entries[i])
}

#[derive(Debug, PartialEq)]
enum Ident {
    Code(u16),
    /// Matching definitions that disagree on the datum shift.
    Ambiguous(Vec<u16>),
    Unknown,
}

/// Identifies a WKT CRS among the definitions with the same parameters, preferring those with the same datum,
/// then the same name, then (when the WKT has a TOWGS84) the same shift. A name that contradicts the
/// parameters or the datum thus never wins.
fn identify(w: &WktCrs, shape: &Shape) -> Ident {
    let idx = index();
    let mut pool: Vec<&Entry> = idx.entries.iter().filter(|e| e.shape.same_as(shape)).collect();
    for exact in [false, true] {
        keep_if_any(&mut pool, |e| {
            [&w.datum, &w.geog_name].iter().any(|n| same_datum(n, &e.datum, exact) || same_datum(n, &e.geog, exact))
        });
    }
    let names = [Some(w.name.as_str()), w.name.split_once(" / ").map(|(_, p)| p)];
    let named: Vec<u16> =
        names.into_iter().flatten().filter_map(|n| idx.by_name.get(&norm_name(n))).flatten().copied().collect();
    keep_if_any(&mut pool, |e| named.contains(&e.code));
    if let Some(t) = &w.towgs84 {
        let towgs84 = t.iter().map(f64::to_string).collect::<Vec<_>>().join(",");
        let shift = shift_of(&[("towgs84", &towgs84)]);
        keep_if_any(&mut pool, |e| e.shift == shift);
    }
    match pool.first() {
        None => Ident::Unknown,
        Some(first) if pool.iter().all(|e| e.shift == first.shift) => Ident::Code(first.code),
        Some(_) => Ident::Ambiguous(pool.iter().map(|e| e.code).collect()),
    }
}

/// Keeps the entries for which `f` holds, if any does.
fn keep_if_any(pool: &mut Vec<&Entry>, f: impl Fn(&Entry) -> bool) {
    if pool.iter().any(|e| f(e)) {
        pool.retain(|e| f(e));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::Point;

    fn reproject(crs: &str, x: f64, y: f64) -> (f64, f64) {
        Crs::parse(crs).unwrap().transform(x, y).unwrap()
    }

    fn assert_near((lon, lat): (f64, f64), (elon, elat): (f64, f64), tol: f64) {
        assert!((lon - elon).abs() < tol && (lat - elat).abs() < tol, "({lon}, {lat}) != ({elon}, {elat})");
    }

    const ESRI_27700: &str = r#"PROJCS["British_National_Grid",GEOGCS["GCS_OSGB_1936",DATUM["D_OSGB_1936",SPHEROID["Airy_1830",6377563.396,299.3249646]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["False_Easting",400000.0],PARAMETER["False_Northing",-100000.0],PARAMETER["Central_Meridian",-2.0],PARAMETER["Scale_Factor",0.9996012717],PARAMETER["Latitude_Of_Origin",49.0],UNIT["Meter",1.0]]"#;

    #[test]
    fn british_national_grid() {
        // Caister water tower, the Ordnance Survey guide's worked example: E 651409.903, N 313177.270.
        // Reference: PROJ 9 (pyproj, EPSG:27700 -> EPSG:4326 with the +towgs84 Helmert shift) gives
        // 1.7160520 E, 52.6579786 N.
        assert_near(reproject("EPSG:27700", 651_409.903, 313_177.270), (1.716_052_0, 52.657_978_6), 1e-6);
    }

    #[test]
    fn esri_british_national_grid_is_identified_and_shifted() {
        let crs = Crs::parse(ESRI_27700).unwrap();
        assert_eq!(crs.epsg(), Some(27700));
        assert_near(crs.transform(651_409.903, 313_177.270).unwrap(), (1.716_052_0, 52.657_978_6), 1e-6);
    }

    #[test]
    fn etrs89_laea_europe_false_origin() {
        // EPSG:3035's false origin: 52 N, 10 E at (4321000, 3210000).
        assert_near(reproject("EPSG:3035", 4_321_000.0, 3_210_000.0), (10.0, 52.0), 1e-9);
    }

    #[test]
    fn esri_laea_europe_keeps_its_centre() {
        // Regression: ESRI names LAEA's centre Central_Meridian/Latitude_Of_Origin; it used to be lost (0 N 0 E).
        let prj = r#"PROJCS["ETRS_1989_LAEA",GEOGCS["GCS_ETRS_1989",DATUM["D_ETRS_1989",SPHEROID["GRS_1980",6378137.0,298.257222101]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]],PROJECTION["Lambert_Azimuthal_Equal_Area"],PARAMETER["False_Easting",4321000.0],PARAMETER["False_Northing",3210000.0],PARAMETER["Central_Meridian",10.0],PARAMETER["Latitude_Of_Origin",52.0],UNIT["Meter",1.0]]"#;
        let crs = Crs::parse(prj).unwrap();
        assert_eq!(crs.epsg(), Some(3035));
        assert_near(crs.transform(4_321_000.0, 3_210_000.0).unwrap(), (10.0, 52.0), 1e-9);
        // PROJ 9.5 (pyproj): EPSG:3035 (4000000, 3000000) -> 5.517796212442044 E, 50.024118758541924 N.
        assert_near(crs.transform(4e6, 3e6).unwrap(), (5.517_796_212_442_044, 50.024_118_758_541_924), 1e-9);
    }

    #[test]
    fn esri_sphere_is_a_sphere() {
        // Regression: inverse flattening 0 (a sphere) failed with "Inverse flattening lower than 1".
        let prj = r#"PROJCS["US_National_Atlas_Equal_Area",GEOGCS["GCS_Sphere_Clarke_1866_Authalic",DATUM["D_Sphere_Clarke_1866_Authalic",SPHEROID["Sphere_Clarke_1866_Authalic",6370997.0,0.0]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]],PROJECTION["Lambert_Azimuthal_Equal_Area"],PARAMETER["latitude_of_center",45.0],PARAMETER["longitude_of_center",-100.0],PARAMETER["false_easting",0.0],PARAMETER["false_northing",0.0],UNIT["Meter",1.0]]"#;
        let crs = Crs::parse(prj).unwrap();
        assert_eq!(crs.epsg(), Some(2163));
        // PROJ 9.5: EPSG:2163 (1000000, -500000) -> -88.24679042941278 E, 39.86184159101125 N, no datum shift.
        assert_near(crs.transform(1e6, -5e5).unwrap(), (-88.246_790_429_412_78, 39.861_841_591_011_25), 1e-9);
        // Unidentified (renamed, centre moved), it is still a sphere without a datum shift.
        let custom = prj.replace("US_National_Atlas", "My_Atlas").replace("45.0", "44.0");
        let crs = Crs::parse(&custom).unwrap();
        assert_eq!((crs.epsg(), crs.label()), (None, "My_Atlas_Equal_Area".to_string()));
        assert_near(crs.transform(0.0, 0.0).unwrap(), (-100.0, 44.0), 1e-9);
    }

    #[test]
    fn towgs84_is_not_wgs84() {
        // Regression: "WGS84" inside TOWGS84[...] made this pass through unshifted.
        let wkt = r#"GEOGCS["My OSGB",DATUM["My_Datum",SPHEROID["Airy 1830",6377563.396,299.3249646],TOWGS84[446.448,-125.157,542.06,0.15,0.247,0.842,-20.489]],PRIMEM["Greenwich",0],UNIT["degree",0.0174532925199433]]"#;
        let crs = Crs::parse(wkt).unwrap();
        assert!(!crs.is_wgs84());
        // PROJ 9.5: EPSG:4277 (-1.5, 52.5) -> -1.5014879850609075 E, 52.5003738103626 N.
        assert_near(crs.transform(-1.5, 52.5).unwrap(), (-1.501_487_985_060_907_5, 52.500_373_810_362_6), 1e-7);
        assert_near(reproject("EPSG:4277", -1.5, 52.5), (-1.501_487_985_060_907_5, 52.500_373_810_362_6), 1e-7);
    }

    #[test]
    fn unidentifiable_datums_without_towgs84_are_refused() {
        let tokyo = r#"PROJCS["Tokyo_Custom_TM",GEOGCS["GCS_Tokyo",DATUM["D_Tokyo",SPHEROID["Bessel_1841",6377397.155,299.1528128]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["False_Easting",123456.0],PARAMETER["False_Northing",0.0],PARAMETER["Central_Meridian",139.5],PARAMETER["Scale_Factor",0.9999],PARAMETER["Latitude_Of_Origin",36.0],UNIT["Meter",1.0]]"#;
        let e = Crs::parse(tokyo).unwrap_err().to_string();
        for part in ["Tokyo_Custom_TM", "D_Tokyo", "crs = \"EPSG:", "+proj=tmerc", "+towgs84=-146.414,507.337,680.507"]
        {
            assert!(e.contains(part), "{part} not in: {e}");
        }
        let ed50 = tokyo
            .replace("Tokyo_Custom", "ED50_Custom")
            .replace("GCS_Tokyo", "Custom_Geographic")
            .replace("D_Tokyo", "D_Custom_ED")
            .replace(r#"Bessel_1841",6377397.155,299.1528128"#, r#"International_1924",6378388.0,297.0"#);
        let e = Crs::parse(&ed50).unwrap_err().to_string();
        for part in ["ED50_Custom_TM", "D_Custom_ED", "crs = \"EPSG:", "+towgs84=dx,dy,dz"] {
            assert!(e.contains(part), "{part} not in: {e}");
        }
        // A geographic CRS on the Tokyo datum is identified by name, and shifted.
        let geographic = r#"GEOGCS["GCS_Tokyo",DATUM["D_Tokyo",SPHEROID["Bessel_1841",6377397.155,299.1528128]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]]"#;
        let crs = Crs::parse(geographic).unwrap();
        assert_eq!(crs.epsg(), Some(4301));
        // PROJ 9.5: EPSG:4301 (139.7, 35.7) -> 139.69677095938636 E, 35.703234968378325 N.
        assert_near(crs.transform(139.7, 35.7).unwrap(), (139.696_770_959_386_36, 35.703_234_968_378_325), 1e-5);
    }

    #[test]
    fn nad27_is_refused() {
        let e = Crs::parse("EPSG:4267").unwrap_err().to_string();
        assert!(e.contains("NAD27") && e.contains("grid") && e.contains("crs = \"+proj=longlat +ellps=clrk66"), "{e}");
        let esri = r#"PROJCS["NAD_1927_UTM_Zone_11N",GEOGCS["GCS_North_American_1927",DATUM["D_North_American_1927",SPHEROID["Clarke_1866",6378206.4,294.978698213898]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]],PROJECTION["Transverse_Mercator"],PARAMETER["False_Easting",500000.0],PARAMETER["False_Northing",0.0],PARAMETER["Central_Meridian",-117.0],PARAMETER["Scale_Factor",0.9996],PARAMETER["Latitude_Of_Origin",0.0],UNIT["Meter",1.0]]"#;
        let e = Crs::parse(esri).unwrap_err().to_string();
        assert!(e.contains("EPSG:26711") && e.contains("NAD27"), "{e}");
        // With a shift of its own, it works.
        let with_shift = esri.replace("294.978698213898]]", "294.978698213898],TOWGS84[-8,160,176,0,0,0,0]]");
        let crs = Crs::parse(&with_shift).unwrap();
        assert_eq!(crs.epsg(), None);
        assert!(crs.transform(500_000.0, 4_000_000.0).is_ok());
    }

    #[test]
    fn out_of_range_is_refused() {
        let wgs84 = Crs::parse("EPSG:4326").unwrap();
        let e = wgs84.transform(200.0, 10.0).unwrap_err().to_string();
        assert!(e.contains("(200, 10)"), "{e}");
        let mut g = Geometry::LineString(geo::LineString::from(vec![(1.0, 2.0), (3.0, f64::NAN)]));
        let e = wgs84.to_wgs84(&mut g).unwrap_err().to_string();
        assert!(e.starts_with("coordinate #2:"), "{e}");
        assert!(Crs::parse("EPSG:27700").unwrap().transform(1e9, 1e9).is_err());
    }

    #[test]
    fn lat_lon_order() {
        let crs = Crs::parse("EPSG:4326").unwrap().with_lat_lon_order(true);
        assert!(!crs.is_wgs84());
        let mut g = Geometry::Point(Point::new(52.5, 1.5));
        crs.to_wgs84(&mut g).unwrap();
        assert_eq!(g, Geometry::Point(Point::new(1.5, 52.5)));
        assert_near(
            Crs::parse("EPSG:27700").unwrap().with_lat_lon_order(true).transform(313_177.270, 651_409.903).unwrap(),
            (1.716_052_0, 52.657_978_6),
            1e-6,
        );
    }

    #[test]
    fn labels() {
        assert_eq!(Crs::parse("EPSG:27700").unwrap().label(), "EPSG:27700 (OSGB 1936 / British National Grid)");
        assert_eq!(Crs::parse(ESRI_27700).unwrap().label(), "EPSG:27700 (OSGB 1936 / British National Grid)");
        assert_eq!(Crs::parse("urn:ogc:def:crs:EPSG::3035").unwrap().label(), "EPSG:3035 (ETRS89 / LAEA Europe)");
        assert_eq!(Crs::wgs84().label(), "EPSG:4326 (WGS 84)");
        let proj = "+proj=utm +zone=33 +datum=WGS84";
        assert_eq!((Crs::parse(proj).unwrap().label(), Crs::parse(proj).unwrap().epsg()), (proj.to_string(), None));
        assert_eq!(format!("{:?}", Crs::wgs84().with_lat_lon_order(true)), "EPSG:4326 (WGS 84) (lat/lon order)");
    }

    #[test]
    fn spellings() {
        for s in ["EPSG:4326", "urn:ogc:def:crs:EPSG::4326", "urn:ogc:def:crs:OGC:1.3:CRS84", "OGC:CRS84"] {
            assert!(Crs::parse(s).unwrap().is_wgs84(), "{s}");
        }
        for s in ["epsg:27700", "urn:ogc:def:crs:EPSG:6.6:27700", "http://www.opengis.net/def/crs/EPSG/0/27700"] {
            assert_eq!(Crs::parse(s).unwrap().epsg(), Some(27700), "{s}");
        }
        assert!(Crs::parse("EPSG:1").is_err());
        assert!(Crs::parse("EPSG:x").is_err());
        assert!(Crs::parse("my favourite projection").unwrap_err().to_string().contains("unknown CRS"));
    }

    #[test]
    fn proj_strings_follow_the_datum_policy() {
        let bng = "+proj=tmerc +lat_0=49 +lon_0=-2 +k=0.9996012717 +x_0=400000 +y_0=-100000 +ellps=airy +units=m";
        let e = Crs::parse(bng).unwrap_err().to_string();
        assert!(e.contains("ellipsoid airy") && e.contains(&format!("crs = \"{bng} +towgs84=dx,dy,dz\"")), "{e}");
        let with_shift = format!("{bng} +towgs84=446.448,-125.157,542.06,0.15,0.247,0.842,-20.489");
        assert_near(reproject(&with_shift, 651_409.903, 313_177.270), (1.716_052_0, 52.657_978_6), 1e-6);
        assert!(Crs::parse("+proj=tmerc +ellps=airy +nadgrids=OSTN15_NTv2_OSGBtoETRS.gsb").is_err());
        // Spheres take no shift; neither does GRS80 without datum information.
        assert_near(reproject("+proj=merc +a=6378137 +b=6378137 +nadgrids=@null", 0.0, 0.0), (0.0, 0.0), 1e-12);
        assert_near(reproject("+proj=utm +zone=32 +ellps=GRS80", 500_000.0, 0.0), (9.0, 0.0), 1e-9);
    }

    #[test]
    fn wkt_syntax() {
        let wkt = "\u{feff} GEOGCS ( \"GCS_WGS_1984\",\n  DATUM(\"D_WGS_1984\", SPHEROID(\"WGS_1984\", 6378137.0, 298.257223563)),\n  \
                   PRIMEM(\"Greenwich\", 0.0), UNIT(\"Degree\", 0.0174532925199433) )\n";
        assert!(Crs::parse(wkt).unwrap().is_wgs84());
        for bad in ["PROJCS[\"x\",", "GEOGCS[\"x\"]]", "GEOGCS[\"x\",DATUM[\"y\"]]", "GEOGCS[\"x\" 1]"] {
            assert!(Crs::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zero_shift_on_another_ellipsoid_still_converts_latitudes() {
        let crs = Crs::parse("+proj=longlat +ellps=intl +towgs84=0,0,0,0,0,0,0").unwrap();
        assert!(!crs.is_wgs84());
        // PROJ 9.5 gives 166 E, 21.499438620700484 S: 62 m from the unconverted latitude.
        assert_near(crs.transform(166.0, -21.5).unwrap(), (166.0, -21.499_438_620_700_484), 1e-9);
    }

    #[test]
    fn nad83_is_wgs84_compatible() {
        assert!(Crs::parse("EPSG:4269").unwrap().is_wgs84());
        let esri = r#"GEOGCS["GCS_North_American_1983",DATUM["D_North_American_1983",SPHEROID["GRS_1980",6378137.0,298.257222101]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]]"#;
        let crs = Crs::parse(esri).unwrap();
        assert!(crs.is_wgs84() && crs.epsg() == Some(4269), "{crs:?}");
    }

    #[test]
    fn esri_wgs84_prj_with_vertical_datum() {
        let prj = "\u{feff}GEOGCS[\"GCS_WGS_1984\",DATUM[\"D_WGS_1984\",SPHEROID[\"WGS_1984\",6378137.0,298.257223563]],PRIMEM[\"Greenwich\",0.0],UNIT[\"Degree\",0.0174532925199433]],VERTCS[\"EGM96_Geoid\",VDATUM[\"EGM96_Geoid\"],PARAMETER[\"Vertical_Shift\",0.0],PARAMETER[\"Direction\",1.0],UNIT[\"Meter\",1.0]]";
        assert!(Crs::parse(prj).unwrap().is_wgs84());
    }

    #[test]
    fn proj4rs_k0_and_prime_meridian() {
        // EPSG:27572 has +k_0 and +pm=paris, both mishandled by proj4rs 0.1 (k_0 ignored, pm added in degrees
        // to radians). PROJ 9.5: (700000, 2500000) -> 3.7154047809705175 E, 49.48939074262198 N.
        let expected = (3.715_404_780_970_517_5, 49.489_390_742_621_98);
        assert_near(reproject("EPSG:27572", 700_000.0, 2_500_000.0), expected, 1e-7);
        // The same in ESRI WKT, in grads.
        let esri = r#"PROJCS["NTF_Paris_Lambert_Zone_II",GEOGCS["GCS_NTF_Paris",DATUM["Nouvelle_Triangulation_Francaise_(Paris)",SPHEROID["Clarke_1880_IGN",6378249.2,293.466021293627]],PRIMEM["Paris",2.33722917],UNIT["Grad",0.0157079632679489]],PROJECTION["Lambert_Conformal_Conic"],PARAMETER["False_Easting",600000.0],PARAMETER["False_Northing",2200000.0],PARAMETER["Central_Meridian",0.0],PARAMETER["Standard_Parallel_1",52.0],PARAMETER["Scale_Factor",0.99987742],PARAMETER["Latitude_Of_Origin",52.0],UNIT["Meter",1.0]]"#;
        let crs = Crs::parse(esri).unwrap();
        assert_eq!(crs.epsg(), Some(27572));
        assert_near(crs.transform(700_000.0, 2_500_000.0).unwrap(), expected, 1e-7);
        // Geographic, in grads from Paris. PROJ 9.5: EPSG:4807 (1, 55) -> 3.2365331527653978 E, 49.4999330269 N.
        assert_near(reproject("EPSG:4807", 1.0, 55.0), (3.236_533_152_765_397_8, 49.499_933_026_906_525), 1e-7);
    }

    #[test]
    fn wkt2() {
        let wkt2 = r#"PROJCRS["OSGB36 / British National Grid",BASEGEOGCRS["OSGB36",DATUM["Ordnance Survey of Great Britain 1936",ELLIPSOID["Airy 1830",6377563.396,299.3249646,LENGTHUNIT["metre",1]]],PRIMEM["Greenwich",0,ANGLEUNIT["degree",0.0174532925199433]],ID["EPSG",4277]],CONVERSION["British National Grid",METHOD["Transverse Mercator",ID["EPSG",9807]],PARAMETER["Latitude of natural origin",49,ANGLEUNIT["degree",0.0174532925199433],ID["EPSG",8801]],PARAMETER["Longitude of natural origin",-2,ANGLEUNIT["degree",0.0174532925199433],ID["EPSG",8802]],PARAMETER["Scale factor at natural origin",0.9996012717,SCALEUNIT["unity",1],ID["EPSG",8805]],PARAMETER["False easting",400000,LENGTHUNIT["metre",1],ID["EPSG",8806]],PARAMETER["False northing",-100000,LENGTHUNIT["metre",1],ID["EPSG",8807]]],CS[Cartesian,2],AXIS["(E)",east,ORDER[1],LENGTHUNIT["metre",1]],AXIS["(N)",north,ORDER[2],LENGTHUNIT["metre",1]],USAGE[SCOPE["Engineering survey, topographic mapping."],AREA["United Kingdom (UK)"],BBOX[49.75,-9.01,61.01,2.01]],ID["EPSG",27700]]"#;
        assert_eq!(Crs::parse(wkt2).unwrap().epsg(), Some(27700));
        // Without its ID it is identified by name (the part after " / "), and parameters.
        let crs = Crs::parse(&wkt2.replace(r#",ID["EPSG",27700]"#, "")).unwrap();
        assert_eq!(crs.epsg(), Some(27700));
        assert_near(crs.transform(651_409.903, 313_177.270).unwrap(), (1.716_052_0, 52.657_978_6), 1e-6);
        // pyproj's WKT2 of a PROJ string with +towgs84 is a BOUNDCRS. PROJ 9.5: (3500000, 5500000) ->
        // 8.99896356404719 E, 49.63671064225719 N.
        let bound = r#"BOUNDCRS[SOURCECRS[PROJCRS["unknown",BASEGEOGCRS["unknown",DATUM["Unknown based on Bessel 1841 ellipsoid",ELLIPSOID["Bessel 1841",6377397.155,299.1528128,LENGTHUNIT["metre",1,ID["EPSG",9001]]]],PRIMEM["Greenwich",0,ANGLEUNIT["degree",0.0174532925199433],ID["EPSG",8901]]],CONVERSION["unknown",METHOD["Transverse Mercator",ID["EPSG",9807]],PARAMETER["Latitude of natural origin",0,ANGLEUNIT["degree",0.0174532925199433],ID["EPSG",8801]],PARAMETER["Longitude of natural origin",9,ANGLEUNIT["degree",0.0174532925199433],ID["EPSG",8802]],PARAMETER["Scale factor at natural origin",1,SCALEUNIT["unity",1],ID["EPSG",8805]],PARAMETER["False easting",3500000,LENGTHUNIT["metre",1],ID["EPSG",8806]],PARAMETER["False northing",0,LENGTHUNIT["metre",1],ID["EPSG",8807]]],CS[Cartesian,2],AXIS["(E)",east,ORDER[1],LENGTHUNIT["metre",1,ID["EPSG",9001]]],AXIS["(N)",north,ORDER[2],LENGTHUNIT["metre",1,ID["EPSG",9001]]]]],TARGETCRS[GEOGCRS["WGS 84",DATUM["World Geodetic System 1984",ELLIPSOID["WGS 84",6378137,298.257223563,LENGTHUNIT["metre",1]]],PRIMEM["Greenwich",0,ANGLEUNIT["degree",0.0174532925199433]],CS[ellipsoidal,2],AXIS["latitude",north,ORDER[1],ANGLEUNIT["degree",0.0174532925199433]],AXIS["longitude",east,ORDER[2],ANGLEUNIT["degree",0.0174532925199433]],ID["EPSG",4326]]],ABRIDGEDTRANSFORMATION["Transformation from unknown to WGS84",METHOD["Position Vector transformation (geog2D domain)",ID["EPSG",9606]],PARAMETER["X-axis translation",598.1,ID["EPSG",8605]],PARAMETER["Y-axis translation",73.7,ID["EPSG",8606]],PARAMETER["Z-axis translation",418.2,ID["EPSG",8607]],PARAMETER["X-axis rotation",0.202,ID["EPSG",8608]],PARAMETER["Y-axis rotation",0.045,ID["EPSG",8609]],PARAMETER["Z-axis rotation",-2.455,ID["EPSG",8610]],PARAMETER["Scale difference",1.0000067,ID["EPSG",8611]]]]"#;
        let crs = Crs::parse(bound).unwrap();
        assert_near(
            crs.transform(3_500_000.0, 5_500_000.0).unwrap(),
            (8.998_963_564_047_19, 49.636_710_642_257_19),
            1e-8,
        );
    }

    #[test]
    fn crs_is_cheap_to_share() {
        fn shareable<T: Send + Sync + Clone>() {}
        shareable::<Crs>();
    }
}
