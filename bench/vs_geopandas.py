#!/usr/bin/env python3
"""flowrun vs GeoPandas on the PV pipeline (`flows/doi_pv.toml`), side by side, on the same inputs.

For each input, this runs the `flowrun` binary on the flow (cold cache, in a temporary directory, `--json`)
and then the same stages written with the stack of the original thesis pipeline (geopandas, pyogrio, pyproj,
shapely 2, h3-py v4) in a second process, measuring each process's wall time and peak RSS (`os.wait4`). It
prints per-stage times for both, the whole pipeline, peak RSS and the ratios GeoPandas / flowrun, and then
checks that both produced the same final (deduplicated, country-joined) table: same row count, same sum of
`area_m2` (1e-6 relative), same set of H3 cells, same set of `unified_id`s. Any difference is printed and
the script exits 1.

    python3 bench/vs_geopandas.py [--flowrun PATH] [--sizes shared,150000,1000000] [--keep]
    just bench-vs-geopandas                       # builds flowrun, then the line above

Inputs (`--sizes`, default `shared,150000,1000000`):
- `shared`: the real datasets of `../shared/data/pv`, read through the flow as the README runs it (the flow's
  own manifest, `--mirror <that directory>`; datasets the mirror does not hold are left out on both sides),
  as `bench doi-pv` does;
- a number N: N synthetic solar-farm polygons in two overlapping datasets. `bench doi-pv` generates them with
  `flowrun_pv::synthetic::write_mirror` (Rust, in a temporary directory it deletes) and no CLI leaves that
  mirror on disk, so `write_synthetic_mirror` below is an equivalent generator (the same xorshift64 stream,
  regions, shapes and number formatting, seed 42, 2 datasets; its output was checked byte-identical to the
  Rust generator's at N = 1000). The flow's manifest is replaced by `synthetic::manifest(2)`'s sections, and
  Natural Earth is linked in from the shared data, as `bench doi-pv` does.

What each side does and writes:
- flowrun: `flowrun --json run flows/doi_pv.toml --mirror M` with a fresh cache; stage times are the sums of
  the node runs of each node (`duration` in the JSON report; per-dataset nodes run in parallel on the
  machine's cores, so they can add up to more than the wall time); "pipeline" is the run's `duration_ms`
  (the nodes, including writing their results to the cache), "write outputs" the lake materialization
  (DuckLake tables raw_*, stg_pv_consolidated, prepared_pv_dedup, prepared_country_pv_stats, and the
  GeoParquet export of `located`).
- GeoPandas: one stage function per flow node, run one after the other in one process (`--worker`); it
  writes the same GeoParquet file and, through duckdb's Python package with the DuckLake extension flowrun
  caches in ~/.cache/flowrun/duckdb-extensions, the same DuckLake tables (if DuckLake cannot be loaded,
  only the GeoParquet file is written, and the report says so); flowrun's own run-log tables
  (flowrun_runs, ...) are not. "write outputs" includes putting each dataset's raw table together for the
  lake; "whole process" includes starting Python and importing geopandas (reported separately).

Runs in the virtualenv $FLOWRUN_GEOPANDAS_VENV (default ~/.cache/flowrun/test-venv); the script re-executes
itself there, and creates it or pip-installs what is missing (geopandas pyogrio pyproj shapely h3 pyarrow
duckdb). The flowrun binary is --flowrun, else $CARGO_TARGET_DIR/release/flowrun, else
~/.cache/flowrun-target/release/flowrun.
"""

import argparse
import fnmatch
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FLOW = ROOT / "flows/doi_pv.toml"
SHARED = ROOT.parent / "shared/data/pv"
VENV = Path(os.environ.get("FLOWRUN_GEOPANDAS_VENV", Path.home() / ".cache/flowrun/test-venv"))
PACKAGES = {"geopandas": "geopandas", "pyogrio": "pyogrio", "pyproj": "pyproj", "shapely": "shapely>=2.1",
            "h3": "h3>=4", "pyarrow": "pyarrow", "duckdb": "duckdb"}
DUCKDB_EXTENSIONS = Path.home() / ".cache/flowrun/duckdb-extensions"
STAGES = ["datasets", "files", "raw", "standardized", "measured", "consolidated", "indexed", "dedup_pairs",
          "deduplicated", "dedup_comparison", "country_files", "country_polygons", "located", "country_stats"]
FORMAT_EXTENSIONS = {"geojson": ("geojson", "json"), "shp": ("shp",), "gpkg": ("gpkg",), "csv": ("csv",)}


# ------------------------------------------------------------------------------------------------------
# The virtualenv


