"""The README's CPU-demo and evaluation numbers and plots, regenerated from the current code in one command.

    python tools/readme_numbers.py              # ~5 minutes on 2 CPU cores; rewrites README.md and docs/img/
    python tools/readme_numbers.py --replace    # the same when runs/demo, hf/demo or eval/demo-* exist
    python tools/readme_numbers.py --render     # README.md again from docs/readme-numbers.json, nothing run

It runs the demo exactly as the README writes it, from the repository root: every `ssa ...` command of the
README's bash blocks that builds the default data or reads / writes the demo (`runs/demo`, `hf/demo`,
`eval/demo-*`), in the README's order: `ssa data prepare` (with `--force`, so its time is a real build),
`ssa train configs/train/tiny-cpu.yaml --run-dir runs/demo`, `ssa convert`, the three `ssa eval` commands,
`ssa elastic train` and `ssa eval elastic`; then `ssa params` for the exact parameter count and `ssa plot`
for the loss curves. The numbers (and each command's wall time) go to `docs/readme-numbers.json`; the text
between `<!-- readme-numbers:NAME -->` and `<!-- /readme-numbers:NAME -->` of README.md and docs/RESULTS.md
is rendered from that file alone (`render`), the plots are copied to `docs/img/` and the elastic run's
outputs to `docs/results/elastic-demo/`. tests/test_cli_ux.py checks that both documents' regions are what
`render` makes of the committed JSON, so they cannot drift apart.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import doc_regions  # tools/, beside this script

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RESULTS = REPO / "docs" / "RESULTS.md"
NUMBERS = REPO / "docs" / "readme-numbers.json"
ELASTIC_RESULTS = REPO / "docs" / "results" / "elastic-demo"
ELASTIC_FILES = ("router_metrics.jsonl", "router_config.json")  # beside the evaluation's elastic.json / .md
IMAGES = REPO / "docs" / "img"
DEMO_PATH = re.compile(r"(?<![\w/])(runs|hf|eval)/demo")


# ----------------------------------------------------------------------------------------- commands


def readme_commands(readme: str) -> list[str]:
    """The demo's `ssa` commands in the README's order (bash blocks; `&&` chains split, comments dropped)."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", readme, re.S):
        for line in block.splitlines():
            for command in line.split("&&"):
                command = re.sub(r"\s+#.*$", "", command).strip()
                if command == "ssa data prepare" or (
                    command.startswith("ssa ") and DEMO_PATH.search(command)
                ):
                    commands.append(command)
    return commands


def demo_plan(commands: list[str]) -> dict[str, Any]:
    """The README's demo commands by job, with the paths they write, read through the `ssa` parser itself."""
    from ssa_pretrain.cli import build_parser
    from ssa_pretrain.train import parse_with_overrides

    plan: dict[str, Any] = {"eval": {}}
    for command in commands:
        argv = shlex.split(command)[1:]
        args = parse_with_overrides(build_parser(), argv)
        if args.command == "data":
            plan["prepare"] = [*argv, "--force"]
        elif args.command == "train":
            plan["train"], plan["run_dir"] = argv, REPO / args.run_dir
        elif args.command == "convert":
            plan["convert"], plan["hf_dir"] = argv, REPO / args.out_dir
        elif args.command == "eval":
            plan["eval"][args.eval_command] = (argv, REPO / args.out)
        elif args.command == "elastic":
            out = [item.split("=", 1)[1] for item in args.overrides if item.startswith("out=")]
            plan["elastic"], plan["elastic_dir"] = argv, REPO / out[-1] if out else None
    missing = [job for job in ("prepare", "train", "convert", "elastic") if job not in plan]
    missing += [f"eval {name}" for name in EVALS if name not in plan["eval"]]
    if "elastic" in plan and plan["elastic_dir"] is None:
        missing.append("elastic train with out=DIR")
    if missing:
        sys.exit(f"README.md: no demo command for {', '.join(missing)} (see readme_commands)")
    return plan


LOAD: list[float] = []
"""The machine's 1-minute load average after each command: wall times mean little on a busy machine."""


