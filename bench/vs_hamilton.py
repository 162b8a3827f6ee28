#!/usr/bin/env python3
"""flowrun vs Apache Hamilton on the same synthetic flows, side by side, in one go.

Installs `sf-hamilton` into a local virtualenv (telemetry off), generates the Hamilton modules equivalent to
the flows `bench engine` builds (a chain, a wide DAG, a fan-out over N items), times Hamilton's driver build
and execution, runs `bench engine --json` for the same sizes, and prints per-node figures and the ratios.

    python3 bench/vs_hamilton.py --bench target/release/bench [--sizes 1000,5000]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

VENV = Path(os.environ.get("FLOWRUN_HAMILTON_VENV", Path.home() / ".cache/flowrun/hamilton-venv"))


def ensure_venv() -> Path:
    py = VENV / "bin/python"
    probe = [str(py), "-c", "import hamilton"]
    if not py.exists() or subprocess.run(probe, capture_output=True).returncode != 0:
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "sf-hamilton"], check=True)
    return py


def module_source(shape: str, n: int) -> str:
    if shape == "chain":
        lines = ["def n0() -> int:\n    return 0\n"]
        lines += [f"def n{i}(n{i - 1}: int) -> int:\n    return n{i - 1}\n" for i in range(1, n)]
    elif shape == "wide":
        lines = ["def w0() -> int:\n    return 0\n"]
        lines += [f"def w{i}(w0: int) -> int:\n    return w0\n" for i in range(1, n)]
    else:  # fanout: Parallelizable over n items, a no-op per item, Collect
        lines = [
            "from hamilton.htypes import Parallelizable, Collect\n",
            f"def items() -> Parallelizable[int]:\n    for i in range({n}):\n        yield i\n",
            "def each(items: int) -> int:\n    return items\n",
            "def total(each: Collect[int]) -> int:\n    return sum(each)\n",
        ]
    return "\n".join(lines)


# Runs inside the Hamilton virtualenv: build the driver, execute, report seconds (or the error).
RUNNER = textwrap.dedent(
    """
    import importlib, json, sys, time
    sys.setrecursionlimit(int(sys.argv[4]))
    sys.path.insert(0, sys.argv[1])
    mod = importlib.import_module(sys.argv[2])
    shape, out = sys.argv[3], {}
    from hamilton import driver
    try:
        t = time.perf_counter()
        b = driver.Builder().with_modules(mod)
        if shape == "fanout":
            from hamilton.execution import executors
            b = b.enable_dynamic_execution(allow_experimental_mode=True).with_local_executor(executors.SynchronousLocalTaskExecutor())
        dr = b.build()
        out["build_s"] = time.perf_counter() - t
        final = {"chain": [f"n{int(sys.argv[5]) - 1}"], "wide": None, "fanout": ["total"]}[shape]
        if final is None:
            final = [v.name for v in dr.list_available_variables()]
        t = time.perf_counter()
        dr.execute(final)
        out["run_s"] = time.perf_counter() - t
    except RecursionError as e:
        out["error"] = "RecursionError"
    except Exception as e:
        out["error"] = type(e).__name__ + ": " + str(e)[:120]
    print(json.dumps(out))
    """
)


def hamilton(py: Path, shape: str, n: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        name = f"ham_{shape}_{n}"
        Path(d, name + ".py").write_text(module_source(shape, n))
        env = dict(os.environ, HAMILTON_TELEMETRY_ENABLED="false")
        p = subprocess.run(
            [str(py), "-c", RUNNER, d, name, shape, "1000", str(n)], capture_output=True, text=True, env=env, timeout=1800
        )
        if p.returncode != 0:
            return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"}
        return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True, help="the flowrun bench binary")
    ap.add_argument("--sizes", default="1000,5000")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    py = ensure_venv()
    flow = json.loads(subprocess.run([args.bench, "engine", "--json", "--sizes", args.sizes], capture_output=True, text=True, check=True).stdout)
    print("flowrun vs Hamilton, microseconds per node (lower is better); ratio = Hamilton / flowrun")
    print(f"{'shape':<8}{'n':>7}  {'build: flowrun':>15}{'hamilton':>10}{'ratio':>8}  {'run: flowrun':>13}{'hamilton':>10}{'ratio':>8}")
    for shape in ["chain", "wide", "fanout"]:
        for n in sizes:
            f = next(r for r in flow if r["shape"] == shape and r["n"] == n)
            t = time.perf_counter()
            h = hamilton(py, shape, n)
            nodes = f["node_runs"]
            if "error" in h and "build_s" not in h:
                print(f"{shape:<8}{n:>7}  {(f['parse_us'] + f['build_us']):>15.2f}{'-':>10}{'-':>8}  {f['sequential_us']:>13.2f}  Hamilton: {h['error']}")
                continue
            hb = h["build_s"] * 1e6 / nodes
            if "run_s" in h:
                hr = h["run_s"] * 1e6 / nodes
                print(f"{shape:<8}{n:>7}  {(f['parse_us'] + f['build_us']):>15.2f}{hb:>10.2f}{hb / (f['parse_us'] + f['build_us']):>8.1f}  {f['sequential_us']:>13.2f}{hr:>10.2f}{hr / f['sequential_us']:>8.1f}")
            else:
                print(f"{shape:<8}{n:>7}  {(f['parse_us'] + f['build_us']):>15.2f}{hb:>10.2f}{hb / (f['parse_us'] + f['build_us']):>8.1f}  {f['sequential_us']:>13.2f}  Hamilton: {h['error']}")
    print("(flowrun: `bench engine`, sequential runs without cache; Hamilton: default driver, synchronous executor)")


if __name__ == "__main__":
    main()