def ensure_venv() -> Path:
    py = VENV / "bin/python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    probe = "import importlib.util as u, sys; print(' '.join(m for m in sys.argv[1:] if u.find_spec(m) is None))"
    found = subprocess.run([str(py), "-c", probe, *PACKAGES], capture_output=True, text=True, check=True)
    missing = found.stdout.split()
    if missing:
        pip = [str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        subprocess.run(pip + [PACKAGES[m] for m in missing], check=True)
    return py


def in_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


# ------------------------------------------------------------------------------------------------------
# Synthetic data: the generator of nodes/pv/src/synthetic.rs, step for step (see the docstring)

REGIONS = [(78.0, 15.0, 6.0), (105.0, 36.0, 8.0), (-118.0, 35.0, 4.0), (-98.0, 33.0, 6.0), (10.0, 50.0, 5.0),
           (-3.5, 38.5, 3.0), (140.0, 36.0, 2.0), (135.0, -30.0, 10.0)]  # (lon, lat, spread in degrees)
U64 = (1 << 64) - 1


class XorShift:
    def __init__(self, seed: int):
        self.state = (seed | 1) & U64

    def next(self) -> float:
        s = self.state
        s ^= (s << 13) & U64
        s ^= s >> 7
        s ^= (s << 17) & U64
        self.state = s
        return (s >> 11) / float(1 << 53)


def synthetic_polygon(rng: XorShift, scale: float) -> list:
    lon0, lat0, spread = REGIONS[int(rng.next() * len(REGIONS)) % len(REGIONS)]
    spread = spread * scale
    cx = lon0 + (rng.next() - 0.5) * spread
    cy = lat0 + (rng.next() - 0.5) * spread
    w, h = 50.0 + rng.next() * 1450.0, 50.0 + rng.next() * 800.0
    angle = rng.next() * math.pi
    m_per_deg_lat = 111_320.0
    m_per_deg_lon = m_per_deg_lat * math.cos(math.radians(cy))
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    ring = []
    for x, y in [(-w / 2.0, -h / 2.0), (w / 2.0, -h / 2.0), (w / 2.0, h / 2.0), (-w / 2.0, h / 2.0)]:
        rx, ry = x * cos_a - y * sin_a, x * sin_a + y * cos_a
        ring.append((cx + rx / m_per_deg_lon, cy + ry / m_per_deg_lat))
    ring.append(ring[0])
    return ring


def synthetic_names(datasets: int) -> list:
    return [f"synthetic_{chr(ord('a') + i)}" for i in range(max(1, min(datasets, 26)))]


def write_synthetic_mirror(mirror: Path, n: int, datasets: int = 2, seed: int = 42) -> None:
    """`<mirror>/synthetic_<x>/pv.geojson`: n polygons in all; every dataset after the first repeats, shifted
    by about 2 m, a tenth of the first's."""
    rng, shared = XorShift(seed), []
    # regions grow above 1M polygons so the density stays that of 1M (nodes/pv/src/synthetic.rs says why)
    scale = max(math.sqrt(n / 1e6), 1.0)
    names = synthetic_names(datasets)
    for d, name in enumerate(names):
        count = n - n // len(names) * (len(names) - 1) if d + 1 == len(names) else n // len(names)
        (mirror / name).mkdir(parents=True, exist_ok=True)
        with open(mirror / name / "pv.geojson", "w", buffering=1 << 20) as f:
            f.write('{"type":"FeatureCollection","features":[\n')
            for i in range(count):
                if d > 0 and i < len(shared):
                    ring = [(x + 0.00002, y + 0.00001) for x, y in shared[i]]
                else:
                    ring = synthetic_polygon(rng, scale)
                    if d == 0 and i % 10 == 0:
                        shared.append(ring)
                coords = ",".join(f"[{x:.7f},{y:.7f}]" for x, y in ring)
                sep = "," if i + 1 < count else ""
                f.write(f'{{"type":"Feature","properties":{{"fid":{i},"capacity_kw":{rng.next() * 50_000.0:.1f}}},'
                        f'"geometry":{{"type":"Polygon","coordinates":[[{coords}]]}}}}{sep}\n')
            f.write("]}\n")


def synthetic_manifest(datasets: int = 2) -> str:
    return "".join(
        f'[config.manifest.{name}]\nrepository = "direct"\nsource = "https://example.invalid/{name}"\n'
        f'format = "geojson"\nid = "fid"\ncapacity = "capacity_kw"\ncapacity_factor = 0.001\n\n'
        for name in synthetic_names(datasets))


def flow_copy(directory: Path, manifest: str | None) -> Path:
    """The repository's flow under `<directory>/flows/` (so its lake lands in `<directory>/.flowrun`), with
    its manifest replaced when `manifest` is given (as `bench doi-pv` does)."""
    text = FLOW.read_text()
    if manifest is not None:
        start = text.index("[config.manifest.")
        end = text[: text.index("# Nodes.")].rindex("# ----")
        text = text[:start] + manifest + "\n" + text[end:]
    (directory / "flows").mkdir(parents=True, exist_ok=True)
    path = directory / "flows/doi_pv.toml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------------------------------------------
# The GeoPandas pipeline: one function per node of flows/doi_pv.toml (what nodes/pv/src/*.rs computes)


def geo_imports():
    global np, pd, gpd, shapely, pyogrio, h3, Geod, GEOD
    import geopandas as gpd
    import h3
    import numpy as np
    import pandas as pd
    import pyogrio
    import shapely
    import shapely.ops
    from pyproj import Geod
    GEOD = Geod(ellps="WGS84")


def file_filter_matches(pattern: str, name: str) -> bool:
    if pattern.startswith("re:"):
        return re.search(pattern[3:], name) is not None
    return fnmatch.fnmatchcase(name, pattern)


def stage_datasets(manifest: dict, mirror: Path) -> list:
    """The manifest's datasets that are not skipped and that the mirror holds, in key order."""
    out = []
    for key in sorted(manifest):
        d = dict(manifest[key], key=key)
        if d.get("skip") or not (mirror / key).is_dir():
            continue
        out.append(d)
    return out


def stage_files(d: dict, mirror: Path, scratch: Path) -> list:
    """(name within the dataset, path) of the files to read: the format's files that pass include/exclude,
    zip archives unpacked first, sorted by name."""
    root = mirror / d["key"]
    available = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    if d.get("compression") == "zip":
        import zipfile
        unpacked = []
        for name, path in available:
            if name.lower().endswith(".zip"):
                target = scratch / "unpacked" / d["key"] / name
                with zipfile.ZipFile(path) as z:
                    z.extractall(target)
                unpacked += [(p.relative_to(target).as_posix(), p) for p in target.rglob("*") if p.is_file()]
            else:
                unpacked.append((name, path))
        available = unpacked
    out = []
    for name, path in available:
        base = name.rsplit("/", 1)[-1]
        included = not d.get("include") or any(file_filter_matches(f, base) for f in d["include"])
        excluded = any(file_filter_matches(f, base) for f in d.get("exclude", []))
        if name.lower().endswith(tuple("." + e for e in FORMAT_EXTENSIONS[d["format"]])) and included and not excluded:
            out.append((name, path))
    if not out:
        raise SystemExit(f"dataset `{d['key']}`: no {d['format']} file passes the filters")
    return sorted(out)


def read_csv_points(d: dict, path: Path):
    x, y = (d["x"], d["y"]) if "x" in d else (d["lon"], d["lat"])
    df = pd.read_csv(path, encoding=d.get("encoding", "utf-8-sig"), skiprows=d.get("skip_rows", 0),
                     sep=d.get("delimiter", ","), dtype={d["id"]: str} if "id" in d else None,
                     keep_default_na=False, na_values=[""], thousands=d.get("thousands"), skipinitialspace=True)
    df.columns = [c.strip() for c in df.columns]
    xs, ys = pd.to_numeric(df[x], errors="coerce").to_numpy(), pd.to_numeric(df[y], errors="coerce").to_numpy()
    ok = np.isfinite(xs) & np.isfinite(ys)
    geoms = np.full(len(df), None, dtype=object)
    geoms[ok] = shapely.points(xs[ok], ys[ok])
    return gpd.GeoDataFrame(df, geometry=geoms, crs=d.get("crs", "EPSG:4326"))


def stage_raw(d: dict, files: list) -> list:
    """Each file read into a GeoDataFrame in its own CRS (the manifest's `crs` over the file's), with
    `source_file` and `source_row`."""
    parts = []
    for name, path in files:
        if d["format"] == "csv":
            layers = [(name, read_csv_points(d, path))]
        else:
            wanted = d.get("layer")
            names = [l[0] for l in pyogrio.list_layers(path)] if wanted == "*" else [wanted]
            layers = [(f"{name}#{l}" if wanted == "*" else name, pyogrio.read_dataframe(path, layer=l, use_arrow=True))
                      for l in names]
        for label, g in layers:
            if "crs" in d:
                g = g.set_crs(d["crs"], allow_override=True)
            elif g.crs is None and d["format"] == "geojson":
                g = g.set_crs("OGC:CRS84")
            elif g.crs is None:
                raise SystemExit(f"dataset `{d['key']}`, file {label}: no CRS; give the dataset crs = \"EPSG:<code>\"")
            g = g.rename(columns={"source_file": "source_file_attr", "source_row": "source_row_attr"})
            g["source_file"] = label
            g["source_row"] = np.arange(len(g), dtype="int64")
            parts.append((label, g))
    return parts


def as_text(s):
    """A column as text, the way flowrun writes ids: integers without a decimal point, null as None."""
    out = pd.Series(None, index=s.index, dtype=object)
    present = s.notna()
    v = s[present]
    if pd.api.types.is_bool_dtype(v):
        out[present] = v.map({True: "true", False: "false"})
    elif pd.api.types.is_integer_dtype(v):
        out[present] = v.astype("int64").astype(str)
    elif pd.api.types.is_float_dtype(v):
        integral = (v % 1 == 0) & (v.abs() < 9e15)
        out[integral[integral].index] = v[integral].astype("int64").astype(str)
        out[integral[~integral].index] = v[~integral].astype(str)
    else:
        out[present] = v.astype(str).str.strip()
    return out


def as_number(s, d: dict, factor: float):
    if not pd.api.types.is_numeric_dtype(s) and d.get("thousands"):
        s = s.str.replace(d["thousands"], "", regex=False)
    return pd.to_numeric(s, errors="coerce") * factor


def polygon_parts(g) -> list:
    if g is None or g.is_empty:
        return []
    if g.geom_type == "Polygon":
        return [g]
    if g.geom_type in ("MultiPolygon", "GeometryCollection"):
        return [p for part in g.geoms for p in polygon_parts(part)]
    return []


def repair(geoms):
    """Invalid polygons made valid (GEOS make_valid, linework: the even-odd reading flowrun uses), keeping
    their polygonal part; one whose repair has no area is kept as it is."""
    types = shapely.get_type_id(geoms)
    invalid = np.flatnonzero(np.isin(types, (3, 6)) & ~shapely.is_valid(geoms))
    repaired = np.zeros(len(geoms), dtype=bool)
    for k, fixed in zip(invalid, shapely.make_valid(geoms[invalid])):
        polys = polygon_parts(fixed)
        if polys and sum(p.area for p in polys) > 0:
            geoms[k] = shapely.MultiPolygon(polys)
            repaired[k] = True
    return geoms, repaired


def stage_standardized(raw_parts: list, d: dict, processed_at: str):
    """Rows with a geometry that pass the `filter`, reprojected to EPSG:4326 without Z, repaired, with the
    unified columns."""
    several_files = len({label for label, g in raw_parts if len(g)}) > 1
    frames = []
    for label, g in raw_parts:
        keep = g.geometry.notna().to_numpy()
        for column, allowed in d.get("filter", {}).items():
            allowed = [allowed] if isinstance(allowed, str) else allowed
            keep &= as_text(g[column]).isin(allowed).to_numpy()
        g = g[keep]
        if not g.crs.equals("EPSG:4326", ignore_axis_order=True):
            g = g.to_crs("EPSG:4326")
        geoms = shapely.force_2d(np.asarray(g.geometry.array, dtype=object))
        xmin, ymin, xmax, ymax = shapely.total_bounds(geoms)
        if len(g) and (xmin < -180 or xmax > 180 or ymin < -90 or ymax > 90):
            raise SystemExit(f"dataset `{d['key']}`, file {label}: coordinates outside lon/lat after reprojection")
        geoms, repaired = repair(geoms)
        n = len(g)
        source_id = as_text(g[d["id"]]) if "id" in d else pd.Series([None] * n, index=g.index, dtype=object)
        rows = g["source_row"]
        own = source_id.where(source_id.notna(), "row" + rows.astype(str))
        stem = label.split("#")[0].rsplit(".", 1)[0] + ("#" + label.split("#")[1] if "#" in label else "")
        unified = f"{d['key']}:{stem}:" + own if several_files else f"{d['key']}:" + own
        number = lambda col, factor: as_number(g[d[col]], d, d.get(factor, 1.0)) if col in d else pd.Series(
            np.nan, index=g.index)
        frames.append(pd.DataFrame({
            "dataset_name": d["key"], "unified_id": unified, "source_id": source_id, "geometry": geoms,
            "area_m2_source": number("area", "area_factor").astype("float64"),
            "capacity_mw": number("capacity", "capacity_factor").astype("float64"),
            "install_date": as_text(g[d["install_date"]]) if "install_date" in d else None,
            "source_file": label, "source_row": rows.astype("int64"), "geometry_repaired": repaired,
            "processed_at": processed_at,
        }))
    t = pd.concat(frames, ignore_index=True)
    repeated = t["unified_id"].duplicated(keep=False)
    t.loc[repeated, "unified_id"] += "@row" + t.loc[repeated, "source_row"].astype(str)
    return gpd.GeoDataFrame(t, geometry="geometry", crs="EPSG:4326")


def geodesic_areas(geoms):
    """Geodesic area on the WGS84 ellipsoid (pyproj's Geod, Karney's algorithm), m²: per polygon, the
    absolute value of the area of its rings oriented exterior counter-clockwise; 0 for points and lines."""
    geoms = np.asarray(geoms, dtype=object)
    types = shapely.get_type_id(geoms)
    out = np.where(types < 0, np.nan, 0.0)
    areal = np.flatnonzero(np.isin(types, (3, 6, 7)))
    oriented = shapely.orient_polygons(geoms[areal])
    area = GEOD.geometry_area_perimeter
    for k, g, t in zip(areal, oriented, types[areal]):
        out[k] = abs(area(g)[0]) if t == 3 else sum(abs(area(p)[0]) for p in polygon_parts(g))
    return out


def stage_measured(t):
    """Geodesic area and centroid (planar, in degrees, area-weighted as GEOS and geo compute it)."""
    geoms = np.asarray(t.geometry.array, dtype=object)
    centroids = shapely.centroid(geoms)
    t = t.copy()
    t["area_m2"] = geodesic_areas(geoms)
    t["centroid_lat"] = shapely.get_y(centroids)
    t["centroid_lon"] = shapely.get_x(centroids)
    return t


def priority_rank(datasets, priority: list):
    return pd.Series(datasets).map({p: i for i, p in enumerate(priority)}).fillna(len(priority)).to_numpy()


def stage_consolidated(measured: list, priority: list):
    """The union, without exact duplicates (the same 2-D WKB): the record of the dataset first in
    `dataset_priority` is kept, then the first in table order."""
    t = pd.concat(measured, ignore_index=True)
    wkb = shapely.to_wkb(np.asarray(t.geometry.array, dtype=object), byte_order=1)
    order = np.lexsort((np.arange(len(t)), priority_rank(t["dataset_name"], priority)))
    first = ~pd.Series(wkb[order]).duplicated().to_numpy()
    keep = np.zeros(len(t), dtype=bool)
    keep[order[first]] = True
    keep |= pd.isna(wkb)
    return t[keep].reset_index(drop=True)


def stage_indexed(t, res: int):
    """`h3_<res>`: the H3 cell of the centroid (h3-py v4)."""
    t = t.copy()
    lat, lon = t["centroid_lat"].to_numpy(), t["centroid_lon"].to_numpy()
    t[f"h3_{res}"] = [h3.latlng_to_cell(a, o, res) if a == a and o == o else None for a, o in zip(lat, lon)]
    return t


def safe_intersection(a, b):
    try:
        return shapely.intersection(a, b)
    except shapely.errors.GEOSException:
        out = np.empty(len(a), dtype=object)
        for k in range(len(a)):
            try:
                out[k] = shapely.intersection(a[k], b[k])
            except shapely.errors.GEOSException:
                out[k] = None  # counted as a geometry error, both records kept
        return out


def overlap_ratios(geoms, areas, i, j):
    """(ratio, error) per candidate pair: intersection area / smaller area for two polygonal records, 1 for a
    point inside a polygon or two equal points, else 0; an intersection that fails or exceeds the smaller
    record is an error."""
    types = shapely.get_type_id(geoms)
    ta, tb = types[i], types[j]
    pa, pb = np.isin(ta, (3, 6)), np.isin(tb, (3, 6))
    ratio, error = np.zeros(len(i)), np.zeros(len(i), dtype=bool)
    smaller = np.minimum(areas[i], areas[j])
    both = np.flatnonzero(pa & pb & (smaller > 0))
    inter = safe_intersection(geoms[i[both]], geoms[j[both]])
    r = geodesic_areas(inter) / smaller[both]
    bad = ~((r >= 0) & (r <= 1 + 1e-6))
    ratio[both], error[both] = np.where(bad, 0.0, r), bad
    for poly_side, point_side, mask in [(i, j, pa & (tb == 0)), (j, i, pb & (ta == 0))]:
        k = np.flatnonzero(mask)
        ratio[k] = shapely.contains(geoms[poly_side[k]], geoms[point_side[k]])
    k = np.flatnonzero((ta == 0) & (tb == 0))
    ratio[k] = shapely.equals_exact(geoms[i[k]], geoms[j[k]], tolerance=0.0)
    return ratio, error


def candidate_pairs(t, geoms, ds, mode: str, h3_col: str):
    """(i, j), i < j, of records of different datasets, sorted: from an STRtree of bounding boxes
    (`overlap`) or within an H3 cell (`same_cell`)."""
    if mode == "overlap":
        i, j = shapely.STRtree(geoms).query(geoms)
    else:
        cells = pd.DataFrame({"cell": t[h3_col], "row": np.arange(len(t))}).dropna()
        m = cells.merge(cells, on="cell")
        i, j = m["row_x"].to_numpy(), m["row_y"].to_numpy()
    m = (j > i) & (ds[i] != ds[j])
    return np.unique(i[m].astype(np.int64) * len(t) + j[m])  # sorted by (i, j)


def stage_dedup_pairs(t, cfg: dict):
    """Both modes' candidate pairs and each pair's overlap ratio, computed once (flowrun's `dedup_pairs`)."""
    geoms = np.asarray(t.geometry.array, dtype=object)
    ds = pd.factorize(t["dataset_name"])[0]
    areas = t["area_m2"].fillna(0.0).to_numpy()
    h3_col = f"h3_{cfg['h3_resolution']}"
    modes = {m: candidate_pairs(t, geoms, ds, m, h3_col) for m in ["overlap", "same_cell"]}
    pairs = np.union1d(modes["overlap"], modes["same_cell"])
    i, j = pairs // len(t), pairs % len(t)
    ratio, error = overlap_ratios(geoms, areas, i, j)
    return {"i": i, "j": j, "ratio": ratio, "error": error, "modes": {m: np.isin(pairs, k) for m, k in modes.items()}}


def decide(t, pairs: dict, mode: str, threshold: float, priority: list):
    """(keep, candidate pairs, geometry errors) of one mode: of a duplicate pair the larger record is kept,
    on equal areas the dataset first in the priority; pairs are taken in (i, j) order."""
    areas = t["area_m2"].fillna(0.0).to_numpy()
    m = pairs["modes"][mode]
    i, j, ratio, error = pairs["i"][m], pairs["j"][m], pairs["ratio"][m], pairs["error"][m]
    rank = priority_rank(t["dataset_name"], priority)
    keep = np.ones(len(t), dtype=bool)
    dup = ~error & (ratio > threshold)
    for a, b in zip(i[dup].tolist(), j[dup].tolist()):
        if not (keep[a] and keep[b]):
            continue
        if areas[a] != areas[b]:
            keep[b if areas[a] > areas[b] else a] = False
        else:
            keep[b if rank[a] <= rank[b] else a] = False
    return keep, len(i), int(error.sum())


def stage_deduplicated(t, pairs: dict, cfg: dict):
    keep, n, errors = decide(t, pairs, cfg["dedup_mode"], cfg["overlap_threshold"], cfg["dataset_priority"])
    return t[keep].reset_index(drop=True), {"removed": int((~keep).sum()), "pairs": n, "errors": errors}


def stage_dedup_comparison(t, pairs: dict, cfg: dict):
    rows = []
    for mode in ["overlap", "same_cell"]:
        keep, n, errors = decide(t, pairs, mode, cfg["overlap_threshold"], cfg["dataset_priority"])
        rows.append({"mode": mode, "candidate_pairs": n, "removed": int((~keep).sum()), "kept": int(keep.sum()),
                     "geometry_errors": errors})
    return pd.DataFrame(rows)


def stage_country_polygons(files: list):
    g = pd.concat([pyogrio.read_dataframe(path, use_arrow=True) for _, path in files], ignore_index=True)
    name = next(c for c in ["NAME", "ADMIN", "name"] if c in g.columns)
    code = next(c for c in ["ADM0_A3", "adm0_a3"] if c in g.columns)
    return gpd.GeoDataFrame({"country_code": as_text(g[code]), "country_name": as_text(g[name])},
                            geometry=g.geometry.values, crs=g.crs)


def stage_located(t, countries, method: str, max_km: float):
    """The country whose polygon holds the centroid (the first in file order), else null; with `nearest`,
    else the nearest country within `max_km` (geodesic distance to the nearest point, found in degrees)."""
    lat, lon = t["centroid_lat"].to_numpy(), t["centroid_lon"].to_numpy()
    ok = np.isfinite(lat) & np.isfinite(lon)
    points = np.full(len(t), None, dtype=object)
    points[ok] = shapely.points(lon[ok], lat[ok])
    cgeoms = np.asarray(countries.geometry.array, dtype=object)
    tree = shapely.STRtree(cgeoms)
    pi, ci = tree.query(points, predicate="within")
    order = np.lexsort((ci, pi))
    pi, ci = pi[order], ci[order]
    first = np.r_[True, pi[1:] != pi[:-1]] if len(pi) else np.zeros(0, dtype=bool)
    found = np.full(len(t), -1)
    found[pi[first]] = ci[first]
    how = np.where(found >= 0, "within", None).astype(object)
    distance = np.where(found >= 0, 0.0, np.nan)
    if method == "nearest":
        for k in np.flatnonzero((found < 0) & ok):
            p = points[k]
            dlat, dlon = max_km / 110.5, min(max_km / (111.3 * max(math.cos(math.radians(lat[k])), 0.01)), 180.0)
            best = None
            for c in sorted(tree.query(shapely.box(lon[k] - dlon, lat[k] - dlat, lon[k] + dlon, lat[k] + dlat))):
                q = shapely.ops.nearest_points(cgeoms[c], p)[0]
                dist = GEOD.inv(lon[k], lat[k], q.x, q.y)[2]
                if dist <= max_km * 1000 and (best is None or dist < best[1]):
                    best = (c, dist)
            if best:
                found[k], how[k], distance[k] = best[0], "nearest", best[1]
    t = t.copy()
    codes, names = countries["country_code"].to_numpy(), countries["country_name"].to_numpy()
    t["country_code"] = np.where(found >= 0, codes[found], None)
    t["country_name"] = np.where(found >= 0, names[found], None)
    t["country_method"] = how
    t["country_distance_m"] = distance
    return t


def stage_country_stats(t):
    """Per country and dataset: installations, polygons / points, geodesic and source areas, total and mean
    area (geodesic for polygons, else the source's), which basis the total has, rows without area."""
    geodesic = t["area_m2"].where(t["area_m2"] > 0)
    source = t["area_m2_source"]
    from_source = geodesic.isna() & source.notna()
    df = pd.DataFrame({
        "country_code": t["country_code"], "country_name": t["country_name"], "dataset_name": t["dataset_name"],
        "polygons": geodesic.notna(), "area_m2_geodesic": geodesic.fillna(0.0), "area_m2_source": source.fillna(0.0),
        "total_area_m2": geodesic.fillna(0.0) + source.where(from_source, 0.0), "from_source": from_source,
    })
    g = df.groupby(["country_code", "dataset_name"], dropna=False, sort=False)
    s = g.agg(country_name=("country_name", "first"), installations=("dataset_name", "size"),
              polygons=("polygons", "sum"), area_m2_geodesic=("area_m2_geodesic", "sum"),
              area_m2_source=("area_m2_source", "sum"), total_area_m2=("total_area_m2", "sum"),
              from_source=("from_source", "sum")).reset_index()
    with_area = s["polygons"] + s["from_source"]
    s["points"] = s["installations"] - s["polygons"]
    s["mean_area_m2"] = s["total_area_m2"] / with_area.clip(lower=1)
    s["area_basis"] = np.select([(s["polygons"] > 0) & (s["from_source"] > 0), s["polygons"] > 0, s["from_source"] > 0],
                                ["geodesic+source", "geodesic", "source"], "none")
    s["rows_without_area"] = s["installations"] - with_area
    s = s.sort_values(["country_code", "dataset_name"], na_position="first").reset_index(drop=True)
    return s[["country_code", "country_name", "dataset_name", "installations", "polygons", "points",
              "area_m2_geodesic", "area_m2_source", "total_area_m2", "mean_area_m2", "area_basis", "rows_without_area"]]


def write_outputs(out: Path, raws: dict, consolidated, located, stats) -> str:
    """The GeoParquet file of `located`, and the DuckLake tables flowrun materializes (one commit)."""
    import pyarrow as pa
    out.mkdir(parents=True, exist_ok=True)
    located.set_crs("OGC:CRS84", allow_override=True).to_parquet(out / "prepared_pv_dedup.parquet",
                                                             write_covering_bbox=True)
    try:
        import duckdb
        con = duckdb.connect(config={"autoinstall_known_extensions": "false",
                                     "extension_directory": str(DUCKDB_EXTENSIONS)})
        con.execute("LOAD ducklake")
        con.execute("LOAD spatial")
    except Exception as e:  # noqa: BLE001 - any failure to load DuckLake means: GeoParquet only
        return f"GeoParquet only (DuckLake not available: {str(e).splitlines()[0][:80]})"

    def arrow(frame):
        if isinstance(frame, gpd.GeoDataFrame):
            return pa.table(frame.to_arrow(geometry_encoding="WKB", include_z=False))
        return pa.Table.from_pandas(frame, preserve_index=False)

    con.execute(f"ATTACH 'ducklake:{out}/doi_pv.ducklake' AS lake (DATA_PATH '{out}/doi_pv_data/')")
    con.execute("BEGIN")
    tables = {f"raw.raw_{k}": raw_table(parts) for k, parts in raws.items()}
    tables.update({"staging.stg_pv_consolidated": consolidated, "prepared.prepared_pv_dedup": located,
                   "prepared.prepared_country_pv_stats": stats})
    for name, frame in tables.items():
        schema = name.split(".")[0]
        con.execute(f"CREATE SCHEMA IF NOT EXISTS lake.{schema}")
        con.register("stage", arrow(frame))
        con.execute(f"CREATE TABLE lake.{name} AS SELECT * FROM stage")
        con.unregister("stage")
    con.execute("COMMIT")
    con.close()
    return "DuckLake + GeoParquet"


def raw_table(parts: list):
    """A dataset's files as one table (attributes, geometry in the files' CRS, source_file, source_row)."""
    crs = {str(g.crs) for _, g in parts}
    frames = [pd.DataFrame(g).assign(geometry=np.asarray(g.geometry.array, dtype=object)) for _, g in parts]
    return gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), geometry="geometry",
                            crs=parts[0][1].crs if len(crs) == 1 else None)


