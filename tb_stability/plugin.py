"""TensorBoard plugin loader for tb_stability (minimal; no TensorFlow).

`StabilityLoader` is the `tensorboard_plugins` entry point. Its `fix_flags`
makes TensorBoard keep every tb_stability point (`--samples_per_plugin
tb_stability=0` unless the user chose a value): what the writer stores is
already bounded, and a sampled-away row could be the spike.
"""

import json
import logging
import os

from werkzeug import wrappers

from tensorboard import errors
from tensorboard import plugin_util
from tensorboard.backend import http_util
from tensorboard.plugins import base_plugin

from tb_stability import metadata

logger = logging.getLogger("tb_stability")

_STATIC_DIR = os.path.join(os.path.dirname(__file__), "static")


class StabilityPlugin(base_plugin.TBPlugin):
    """Serves the Stability tab (the full backend comes with the analysis)."""

    plugin_name = metadata.PLUGIN_NAME

    def __init__(self, context):
        self._data_provider = context.data_provider

    def get_plugin_apps(self):
        return {
            "/index.js": self._serve_index_js,
            "/runs": self._serve_runs,
        }

    def is_active(self):
        return False  # the plugins listing asks the data provider instead

    def frontend_metadata(self):
        return base_plugin.FrontendMetadata(
            es_module_path="/index.js", tab_name="Stability"
        )

    @wrappers.Request.application
    def _serve_index_js(self, request):
        path = os.path.join(_STATIC_DIR, "index.js")
        with open(path, "rb") as f:
            body = f.read()
        return http_util.Respond(request, body, "text/javascript")

    @wrappers.Request.application
    def _serve_runs(self, request):
        ctx = plugin_util.context(request.environ)
        experiment = plugin_util.experiment_id(request.environ)
        try:
            mapping = self._data_provider.list_tensors(
                ctx, experiment_id=experiment, plugin_name=metadata.PLUGIN_NAME
            )
        except Exception as e:  # pylint: disable=broad-except
            raise errors.UnknownError(f"could not list runs: {e}") from e
        runs = sorted(run for run, tags in mapping.items() if tags)
        return http_util.Respond(request, json.dumps(runs), "application/json")


class StabilityLoader(base_plugin.TBLoader):
    """Loads `StabilityPlugin`; keeps all tb_stability points by default."""

    def define_flags(self, parser):
        group = parser.add_argument_group("tb_stability plugin")
        group.add_argument(
            "--tb_stability_keep_sampling",
            action="store_true",
            default=False,
            help="tb_stability: do not raise TensorBoard's sampling limit for "
            "tb_stability series (by default every point is kept).",
        )

    def fix_flags(self, flags):
        if getattr(flags, "tb_stability_keep_sampling", False):
            return
        samples = getattr(flags, "samples_per_plugin", None)
        if samples is None:
            flags.samples_per_plugin = samples = {}
        if metadata.PLUGIN_NAME not in samples:
            samples[metadata.PLUGIN_NAME] = 0
            logger.info(
                "tb_stability: keeping every tb_stability point "
                "(samples_per_plugin %s=0)", metadata.PLUGIN_NAME
            )

    def load(self, context):
        return StabilityPlugin(context)
