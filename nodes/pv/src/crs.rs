//! Coordinate reference systems: naming one (EPSG code, OGC URN, PROJ string, WKT from a `.prj` or a
//! GeoPackage) and reprojecting geometries to WGS84 lon/lat (EPSG:4326, axis order lon/lat) with proj4rs.
//!
//! EPSG codes come from the `crs-definitions` tables (the EPSG registry as PROJ strings), WKT goes through
//! `proj4wkt`. NAD83 (EPSG:4269) and WGS84 differ by about a metre; proj4rs applies the datum shifts the
//! definitions carry (British National Grid's `+towgs84`, for instance).

use anyhow::{Result, anyhow, bail};
use geo::{Geometry, MapCoordsInPlace};
use proj4rs::Proj;

/// A CRS, resolved.
#[derive(Clone)]
pub struct Crs {
    /// What the source said, for messages and `source_crs` columns.
    pub label: String,
    proj: Option<Proj>,
}

impl std::fmt::Debug for Crs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.label)
    }
}

fn wgs84() -> Proj {
    Proj::from_proj_string("+proj=longlat +datum=WGS84 +no_defs").expect("WGS84 is a valid PROJ string")
}

fn is_wgs84_name(s: &str) -> bool {
    let u = s.trim().to_ascii_uppercase();
    matches!(
        u.as_str(),
        "EPSG:4326"
            | "WGS84"
            | "WGS 84"
            | "CRS84"
            | "OGC:CRS84"
            | "URN:OGC:DEF:CRS:OGC:1.3:CRS84"
            | "URN:OGC:DEF:CRS:EPSG::4326"
    )
}

/// WKT that is plain geographic WGS84 (as ESRI and GDAL write it), possibly with a vertical CRS attached.
fn is_wgs84_wkt(wkt: &str) -> bool {
    let u = wkt.to_ascii_uppercase().replace([' ', '_'], "");
    let geog = u.starts_with("GEOGCS[") || u.starts_with("GEOGCRS[") || u.starts_with("COMPD_CS[");
    geog && (u.contains("WGS1984") || u.contains("WGS84")) && !u.contains("PROJCS[") && !u.contains("PROJECTION[")
}

impl Crs {
    /// WGS84 lon/lat.
    pub fn wgs84() -> Crs {
        Crs { label: "EPSG:4326".into(), proj: None }
    }

    /// What the source said.
    pub fn label(&self) -> String {
        self.label.clone()
    }

    /// Whether no reprojection is needed.
    pub fn is_wgs84(&self) -> bool {
        self.proj.is_none()
    }

    /// Resolves `EPSG:n`, `urn:ogc:def:crs:EPSG::n`, `OGC:CRS84`, a PROJ string (`+proj=...`) or WKT.
    ///
    /// ```
    /// use flowrun_pv::crs::Crs;
    /// assert!(Crs::parse("urn:ogc:def:crs:OGC:1.3:CRS84").unwrap().is_wgs84());
    /// assert!(!Crs::parse("EPSG:27700").unwrap().is_wgs84());
    /// assert!(Crs::parse("EPSG:999999").is_err());
    /// ```
    pub fn parse(spec: &str) -> Result<Crs> {
        let s = spec.trim();
        if s.is_empty() {
            bail!("empty CRS");
        }
        if is_wgs84_name(s) {
            return Ok(Crs::wgs84());
        }
        let upper = s.to_ascii_uppercase();
        let code = upper
            .strip_prefix("EPSG:")
            .or_else(|| upper.strip_prefix("URN:OGC:DEF:CRS:EPSG::"))
            .or_else(|| upper.rsplit_once("EPSG::").map(|(_, c)| c));
        if let Some(code) = code {
            let n: u16 = code.trim().parse().map_err(|_| anyhow!("unknown CRS `{s}`"))?;
            if n == 4326 {
                return Ok(Crs::wgs84());
            }
            let def = crs_definitions::from_code(n)
                .ok_or_else(|| anyhow!("unknown CRS `{s}`: EPSG:{n} is not in the EPSG tables"))?;
            let proj = Proj::from_proj_string(def.proj4)
                .map_err(|e| anyhow!("CRS `{s}` ({}) is not supported: {e}", def.proj4))?;
            return Ok(Crs { label: format!("EPSG:{n}"), proj: Some(proj) });
        }
        if s.starts_with('+') {
            let proj = Proj::from_proj_string(s).map_err(|e| anyhow!("unknown CRS `{s}`: {e}"))?;
            return Ok(Crs { label: s.to_string(), proj: Some(proj) });
        }
        if s.contains('[') {
            if is_wgs84_wkt(s) {
                return Ok(Crs::wgs84());
            }
            let projstring =
                proj4wkt::wkt_to_projstring(s).map_err(|e| anyhow!("unknown CRS (WKT could not be read: {e})"))?;
            let proj = Proj::from_proj_string(&projstring).map_err(|e| anyhow!("unknown CRS `{projstring}`: {e}"))?;
            let name = s.split('"').nth(1).unwrap_or("WKT").to_string();
            return Ok(Crs { label: name, proj: Some(proj) });
        }
        bail!("unknown CRS `{s}`: give EPSG:<code>, a PROJ string or WKT")
    }

