"""While it trains: live alerts from the report's analysis (`on_anomaly=`).

Real training runs of small models: a NaN row planted in one batch at a
random step, an outlier batch, a healthy run. The alert must name the
cause the report names, within the steps promised (a non-finite step
within 16 steps, anything else within a window), and the actions must do
what they say: "stop" ends `fit` with everything written, "raise" raises
the anomaly, a callable gets it, a healthy run says nothing.
"""

import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

import tb_stability
from tb_stability.analysis import report as report_lib
from tb_stability.events import reader
from tb_stability.keras import StabilityCallback
from tb_stability.record import live

BATCH = 64
STEPS = 300


def _regression(seed, steps=STEPS, nan_step=None, outlier_step=None):
    """(x, y) of a linear regression; one NaN input entry or outlier batch planted."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH * steps, 8)).astype("float32")
    w = rng.normal(size=(8, 1)).astype("float32")
    y = (x @ w + 0.1 * rng.normal(size=(BATCH * steps, 1))).astype("float32")
    if nan_step is not None:
        x[nan_step * BATCH + int(rng.integers(BATCH)), int(rng.integers(8))] = np.nan
    if outlier_step is not None:
        y[outlier_step * BATCH:(outlier_step + 1) * BATCH] *= 1e3
    return x, y


def _model(seed, activation="relu"):
    """The regression's MLP. The runs with a NaN input entry use a linear
    hidden layer: the fused MatMul+Relu kernel of oneDNN turns a NaN into 0
    on some CPUs (the loss stays finite, only the gradients are NaN) and
    not on others, and these tests say what the alert is for a NaN loss.
    """
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((8,)),
                              keras.layers.Dense(16, activation=activation,
                                                 name="hidden"),
                              keras.layers.Dense(1, name="out")])
    model.compile(keras.optimizers.Adam(1e-3), "mse")
    return model


class _Steps(keras.callbacks.Callback):
    """The last batch `fit` finished, and the batch each alert line arrived at."""

    def __init__(self):
        super().__init__()
        self.last = -1
        self.lines = []

    def on_train_batch_end(self, batch, logs=None):
        self.last = batch

    def emit(self, record):
        if record.name == "tb_stability" and record.getMessage().startswith(
                "tb_stability: step"):
            self.lines.append((self.last, record.getMessage()))


class _Handler(logging.Handler):
    def __init__(self, steps):
        super().__init__(logging.WARNING)
        self.steps = steps

    def emit(self, record):
        self.steps.emit(record)


@pytest.fixture
def alert_lines():
    """A _Steps whose `lines` collects the alert lines as they are logged."""
    steps = _Steps()
    handler = _Handler(steps)
    log = logging.getLogger("tb_stability")
    log.addHandler(handler)
    yield steps
    log.removeHandler(handler)


def _fit(model, x, y, callbacks, epochs=1):
    model.fit(x, y, batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0,
              callbacks=callbacks)


def _nan_step(seed):
    return int(np.random.default_rng(100 + seed).integers(40, 240))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nan_batch_is_named_within_16_steps(seed, tmp_path, alert_lines):
    bad = _nan_step(seed)
    x, y = _regression(seed, nan_step=bad)
    cb = StabilityCallback(str(tmp_path / "run"))
    _fit(_model(seed, None), x, y, [cb, alert_lines])
    lines = [(at, text) for at, text in alert_lines.lines]
    assert len(lines) == 1, lines  # the storm of NaN steps after it: one line
    at, text = lines[0]
    assert f"step {bad}: non-finite loss" in text
    assert "nonfinite_input" in text and "fix:" in text
    assert bad <= at <= bad + 16
    assert [(a["kind"], a["step"]) for a in cb.anomalies] == [("nonfinite", bad)]
    # The live answer is the report's.
    final = report_lib.report_logdir(str(tmp_path))["runs"][0]["anomalies"][0]
    assert (final["kind"], final["step"], final["causes"][0]["cause"]) == (
        "nonfinite", bad, cb.anomalies[0]["causes"][0]["cause"])


@pytest.mark.parametrize("seed", [0, 1])
def test_stop_ends_fit_within_16_steps_with_everything_written(seed, tmp_path, alert_lines):
    bad = _nan_step(seed)
    x, y = _regression(seed, nan_step=bad)
    model = _model(seed, None)
    _fit(model, x, y, [StabilityCallback(str(tmp_path / "run"), on_anomaly="stop"),
                       alert_lines], epochs=3)
    assert bad <= alert_lines.last <= bad + 16
    assert "stopping after this step" in alert_lines.lines[0][1]
    run = reader.load_logdir(str(tmp_path))["run"]
    # Every step up to the last one trained is in the event file.
    np.testing.assert_array_equal(run.steps, np.arange(alert_lines.last + 1))
    assert bad in set(run.detail_steps.tolist())


def test_raise_carries_the_anomaly(tmp_path):
    bad = _nan_step(3)
    x, y = _regression(3, nan_step=bad)
    steps = _Steps()
    with pytest.raises(tb_stability.TrainingInstability) as info:
        _fit(_model(3, None), x, y, [StabilityCallback(str(tmp_path / "run"),
                                                 on_anomaly="raise"), steps])
    anomaly = info.value.anomaly
    assert (anomaly["kind"], anomaly["step"]) == ("nonfinite", bad)
    assert anomaly["causes"][0]["cause"] == "nonfinite_input"
    assert f"step {bad}" in str(info.value)
    assert steps.last <= bad + 16
    run = reader.load_logdir(str(tmp_path))["run"]
    assert run.steps[-1] >= bad  # written before raising


def test_callable_gets_each_new_anomaly_and_its_errors_propagate(tmp_path):
    bad = _nan_step(4)
    x, y = _regression(4, nan_step=bad)
    got = []
    _fit(_model(4, None), x, y, [StabilityCallback(str(tmp_path / "a"), on_anomaly=got.append)])
    assert [(a["kind"], a["step"]) for a in got] == [("nonfinite", bad)]

    class Stop(Exception):
        pass

    def refuse(anomaly):
        raise Stop(anomaly["kind"])

    with pytest.raises(Stop):
        _fit(_model(4, None), x, y, [StabilityCallback(str(tmp_path / "b"), on_anomaly=refuse)])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_outlier_batch_is_a_spike_named_within_a_window(seed, tmp_path, alert_lines):
    spike = int(np.random.default_rng(200 + seed).integers(120, 220))
    x, y = _regression(seed, steps=600, outlier_step=spike)
    cb = StabilityCallback(str(tmp_path / "run"))
    _fit(_model(seed), x, y, [cb, alert_lines])
    said = [(at, text) for at, text in alert_lines.lines if f"step {spike}: spike" in text]
    assert said, alert_lines.lines
    at, text = said[0]
    assert "bad_batch" in text
    assert at <= spike + 256


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_healthy_run_says_nothing(seed, tmp_path, caplog):
    x, y = _regression(seed, steps=600)
    cb = StabilityCallback(str(tmp_path / "run"))
    with caplog.at_level(logging.INFO, logger="tb_stability"):
        _fit(_model(seed), x, y, [cb])
    assert cb.anomalies == []
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


@pytest.mark.parametrize("compiled", [False, True])
def test_monitor_alerts_eager_and_in_graph(compiled, tmp_path, alert_lines):
    bad = _nan_step(5)
    x, y = _regression(5, nan_step=bad)
    model = _model(5, None)
    opt = keras.optimizers.Adam(1e-3)
    monitor = tb_stability.Monitor(str(tmp_path / "run"), opt, model.trainable_variables,
                                   on_anomaly="stop")

    def step_fn(xb, yb, step):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(xb) - yb))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        if compiled:
            monitor.record(step, loss, grads, inputs=xb)
        return loss, grads

    fn = tf.function(step_fn) if compiled else step_fn
    last = -1
    for step in range(STEPS):
        xb = x[step * BATCH:(step + 1) * BATCH]
        yb = y[step * BATCH:(step + 1) * BATCH]
        loss, grads = fn(xb, yb, tf.constant(step, tf.int64))
        if not compiled:
            monitor.record(step, loss, grads, inputs=xb)
        alert_lines.last = last = step
        if monitor.should_stop:
            break
    monitor.close()
    assert bad <= last <= bad + 16
    assert [(a["kind"], a["step"]) for a in monitor.anomalies] == [("nonfinite", bad)]
    assert monitor.anomalies[0]["causes"][0]["cause"] == "nonfinite_input"
    assert len(alert_lines.lines) == 1


def test_options_are_checked():
    with pytest.raises(ValueError, match="on_anomaly"):
        StabilityCallback("unused", on_anomaly="shout")
    with pytest.raises(ValueError, match="anomaly kind"):
        StabilityCallback("unused", anomaly_kinds=("spikes",))


def _anomaly(kind, step, cause, end=None, severity=1.0):
    return {"kind": kind, "pattern": "loss" if kind == "nonfinite" else "",
            "step": step, "peak_step": step, "end_step": end, "severity": severity,
            "baseline": 0.1, "peak_value": 10.0,
            "causes": [{"cause": cause, "confidence": 0.8, "layer": "dense",
                        "variable": "dense/kernel", "lead_steps": 3,
                        "evidence": [], "fix": "Do this."}]}


def test_one_line_per_kind_and_cause_then_a_closing_count(caplog, monkeypatch):
    found = [[_anomaly("spike", 100, "adam_epsilon", end=104)],
             [_anomaly("spike", 100, "adam_epsilon", end=104),
              _anomaly("spike", 300, "adam_epsilon", end=303),
              _anomaly("nonfinite", 500, "adam_epsilon", severity=4)]]
    monkeypatch.setattr(report_lib, "analyze_run", lambda run: found.pop(0))

    class Run:
        steps = np.arange(600)

    alerts = live.Alerts("warn", logdir="logs/x")
    with caplog.at_level(logging.WARNING, logger="tb_stability"):
        alerts.analyse(Run())
        alerts.analyse(Run())
        alerts.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("tb_stability: step 100: spike x1e+02")
    assert "adam_epsilon (0.80)" in lines[0] and "layer dense, led by 3 steps" in lines[0]
    assert lines[1].startswith("tb_stability: step 500: non-finite loss, 4 steps so far")
    assert "3 anomalies in all (1 more spike or divergence (adam_epsilon)" in lines[2]
    assert "tb-stability report logs/x" in lines[2]
    assert len(alerts.found) == 3


def test_a_plateau_is_said_once_it_lasted(monkeypatch):
    plateau = _anomaly("plateau", 10, "unknown")
    monkeypatch.setattr(report_lib, "analyze_run", lambda run: [dict(plateau)])

    class Run:
        def __init__(self, n):
            self.steps = np.arange(n)

    alerts = live.Alerts(None)
    alerts.analyse(Run(300))  # flat for 290 steps: may still break
    assert alerts.found == []
    alerts.analyse(Run(600))
    assert len(alerts.found) == 1
    short = live.Alerts(None)
    short.analyse(Run(120), final=True)  # the run ended: judged as the report does
    assert len(short.found) == 1


def test_a_failing_live_analysis_leaves_the_recording(tmp_path, monkeypatch, caplog):
    def broken(run):
        raise RuntimeError("broken live analysis")

    monkeypatch.setattr(report_lib, "analyze_run", broken)
    x, y = _regression(0, steps=300)
    with caplog.at_level(logging.WARNING, logger="tb_stability"):
        _fit(_model(0), x, y, [StabilityCallback(str(tmp_path / "run"))])
    assert sum("live analysis failed" in r.getMessage() for r in caplog.records) == 1
    run = reader.load_logdir(str(tmp_path))["run"]
    np.testing.assert_array_equal(run.steps, np.arange(STEPS))


@pytest.mark.parametrize("seed", [0, 1])
def test_guarded_nan_batch_is_still_named_and_the_run_goes_on(seed, tmp_path, alert_lines):
    bad = _nan_step(seed)
    x, y = _regression(seed, nan_step=bad)
    model = _model(seed, None)
    cb = StabilityCallback(str(tmp_path / "run"), skip_nonfinite=True)
    _fit(model, x, y, [cb, alert_lines])
    (at, text), = alert_lines.lines
    assert f"step {bad}: non-finite loss, 1 step (1 update skipped by the guard)" in text
    assert "nonfinite_input" in text and bad <= at <= bad + 16
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())
    run = reader.load_logdir(str(tmp_path))["run"]
    loss = run.col("loss")
    assert np.all(np.isfinite(loss[bad + 1:]))
    assert np.median(loss[-32:]) < np.median(loss[max(bad - 32, 0):bad])
