"""Toolchains built from pinned third-party sources, once per machine (rumprun's)."""
