"""The offline analysis, run on the host over the recent rows at each flush.

The in-graph detector (`detector`) and the offline analysis
(`tb_stability.analysis.detect`) judge a loss curve by different rules: a
slow rise is flagged online only once it is far up, long after the onset the
analysis reports; a divergence's peak comes later still. The rows around an
onset or a peak the detector did not flag would be gone from the rings by
the time anyone reads the run, and its evidence card would have no layer
and no lead.

`Recheck` keeps a bounded history of the loss, the non-finite count and the
loss scale of the last rows (the rings' span plus the analysis's baseline
context, `BLOCK * BLOCKS` rows, aligned on `BLOCK` rows as the offline
blocks are), runs `detect_anomalies` over it every `every` rows, and
returns the onset and peak rows of what it found that may still be written
in detail (`DetailSelector.note_rows`). The detail of the last `hold` rows
of a flush waits for the next one (the final flush writes everything), so
an onset found up to that many rows late still has its rows before it.
Which steps are computed in full is still the detector's decision: this
only chooses rows to keep.

Only the kinds judged against a local baseline are taken (`LOCAL_KINDS`;
not a slow divergence, pattern "slow", judged against the best level the
run reached, which the history may not hold). A plateau is judged on the
whole run (its first loss, the best it reached, its end), which the
history does not hold, and it is known only once it is long, its onset
far older than the rings. So the rows where the loss
stopped moving are kept instead (`stalls.flat_onset`: the stall's test of
flatness without its judgement of the level), once per flat stretch at a
new level: a converged run keeps them too, one span of detail rows for
each level it settles at.
"""

import math

import numpy as np

from tb_stability import metadata
from tb_stability.analysis import detect as detect_lib
from tb_stability.analysis import report as report_lib
from tb_stability.analysis import stalls

_LOSS = metadata.GLOBAL["loss"]
_NONFINITE = metadata.GLOBAL["nonfinite"]
_SCALE = metadata.GLOBAL["loss_scale"]
# Rows of constant predictions that make a flat stretch at any level worth
# its onset's detail (fewer than the offline stall needs: the online side
# keeps at least what the offline one reports).
CONSTANT_MIN_ROWS = 4 * stalls.BLOCK
_PRED = [metadata.GLOBAL[name] for name in ("pred_min", "pred_max", "pred_mean")]
# Rows of baseline context the analysis needs before a step it judges.
CONTEXT = detect_lib.BLOCK * detect_lib.BLOCKS
# Rows between two analyses, at most (a Monitor under XLA flushes each step).
EVERY = 64
# Rows at the end of each flush whose detail waits for the next flush (at
# most a window): an onset is known only once the loss is far enough up, and
# rows are written once, in order, so the rows before it must not be passed.
HOLD = 128
# The kinds whose onset and peak rows are kept.
LOCAL_KINDS = ("spike", "divergence", "nonfinite", "instability")


