"""Trains the corpus of tests/corpus.py into LOGDIR, one subdirectory per run.

Usage: python tests/scripts/train_corpus.py LOGDIR [--only a,b] [--seed N]
                                                   [--no-report]

Then iterate on the detector without retraining:
    python -c "from tb_stability.analysis import report_logdir; ..."
or rerun this script with --report-only to print the summary table again.
"""

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.dirname(os.path.dirname(HERE))]

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def summary(logdir, names):
    """Lines of a table: run, family, expect, detected kinds (onset steps)."""
    import corpus  # pylint: disable=import-outside-toplevel

    from tb_stability import analysis  # pylint: disable=import-outside-toplevel

    report = {r["run"]: r for r in analysis.report_logdir(logdir)["runs"]}
    lines = [f"{'run':28} {'family':26} {'expect':12} {'ok':3} detected"]
    for name in names:
        spec = corpus.RUNS[name]
        found = report.get(name, {}).get("anomalies", [])
        kinds = [a["kind"] for a in found]
        ok = (not kinds) if spec.expect is None else spec.expect in kinds
        shown = ", ".join(f"{a['kind']}@{a['step']}" for a in found[:5])
        if len(found) > 5:
            shown += f", ... ({len(found)} in all)"
        lines.append(f"{name:28} {spec.family:26} {str(spec.expect):12} "
                     f"{'yes' if ok else 'NO':3} {shown or '-'}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir")
    parser.add_argument("--only", help="comma-separated run names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="print the table for an already trained LOGDIR")
    args = parser.parse_args(argv)

    import corpus  # pylint: disable=import-outside-toplevel

    names = args.only.split(",") if args.only else list(corpus.RUNS)
    unknown = [n for n in names if n not in corpus.RUNS]
    if unknown:
        parser.error(f"unknown run(s): {', '.join(unknown)}")
    if not args.report_only:
        for name in names:  # never mix two trainings in one run directory
            target = os.path.join(args.logdir, name)
            if os.path.isdir(target):
                import shutil  # pylint: disable=import-outside-toplevel
                shutil.rmtree(target)
        start = time.perf_counter()
        times = corpus.train_all(args.logdir, names, seed=args.seed,
                                 log=lambda line: print(line, flush=True))
        print(f"total: {time.perf_counter() - start:.1f}s "
              f"(runs {sum(times.values()):.1f}s)", flush=True)
    if not args.no_report:
        print("\n".join(summary(args.logdir, names)))


if __name__ == "__main__":
    main()
