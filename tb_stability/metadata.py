"""What tb_stability writes into event files: plugin name, tags, axes.

This module is the single source of truth for the on-disk format described in
``FORMAT.md``. It is plain Python: TensorBoard's protobuf definitions are
imported only to build a summary's metadata, and never TensorFlow, so the
plugin and the NumPy-only analysis can use it too.
"""

import json

PLUGIN_NAME = "tb_stability"

# Version of the content format. Bump when an axis changes meaning; readers
# skip series whose version is newer than they know.
CONTENT_VERSION = 1

# Tags (one time series each, within a run). All live under the plugin name.
TAG_RUN_INFO = "tb_stability/run_info"  # rank-0 string tensor: JSON
TAG_GLOBAL = "tb_stability/global"  # [rows, 1 + len(GLOBAL_COLUMNS)] float32
TAG_LAYERS_WINDOW = "tb_stability/layers_window"  # [vars, stats, aggs] float32
TAG_LAYERS_DETAIL = "tb_stability/layers_detail"  # [vars, stats] float32
TAG_INPUT_GRAD_ROWS = "tb_stability/input_grad_rows"  # [features] float32
TAG_INPUTS_WINDOW = "tb_stability/inputs_window"  # [features, 5] float32
TAG_INPUTS_DETAIL = "tb_stability/inputs_detail"  # [features, 5] float32

# The series kind stored in each tag's plugin content.
SERIES_BY_TAG = {
    TAG_RUN_INFO: "run_info",
    TAG_GLOBAL: "global",
    TAG_LAYERS_WINDOW: "layers_window",
    TAG_LAYERS_DETAIL: "layers_detail",
    TAG_INPUT_GRAD_ROWS: "input_grad_rows",
    TAG_INPUTS_WINDOW: "inputs_window",
    TAG_INPUTS_DETAIL: "inputs_detail",
}

# Columns of the per-step global rows. Column 0 of TAG_GLOBAL is the step
# offset (row step minus event step); these follow it.
GLOBAL_COLUMNS = (
    "loss",
    "grad_norm",  # L2 norm of all gradients together (all-reduced)
    "learning_rate",
    "batch_size",  # NaN when unknown
    "rms_ratio_max",  # max over variables of RMS(g^2/v_hat); NaN without Adam
    "nonfinite",  # non-finite entries in loss, gradients, weights, moments
    "update_ratio",  # ||delta w|| / ||w|| over all variables
    "weight_norm",  # L2 norm of all weights together
    "loss_scale",  # dynamic loss scale; NaN without LossScaleOptimizer
    "flags",  # bit mask of the online detector, see FLAG_*
    "eff_step_max",  # max over variables of the effective Adam step
    # The update guard's decision (`skip_nonfinite`, `skip_outlier_z`): 0
    # applied, 1 skipped, 2 let through (`max_skips_in_a_row` reached);
    # NaN with the guard off.
    "guard_skip",
    # The step's data and the model's output on it (NaN: not measured).
    "input_nonfinite",  # NaN/Inf entries in the input batch (all inputs)
    "target_nonfinite",  # NaN/Inf entries in the targets
    "target_min",  # min, max, mean over the targets' finite entries
    "target_max",
    "target_mean",
    "pred_min",  # min, max, mean over the predictions' finite entries
    "pred_max",
    "pred_mean",
)

# The global columns measured on the step's data and predictions, in order.
DATA_COLUMNS = GLOBAL_COLUMNS[GLOBAL_COLUMNS.index("input_nonfinite"):]

# Columns of the per-variable stats.
STAT_COLUMNS = (
    "grad_norm",  # ||g||_2
    "grad_nonfinite",  # count of NaN/Inf entries in g
    "weight_norm",  # ||w||_2 after the update
    "weight_nonfinite",  # count of NaN/Inf entries in w
    "update_ratio",  # ||w_t - w_{t-1}|| / ||w_{t-1}||
    "mu_rms",  # RMS of Adam's first moment m (mu)
    "nu_sqrt_rms",  # RMS of sqrt(v_hat), v_hat = v / (1 - beta_2^t)
    "rms_ratio",  # sqrt(mean(g^2 / max(v_hat, eps^2)))
    "eff_step_max",  # max over entries of lr*sqrt(1-beta_2^t)/(sqrt(v)+eps)
    "sqrt_nu_over_eps_median",  # median over entries of sqrt(v_hat)/eps
    "moment_nonfinite",  # count of NaN/Inf entries in m and v
)

