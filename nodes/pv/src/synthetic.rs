//! Synthetic PV datasets for benchmarks: N polygons shaped like solar farms (rotated rectangles of 50 m to
//! 1.5 km), clustered around real PV regions, in two datasets that overlap by about 10% (so dedup has
//! work to do). Deterministic for a given N and seed.
//!
//! Up to 1M polygons the regions have a fixed size. Above that they grow with N (their sides by
//! `sqrt(N / 1M)`), so the density, and with it the neighbours of each polygon, stays that of 1M: with
//! fixed regions 10M polygons would cover Japan's about nine times over, and the candidate pairs of the
//! dedup would grow with the square of N, which measures the data rather than the code. The datasets of
//! N <= 1M are the same as before regions grew. This holds up to about 11M polygons: beyond that regions
//! start to overlap one another (Spain and Germany first), and past about 140M Australia's reaches the pole.

use std::io::{BufWriter, Write};
use std::path::Path;

use anyhow::Result;

const REGIONS: &[(f64, f64, f64)] = &[
    // (lon, lat, spread in degrees)
    (78.0, 15.0, 6.0),    // India
    (105.0, 36.0, 8.0),   // China
    (-118.0, 35.0, 4.0),  // California
    (-98.0, 33.0, 6.0),   // Texas
    (10.0, 50.0, 5.0),    // Germany
    (-3.5, 38.5, 3.0),    // Spain
    (140.0, 36.0, 2.0),   // Japan
    (135.0, -30.0, 10.0), // Australia
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A polygon in a region whose sides are scaled by `scale`.
fn polygon(rng: &mut Rng, scale: f64) -> (f64, f64, Vec<(f64, f64)>) {
    let (lon0, lat0, spread) = REGIONS[(rng.next() * REGIONS.len() as f64) as usize % REGIONS.len()];
    let spread = spread * scale;
    let (cx, cy) = (lon0 + (rng.next() - 0.5) * spread, lat0 + (rng.next() - 0.5) * spread);
    let (w, h) = (50.0 + rng.next() * 1450.0, 50.0 + rng.next() * 800.0);
    let angle = rng.next() * std::f64::consts::PI;
    let m_per_deg_lat = 111_320.0;
    let m_per_deg_lon = m_per_deg_lat * cy.to_radians().cos();
    let corners = [(-w / 2.0, -h / 2.0), (w / 2.0, -h / 2.0), (w / 2.0, h / 2.0), (-w / 2.0, h / 2.0)];
    let mut ring: Vec<(f64, f64)> = corners
        .iter()
        .map(|(x, y)| {
            let (rx, ry) = (x * angle.cos() - y * angle.sin(), x * angle.sin() + y * angle.cos());
            (cx + rx / m_per_deg_lon, cy + ry / m_per_deg_lat)
        })
        .collect();
    ring.push(ring[0]);
    (cx, cy, ring)
}

/// The dataset keys of a synthetic mirror of `datasets` datasets: `synthetic_a`, `synthetic_b`, ...
pub fn dataset_names(datasets: usize) -> Vec<String> {
    (0..datasets.clamp(1, 26)).map(|i| format!("synthetic_{}", (b'a' + i as u8) as char)).collect()
}

/// The `[config.manifest.*]` sections that describe a synthetic mirror of `datasets` datasets.
pub fn manifest(datasets: usize) -> String {
    dataset_names(datasets)
        .iter()
        .map(|name| {
            format!(
                "[config.manifest.{name}]\nrepository = \"direct\"\nsource = \"https://example.invalid/{name}\"\n\
                 format = \"geojson\"\nid = \"fid\"\ncapacity = \"capacity_kw\"\ncapacity_factor = 0.001\n\n"
            )
        })
        .collect()
}

/// Writes `<mirror>/<name>/pv.geojson` for the [`dataset_names`] of `datasets` (at most 26) datasets, with
/// `n` polygons in all; every dataset after the first repeats, slightly shifted, a tenth of the first's.
pub fn write_mirror(mirror: &Path, n: usize, datasets: usize, seed: u64) -> Result<()> {
    let mut rng = Rng(seed | 1);
    let scale = (n as f64 / 1e6).sqrt().max(1.0);
    let mut shared = Vec::new();
    let names = dataset_names(datasets);
    let k = names.len();
    for (d, name) in names.iter().enumerate() {
        let count = if d + 1 == k { n - n / k * (k - 1) } else { n / k };
        let dir = mirror.join(name);
        std::fs::create_dir_all(&dir)?;
        let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(dir.join("pv.geojson"))?);
        writeln!(w, "{{\"type\":\"FeatureCollection\",\"features\":[")?;
        for i in 0..count {
            let ring = if d > 0 && i < shared.len() {
                let r: &Vec<(f64, f64)> = &shared[i];
                r.iter().map(|(x, y)| (x + 0.00002, y + 0.00001)).collect()
            } else {
                let (_, _, ring) = polygon(&mut rng, scale);
                if d == 0 && i % 10 == 0 {
                    shared.push(ring.clone());
                }
                ring
            };
            let coords: Vec<String> = ring.iter().map(|(x, y)| format!("[{x:.7},{y:.7}]")).collect();
            let sep = if i + 1 < count { "," } else { "" };
            writeln!(
                w,
                "{{\"type\":\"Feature\",\"properties\":{{\"fid\":{i},\"capacity_kw\":{:.1}}},\"geometry\":{{\"type\":\"Polygon\",\"coordinates\":[[{}]]}}}}{sep}",
                rng.next() * 50_000.0,
                coords.join(",")
            )?;
        }
        writeln!(w, "]}}")?;
        w.flush()?;
    }
    Ok(())
}
