"""Tables and figures of docs/RESULTS.md from the committed results of a replication sweep.

    python tools/replication_report.py docs/results/replication-40m --doc docs/RESULTS.md --img docs/img

Reads `RESULTS/runs/<run>/{metrics.jsonl,config.yaml,status.json}`, `RESULTS/eval/<run>/{ppl,ppl-rope4,
sparsity,niah}.json` (the outputs of `ssa eval`), `RESULTS/sweep_run.txt` (the local runner's log, for the
wall-clock) and `RESULTS/stability/*.metrics.jsonl`; writes the figures `repl-*.png` into `--img` and
replaces each region `<!-- results:NAME -->` … `<!-- /results:NAME -->` of `--doc` with its table
(`doc_regions.py`), so the
document cannot drift from the numbers. Nothing is computed here that the eval outputs do not hold, except
means over layers and the orderings' checks, which are printed with their inputs.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import doc_regions  # tools/, beside this script
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

MAIN = ("full", "sparse", "ssa")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load(results: Path) -> dict[str, dict[str, Any]]:
    """Per run: its metrics rows, evaluations and wall-clock seconds (from the runner's log)."""
    seconds = {m[1]: float(m[2]) for m in re.finditer(r"\] (\S+): completed after (\d+) s",
                                                     (results / "sweep_run.txt").read_text())}  # fmt: skip
    runs = {}
    for run_dir in sorted((results / "runs").iterdir()):
        name = run_dir.name
        ev = results / "eval" / name
        runs[name] = {
            "metrics": read_jsonl(run_dir / "metrics.jsonl"),
            "eval": {p.stem: read_json(p) for p in sorted(ev.glob("*.json"))},
            "seconds": seconds.get(name),
        }
    return runs


def ppl(ev: dict, length: int, mode: str, block_count: int | None = None) -> float | None:
    """Perplexity of one (length, mode, budget) cell of a `ssa eval ppl` output (export budget by default)."""
    k = ev["default_block_count"] if mode == "sparse" and block_count is None else block_count
    for r in ev["results"]:
        if r["length"] == length and r["mode"] == mode and (mode == "full" or r["block_count"] == k):
            return r["ppl"]
    return None


def last_validation(rows: list[dict[str, Any]]) -> tuple[float | None, float | None]:
    vals = [r for r in rows if "val_loss_full" in r or "val_loss_sparse" in r]
    return (vals[-1].get("val_loss_full"), vals[-1].get("val_loss_sparse")) if vals else (None, None)


def fmt(x: float | None, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def main_table(runs: dict[str, dict]) -> str:
    lines = [
        "| run | val loss full / sparse | ppl 2K full / sparse | 4K full / sparse | 8K full / sparse "
        "| 8K, RoPE ×4: full / sparse | sparse/full at 2K | dropped mass (mean of layers) | KL full‖sparse "
        "| NIAH acc. full / sparse | tokens/s | wall-clock |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        ev, rows = run["eval"], run["metrics"]
        p, r4, sp, niah = ev.get("ppl"), ev.get("ppl-rope4"), ev.get("sparsity"), ev.get("niah")
        vf, vs = last_validation(rows)
        cells = [f"{fmt(vf, 3)} / {fmt(vs, 3)}"]
        for length in (2048, 4096, 8192):
            cells.append(f"{fmt(ppl(p, length, 'full'))} / {fmt(ppl(p, length, 'sparse'))}" if p else "–")
        cells.append(f"{fmt(ppl(r4, 8192, 'full'))} / {fmt(ppl(r4, 8192, 'sparse'))}" if r4 else "–")
        cells.append(fmt(ppl(p, 2048, "sparse") / ppl(p, 2048, "full"), 3) if p else "–")
        if sp:
            dropped = sum(layer["dropped_mass"] for layer in sp["layers"]) / len(sp["layers"])
            cells += [f"{dropped:.3f}", f"{sp['kl_all_layers_sparse']:.2e}"]
        else:
            cells += ["–", "–"]
        if niah:
            acc = {m: [c["accuracy"] for c in niah["cells"] if c["mode"] == m] for m in ("full", "sparse")}
            cells.append(" / ".join(f"{sum(a) / len(a):.2f}" for a in acc.values()))
        else:
            cells.append("–")
        train_rows = [r for r in rows if "tokens_per_s" in r]
        tps = sorted(r["tokens_per_s"] for r in train_rows)[len(train_rows) // 2] if train_rows else None
        cells += [f"{tps / 1e3:.0f}K" if tps else "–", f"{run['seconds']:.0f} s" if run["seconds"] else "–"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_table(runs: dict[str, dict]) -> str:
    runs = {name: run for name, run in runs.items() if "ppl" in run["eval"]}
    counts = sorted({r["block_count"] for run in runs.values() for r in run["eval"]["ppl"]["results"]
                     if r["mode"] == "sparse"})  # fmt: skip
    lines = [
        "| run | " + " | ".join(f"K={k}" for k in counts) + " | full |",
        "|---" * (len(counts) + 2) + "|",
    ]
    for name, run in runs.items():
        p = run["eval"]["ppl"]
        lines.append(f"| {name} | " + " | ".join(fmt(ppl(p, 2048, "sparse", k)) for k in counts)
                     + f" | {fmt(ppl(p, 2048, 'full'))} |")  # fmt: skip
    return "\n".join(lines)


def layer_table(runs: dict[str, dict]) -> str:
    layers = len(next(iter(runs.values()))["eval"]["sparsity"]["layers"])
    head = "| run | " + " | ".join(f"L{i}" for i in range(layers)) + " |"
    lines = [head, "|---" * (layers + 1) + "|"]
    for what, key in (
        ("dropped mass", "dropped_mass"),
        ("KL, only this layer sparse", "kl_only_this_layer_sparse"),
    ):
        for name, run in runs.items():
            ls = run["eval"]["sparsity"]["layers"]
            if key not in ls[0]:
                continue
            lines.append(f"| {name}: {what} | " + " | ".join(f"{layer[key]:.3f}" for layer in ls) + " |")
    return "\n".join(lines)


def orderings(runs: dict[str, dict]) -> str:
    """The paper's orderings at this scale, each with the numbers it rests on: holds / does not hold."""

    def p(name: str, length: int, mode: str, k: int | None = None) -> float:
        return ppl(runs[name]["eval"]["ppl"], length, mode, k)

    def gap(name: str) -> float:
        return p(name, 2048, "sparse") / p(name, 2048, "full") - 1

    def layers(name: str, key: str) -> list[float]:
        return [layer[key] for layer in runs[name]["eval"]["sparsity"]["layers"]]

    out = []
    gaps = {n: gap(n) for n in MAIN}
    ok = gaps["full"] > 0.02 and min(gaps, key=lambda n: abs(gaps[n])) == "ssa"
    out.append(("1. `full` worse in sparse mode; `ssa` the smallest full-vs-sparse gap",
                ok, ", ".join(f"{n} {100 * g:+.1f} %" for n, g in gaps.items())))  # fmt: skip
    ratio = p("ssa", 2048, "full") / p("full", 2048, "full")
    out.append(
        (
            "2. `ssa` full-mode ppl close to `full`'s (within 5 %)",
            abs(ratio - 1) < 0.05,
            f"{p('ssa', 2048, 'full'):.2f} vs {p('full', 2048, 'full'):.2f} ({100 * (ratio - 1):+.1f} %)",
        )
    )
    lower = [
        a < b for a, b in zip(layers("ssa", "dropped_mass"), layers("full", "dropped_mass"), strict=True)
    ]
    kl = (runs["ssa"]["eval"]["sparsity"]["kl_all_layers_sparse"],
          runs["full"]["eval"]["sparsity"]["kl_all_layers_sparse"])  # fmt: skip
    out.append(("3. `ssa` lower dropped mass than `full` in most layers, lower KL",
                sum(lower) > len(lower) / 2 and kl[0] < kl[1],
                f"{sum(lower)} of {len(lower)} layers lower; KL {kl[0]:.2e} vs {kl[1]:.2e}"))  # fmt: skip
    counts = sorted(
        {r["block_count"] for r in runs["ssa"]["eval"]["ppl"]["results"] if r["mode"] == "sparse"}
    )
    curve = {n: [p(n, 2048, "sparse", k) for k in counts] for n in ("ssa", "full")}
    monotone = all(a >= b - 1e-9 for a, b in zip(curve["ssa"], curve["ssa"][1:], strict=False))
    steep = {n: curve[n][0] / curve[n][-1] for n in curve}
    out.append(("4. `ssa` budget curve monotone and flatter than `full`'s",
                monotone and steep["ssa"] < steep["full"],
                f"ppl(K={counts[0]}) / ppl(K={counts[-1]}): ssa {steep['ssa']:.2f}, "
                f"full {steep['full']:.2f}; ssa monotone: {monotone}"))  # fmt: skip
    own = {"full": "full", "sparse": "sparse", "ssa": "sparse"}  # each model in the mode it is claimed for
    rise = {n: p(n, 8192, own[n]) / p(n, 2048, own[n]) for n in MAIN}
    out.append(
        (
            "5. beyond the training length (8K = 4×), `ssa` and `sparse` rise less than `full`",
            rise["ssa"] < rise["full"] and rise["sparse"] < rise["full"],
            ", ".join(f"{n} ×{r:.2f}" for n, r in rise.items())
            + " (ppl 8K / 2K; ssa and sparse in sparse mode)",
        )
    )
    abl = [n for n in ("ssa_align-no-fs", "ssa_align-no-sf") if "ppl" in runs.get(n, {}).get("eval", {})]
    if abl:
        worse = {n: (gap(n), p(n, 2048, "full")) for n in abl}
        holds = all(abs(g) > abs(gaps["ssa"]) or f > p("ssa", 2048, "full") for g, f in worse.values())
        out.append(
            (
                "6. removing either alignment direction widens the gap or worsens full-mode ppl",
                holds,
                "; ".join(f"{n}: gap {100 * g:+.1f} %, full ppl {f:.2f}" for n, (g, f) in worse.items())
                + f"; ssa: gap {100 * gaps['ssa']:+.1f} %, full ppl {p('ssa', 2048, 'full'):.2f}",
            )
        )
    lines = ["| claim (paper) | at 40M / 2K | the numbers |", "|---|---|---|"]
    lines += [f"| {c} | {'holds' if h else '**does not hold**'} | {n} |" for c, h, n in out]
    return "\n".join(lines)


def plot_losses(runs: dict[str, dict], stability: Path, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, run in runs.items():
        rows = [r for r in run["metrics"] if "ce" in r]
        axes[0].plot([r["step"] for r in rows], [r["ce"] for r in rows], label=name, lw=1)
    axes[0].set(xlabel="step (65,536 tokens each)", ylabel="training cross-entropy", title="replication runs")
    for f in sorted(stability.glob("*.metrics.jsonl")):
        rows = [r for r in read_jsonl(f) if "align" in r]
        axes[1].semilogy(
            [r["step"] for r in rows], [r["align"] for r in rows], label=f.name.split(".metrics")[0]
        )
    for name in ("ssa", "ssa_align-no-fs", "ssa_align-no-sf", "ssa_full_ratio-0.25"):
        if name in runs:
            rows = [r for r in runs[name]["metrics"] if "align" in r]
            axes[1].semilogy(
                [r["step"] for r in rows], [r["align"] for r in rows], ":", label=f"{name} (sweep)"
            )
    axes[1].set(xlabel="step", ylabel="alignment D(a_full, a_sparse)", title="alignment term")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_budget(runs: dict[str, dict], path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, run in runs.items():
        p = run["eval"]["ppl"]
        pts = sorted(
            (r["block_count"], r["ppl"])
            for r in p["results"]
            if r["mode"] == "sparse" and r["length"] == 2048
        )
        axes[0].plot(*zip(*pts, strict=True), marker="o", label=name)
        lengths = sorted({r["length"] for r in p["results"]})
        for mode, style in (("full", "-"), ("sparse", "--")):
            axes[1].plot(
                lengths, [ppl(p, n, mode) for n in lengths], style, marker=".", label=f"{name} {mode}"
            )
    axes[0].set(xscale="log", yscale="log", xlabel="block_count K (× 16 tokens)", ylabel="ppl at 2K",
                title="sparse budget")  # fmt: skip
    axes[1].set(xscale="log", yscale="log", xlabel="context length (trained at 2,048)", ylabel="ppl",
                title="beyond the training length (RoPE as trained)")  # fmt: skip
    for ax in axes:
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", type=Path, help="results folder (runs/, eval/, sweep_run.txt, stability/)")
    ap.add_argument("--doc", type=Path, default=Path("docs/RESULTS.md"), help="default: %(default)s")
    ap.add_argument("--img", type=Path, default=Path("docs/img"), help="default: %(default)s")
    args = ap.parse_args(argv)
    runs = load(args.results)
    main_runs = {n: runs[n] for n in MAIN if n in runs}
    plot_losses(runs, args.results / "stability", args.img / "repl-loss.png")
    plot_budget(main_runs, args.img / "repl-budget.png")
    tables = {"main": main_table(runs), "budget": budget_table(runs), "layers": layer_table(main_runs),
              "orderings": orderings(runs)}  # fmt: skip
    regions = {name: f"\n{table}\n" for name, table in tables.items()}
    args.doc.write_text(doc_regions.rewrite(args.doc.read_text(), "results", regions))
    print(orderings(runs))


if __name__ == "__main__":
    main()
