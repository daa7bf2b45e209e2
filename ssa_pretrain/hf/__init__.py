"""Hugging Face export of SSA models: `ssa convert` and the modeling code copied into every export."""
