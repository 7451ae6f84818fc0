"""tb_stability demo runs (importable: `from demo.main import run_all`).

TensorFlow's CPU kernels split reductions by the intra-op thread count, so
the same run gives different last bits on a 2-core and a 16-core machine;
the demo and the test scenarios pin it to 2 (the machine they are sized
for) unless TF_NUM_INTRAOP_THREADS is already set. TensorFlow reads it when
it first runs an op, so this holds where `demo` is imported before that.
"""

import os

os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "2")
