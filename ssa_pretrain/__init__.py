"""ssa-pretrain: distributed pretraining of SSA (Sparse Sparse Attention) language models."""

__version__ = "0.1.0"