def geopandas_pipeline(flow_path: Path, mirror: Path, out: Path) -> dict:
    t0 = time.perf_counter()
    geo_imports()
    imported = time.perf_counter() - t0
    cfg = tomllib.loads(flow_path.read_text())["config"]
    times = dict.fromkeys(STAGES, 0.0)

    def timed(stage, f, *args):
        t = time.perf_counter()
        result = f(*args)
        times[stage] += time.perf_counter() - t
        return result

    processed_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    scratch = out / "scratch"
    datasets = timed("datasets", stage_datasets, cfg["manifest"], mirror)
    raws, measured = {}, []
    for d in datasets:
        files = timed("files", stage_files, d, mirror, scratch)
        parts = timed("raw", stage_raw, d, files)
        raws[d["key"]] = parts  # the lake's raw_<dataset> table is put together when the outputs are written
        standardized = timed("standardized", stage_standardized, parts, d, processed_at)
        measured.append(timed("measured", stage_measured, standardized))
    consolidated = timed("consolidated", stage_consolidated, measured, cfg["dataset_priority"])
    indexed = timed("indexed", stage_indexed, consolidated, cfg["h3_resolution"])
    pairs = timed("dedup_pairs", stage_dedup_pairs, indexed, cfg)
    deduplicated, dedup = timed("deduplicated", stage_deduplicated, indexed, pairs, cfg)
    comparison = timed("dedup_comparison", stage_dedup_comparison, indexed, pairs, cfg)
    countries_d = dict(cfg["countries"], key=cfg["countries"].get("key", "natural_earth_admin0"))
    country_files = timed("country_files", stage_files, countries_d, mirror, scratch)
    countries = timed("country_polygons", stage_country_polygons, country_files)
    located = timed("located", stage_located, deduplicated, countries, cfg["country_method"],
                    cfg["country_max_distance_km"])
    stats = timed("country_stats", stage_country_stats, located)
    t = time.perf_counter()
    lake = write_outputs(out, raws, consolidated, located, stats)
    write = time.perf_counter() - t
    return {"stages_ms": {k: v * 1000 for k, v in times.items()}, "import_ms": imported * 1000,
            "write_ms": write * 1000, "lake": lake, "rows": len(located), "dedup": dedup,
            "dedup_comparison": comparison.to_dict("records")}


