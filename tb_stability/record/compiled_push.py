"""`Recorder.push` compiled once and called with a flat list of tensors.

`Monitor.record` called from Python (after the user's compiled step) must
not run the statistics op by op, and must not pay `tf.function`'s own
argument handling on every step either: for a step of a few hundred
microseconds, binding a nested signature (gradients, optional data nests,
Nones) costs as much as the statistics. So each distinct *layout* of the
arguments (which are given, their dtypes, the shapes the statistics need)
is traced once into a concrete function with a flat positional signature,
and each call passes the tensors in that order straight to it.

Shapes are relaxed where batches differ: every axis of the data tensors
but the last (features, the only one the statistics read statically), the
first axis of an `IndexedSlices` gradient's values and indices. A last
batch of another size therefore runs the same trace.
"""

from typing import NamedTuple

import numpy as np
import tensorflow as tf


class _Layout(NamedTuple):
    """How one call's arguments were flattened (also the cache key).

    Attributes:
      head: the spec keys of step and loss.
      grads: per gradient: None, its dtype (dense: its variable's shape),
        or ("slices", the spec keys of values, indices[, dense_shape]).
      scalars: per optional scalar argument (batch_size, grad_sq,
        guard_skip): None or its spec key.
      nests: per data nest (inputs, targets, predictions): None or
        (structure string, leaf spec keys).
    """

    head: tuple
    grads: tuple
    scalars: tuple
    nests: tuple


def _spec_key(t, relax=()):
    """(dtype, shape with the axes in `relax` (or "data") set to None)."""
    shape = tuple(t.shape)
    if relax == "data":
        shape = (None,) * (len(shape) - 1) + shape[-1:]
    elif relax:
        shape = tuple(None if i in relax else d for i, d in enumerate(shape))
    return (t.dtype, shape)


def _spec(key):
    return tf.TensorSpec(key[1], key[0])


class CompiledPush:
    """Calls `recorder.push` through one concrete function per layout.

    Attributes:
      traces: layouts traced so far (1 for a run whose calls all look alike).

    Args:
      recorder: the `Recorder` whose `push` runs.
    """

    def __init__(self, recorder):
        self.recorder = recorder
        self._calls = {}  # _Layout -> callable(flat tensors)
        self.traces = 0

    def __call__(self, step, loss, gradients, batch_size=None, inputs=None,
                 targets=None, predictions=None, grad_sq=None, guard_skip=None):
        """Runs the step's `push`; returns the row count (int64 tensor).

        `step`, `loss` and `batch_size` may be Python numbers or tensors;
        the data nests hold tensors or arrays.
        """
        flat = []
        step = (tf.constant(step, tf.int64)
                if isinstance(step, (int, np.integer)) else tf.convert_to_tensor(step))
        loss = tf.convert_to_tensor(loss)
        head = (_spec_key(step), _spec_key(loss))
        flat += [step, loss]
        grads = []
        for g in gradients:
            if g is None:
                grads.append(None)
            elif isinstance(g, tf.IndexedSlices):
                parts = [g.values, g.indices]
                if g.dense_shape is not None:
                    parts.append(g.dense_shape)
                grads.append(("slices",) + tuple(
                    _spec_key(p, relax=(0,) if i < 2 else ())
                    for i, p in enumerate(parts)))
                flat += parts
            else:
                # A dense gradient has its variable's shape: only its dtype
                # is looked at (a few attribute reads per gradient per call).
                if not isinstance(g, tf.Tensor):
                    g = tf.convert_to_tensor(g)
                grads.append(g.dtype)
                flat.append(g)
        scalars = []
        for value in (batch_size, grad_sq, guard_skip):
            if value is None:
                scalars.append(None)
            else:
                value = tf.convert_to_tensor(value)
                scalars.append(_spec_key(value))
                flat.append(value)
        nests = []
        for nest in (inputs, targets, predictions):
            if nest is None:
                nests.append(None)
                continue
            leaves = tf.nest.flatten(nest)
            keys = []
            for leaf in leaves:
                if leaf is None:
                    keys.append(None)
                else:
                    leaf = tf.convert_to_tensor(leaf)
                    keys.append(_spec_key(leaf, relax="data"))
                    flat.append(leaf)
            structure = tf.nest.map_structure(lambda _: None, nest)
            nests.append((repr(structure), tuple(keys), structure))
        layout = _Layout(head, tuple(grads), tuple(scalars),
                         tuple(None if n is None else n[:2] for n in nests))
        call = self._calls.get(layout)
        if call is None:
            call = self._calls[layout] = self._compile(
                layout, [None if n is None else n[2] for n in nests])
        return call(flat)

    def _compile(self, layout, structures):
        """The callable running `push` for calls of this layout."""
        specs = [_spec(k) for k in layout.head]
        for g, var in zip(layout.grads, self.recorder.variables):
            if isinstance(g, tuple):  # IndexedSlices
                specs += [_spec(k) for k in g[1:]]
            elif g is not None:
                specs.append(tf.TensorSpec(var.shape, g))
        specs += [_spec(k) for k in layout.scalars if k is not None]
        for nest in layout.nests:
            if nest is not None:
                specs += [_spec(k) for k in nest[1] if k is not None]
        rec = self.recorder

        def push(*flat):
            it = iter(flat)
            step, loss = next(it), next(it)
            grads = []
            for g in layout.grads:
                if g is None:
                    grads.append(None)
                elif isinstance(g, tuple):
                    values, indices = next(it), next(it)
                    shape = next(it) if len(g) > 3 else None
                    grads.append(tf.IndexedSlices(values, indices, shape))
                else:
                    grads.append(next(it))
            batch_size, grad_sq, guard_skip = (
                None if k is None else next(it) for k in layout.scalars)
            data = []
            for nest, structure in zip(layout.nests, structures):
                if nest is None:
                    data.append(None)
                    continue
                leaves = [None if k is None else next(it) for k in nest[1]]
                data.append(tf.nest.pack_sequence_as(structure, leaves))
            inputs, targets, predictions = data
            return rec.push(loss, grads, batch_size=batch_size, inputs=inputs,
                            targets=targets, predictions=predictions, step=step,
                            grad_sq=grad_sq, guard_skip=guard_skip)

        fn = tf.function(push, input_signature=specs, autograph=False)
        concrete = fn.get_concrete_function()
        self.traces += 1
        call_flat = getattr(concrete, "_call_flat", None)
        if call_flat is None:  # another TensorFlow: the public call
            return lambda flat: concrete(*flat)

        def call(flat):
            # The concrete function's own flat entry point: the arguments
            # are already in its order, dtypes and shapes (the layout).
            return call_flat(flat, concrete.captured_inputs)

        return call