    /// Reprojects `g` to WGS84 lon/lat degrees in place.
    pub fn to_wgs84(&self, g: &mut Geometry<f64>) -> Result<()> {
        let Some(src) = &self.proj else { return Ok(()) };
        let dst = wgs84();
        let src_latlong = src.is_latlong();
        // map_coords_in_place wants a `Copy` closure: keep the first error in a RefCell it borrows.
        let err = std::cell::RefCell::new(None);
        g.map_coords_in_place(|c| {
            let mut p = if src_latlong { (c.x.to_radians(), c.y.to_radians(), 0.0) } else { (c.x, c.y, 0.0) };
            match proj4rs::transform::transform(src, &dst, &mut p) {
                Ok(()) => geo::coord! { x: p.0.to_degrees(), y: p.1.to_degrees() },
                Err(e) => {
                    err.borrow_mut().get_or_insert(e);
                    c
                }
            }
        });
        match err.into_inner() {
            Some(e) => Err(anyhow!("reprojection from {} failed: {e}", self.label)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::Point;

    fn reproject(crs: &str, x: f64, y: f64) -> (f64, f64) {
        let mut g = Geometry::Point(Point::new(x, y));
        Crs::parse(crs).unwrap().to_wgs84(&mut g).unwrap();
        let Geometry::Point(p) = g else { unreachable!() };
        (p.x(), p.y())
    }

    #[test]
    fn british_national_grid() {
        // Caister water tower, the Ordnance Survey guide's worked example: E 651409.903, N 313177.270.
        // Reference: PROJ 9 (pyproj, EPSG:27700 -> EPSG:4326 with the +towgs84 Helmert shift) gives
        // 1.7160520 E, 52.6579786 N.
        let (lon, lat) = reproject("EPSG:27700", 651_409.903, 313_177.270);
        assert!((lat - 52.657_978_6).abs() < 1e-6, "{lat}");
        assert!((lon - 1.716_052_0).abs() < 1e-6, "{lon}");
    }

    #[test]
    fn etrs89_laea_europe() {
        // EPSG:3035 false origin: 52 N, 10 E at (4321000, 3210000)
        let (lon, lat) = reproject("EPSG:3035", 4_321_000.0, 3_210_000.0);
        assert!((lon - 10.0).abs() < 1e-6 && (lat - 52.0).abs() < 1e-6, "{lon} {lat}");
    }

    #[test]
    fn nad83_is_close_to_wgs84() {
        let (lon, lat) = reproject("EPSG:4269", -119.84, 36.93);
        assert!((lon - -119.84).abs() < 1e-4 && (lat - 36.93).abs() < 1e-4, "{lon} {lat}");
    }

    #[test]
    fn esri_wgs84_prj_with_vertical_datum() {
        let prj = r#"GEOGCS["GCS_WGS_1984",DATUM["D_WGS_1984",SPHEROID["WGS_1984",6378137.0,298.257223563]],PRIMEM["Greenwich",0.0],UNIT["Degree",0.0174532925199433]],VERTCS["EGM96_Geoid",VDATUM["EGM96_Geoid"],PARAMETER["Vertical_Shift",0.0],PARAMETER["Direction",1.0],UNIT["Meter",1.0]]"#;
        assert!(Crs::parse(prj).unwrap().is_wgs84());
    }

    #[test]
    fn unknown_crs_is_an_error() {
        assert!(Crs::parse("EPSG:1").is_err());
        assert!(Crs::parse("my favourite projection").unwrap_err().to_string().contains("unknown CRS"));
    }
}
