"""Resuming a run: the rows a restart would make TensorBoard drop.

TensorBoard's data server drops a whole earlier event once an event with a
lower step arrives (a restart): the window event that holds the resume step
would take its rows before that step with it. A recorder that resumes a run
(its first step is one the logdir already has) writes those rows again, at
the head of its first window; readers keep the later copy of each step.
"""

import logging

import numpy as np

from tb_stability import metadata

logger = logging.getLogger("tb_stability")


def rows_before_resume(logdir, first_step):
    """The rows an earlier attempt wrote before `first_step` in one event.

    Args:
      logdir: the run directory, or None (nothing to repair).
      first_step: the first step this recorder records.

    Returns:
      [(step, float32 global row), ...] from the last-written global event
      whose step is at least `first_step` and whose rows start before it:
      its rows before `first_step`; [] when there is none (or the logdir
      cannot be read, with a warning).
    """
    if first_step <= 0 or logdir is None:
        return []
    try:
        from tb_stability.events import reader  # pure NumPy, lazy

        events = reader.read_tags(logdir).get(metadata.TAG_GLOBAL, [])
    except Exception as e:  # pylint: disable=broad-except
        logger.warning("tb_stability: could not read the earlier attempt "
                       "of this run: %s: %s", type(e).__name__, e)
        return []
    for event_step, table in reversed(events):  # the last written wins
        if event_step < first_step or table.ndim != 2 or not len(table):
            continue
        steps = event_step + table[:, 0].astype(np.int64)
        if steps[0] >= first_step:
            continue
        keep = steps < first_step
        rows = table[keep, 1:].astype(np.float32)
        return [(int(st), row) for st, row in zip(steps[keep], rows)]
    return []
