"""`ssa eval`: perplexity, attention sparsity and needle-in-a-haystack of a Hugging Face export."""

ROPE_TYPES = ("llama3", "linear", "dynamic", "yarn")
"""`--rope-scaling` choices (transformers' RoPE types); here so that the CLI lists them without torch."""
