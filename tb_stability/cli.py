"""`tb-stability report LOGDIR [--run RUN] [--json] [--no-fixes]`.

Exit status: 0 when no anomaly is found, 1 when anomalies are found, 2 on a
usage or read error (with a message on stderr).

The table fits `WIDTH` columns: one row per anomaly (its top cause; the
kind says "[N skipped]" when the update guard skipped N updates in it), and
under each run's rows that run's distinct fixes, once each, wrapped. Long
run and layer names are shortened in the middle to fit.
"""

import argparse
import json
import os
import sys
import textwrap

WIDTH = 120
_COLUMNS = ("run", "kind", "step", "cause (confidence)", "layer", "lead")
_SHRINKABLE = (0, 4)  # run and layer: shortened in the middle when too wide
_MIN_SHRUNK = 12
_GAP = "  "


def _middle(text, width):
    """`text` shortened in the middle to at most `width` characters."""
    if len(text) <= width:
        return text
    keep = max(width - 1, 1)
    head = (keep + 1) // 2
    tail = keep - head
    return text[:head] + "\u2026" + (text[-tail:] if tail else "")


def _rows(run):
    """The table rows of one run and its distinct fixes [(cause, fix)]."""
    if not run["anomalies"]:
        return [(run["run"], "-", "-", "no anomaly", "", "")], []
    rows, fixes = [], {}
    for a in run["anomalies"]:
        top = a["causes"][0]
        step = str(a["step"]) if a["peak_step"] == a["step"] else \
            f"{a['step']}->{a['peak_step']}"
        kind = a["kind"] + (f" ({a['pattern']})" if a.get("pattern") else "")
        if a.get("guard_skipped"):
            # Updates the update guard skipped inside the anomaly.
            kind += f" [{a['guard_skipped']} skipped]"
        rows.append((run["run"], kind, step,
                     f"{top['cause']} ({top['confidence']:.2f})",
                     top["layer"] or "",
                     "" if top["lead_steps"] is None else str(top["lead_steps"])))
        if top.get("fix"):
            fixes.setdefault(top["fix"], top["cause"])
    return rows, [(cause, fix) for fix, cause in fixes.items()]


def _widths(rows, width=WIDTH):
    """Column widths whose table fits `width` (run and layer shrink first)."""
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(_COLUMNS)]
    excess = sum(widths) + len(_GAP) * (len(widths) - 1) - width
    while excess > 0:
        i = max(_SHRINKABLE, key=lambda k: widths[k])
        if widths[i] <= _MIN_SHRUNK:
            break  # nothing left to shrink: the fixed columns alone are wider
        cut = min(excess, widths[i] - _MIN_SHRUNK,
                  max(1, widths[i] - max(widths[k] for k in _SHRINKABLE if k != i)))
        widths[i] -= cut
        excess -= cut
    return widths


def format_table(result, width=WIDTH, fixes=True):
    """The report as text lines no longer than `width` (see the module doc)."""
    per_run = [_rows(run) for run in result["runs"]]
    widths = _widths([r for rows, _ in per_run for r in rows], width)

    def line(r):
        cells = [_middle(v, w) if i in _SHRINKABLE else v
                 for i, (v, w) in enumerate(zip(r, widths))]
        return _GAP.join(v.ljust(w) for v, w in zip(cells, widths)).rstrip()

    out = [line(_COLUMNS)]
    for rows, run_fixes in per_run:
        out.extend(line(r) for r in rows)
        if not fixes:
            continue
        for cause, fix in run_fixes:
            out.extend(textwrap.wrap(f"fix ({cause}): {fix}", width=width,
                                     initial_indent="    ", subsequent_indent="      ",
                                     break_on_hyphens=False))
    return out


def _quiet_on_closed_pipe():
    """Sends the rest of the output nowhere: the reader closed stdout.

    After `| head`, neither this write nor the exit's flush may print a
    BrokenPipeError traceback.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


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
    rep.add_argument("--no-fixes", action="store_true",
                     help="the table only, without each run's fixes under its rows")
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
    found = any(run["anomalies"] for run in result["runs"])
    code = 1 if found else 0
    if args.json:
        text = json.dumps(result, indent=1, allow_nan=False) + "\n"
    else:
        text = "\n".join(format_table(result, fixes=not args.no_fixes)) + "\n"
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_on_closed_pipe()
    return code


if __name__ == "__main__":
    sys.exit(main())
