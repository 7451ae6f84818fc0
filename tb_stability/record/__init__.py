"""The training side: what runs in the training step and writes the run.

In pipeline order: `keras_hooks` (what `StabilityCallback` installs on the
optimizer) and `tb_stability.monitor` feed a `recorder.Recorder`, which
computes each step's statistics (`stats`, `sampling`, `global_stats`), runs
the online `detector`, stores the step's row in its `rings`, and on the host
writes windows and detail rows (`writer`), repairing a resumed run first
(`resume`). `keras_internals` is the one module that touches Keras and
TensorFlow private attributes; `runtime` says where the code runs (XLA,
replicas, chief).
"""