# ------------------------------------------------------------------------------------------------------
# Running both sides, measuring, comparing


def run_measured(cmd: list, cwd: Path, log: Path) -> dict:
    """Runs `cmd`, stdout to `log`.out and stderr to `log`.err; wall time and peak RSS of that process."""
    with open(f"{log}.out", "w") as out, open(f"{log}.err", "w") as err:
        t = time.perf_counter()
        p = subprocess.Popen(cmd, cwd=cwd, stdout=out, stderr=err)
        _, status, usage = os.wait4(p.pid, 0)
        wall = time.perf_counter() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    return {"wall_ms": wall * 1000, "rss_mb": usage.ru_maxrss / 1024, "rc": p.returncode,
            "stdout": Path(f"{log}.out").read_text(), "stderr": Path(f"{log}.err").read_text()}


def run_flowrun(flowrun: str, workdir: Path, mirror: Path) -> dict:
    cmd = [flowrun, "--json", "run", "flows/doi_pv.toml", "--mirror", str(mirror)]
    m = run_measured(cmd, workdir, workdir / "flowrun")
    report = json.loads(m["stdout"]) if m["stdout"].strip() else {}
    if m["rc"] != 0 or report.get("status") != "ok":
        raise SystemExit(f"flowrun failed (exit {m['rc']}): {m['stderr'][-2000:]} {m['stdout'][-2000:]}")
    stages = dict.fromkeys(STAGES, 0.0)
    for n in report["nodes"]:
        # flowrun decides both dedup modes once, in `dedup_decisions`: counted with `deduplicated` (GeoPandas
        # decides one mode there and both again in `dedup_comparison`, so those two rows compare different
        # work; the pipeline's total does not)
        stage = {"dedup_decisions": "deduplicated"}.get(n["node"], n["node"])
        stages[stage] = stages.get(stage, 0.0) + (n.get("duration") or 0.0)

    def note(node: str, pattern: str) -> re.Match:
        notes = [x for n in report["nodes"] if n["node"] == node for x in n["notes"]]
        found = next((f for f in (re.search(pattern, x) for x in notes) if f), None)
        if not found:
            raise SystemExit(f"flowrun's `{node}` has no note matching {pattern!r} (its notes: {notes})")
        return found

    # the flow's mode (`Overlap dedup: ...`), then that mode's candidate pairs (`Overlap: N candidate pairs`)
    removed = note("deduplicated", r"(\w+) dedup: (\d+) cross-dataset duplicates removed")
    pairs = note("dedup_decisions", rf"{removed[1]}: (\d+) candidate pairs")
    dedup = {"removed": int(removed[2]), "pairs": int(pairs[1])}
    return dict(m, stages_ms=stages, nodes_ms=report["duration_ms"], write_ms=report["materialized"]["seconds"] * 1000,
                dedup=dedup, result=workdir / ".flowrun/lake/prepared_pv_dedup.parquet")


