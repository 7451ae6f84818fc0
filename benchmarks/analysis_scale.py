"""Time to read and analyse a 1M-step, 100-variable run.

Writes a synthetic run through tb_stability's own summary ops (as the
writer lays it out: global rows per 256-step window, per-variable window
aggregates, per-step detail around 20 planted spikes), then times the
pure-NumPy reader and the analysis separately, and checks the planted
spikes are all found.

    python benchmarks/analysis_scale.py --steps 1000000 --variables 100
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.synthetic import write_run  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1_000_000)
    parser.add_argument("--variables", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    candidates = np.arange(1000, args.steps - 1000, 5000)
    spikes = sorted(rng.choice(candidates, 20, replace=False).tolist())
    logdir = tempfile.mkdtemp(prefix="tbs_scale_")
    t0 = time.perf_counter()
    write_run(os.path.join(logdir, "big"), args.steps, args.variables, spikes)
    size = sum(os.path.getsize(os.path.join(logdir, "big", f))
               for f in os.listdir(os.path.join(logdir, "big")))
    print(f"wrote {args.steps} steps x {args.variables} variables: {size / 1e6:.1f} MB "
          f"in {time.perf_counter() - t0:.1f} s")

    from tb_stability import analysis

    timings = {"read": [], "analyse": []}
    for _ in range(3):
        t0 = time.perf_counter()
        runs = analysis.load_logdir(logdir)
        t1 = time.perf_counter()
        result = analysis.analyze_run(runs["big"])
        t2 = time.perf_counter()
        timings["read"].append(t1 - t0)
        timings["analyse"].append(t2 - t1)
    found = sorted(a["peak_step"] for a in result)
    print(f"read    (median of 3): {np.median(timings['read']):.2f} s")
    print(f"analyse (median of 3): {np.median(timings['analyse']):.2f} s  (target < 2 s)")
    print(f"planted spikes: {len(spikes)}, found: {len(found)}, "
          f"all at their exact step: {found == spikes}")


if __name__ == "__main__":
    main()
