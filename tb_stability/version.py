"""The single version string of tb_stability."""

VERSION = "0.1.0"
