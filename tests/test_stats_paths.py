"""Per-variable statistics against the NumPy reference, row for row, small
and large variables, without gradient or moments, eagerly, in a tf.function
and under XLA.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import S

from tb_stability.record import sampling
from tb_stability.record import stats as _stats
from tb_stability.record.keras_internals import OptimizerAdapter

LR, B1, B2, EPS, WD = 0.01, 0.9, 0.999, 1e-3, 0.004
# Small, large (the median on a strided sample), small, large, one entry, rank 3.
SHAPES = [(8, 5), (16391,), (3,), (130, 140), (1,), (4, 3, 2)]


def _setup(optimizer_cls, steps=3, seed=0):
    rng = np.random.default_rng(seed)
    variables = [keras.Variable(rng.normal(size=s).astype("float32"), name=f"v{i}")
                 for i, s in enumerate(SHAPES)]
    kwargs = dict(learning_rate=LR, beta_1=B1, beta_2=B2, epsilon=EPS)
    if optimizer_cls is keras.optimizers.AdamW:
        kwargs["weight_decay"] = WD
    opt = optimizer_cls(**kwargs)
    opt.build(variables)
    grads = None
    for _ in range(steps):
        before = [v.numpy().copy() for v in variables]
        grads = [tf.constant(rng.normal(size=s).astype("float32")) for s in SHAPES]
        opt.apply(grads, variables)
    return variables, opt, grads, before


def _reference(variables, opt, grads, before, t, samples):
    """Per-variable stats in float64; a sampled tensor's are taken over its
    sampled entries and scaled to its size (its gradient norm is exact).
    """
    rows = []
    for i, (var, g) in enumerate(zip(variables, grads)):
        idx = samples[i]
        pick = (lambda x: x.ravel()) if idx is None else (lambda x, idx=idx: x.ravel()[idx])  # noqa: E731
        w = pick(var.numpy().astype(np.float64))
        m = pick(opt._momentums[i].numpy().astype(np.float64))
        v = pick(opt._velocities[i].numpy().astype(np.float64))
        w0 = pick(before[i].astype(np.float64))
        v_hat = v / (1 - B2 ** t)
        row = np.zeros(len(S))
        if g is None:
            row[S["grad_norm"]] = row[S["rms_ratio"]] = np.nan
        else:
            g = g.numpy().astype(np.float64)
            row[S["grad_norm"]] = np.linalg.norm(g)
            g = pick(g)
            row[S["rms_ratio"]] = np.sqrt(np.mean(g * g / np.maximum(v_hat, EPS ** 2)))
        row[S["weight_norm"]] = np.sqrt(np.mean(w * w) * var.numpy().size)
        row[S["update_ratio"]] = np.linalg.norm(w - w0) / np.linalg.norm(w)
        row[S["mu_rms"]] = np.sqrt(np.mean(m * m))
        row[S["nu_sqrt_rms"]] = np.sqrt(np.mean(v_hat))
        row[S["eff_step_max"]] = LR * np.sqrt(1 - B2 ** t) / (np.sqrt(v.min()) + EPS)
        flat = v_hat.ravel()
        stride = max(1, len(flat) // sampling.MEDIAN_SAMPLE)
        sample = np.sort(flat[::stride][: sampling.MEDIAN_SAMPLE])
        row[S["sqrt_nu_over_eps_median"]] = np.sqrt(sample[len(sample) // 2]) / EPS
        rows.append(row)
    return np.array(rows)



@pytest.mark.parametrize("mode", ["eager", "function", "jit"])
@pytest.mark.parametrize("optimizer", ["Adam", "AdamW"])
@pytest.mark.parametrize("exact", [True, False], ids=["exact", "from_moments"])
@pytest.mark.parametrize("sample_size", [None, 0], ids=["sampled", "every_entry"])
def test_stats_match_numpy(mode, optimizer, exact, sample_size):
    cls = getattr(keras.optimizers, optimizer)
    variables, opt, grads, before = _setup(cls)
    grads = list(grads)
    grads[2] = None  # a variable without gradient
    calc = _stats.VariableStats(OptimizerAdapter(opt), variables,
                                sample_size=sample_size)
    sampled = [i for i, idx in enumerate(calc.samples) if idx is not None]
    assert sampled == ([1, 3] if sample_size is None else [])

    def compute():
        wb = [tf.constant(b) for b in before] if exact else None
        return calc.compute(grads, weights_before=wb, with_median=True)[0]

    if mode != "eager":
        compute = tf.function(compute, jit_compile=mode == "jit")
    got = compute().numpy()
    ref = _reference(variables, opt, grads, before, 3, calc.samples)
    counts = [S["grad_nonfinite"], S["weight_nonfinite"], S["moment_nonfinite"]]
    assert np.all(got[:, counts] == 0)
    # The update derived from the moments uses the weights after the step
    # for AdamW's decay term: agreement to ~lr * wd.
    rtol = 1e-4 if exact or optimizer == "Adam" else 1e-3
    for name, col in S.items():
        if col in counts:
            continue
        np.testing.assert_allclose(got[:, col], ref[:, col],
                                   rtol=rtol if name == "update_ratio" else 1e-4,
                                   atol=1e-7, err_msg=name)


@pytest.mark.parametrize("mode", ["eager", "function", "jit"])
def test_nonfinite_entries_are_counted_per_variable(mode):
    variables, opt, grads, before = _setup(keras.optimizers.Adam, steps=1)
    grads = [g.numpy() for g in grads]
    grads[0][0, 0] = np.nan  # packed
    grads[1][5] = np.inf  # solo
    grads[1][6] = -np.inf
    grads = [tf.constant(g) for g in grads]
    grads[2] = None  # no gradient: nothing to count
    weights = variables[3].numpy()
    weights[7, 9] = weights[100, 1] = np.nan
    variables[3].assign(weights)
    nu = opt._velocities[4].numpy()
    nu[0] = np.inf
    opt._velocities[4].assign(nu)
    mu = opt._momentums[5].numpy()
    mu[1, 2, 0] = np.nan
    opt._momentums[5].assign(mu)
    calc = _stats.VariableStats(OptimizerAdapter(opt), variables)

    def compute():
        return calc.compute(grads, with_median=False,
                            median_carry=tf.zeros([len(variables)]))[0]

    if mode != "eager":
        compute = tf.function(compute, jit_compile=mode == "jit")
    got = compute().numpy()
    assert list(got[:, S["grad_nonfinite"]]) == [1, 2, 0, 0, 0, 0]
    assert list(got[:, S["weight_nonfinite"]]) == [0, 0, 0, 2, 0, 0]
    assert list(got[:, S["moment_nonfinite"]]) == [0, 0, 0, 0, 1, 1]
    assert np.isnan(got[0, S["grad_norm"]]) and np.isinf(got[1, S["grad_norm"]])
    assert np.isnan(got[2, S["grad_norm"]])


def test_without_moments_adam_columns_are_nan_and_sgd_update_is_derived():
    rng = np.random.default_rng(1)
    variables = [keras.Variable(rng.normal(size=s).astype("float32")) for s in SHAPES]
    opt = keras.optimizers.SGD(LR)
    opt.build(variables)
    grads = [tf.constant(rng.normal(size=s).astype("float32")) for s in SHAPES]
    opt.apply(grads, variables)
    calc = _stats.VariableStats(OptimizerAdapter(opt), variables, sample_size=0)
    got = calc.compute(grads, with_median=True)[0].numpy()
    for name in ("mu_rms", "nu_sqrt_rms", "rms_ratio", "eff_step_max",
                 "sqrt_nu_over_eps_median"):
        assert np.all(np.isnan(got[:, S[name]])), name
    want = [LR * np.linalg.norm(g.numpy()) / np.linalg.norm(v.numpy())
            for g, v in zip(grads, variables)]
    np.testing.assert_allclose(got[:, S["update_ratio"]], want, rtol=1e-4)


def test_a_sample_estimates_the_whole_tensor():
    """Statistics of a 512x512 kernel from 8192 of its entries are within a
    few percent of the exact ones, and its gradient norm is exact.
    """
    rng = np.random.default_rng(3)
    var = keras.Variable(rng.normal(0, 0.05, size=(512, 512)).astype("float32"))
    opt = keras.optimizers.Adam(1e-3)
    opt.build([var])
    for _ in range(20):
        g = tf.constant((rng.normal(size=(512, 512)) * rng.gamma(1, 1, size=(512, 1)))
                        .astype("float32"))
        opt.apply([g], [var])
    adapter = OptimizerAdapter(opt)
    sampled = _stats.VariableStats(adapter, [var]).compute([g])[0].numpy()[0]
    exact = _stats.VariableStats(adapter, [var], sample_size=0).compute([g])[0].numpy()[0]
    assert sampled[S["grad_norm"]] == pytest.approx(exact[S["grad_norm"]], rel=1e-5)
    for name in ("weight_norm", "update_ratio", "mu_rms", "nu_sqrt_rms",
                 "rms_ratio", "sqrt_nu_over_eps_median"):
        # (the median is of 256 entries either way: a looser match)
        rel = 0.15 if name == "sqrt_nu_over_eps_median" else 0.05
        assert sampled[S[name]] == pytest.approx(exact[S[name]], rel=rel), name
    # The smallest v of a sample is at least the smallest of all entries.
    assert sampled[S["eff_step_max"]] <= exact[S["eff_step_max"]] * (1 + 1e-6)


@pytest.mark.parametrize("mode", ["function", "jit"])
@pytest.mark.parametrize("optimizer", ["Adam", "AdamW"])
@pytest.mark.parametrize("exact", [True, False], ids=["exact", "from_moments"])
def test_variables_of_one_shape_summed_together_match_one_by_one(
        mode, optimizer, exact, monkeypatch):
    """Stacked per shape (groups of 4 or more), the statistics are those of
    the variables summed one by one: one group of 5 kernels where one has
    no gradient (a group of 4 and a single), a group of 4 biases, and
    variables of other shapes.
    """
    shapes = [(6, 4)] * 5 + [(7,)] * 4 + [(3, 3), (16391,)]
    rng = np.random.default_rng(2)
    variables = [keras.Variable(rng.normal(size=s).astype("float32"), name=f"v{i}")
                 for i, s in enumerate(shapes)]
    kwargs = dict(learning_rate=LR, beta_1=B1, beta_2=B2, epsilon=EPS)
    if optimizer == "AdamW":
        kwargs["weight_decay"] = WD
    opt = getattr(keras.optimizers, optimizer)(**kwargs)
    opt.build(variables)
    for _ in range(3):
        before = [tf.constant(v.numpy()) for v in variables]
        grads = [tf.constant(rng.normal(size=s).astype("float32")) for s in shapes]
        opt.apply(grads, variables)
    grads[2] = None

    def stats(group_min):
        monkeypatch.setattr(_stats, "GROUP_MIN", group_min)
        calc = _stats.VariableStats(OptimizerAdapter(opt), variables)

        def compute():
            return calc.compute(grads, weights_before=before if exact else None,
                                with_median=True)[0]

        return tf.function(compute, jit_compile=mode == "jit")().numpy()

    together, one_by_one = stats(4), stats(10 ** 6)
    np.testing.assert_allclose(together, one_by_one, rtol=2e-6, atol=1e-9)
    assert np.isnan(together[2, S["grad_norm"]])
