"""Host-side writing: windows, the detail rows kept, the summaries.

Runs outside any compiled function, on what `Rings.read` returned:

* `Window` accumulates the open window: every step's global row, the
  per-variable max and mean, the per-feature input statistics;
* `DetailSelector` chooses the steps whose full per-variable rows are
  written: the first steps, and the steps around each one flagged (by the
  online detector, or at an onset or peak the offline analysis finds on
  the host, `recheck`);
* `RunWriter` owns the run's event file (created lazily, on the first
  write) and writes these with the ops of `tb_stability.summary`.
"""

import warnings

import numpy as np
import tensorflow as tf

from tb_stability import metadata, summary


def _total(values, axis=0):
    """Sum over `axis` of the non-NaN values; NaN where all are NaN."""
    values = np.asarray(values)
    return np.where(np.all(np.isnan(values), axis=axis), np.nan,
                    np.nansum(values, axis=axis))


# How a window aggregates each input-statistics column over its steps, and
# how two such aggregates are merged.
_INPUT_OVER_STEPS = {"mean": np.nanmean, "std": np.nanmax,
                     "min": np.nanmin, "max": np.nanmax,
                     "nonfinite": _total}
_INPUT_MERGE = {"mean": lambda a, b: (a + b) / 2.0, "std": np.fmax,
                "min": np.fmin, "max": np.fmax,
                "nonfinite": lambda a, b: _total([a, b])}
_INPUT = {name: i for i, name in enumerate(metadata.INPUT_COLUMNS)}


def _input_aggregate(inputs):
    """Per-feature aggregate over steps of [steps, features, columns] statistics."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN features
        return np.stack(
            [_INPUT_OVER_STEPS[name](inputs[:, :, _INPUT[name]], axis=0)
             for name in metadata.INPUT_COLUMNS],
            axis=1,
        )


def _merge_input_aggregates(old, new):
    """Two `_input_aggregate` results as one."""
    return np.stack(
        [_INPUT_MERGE[name](old[:, _INPUT[name]], new[:, _INPUT[name]])
         for name in metadata.INPUT_COLUMNS],
        axis=1,
    )


class Window:
    """The open window: what is written once `config.window` steps are in.

    Attributes:
      rows: (step, global row) of every step in the window, in order.
      n: steps added with `add` (rows repeated by `repeat_rows` not counted).
    """

    def __init__(self):
        self.reset()

    def reset(self):
        """Empties the window (after it was written)."""
        self.rows = []
        self.n = 0
        self._max = self._sum = self._count = None
        self._inputs = None

    def repeat_rows(self, rows):
        """Adds earlier (step, global row) pairs without counting them."""
        self.rows.extend(rows)

    def add(self, steps, global_rows, layers, inputs):
        """Adds steps read from the rings.

        Args:
          steps: int64 [n].
          global_rows: float32 [n, len(GLOBAL_COLUMNS)].
          layers: float32 [n, V, S], the per-variable rows (NaN = not
            measured, left out of the aggregates).
          inputs: float32 [n, features, len(INPUT_COLUMNS)], or None.
        """
        for k in range(len(steps)):
            self.rows.append((int(steps[k]), global_rows[k]))
        with np.errstate(invalid="ignore"):
            batch_max = np.nanmax(
                np.where(np.isnan(layers), -np.inf, layers), axis=0
            )
            batch_sum = np.nansum(layers, axis=0)
            batch_n = np.sum(~np.isnan(layers), axis=0)
        if self._max is None:
            self._max, self._sum, self._count = batch_max, batch_sum, batch_n
        else:
            self._max = np.maximum(self._max, batch_max)
            self._sum = self._sum + batch_sum
            self._count = self._count + batch_n
        if inputs is not None:
            agg = _input_aggregate(inputs)
            self._inputs = (agg if self._inputs is None
                            else _merge_input_aggregates(self._inputs, agg))
        self.n += len(steps)

    @property
    def last_step(self):
        """The step of the window's last row (the step its events carry)."""
        return self.rows[-1][0]

    def global_table(self):
        """`[rows, 1 + G]` float32: step offsets to `last_step`, then rows."""
        steps = np.array([s for s, _ in self.rows], dtype=np.int64)
        rows = np.stack([g for _, g in self.rows]).astype(np.float32)
        offsets = (steps - self.last_step).astype(np.float32)[:, None]
        return np.concatenate([offsets, rows], axis=1)

    def layer_aggregates(self):
        """`[V, S, len(WINDOW_AGGREGATES)]` float32: max and mean per cell."""
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(
                self._count > 0, self._sum / np.maximum(self._count, 1),
                np.nan,
            )
        aggregates = {
            "max": np.where(np.isneginf(self._max), np.nan, self._max),
            "mean": mean,
        }
        return np.stack(
            [aggregates[name] for name in metadata.WINDOW_AGGREGATES], axis=-1
        ).astype(np.float32)

    def input_aggregates(self):
        """`[features, len(INPUT_COLUMNS)]` float32 input statistics of the window, or None."""
        return None if self._inputs is None else self._inputs.astype(np.float32)


