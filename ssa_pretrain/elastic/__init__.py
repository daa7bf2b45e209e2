"""Elastic Attention for SSA models: a per-head full/sparse router trained on the frozen model."""
