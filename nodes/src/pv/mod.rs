//! The PV-installation pipeline of `flows/doi_pv.toml`: solar-PV datasets published under DOIs,
//! harmonised into one deduplicated, H3-indexed, country-joined lakehouse.
//!
//! Nodes, in flow order (each a plain function, unit-tested on its own):
//! 1. [`manifest::datasets`]: the manifest's datasets, fanned out;
//! 2. [`fetch::files`]: a dataset's files, from a mirror or its repository (download, unzip, filter);
//! 3. [`read::raw`]: the files read into one table in their own CRS (`raw_<dataset>`);
//! 4. [`standardize::standardized`]: EPSG:4326, no Z, unified columns, repaired geometries;
//! 5. [`standardize::measured`]: geodesic area and centroid;
//! 6. [`consolidate::consolidated`]: all datasets in one table, exact duplicates removed
//!    (`stg_pv_consolidated`);
//! 7. [`h3::indexed`]: the H3 cell of each centroid;
//! 8. [`dedup::dedup_overlap`] / [`dedup::dedup_same_cell`]: cross-dataset dedup (the flow's
//!    `dedup_mode` picks one), and [`dedup::dedup_comparison`];
//! 9. [`country::country_files`], [`country::country_polygons`], [`country::located`]: the country of each
//!    installation (`prepared_pv_dedup`), and [`country::country_stats`] (`prepared_country_pv_stats`).
//!
//! Supporting modules: [`geom`] (WKB, geodesic measures, repair), [`crs`] (reprojection) and
//! [`synthetic`] (generated datasets for benchmarks).

pub mod consolidate;
pub mod country;
pub mod crs;
pub mod dedup;
pub mod fetch;
pub mod geom;
pub mod h3;
pub mod manifest;
pub mod read;
pub mod standardize;
pub mod synthetic;
