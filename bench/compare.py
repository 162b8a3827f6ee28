#!/usr/bin/env python3
"""Two `bench` binaries side by side, interleaved phase by phase: paired ratios that survive a noisy machine.

    python3 bench/compare.py OLD_BENCH NEW_BENCH [--rounds 16] [--phases parse,build,seq] [--sizes 100000]

Each round runs `bench engine --profile PHASE --sizes N` (seven repetitions of one phase on an N-node chain;
their median and minimum in microseconds per node) once with each binary, so a slow spell of the machine
hits both. It prints, per phase and size, each binary's median over the rounds, and the median and range
of the per-round ratios old / new (above 1: the new binary is faster), for both figures. The minimum is
the steadier one here: interference only ever adds time. `just bench-compare OLD NEW` builds nothing: keep a copy
of the old binary (`cp $CARGO_TARGET_DIR/release/bench /tmp/bench-old`) before changing the code.
"""

import argparse
import re
import statistics
import subprocess
import sys

LINE = re.compile(r"(\w+) chain (\d+): ([\d.]+) us/node median, ([\d.]+) min")


def measure(binary: str, phase: str, sizes: str) -> dict:
    out = subprocess.run(
        [binary, "engine", "--profile", phase, "--sizes", sizes],
        check=True,
        capture_output=True,
        text=True,
    )
    return {int(m.group(2)): (float(m.group(3)), float(m.group(4))) for m in LINE.finditer(out.stderr + out.stdout)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--rounds", type=int, default=16)
    ap.add_argument("--phases", default="parse,build,seq")
    ap.add_argument("--sizes", default="100000")
    args = ap.parse_args()
    phases = args.phases.split(",")
    # (phase, size) -> binary -> [us/node per round]
    figures: dict = {}
    for r in range(args.rounds):
        for phase in phases:
            for which, binary in (("old", args.old), ("new", args.new)):
                for n, us in measure(binary, phase, args.sizes).items():
                    figures.setdefault((phase, n), {}).setdefault(which, []).append(us)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    print(f"{args.rounds} interleaved rounds; us/node on an N-node chain (build = parse + build); ratio = old / new")
    print(f"{'phase':<7}{'n':>8}{'stat':>7}{'old':>9}{'new':>9}   ratio: median (range)")
    for (phase, n), by in figures.items():
        for i, stat in enumerate(("median", "min")):
            old = [f[i] for f in by["old"]]
            new = [f[i] for f in by["new"]]
            ratios = sorted(o / m for o, m in zip(old, new))
            print(
                f"{phase:<7}{n:>8}{stat:>7}{statistics.median(old):>9.3f}{statistics.median(new):>9.3f}"
                f"   {statistics.median(ratios):.2f}x ({ratios[0]:.2f}-{ratios[-1]:.2f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
