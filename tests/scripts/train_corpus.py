"""Trains the corpus of tests/corpus.py into LOGDIR, one subdirectory per run.

Usage: python tests/scripts/train_corpus.py LOGDIR [--only a,b] [--seed N]
                     [--fixed] [--jobs N] [--no-report] [--report-only]

`--fixed` also trains each broken run's contrast (the same run with its fix)
into LOGDIR/<name>-fixed; `--jobs 2` trains in two worker processes (one TF
thread each), which is what a 2-core machine wants: the runs are small and
Python-bound. The table gives, per run directory: its cause label, the kind
expected, the kinds detected (onset steps) and the top cause of the first
anomaly with its confidence.

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


def _limit_threads():
    """One intra-/inter-op thread per worker when TB_STABILITY_THREADS says so
    (set before TensorFlow runs anything)."""
    threads = os.environ.get("TB_STABILITY_THREADS")
    if threads:
        import tensorflow as tf  # pylint: disable=import-outside-toplevel

        tf.config.threading.set_intra_op_parallelism_threads(int(threads))
        tf.config.threading.set_inter_op_parallelism_threads(int(threads))


def summary(logdir, targets):
    """Lines of a table: run, cause, expect, ok, detected kinds@steps, top cause."""
    import corpus  # pylint: disable=import-outside-toplevel

    from tb_stability import analysis  # pylint: disable=import-outside-toplevel

    report = {r["run"]: r for r in analysis.report_logdir(logdir)["runs"]}
    lines = [f"{'run':36} {'cause':20} {'expect':11} {'ok':3} {'detected':44} top cause"]
    for target in targets:
        fixed = target.endswith(corpus.FIXED)
        spec = corpus.RUNS[target[:-len(corpus.FIXED)] if fixed else target]
        expect = None if fixed else spec.expect
        cause = "(fixed)" if fixed else (spec.cause or "-")
        found = report.get(target, {}).get("anomalies", [])
        kinds = [a["kind"] for a in found]
        ok = (not kinds) if expect is None else any(spec.seen_in(k) for k in kinds)
        shown = ", ".join(f"{a['kind']}@{a['step']}" for a in found[:3])
        if len(found) > 3:
            shown += f", +{len(found) - 3}"
        top = "-"
        if found and found[0].get("causes"):
            first = found[0]["causes"][0]
            top = f"{first['cause']} ({first['confidence']:.2f})"
        lines.append(f"{target:36} {cause:20} {str(expect):11} "
                     f"{'yes' if ok else 'NO':3} {shown or '-':44} {top}")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("logdir")
    parser.add_argument("--only", help="comma-separated run names")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fixed", action="store_true",
                        help="also train each broken run's fix into <name>-fixed")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    parser.add_argument("--targets", action="store_true",
                        help="--only lists run directories, <name>-fixed included "
                             "(what train_all hands its workers)")
    parser.add_argument("--no-report", action="store_true")
    parser.add_argument("--report-only", action="store_true",
                        help="print the table for an already trained LOGDIR")
    args = parser.parse_args(argv)

    _limit_threads()
    import corpus  # pylint: disable=import-outside-toplevel

    names = args.only.split(",") if args.only else list(corpus.RUNS)
    if args.targets:
        targets = names
        names = [t[:-len(corpus.FIXED)] if t.endswith(corpus.FIXED) else t for t in names]
    else:
        targets = None
    unknown = [n for n in names if n not in corpus.RUNS]
    if unknown:
        parser.error(f"unknown run(s): {', '.join(unknown)}")
    if targets is None:
        targets = corpus._targets(names, args.fixed)  # pylint: disable=protected-access
    if not args.report_only:
        for target in targets:  # never mix two trainings in one run directory
            path = os.path.join(args.logdir, target)
            if os.path.isdir(path):
                import shutil  # pylint: disable=import-outside-toplevel
                shutil.rmtree(path)
        start = time.perf_counter()
        log = lambda line: print(line, flush=True)  # noqa: E731
        if args.targets:
            for target in targets:
                t = time.perf_counter()
                corpus.train_one(args.logdir, target, seed=args.seed)
                log(f"{target}: {time.perf_counter() - t:.1f}s")
        else:
            times = corpus.train_all(args.logdir, names, seed=args.seed, log=log,
                                     fixed=args.fixed, jobs=args.jobs)
            print(f"total: {time.perf_counter() - start:.1f}s "
                  f"(runs {sum(times.values()):.1f}s, jobs {args.jobs})", flush=True)
    if not args.no_report:
        print("\n".join(summary(args.logdir, targets)))


if __name__ == "__main__":
    main()
