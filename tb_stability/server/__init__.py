"""The Stability tab's backend: the TensorBoard plugin and its route payloads."""