class Recheck:
    """The recent rows the offline analysis runs over, on the host.

    Rows are identified by their count (`Rings.count` when pushed). The
    analysis sees them at their position in the run: the count plus the
    first step when the run does not start at step 0 (a resumed run
    continues its steps), so that its 16-row blocks are the offline ones.

    Args:
      capacity: rows the rings hold.
      window: rows per written window (the analysis runs at least every
        `min(window, EVERY)` rows).
      classes: the output width when it is a classifier's (ln C is a level
        a stuck run sits at), or None.
    """

    def __init__(self, capacity, window, classes=None):
        self.capacity = int(capacity)
        self.every = max(1, min(int(window), EVERY))
        self.hold = min(int(window), HOLD)
        block = detect_lib.BLOCK
        # The rings' span plus the context, and a block of slack for the
        # alignment: a few hundred rows, a few milliseconds per analysis.
        self.keep = -(-(self.capacity + CONTEXT + block) // block) * block
        self._offset = None  # position of a row = count + offset
        self._complete = False  # the history starts at the run's first row
        self._first = 0  # count of the first row held
        self._loss = np.zeros([0], np.float64)
        self._nonfinite = np.zeros([0], np.float64)
        self._scale = np.zeros([0], np.float64)
        self._spread = np.zeros([0], np.float64)  # the predictions' spread
        self._analysed = 0  # rows added when the analysis last ran
        self._flat_end = None  # position where the last flat stretch kept was seen
        self._flat_level = None  # its level (log10)
        self._chance = (math.log10(math.log(classes))
                        if classes and classes >= 2 else None)
        self._start = None  # the run's loss before training moved it (log10)
        self._best = math.inf  # the lowest block median seen (log10)

    @property
    def end(self):
        """One past the count of the last row held."""
        return self._first + len(self._loss)

    def add(self, start, steps, global_rows):
        """Adds rows `start, start + 1, ...` (their steps and global rows)."""
        n = len(steps)
        if n == 0:
            return
        if self._offset is None or start != self.end:
            # The first rows, or rows were lost: the history starts again.
            first_step = int(steps[0])
            self._offset = first_step - start if first_step > 0 else -start
            self._complete = first_step == 0 and start == 0
            self._first = start
            self._loss = self._nonfinite = self._scale = self._spread = np.zeros(
                [0], np.float64)
            self._analysed = start
        rows = np.asarray(global_rows, np.float64)
        self._loss = np.concatenate([self._loss, rows[:, _LOSS]])
        self._nonfinite = np.concatenate([self._nonfinite, rows[:, _NONFINITE]])
        self._scale = np.concatenate([self._scale, rows[:, _SCALE]])
        lo, hi, mean = (rows[:, c] for c in _PRED)
        with np.errstate(invalid="ignore"):
            spread = (hi - lo) / np.maximum(1.0, np.abs(mean))
        self._spread = np.concatenate([self._spread, spread])
        self._trim()

    def _trim(self):
        """Keeps the last `keep` rows or so, starting on a block boundary."""
        block = detect_lib.BLOCK
        first_pos = self._first + self._offset
        want = max(self.end - self.keep + self._offset, first_pos)
        if not self._complete or want > first_pos:
            want = -(-want // block) * block
        cut = min(want - first_pos, len(self._loss))
        if cut > 0:
            self._complete = False
            self._first += cut
            self._loss = self._loss[cut:]
            self._nonfinite = self._nonfinite[cut:]
            self._scale = self._scale[cut:]
            self._spread = self._spread[cut:]

    def due(self, final=False):
        """Whether rows were added since the last analysis, enough of them."""
        new = self.end - self._analysed
        return new > 0 and (final or new >= self.every)

    def rows(self, final=False):
        """The onset and peak rows of the anomalies found, for the detail.

        Runs the analysis over the history. Only `LOCAL_KINDS` count, and
        only rows with their baseline context in the history (its first
        `CONTEXT` rows, unless it starts at the run's first row, are context
        only); `DetailSelector.note_rows` keeps those whose detail rows are
        still in the rings and not yet written.

        Args:
          final: no more rows come (the last row is judged as it stands).
        """
        self._analysed = self.end
        n = len(self._loss)
        if n == 0:
            return []
        if not final and np.isfinite(self._scale[-1]):
            # Whether the last row was a loss-scale skip shows only on the
            # next row (its scale is lower): judged at the next analysis.
            n -= 1
        if n <= 0:
            return []
        positions = np.arange(self._first, self._first + n) + self._offset
        skipped = report_lib.skipped_rows(self._loss[:n], self._scale[:n])
        anomalies = detect_lib.detect_anomalies(
            positions, self._loss[:n], nonfinite=self._nonfinite[:n],
            skipped=skipped, pred_spread=self._spread[:n])
        judged_from = positions[0] + (0 if self._complete else CONTEXT)
        rows = {int(pos) - self._offset
                for a in anomalies if a.kind in LOCAL_KINDS and a.pattern != "slow"
                for pos in (a.step, a.peak_step) if pos >= judged_from}
        flat = self._flat_row(positions)
        if flat is not None:
            rows.add(flat)
        return sorted(rows)

    def _flat_row(self, positions):
        """The row where the loss stopped moving, once per flat stretch.

        Only at a level a stuck run can sit at (`_may_stall`): a flat
        stretch of a run still descending to new lows is not kept.
        """
        with np.errstate(divide="ignore", invalid="ignore"):
            loss = self._loss[:len(positions)]
            y = np.where(np.isfinite(loss) & (loss > 0), np.log10(np.abs(loss)), np.nan)
        if self._start is None and self._complete and len(y) >= stalls.BLOCK:
            self._start = stalls.start_level(y, len(y))
        found = stalls.flat_onset(y)
        best_before = self._best
        med, _, _ = stalls.block_medians(y, len(y))
        if np.any(np.isfinite(med)):
            self._best = min(self._best, float(np.nanmin(med)))
        if found is None:
            return None
        k, level = found
        onset = int(positions[k])
        if self._flat_end is not None and onset <= self._flat_end and \
                abs(level - self._flat_level) <= stalls.STALL_SPREAD:
            self._flat_end = int(positions[-1])
            return None  # the same stretch, still flat
        if not self._may_stall(level, best_before):
            # At any level where the model gives every input the same output.
            first = stalls.constant_suffix(self._spread[:len(positions)], len(positions),
                                           CONSTANT_MIN_ROWS)
            if first is None:
                return None
            onset = int(positions[max(first, k)])
        self._flat_end, self._flat_level = int(positions[-1]), level
        return onset - self._offset

    def _may_stall(self, level, best_before):
        """Whether a flat stretch at `level` (log10) can be a plateau.

        Near ln C, within `stalls.BARELY_LEARNED` of the run's start, or
        `stalls.LOST` above the best level seen before; any level when the
        start is unknown (a resumed run). (At any level, too, where the
        model gives every input the same prediction: `rows` checks that.)
        """
        if self._start is None:
            return True
        if self._chance is not None and level >= self._chance - stalls.NEVER_LEARNED:
            return True
        return bool(level >= self._start - stalls.BARELY_LEARNED
                    or level >= best_before + stalls.LOST)
