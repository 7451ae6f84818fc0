"""The event format's readers: tb_stability series to aligned arrays.

`reader` parses event files at full resolution (TensorBoard's protobufs, no
TensorFlow); `provider` reads the same series through TensorBoard's data
provider (the plugin's path); `series` aligns either into a `RunData`
(NumPy only, what the analysis takes).
"""
