"""`ssa eval`: perplexity, attention sparsity, needle-in-a-haystack and elastic routing of a Hugging Face
export.

    cli.py        the `ssa eval` command line, built from options.py
    options.py    every command's options, their defaults and the checks that need no model (no torch)
    command.py    the skeleton every command runs: check → output dir → load → modes → report → publish
    export.py     the export under evaluation: load it, switch its mode, probe its layers
    tokens.py     the evaluation token stream (shards or text) and its windows
    output.py     the output directory, written at once, and the report's JSON / markdown / plot helpers
    errors.py     `EvalError`
    ppl.py, sparsity.py, niah.py, elastic.py   the commands
"""
