"""`ssa eval`: perplexity, attention sparsity and needle-in-a-haystack of a Hugging Face export."""
