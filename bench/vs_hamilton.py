#!/usr/bin/env python3
"""flowrun vs Apache Hamilton on the same synthetic flows, side by side, in one go.

Installs `sf-hamilton` into a local virtualenv (telemetry off), generates the Hamilton modules equivalent to
the flows `bench engine` builds (a chain, a wide DAG, a fan-out over N items), times Hamilton's driver build
and execution, runs `bench engine --json` for the same sizes, and prints per-node figures and the ratios.

The two tools take turns: each round runs flowrun (its own median of 9 repetitions) and then Hamilton (the
median of `--reps` builds and executions in one warm interpreter; a fan-out once) on every shape and size, so a load change
on a shared machine hits both alike. A ratio is taken per round; the table shows the median of the rounds'
figures and ratios, and the lowest and highest ratio seen.

    python3 bench/vs_hamilton.py --bench target/release/bench [--sizes 1000,5000] [--rounds 3] [--reps 5]
"""

import argparse
import json
import os
import statistics
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
    shape, out = sys.argv[3], {"build_s": [], "run_s": []}
    from hamilton import driver
    try:
        for _ in range(int(sys.argv[6])):
            t = time.perf_counter()
            b = driver.Builder().with_modules(mod)
            if shape == "fanout":
                from hamilton.execution import executors
                b = b.enable_dynamic_execution(allow_experimental_mode=True).with_local_executor(executors.SynchronousLocalTaskExecutor())
            dr = b.build()
            out["build_s"].append(time.perf_counter() - t)
            final = {"chain": [f"n{int(sys.argv[5]) - 1}"], "wide": None, "fanout": ["total"]}[shape]
            if final is None:
                final = [v.name for v in dr.list_available_variables()]
            t = time.perf_counter()
            dr.execute(final)
            out["run_s"].append(time.perf_counter() - t)
    except RecursionError as e:
        out["error"] = "RecursionError"
    except Exception as e:
        out["error"] = type(e).__name__ + ": " + str(e)[:120]
    print(json.dumps(out))
    """
)


def hamilton(py: Path, shape: str, n: int, reps: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        name = f"ham_{shape}_{n}"
        Path(d, name + ".py").write_text(module_source(shape, n))
        env = dict(os.environ, HAMILTON_TELEMETRY_ENABLED="false")
        p = subprocess.run(
            [str(py), "-c", RUNNER, d, name, shape, "1000", str(n), str(reps)], capture_output=True, text=True, env=env, timeout=1800
        )
        if p.returncode != 0:
            return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed"}
        out = json.loads(p.stdout.strip().splitlines()[-1])
        return {k: statistics.median(v) if isinstance(v, list) else v for k, v in out.items() if v != []}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bench", required=True, help="the flowrun bench binary")
    ap.add_argument("--sizes", default="1000,5000")
    ap.add_argument("--rounds", type=int, default=3, help="turns each tool takes")
    ap.add_argument("--reps", type=int, default=5, help="Hamilton builds and executions per turn (median)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    py = ensure_venv()
    cases = [(shape, n) for shape in ["chain", "wide", "fanout"] for n in sizes]
    # per case: flowrun build, Hamilton build, flowrun run, Hamilton run (us per node), one entry per round
    seen = {c: {"fb": [], "hb": [], "fr": [], "hr": [], "error": None} for c in cases}
    for _ in range(args.rounds):
        cmd = [args.bench, "engine", "--json", "--sizes", args.sizes]
        flow = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        for shape, n in cases:
            f = next(r for r in flow if r["shape"] == shape and r["n"] == n)
            s = seen[(shape, n)]
            s["fb"].append(f["parse_us"] + f["build_us"])
            s["fr"].append(f["sequential_us"])
            # a Hamilton fan-out takes milliseconds per node: one repetition says enough
            h = hamilton(py, shape, n, 1 if shape == "fanout" else args.reps)
            s["error"] = h.get("error")
            if "build_s" in h:
                s["hb"].append(h["build_s"] * 1e6 / f["node_runs"])
            if "run_s" in h:
                s["hr"].append(h["run_s"] * 1e6 / f["node_runs"])
    print(f"flowrun vs Hamilton, microseconds per node (lower is better), {args.rounds} rounds taking turns;")
    print("ratio = Hamilton / flowrun per round: median [lowest-highest]")
    print(f"{'shape':<8}{'n':>7}  {'build: flowrun':>14}{'hamilton':>11}{'ratio':>22}  {'run: flowrun':>12}{'hamilton':>11}{'ratio':>22}")

    def cols(ours: list, theirs: list) -> str:
        if not theirs:
            return f"{statistics.median(ours):>10.2f}{'-':>11}{'-':>22}"
        ratios = [t / o for o, t in zip(ours, theirs)]
        spread = f"{statistics.median(ratios):.1f} [{min(ratios):.1f}-{max(ratios):.1f}]"
        return f"{statistics.median(ours):>10.2f}{statistics.median(theirs):>11.2f}  {spread:>22}"

    for shape, n in cases:
        s = seen[(shape, n)]
        run = cols(s["fr"], s["hr"]) if s["hr"] else f"{statistics.median(s['fr']):>10.2f}  Hamilton: {s['error']}"
        print(f"{shape:<8}{n:>7}  {cols(s['fb'], s['hb'])}  {run}")
    print("(flowrun: `bench engine`, sequential runs without cache; Hamilton: default driver, synchronous executor)")


if __name__ == "__main__":
    main()