def ssa(argv: list[str]) -> float:
    """Run `ssa ARGV` from the repository root, its output on the console; its wall time in seconds."""
    print(f"\n$ ssa {shlex.join(argv)}", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ssa_pretrain.cli", *argv], cwd=REPO, check=True)
    LOAD.append(os.getloadavg()[0])
    return round(time.perf_counter() - start, 1)


EVALS = ("ppl", "sparsity", "niah", "elastic")  # `eval elastic` runs after `elastic train`
ELASTIC_MODES = ("full", "sparse", "elastic")  # the modes `ssa eval elastic` scores


def run_demo(plan: dict[str, Any]) -> dict[str, Any]:
    """Run every command of the plan; the numbers the README quotes, with each command's wall time."""
    import yaml

    from ssa_pretrain.data.manifest import load_manifest
    from ssa_pretrain.data.tokenizer import read_meta

    seconds = {"prepare": ssa(plan["prepare"]), "train": ssa(plan["train"]), "convert": ssa(plan["convert"])}
    for name, (argv, _) in plan["eval"].items():
        if name == "elastic":
            seconds["elastic_train"] = ssa(plan["elastic"])
        seconds[f"eval_{name}"] = ssa(argv)
    ELASTIC_RESULTS.mkdir(parents=True, exist_ok=True)
    eval_elastic = plan["eval"]["elastic"][1]
    for path in [eval_elastic / "elastic.json", eval_elastic / "elastic.md"] + [
        plan["elastic_dir"] / name for name in ELASTIC_FILES
    ]:
        shutil.copyfile(path, ELASTIC_RESULTS / path.name)
    ssa(["plot", str(plan["run_dir"]), "--out", str(IMAGES / "demo-loss.png")])
    shown = README.read_text()
    for name, (_, out) in plan["eval"].items():
        if f"docs/img/eval-{name}.png" in shown:  # the plots the README shows
            shutil.copyfile(out / f"{name}.png", IMAGES / f"eval-{name}.png")

    run_dir = plan["run_dir"]
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    tokenizer = read_meta(run_dir / "tokenizer")
    params = subprocess.run(
        [sys.executable, "-m", "ssa_pretrain.cli", "params", str(run_dir / "config.yaml"),
         "--vocab-size", str(tokenizer["vocab_size"])],
        cwd=REPO, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    data_dir = REPO / cfg["data"]["dir"]
    evals = {name: json.loads((out / f"{name}.json").read_text()) for name, (_, out) in plan["eval"].items()}
    return {
        "date": datetime.datetime.now(datetime.UTC).date().isoformat(),
        "cpus": os.cpu_count(),
        "max_load": round(max(LOAD), 1),
        "seconds": seconds,
        "corpus_chars": tokenizer["training"]["chars_used"],
        "vocab_size": tokenizer["vocab_size"],
        "train_tokens": load_manifest(data_dir / "train")["num_tokens"],
        "parameters": int(re.search(r"^total: ([\d,]+)", params, re.M).group(1).replace(",", "")),
        "seq_len": cfg["data"]["seq_len"],
        "block_size": cfg["ssa"]["block_size"],
        "block_count": cfg["ssa"]["block_count"],
        "steps": cfg["train"]["steps"],
        "loss": [[r["step"], r["loss"]] for r in rows],
        "val": [[r["step"], r["val_loss_full"], r["val_loss_sparse"]] for r in rows if "val_loss_full" in r],
        "ppl": [{k: r[k] for k in ("length", "mode", "block_count", "ppl")} for r in evals["ppl"]["results"]],
        "ppl_block_count": evals["ppl"]["default_block_count"],
        "sparsity": {
            "length": evals["sparsity"]["length"],
            "block_count": evals["sparsity"]["block_count"],
            "kl": evals["sparsity"]["kl_all_layers_sparse"],
            "dropped": [layer["dropped_mass"] for layer in evals["sparsity"]["layers"]],
            "dropped_bound": [
                layer["dropped_mass_where_budget_binds"] for layer in evals["sparsity"]["layers"]
            ],
        },
        "niah": {
            "trials": evals["niah"]["trials"],
            "chance": evals["niah"]["chance_accuracy"],
            "accuracy": [c["accuracy"] for c in evals["niah"]["cells"]],
            "greedy": [c["greedy"] for c in evals["niah"]["cells"]],
        },
        "elastic": elastic_numbers(evals["elastic"], plan["elastic_dir"]),
    }


def elastic_numbers(report: dict, elastic_dir: Path) -> dict[str, Any]:
    """What the README and RESULTS.md quote of `ssa elastic train` (its export) and `ssa eval elastic`."""
    steps = [json.loads(line) for line in (elastic_dir / "router_metrics.jsonl").read_text().splitlines()]
    config = json.loads((elastic_dir / "router_config.json").read_text())
    last = steps[-50:]
    return {
        "steps": len(steps),
        "train_s": steps[-1]["elapsed_s"],
        "batch_size": config["train"]["batch_size"],
        "seq_len": config["data"]["seq_len"],
        "pool_tokens": config["router"]["pool_tokens"],
        "examples": report["examples"],
        "targets": report["targets"],
        "tags": {
            tag: {
                "omega": s["omega"],
                "train_omega_last_50": sum(r[f"omega_{tag}"] for r in last) / len(last),
                "exact": {m: s[m]["exact_match"] for m in ELASTIC_MODES},
                "loss": {m: s[m]["answer_loss"] for m in ELASTIC_MODES},
            }
            for tag, s in report["tags"].items()
        },
        "tasks": {task: s["omega"] for task, s in report["tasks"].items()},
    }


# ----------------------------------------------------------------------------------------- rendering


def _percents(values: list[float | None]) -> str:
    return ", ".join("–" if v is None else f"{100 * v:.0f} %" for v in values)


def _paragraph(*sentences: str) -> str:
    """One README paragraph, wrapped as the README's prose is; on its own lines between the markers."""
    text = " ".join(sentences)
    return "\n" + textwrap.fill(text, 110, break_long_words=False, break_on_hyphens=False) + "\n"


def render(n: dict[str, Any]) -> dict[str, str]:
    """The README's regions from the numbers `run_demo` returns (a pure function of `n`)."""
    ppl = {(r["length"], r["mode"], r["block_count"]): r["ppl"] for r in n["ppl"]}
    k, seq = n["ppl_block_count"], n["seq_len"]
    per_length = [
        f"{ppl[(length, 'full', None)]:.1f} / {ppl[(length, 'sparse', k)]:.1f} at {length}"
        + (" (the training length)" if length == seq else "")
        for length in sorted({r["length"] for r in n["ppl"]})
    ]
    small = sorted({r["block_count"] for r in n["ppl"] if (r["block_count"] or k) < k})
    own = {1: " (own block only)"}
    at_train = ", ".join(f"K={b}{own.get(b, '')} gives {ppl[(seq, 'sparse', b)]:.1f}" for b in small)
    s, niah, t = n["sparsity"], n["niah"], n["seconds"]
    found = "finds the needle in some cells" if max(niah["greedy"]) > 0 else "does not find the needle"
    accuracy = f"{min(niah['accuracy']):.3g}–{max(niah['accuracy']):.3g}"
    greedy = f"up to {max(niah['greedy']):.3g}" if max(niah["greedy"]) > 0 else "0"
    (first_step, first_loss), (last_step, last_loss) = n["loss"][0], n["loss"][-1]
    val_step, val_full, val_sparse = n["val"][-1]
    cpu, params = f"{n['cpus']}-core CPU", n["parameters"]
    if n["max_load"] > n["cpus"]:  # the wall times are then the busy machine's
        cpu += f" shared with other jobs, load average up to {n['max_load']:.0f}"
    keys = n["block_count"] * n["block_size"]
    eval_text = _paragraph(
        f"On the CPU demo model (validation split, {cpu}; {t['eval_ppl']:.0f} s, {t['eval_sparsity']:.0f} s",
        f"and {t['eval_niah']:.0f} s wall): perplexity full / sparse (K={k}) is {', '.join(per_length[:-1])}",
        f"and {per_length[-1]}; at {seq} tokens, {at_train}.",
        f"At {s['length']} tokens and K={s['block_count']}, the share of full-attention mass outside the",
        f"blocks sparse selection picks is {_percents(s['dropped'])} in layers 0–{len(s['dropped']) - 1}",
        f"({_percents(s['dropped_bound'])} where the budget binds); KL(full ‖ sparse) is {s['kl']:.3g}",
        f"nats/token. The {params / 1e6:.2f}M-parameter model {found} (accuracy {accuracy} per cell of",
        f"{niah['trials']} trials, chance {niah['chance']:.2g}; greedy exact match {greedy}): that test is",
        "for real models.",
    )
    demo_text = _paragraph(
        f"**CPU demo** (the first command above, {cpu}, {n['date']}): `ssa data prepare` builds the",
        f"bundled corpus (World English Bible + Python docs, {n['corpus_chars'] / 1e6:.1f}M characters) into",
        f"an {n['vocab_size'] // 1024}K BPE tokenizer and shards of {n['train_tokens'] / 1e6:.2f}M training",
        f"tokens in {t['prepare']:.0f} s; the tiny SSA model ({params:,} parameters, {seq}-token sequences,",
        f"sparse branch {n['block_count']} blocks × {n['block_size']} tokens) trains {n['steps']} steps in",
        f"{t['train']:.0f} s wall in total. Training loss {first_loss:.3f} at step {first_step} →",
        f"{last_loss:.3f} at step {last_step}; validation loss after {val_step} steps {val_full:.3f} with",
        f"full attention and {val_sparse:.3f} with sparse attention ({keys} of up to {seq} keys per query).",
    )
    e = n["elastic"]
    tags, tasks = e["tags"], e["tasks"]
    most_full, least_full = min(tasks, key=tasks.get), max(tasks, key=tasks.get)
    elastic_text = _paragraph(
        f"**Elastic Attention on the demo model** ({cpu}, {n['date']},",
        "[`docs/RESULTS.md`](docs/RESULTS.md)):",
        f"{e['steps']} router steps ({e['train_s']:.0f} s) on the frozen demo model bring the held-out",
        f"share of sparse heads to {tags['sensitive']['omega']:.3f} on sparsity-sensitive tasks (target",
        f"{e['targets']['sensitive']}) and {tags['robust']['omega']:.3f} on robust ones (target",
        f"{e['targets']['robust']}); {most_full.replace('_', '-')} keeps the most full heads (Ω",
        f"{tasks[most_full]:.2f}), {least_full.replace('_', '-')} the fewest ({tasks[least_full]:.2f}).",
        _elastic_quality(e, params),
    )
    return {
        "tiny-params": f"{params / 1e6:.2f}M",
        "eval": eval_text,
        "demo": demo_text,
        "elastic": elastic_text,
    }


def _per_mode(scores: dict[str, float], digits: int) -> str:
    """`a / b / c` for full / sparse / elastic."""
    return " / ".join(f"{scores[m]:.{digits}f}" for m in ELASTIC_MODES)


def _elastic_quality(e: dict[str, Any], params: int) -> str:
    if max(v for s in e["tags"].values() for v in s["exact"].values()) == 0:
        return (
            f"At {params / 1e6:.2f}M parameters the model answers none of the tasks in any mode, so quality"
            " against Ω awaits a larger backbone."
        )
    per_tag = "; ".join(f"{tag} {_per_mode(s['exact'], 2)}" for tag, s in e["tags"].items())
    return f"Exact match full / sparse / elastic: {per_tag}."


def render_results(n: dict[str, Any]) -> dict[str, str]:
    """docs/RESULTS.md's region of the elastic demo (a pure function of `n`)."""
    e = n["elastic"]
    rows = "".join(
        f"| {tag} ({e['targets'][tag]}) | {s['omega']:.3f} | {_per_mode(s['loss'], 3).replace(' / ', ' | ')}"
        f" | {_per_mode(s['exact'], 2)} |\n"
        for tag, s in e["tags"].items()
    )
    per_task = ", ".join(f"{task.replace('_', '-')} {omega:.2f}" for task, omega in e["tasks"].items())
    train = " / ".join(f"{s['train_omega_last_50']:.3f}" for s in e["tags"].values())
    half = e["batch_size"] // 2
    head = (
        f"{e['steps']} router steps of {half} sensitive + {half} robust examples of {e['seq_len']} tokens"
        f" ({e['train_s']:.0f} s, {n['cpus']}-core CPU, {n['date']}), scored on {e['examples']} held-out"
        " examples (other documents, keys and facts):"
    )
    tail = (
        f"Ω per task: {per_task}; in the training batches of the last 50 steps: {train} (sensitive / robust)."
    )
    table = (
        "| tag (target Ω) | Ω held out | answer loss full | sparse | elastic |"
        " exact match full / sparse / elastic |\n|---|---|---|---|---|---|\n"
    )
    return {"elastic-demo": _paragraph(head) + "\n" + table + rows + _paragraph(tail)}


def rewrite(readme: str, regions: dict[str, str]) -> str:
    """`readme` with the body of every `readme-numbers` region replaced; every region must be rendered."""
    return doc_regions.rewrite(readme, "readme-numbers", regions)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replace", action="store_true", help="delete the demo's old outputs first")
    parser.add_argument(
        "--render", action="store_true", help="only re-render README.md from the saved numbers"
    )
    args = parser.parse_args()
    if not args.render:
        plan = demo_plan(readme_commands(README.read_text()))
        outputs = [
            plan["run_dir"],
            plan["hf_dir"],
            plan["elastic_dir"],
            *(out for _, out in plan["eval"].values()),
        ]
        present = [path for path in outputs if path.exists()]
        if present and not args.replace:
            sys.exit(
                f"these would be overwritten: {' '.join(map(str, present))}; remove them or pass --replace"
            )
        for path in present:
            shutil.rmtree(path)
        numbers = run_demo(plan)
        NUMBERS.write_text(json.dumps(numbers, indent=1) + "\n")
    numbers = json.loads(NUMBERS.read_text())
    README.write_text(rewrite(README.read_text(), render(numbers)))
    RESULTS.write_text(doc_regions.rewrite(RESULTS.read_text(), "readme-numbers", render_results(numbers)))
    print(f"\nwrote {NUMBERS.relative_to(REPO)}, README.md, docs/RESULTS.md and docs/img/*.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