def run_geopandas(flow_path: Path, mirror: Path, out: Path) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(flow_path), str(mirror), str(out)]
    m = run_measured(cmd, out, out / "geopandas")
    if m["rc"] != 0:
        raise SystemExit(f"the GeoPandas pipeline failed (exit {m['rc']}):\n{m['stderr'][-3000:]}")
    return dict(m, **json.loads(m["stdout"].strip().splitlines()[-1]), result=out / "prepared_pv_dedup.parquet")


def compare(flowrun_file: Path, geopandas_file: Path, h3_col: str) -> list:
    """(check, ok, detail) for the final tables."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq
    a = pq.read_table(flowrun_file, columns=["unified_id", "area_m2", h3_col])
    b = pq.read_table(geopandas_file, columns=["unified_id", "area_m2", h3_col])
    checks = [("rows", a.num_rows == b.num_rows, f"{a.num_rows} vs {b.num_rows}")]
    sa, sb = pc.sum(a["area_m2"]).as_py() or 0.0, pc.sum(b["area_m2"]).as_py() or 0.0
    rel = abs(sa - sb) / max(abs(sa), 1e-300)
    checks.append(("area_m2 sum", rel <= 1e-6, f"{sa:.6f} vs {sb:.6f} m2 (relative difference {rel:.2e})"))
    for name, col in [("H3 cells", h3_col), ("unified_ids", "unified_id")]:
        x, y = set(a[col].drop_null().to_pylist()), set(b[col].drop_null().to_pylist())
        only_f, only_g = sorted(x - y), sorted(y - x)
        detail = f"{len(x)} vs {len(y)} distinct"
        if only_f or only_g:
            detail += (f"; only in flowrun {len(only_f)} (e.g. {only_f[:3]}), "
                       f"only in GeoPandas {len(only_g)} (e.g. {only_g[:3]})")
        checks.append((name, not only_f and not only_g, detail))
    return checks


def warm_page_cache(mirror: Path) -> None:
    for p in mirror.rglob("*"):
        if p.is_file():
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass


def fmt_ratio(g: float, f: float) -> str:
    return f"{g / f:8.1f}" if f > 0 else f"{'-':>8}"


def print_block(label: str, f: dict, g: dict, checks: list) -> None:
    print(f"\n== {label}: {g['rows']:,} rows in the final table ==")
    print(f"{'stage (ms)':<30}{'flowrun':>12}{'GeoPandas':>12}{'ratio':>8}")
    for s in STAGES:
        fs, gs = f["stages_ms"][s], g["stages_ms"][s]
        print(f"{s:<30}{fs:>12.1f}{gs:>12.1f}{fmt_ratio(gs, fs)}")
    gp = sum(g["stages_ms"].values())
    print(f"{'pipeline: nodes / stages':<30}{f['nodes_ms']:>12.1f}{gp:>12.1f}{fmt_ratio(gp, f['nodes_ms'])}")
    print(f"{'write outputs':<30}{f['write_ms']:>12.1f}{g['write_ms']:>12.1f}{fmt_ratio(g['write_ms'], f['write_ms'])}"
          f"   (GeoPandas: {g['lake']})")
    print(f"{'whole process (wall)':<30}{f['wall_ms']:>12.1f}{g['wall_ms']:>12.1f}"
          f"{fmt_ratio(g['wall_ms'], f['wall_ms'])}   (GeoPandas: {g['import_ms']:.0f} ms of imports)")
    print(f"{'peak RSS (MiB)':<30}{f['rss_mb']:>12.1f}{g['rss_mb']:>12.1f}{fmt_ratio(g['rss_mb'], f['rss_mb'])}")
    fd, gd = f["dedup"], g["dedup"]
    if fd:
        print(f"deduplicated: flowrun removed {fd['removed']} of {fd['pairs']} candidate pairs, "
              f"GeoPandas {gd['removed']} of {gd['pairs']} ({gd['errors']} geometry errors)")
    for name, ok, detail in checks:
        print(f"check {name:<12} {'ok  ' if ok else 'DIFFERENT'}  {detail}")


def prepare_input(size: str, base: Path, flowrun_dir: Path) -> tuple:
    """(label, mirror, flow copy) of one input."""
    if size == "shared":
        return f"shared data ({SHARED})", SHARED, flow_copy(flowrun_dir, None)
    n = int(size)
    mirror = base / "mirror"
    t = time.perf_counter()
    write_synthetic_mirror(mirror, n)
    (mirror / "natural_earth_admin0").symlink_to(SHARED / "natural_earth_admin0")
    print(f"(synthetic {n:,}: GeoJSON mirror generated in {time.perf_counter() - t:.1f} s, not timed below)")
    return f"synthetic {n:,} polygons", mirror, flow_copy(flowrun_dir, synthetic_manifest(2))


def default_flowrun() -> str:
    target = os.environ.get("CARGO_TARGET_DIR", str(Path.home() / ".cache/flowrun-target"))
    return str(Path(target) / "release/flowrun")


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        print(json.dumps(geopandas_pipeline(Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flowrun", default=default_flowrun(), help="the flowrun binary")
    ap.add_argument("--sizes", default="shared,150000,1000000", help="`shared` and/or synthetic row counts")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directories (printed)")
    args = ap.parse_args()
    if not in_venv():
        py = ensure_venv()
        os.execv(str(py), [str(py), str(Path(__file__).resolve()), *sys.argv[1:]])
    if not Path(args.flowrun).exists():
        raise SystemExit(f"no flowrun binary at {args.flowrun}: cargo build --release --bin flowrun (or --flowrun)")
    cfg = tomllib.loads(FLOW.read_text())["config"]
    h3_col = f"h3_{cfg['h3_resolution']}"
    print(f"flowrun vs GeoPandas, the PV flow ({FLOW.relative_to(ROOT)}); {os.cpu_count()} CPUs; "
          f"ratio = GeoPandas / flowrun (above 1: flowrun is faster / smaller)")
    summary, failed = [], False
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        base = Path(tempfile.mkdtemp(prefix=f"vs_geopandas_{size}_"))
        try:
            label, mirror, flow_path = prepare_input(size, base, base / "flowrun")
            warm_page_cache(mirror)
            f = run_flowrun(args.flowrun, base / "flowrun", mirror)
            g = run_geopandas(flow_path, mirror, base / "geopandas")
            checks = compare(f["result"], g["result"], h3_col)
            print_block(label, f, g, checks)
            failed |= not all(ok for _, ok, _ in checks)
            summary.append((size, g["rows"], f, g, all(ok for _, ok, _ in checks)))
        finally:
            if args.keep:
                print(f"(kept {base})")
            else:
                shutil.rmtree(base, ignore_errors=True)
    print(f"\n{'input':<10}{'rows':>10}{'flowrun s':>11}{'nodes s':>9}{'GeoPandas s':>13}{'stages s':>10}"
          f"{'wall ratio':>12}{'pipeline ratio':>16}{'RSS MiB f / g':>16}  same result")
    for size, rows, f, g, ok in summary:
        gp = sum(g["stages_ms"].values())
        print(f"{size:<10}{rows:>10,}{f['wall_ms'] / 1e3:>11.2f}{f['nodes_ms'] / 1e3:>9.2f}{g['wall_ms'] / 1e3:>13.2f}"
              f"{gp / 1e3:>10.2f}{g['wall_ms'] / f['wall_ms']:>12.1f}{gp / f['nodes_ms']:>16.1f}"
              f"{f['rss_mb']:>9.0f} / {g['rss_mb']:<5.0f}  {'yes' if ok else 'NO'}")
    print("(flowrun: stage = sum of its node runs, per-dataset nodes in parallel on all CPUs, `deduplicated` with\n"
          " `dedup_decisions`; pipeline = the run's duration_ms, nodes incl. cache writes, without the lake;\n"
          " GeoPandas: one process, stages one after the other; both cold, inputs in the page cache)")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