class DetailSelector:
    """Chooses the rows whose per-variable detail is written, each once.

    Args:
      config: the `RecorderConfig` (`detail_before`, `detail_after`,
        `first_steps`, `full_detail`).
    """

    def __init__(self, config):
        self.before = config.detail_before
        self.after = config.detail_after
        self.first_steps = config.first_steps
        self.full_detail = config.full_detail
        self.written = -1  # the last row written in detail
        self._flag_rows = []  # recent flagged rows

    def note_flags(self, start, flags):
        """Remembers the flagged rows among rows `start, start + 1, ...`."""
        for r, f in zip(range(start, start + len(flags)), flags):
            if f != 0:
                self._flag_rows.append(r)

    def note_rows(self, rows, count, capacity):
        """Flags `rows` on the host, as if the detector had flagged them.

        Their detail windows are written as far as they are still in the
        ring and not yet written (rows are written once, in order); a row
        whose window is already past is ignored.

        Args:
          rows: row counts (an onset or a peak of the offline analysis).
          count: rows pushed so far.
          capacity: rows the ring holds.
        """
        lo = max(self.written + 1, count - capacity)
        known = set(self._flag_rows)
        for r in rows:
            if r + self.after >= lo and r not in known:
                self._flag_rows.append(int(r))
                known.add(r)

    def wanted(self, count, capacity, hold=0):
        """The rows to write now: ascending, not yet written, still in the ring.

        Args:
          count: rows pushed so far.
          capacity: rows the ring holds (older ones are gone).
          hold: the last rows pushed are left for a later call (the offline
            analysis may still flag rows before them; rows are written once,
            in order).
        """
        lo = max(self.written + 1, count - capacity)
        self._flag_rows = [f for f in self._flag_rows if f + self.after >= lo]
        return [
            r
            for r in range(lo, count - hold)
            if self.full_detail
            or r < self.first_steps
            or any(f - self.before <= r <= f + self.after
                   for f in self._flag_rows)
        ]


class RunWriter:
    """The run's event file, created on first use; None logdir writes nothing.

    Args:
      logdir: the run directory, or None.
    """

    def __init__(self, logdir):
        self.logdir = logdir
        self._writer = None
        # Called with (tag, step, value) of everything written (the live
        # analysis keeps it: `live.LiveRun.add`), or None.
        self.tap = None

    def _tapped(self, tag, step, value):
        if self.tap is not None:
            self.tap(tag, step, value)

    def get(self):
        """The summary writer (created now if needed), or None without logdir."""
        if self._writer is None and self.logdir is not None:
            self._writer = tf.summary.create_file_writer(
                self.logdir, max_queue=64, flush_millis=10_000
            )
        return self._writer

    def write_run_info(self, info, step):
        """Writes the run description `info` (a dict) at `step`."""
        with self.get().as_default():
            summary.run_info(None, info, step=step)
        self._tapped(metadata.TAG_RUN_INFO, step, info)

    def write_detail(self, rows, wanted, selector):
        """Writes the detail of rows `wanted`, marking each written in turn.

        Args:
          rows: the `RingRows` read.
          wanted: row counts to write (`DetailSelector.wanted`).
          selector: the `DetailSelector` whose `written` follows.
        """
        capacity = len(rows.steps_all)
        with self.get().as_default():
            for r in wanted:
                i = r % capacity
                step = int(rows.steps_all[i])
                summary.layers_detail(None, rows.layers_all[i], step=step)
                self._tapped(metadata.TAG_LAYERS_DETAIL, step, rows.layers_all[i])
                if rows.input_rows_all is not None:
                    summary.input_grad_rows(None, rows.input_rows_all[i],
                                            step=step)
                    self._tapped(metadata.TAG_INPUT_GRAD_ROWS, step,
                                 rows.input_rows_all[i])
                if rows.inputs_all is not None:
                    summary.inputs_detail(None, rows.inputs_all[i], step=step)
                    self._tapped(metadata.TAG_INPUTS_DETAIL, step, rows.inputs_all[i])
                selector.written = r

    def write_window(self, window):
        """Writes a window's global rows and aggregates at its last step."""
        writer = self.get()
        if writer is None:
            return
        last_step = window.last_step
        table = window.global_table()
        layers = window.layer_aggregates()
        inputs = window.input_aggregates()
        with writer.as_default():
            summary.global_rows(None, table, step=last_step)
            summary.layers_window(None, layers, step=last_step)
            if inputs is not None:
                summary.inputs_window(None, inputs, step=last_step)
        self._tapped(metadata.TAG_GLOBAL, last_step, table)
        self._tapped(metadata.TAG_LAYERS_WINDOW, last_step, layers)
        if inputs is not None:
            self._tapped(metadata.TAG_INPUTS_WINDOW, last_step, inputs)

    def flush(self):
        """Flushes the event file, if one was opened."""
        if self._writer is not None:
            self._writer.flush()

    def close(self):
        """Closes the event file, if one was opened (errors ignored)."""
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # pylint: disable=broad-except
                pass
            self._writer = None
