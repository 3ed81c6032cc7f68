"""Regenerate every figure of the paper from `experiments/*.toml` and check its numbers."""
