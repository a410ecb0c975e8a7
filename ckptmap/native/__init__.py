"""Compiled kernels (optional: ckptmap works without them, more slowly); see each .c file."""
