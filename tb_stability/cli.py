"""`tb-stability report LOGDIR [--run RUN] [--json]`.

Exit status: 0 when no anomaly is found, 1 when anomalies are found, 2 on a
usage or read error (with a message on stderr).
"""

import argparse
import json
import sys

_COLUMNS = ("run", "kind", "step", "cause", "layer", "lead", "fix")


def _table(result, out):
    rows = []
    for run in result["runs"]:
        if not run["anomalies"]:
            rows.append((run["run"], "-", "-", "no anomaly", "", "", ""))
        for a in run["anomalies"]:
            top = a["causes"][0]
            step = str(a["step"]) if a["peak_step"] == a["step"] else \
                f"{a['step']}->{a['peak_step']}"
            kind = a["kind"] + (f" ({a['pattern']})" if a.get("pattern") else "")
            rows.append((run["run"], kind, step,
                         f"{top['cause']} ({top['confidence']:.2f})",
                         top["layer"] or "",
                         "" if top["lead_steps"] is None else str(top["lead_steps"]),
                         top["fix"]))
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(_COLUMNS)]
    widths[-1] = len(_COLUMNS[-1])  # the fix column runs to the end of line
    line = lambda r: "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip()  # noqa: E731
    out.write(line(_COLUMNS) + "\n")
    for r in rows:
        out.write(line(r) + "\n")


def main(argv=None):
    """Runs `tb-stability` with `argv` (default: the command line); its exit code."""
    parser = argparse.ArgumentParser(
        prog="tb-stability",
        description="Find training instabilities and name their causes.")
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="report the anomalies of a logdir")
    rep.add_argument("logdir", help="the directory given to tensorboard --logdir")
    rep.add_argument("--run", help="only this run (its path relative to LOGDIR)")
    rep.add_argument("--json", action="store_true",
                     help="print the JSON report (see REPORT.md) instead of a table")
    args = parser.parse_args(argv)

    from tb_stability.analysis.report import report_logdir

    try:
        result = report_logdir(args.logdir, run=args.run)
    except FileNotFoundError as e:
        print(f"tb-stability: {e}", file=sys.stderr)
        return 2
    except KeyError:
        print(f"tb-stability: no tb_stability data for run {args.run!r} in "
              f"{args.logdir}", file=sys.stderr)
        return 2
    if not result["runs"]:
        print(f"tb-stability: no tb_stability data in {args.logdir} (add "
              f"tb_stability.keras.StabilityCallback or Monitor to training)",
              file=sys.stderr)
        return 2
    if args.json:
        json.dump(result, sys.stdout, indent=1, allow_nan=False)
        sys.stdout.write("\n")
    else:
        _table(result, sys.stdout)
    found = any(run["anomalies"] for run in result["runs"])
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