# Column index by name, the one map every reader and writer uses.
GLOBAL = {name: i for i, name in enumerate(GLOBAL_COLUMNS)}
STAT = {name: i for i, name in enumerate(STAT_COLUMNS)}

# Aggregations along the last axis of TAG_LAYERS_WINDOW.
WINDOW_AGGREGATES = ("max", "mean")

# Columns along the last axis of the input statistics (per input feature;
# mean, std, min and max over its finite entries, nonfinite counts the
# others).
INPUT_COLUMNS = ("mean", "std", "min", "max", "nonfinite")
# What runs written before `input_columns` was in run_info wrote.
INPUT_COLUMNS_V0 = ("mean", "std", "min", "max")

# Bits of the "flags" global column: why the online detector kept detail.
FLAG_LOSS_JUMP = 1
FLAG_GRAD_OUTLIER = 2
FLAG_NONFINITE = 4
FLAG_RMS_RATIO = 8
FLAG_LOSS_RISE = 16

# Values of the "guard_skip" global column.
GUARD_APPLIED = 0
GUARD_SKIPPED = 1
GUARD_LET_THROUGH = 2


def is_readable(content) -> bool:
    """Whether a reader of this version can read a series with this content.

    False for content that is not tb_stability's JSON and for a version
    newer than `CONTENT_VERSION` (written by a newer tb_stability): readers
    skip such series on every path.
    """
    try:
        return parse_plugin_metadata(content)["version"] <= CONTENT_VERSION
    except (TypeError, ValueError):
        return False


def layer_of(variable: str) -> str:
    """The layer of a variable path: `model/dense_1/kernel` -> `model/dense_1`.

    The one rule for grouping variables by layer (the analysis, the plugin
    and the tab all use it); a name without a `/` is its own layer.
    """
    head, sep, _ = variable.rpartition("/")
    return head if sep else variable


def create_summary_metadata(series, description=None):
    """Builds the `SummaryMetadata` for one tb_stability series.

    Arguments:
      series: the series kind, a value of `SERIES_BY_TAG` (e.g. "global").
      description: optional longer text, shown by TensorBoard.

    Returns:
      A `summary_pb2.SummaryMetadata` whose plugin name is `PLUGIN_NAME`,
      whose content is the small versioned JSON `{"version", "series"}` and
      whose `data_class` is always set (TensorBoard drops third-party series
      without one).
    """
    from tensorboard.compat.proto import summary_pb2  # pylint: disable=import-outside-toplevel

    if series not in SERIES_BY_TAG.values():
        raise ValueError(f"Unknown tb_stability series: {series!r}")
    content = json.dumps(
        {"version": CONTENT_VERSION, "series": series}, separators=(",", ":")
    ).encode("utf-8")
    return summary_pb2.SummaryMetadata(
        summary_description=description or "",
        plugin_data=summary_pb2.SummaryMetadata.PluginData(
            plugin_name=PLUGIN_NAME, content=content
        ),
        data_class=summary_pb2.DATA_CLASS_TENSOR,
    )


def parse_plugin_metadata(content):
    """Parses the plugin content of a tb_stability series.

    Arguments:
      content: the `plugin_data.content` bytes of a summary.

    Returns:
      A dict with at least "version" (int) and "series" (str).

    Raises:
      TypeError: if `content` is not bytes.
      ValueError: if it is not the JSON this module writes.
    """
    if not isinstance(content, bytes):
        raise TypeError(f"Content type must be bytes, got {type(content)}")
    try:
        parsed = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"Malformed tb_stability plugin content: {e}") from e
    if not isinstance(parsed, dict) or not isinstance(
        parsed.get("version"), int
    ):
        raise ValueError(f"Malformed tb_stability plugin content: {parsed!r}")
    parsed.setdefault("series", "")
    return parsed
