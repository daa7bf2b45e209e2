"""Tables and figures of docs/RESULTS.md from the committed results of a replication sweep.

    python tools/replication_report.py docs/results/replication-40m --doc docs/RESULTS.md --img docs/img

Reads `RESULTS/runs/<run>/{metrics.jsonl,config.yaml,status.json}`, `RESULTS/eval/<run>/{ppl,ppl-rope4,
sparsity,niah}.json` (the outputs of `ssa eval`), `RESULTS/sweep_run.txt` (the local runner's log, for the
wall-clock; a run completed twice counts its last completion) and `RESULTS/stability/*.metrics.jsonl`.
The runs are reported in sets (`RESULTS/sets.yaml` unless `--sets`): each set NAME maps the roles
full, sparse, ssa, no-fs, no-sf and ratio-0.25 to runs at one learning rate, and gets its own regions
`<!-- results:main-NAME -->` … `<!-- /results:main-NAME -->` (and `budget-`, `layers-`, `orderings-`) and
figures `repl-loss-NAME.png`, `repl-budget-NAME.png`; the stability runs get `repl-stability.png`. Each
region of `--doc` is replaced with its table (`doc_regions.py`), so the document cannot drift from the
numbers. Nothing is computed here that the eval outputs do not hold, except means over layers and the
orderings' checks, which are printed with their inputs.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import doc_regions  # tools/, beside this script
import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ROLES = ("full", "sparse", "ssa", "no-fs", "no-sf", "ratio-0.25")
MAIN = ("full", "sparse", "ssa")
Set = dict[str, dict[str, Any]]  # role -> run (its name, metrics rows, evaluations, wall-clock)


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def load(results: Path) -> dict[str, dict[str, Any]]:
    """Per run: its name, metrics rows, evaluations and wall-clock seconds (from the runner's log)."""
    seconds = {m[1]: float(m[2]) for m in re.finditer(r"\] (\S+): completed after (\d+) s",
                                                     (results / "sweep_run.txt").read_text())}  # fmt: skip
    runs = {}
    for run_dir in sorted((results / "runs").iterdir()):
        name = run_dir.name
        ev = results / "eval" / name
        runs[name] = {
            "name": name,
            "metrics": read_jsonl(run_dir / "metrics.jsonl"),
            "eval": {p.stem: read_json(p) for p in sorted(ev.glob("*.json"))},
            "seconds": seconds.get(name),
        }
    return runs


def read_sets(path: Path, runs: dict[str, dict[str, Any]]) -> dict[str, Set]:
    """The sets of `path` (NAME: {role: run}) resolved against the loaded runs; a ValueError names an
    unknown role, a run without results or a set name that cannot name a doc region."""
    sets = yaml.safe_load(path.read_text())
    if not isinstance(sets, dict) or not all(isinstance(m, dict) for m in sets.values()):
        raise ValueError(f"{path}: expected NAME: {{role: run}} mappings")
    out = {}
    for name, members in sets.items():
        if not re.fullmatch(r"[\w.-]+", str(name)):
            raise ValueError(f"{path}: set name {name!r} must be letters, digits, '.', '_' or '-'")
        unknown = sorted(set(members) - set(ROLES))
        if unknown:
            raise ValueError(f"{path}: set {name}: unknown roles {unknown}; the roles are {list(ROLES)}")
        missing = sorted(run for run in members.values() if run not in runs)
        if missing:
            raise ValueError(f"{path}: set {name}: no runs/<run> for {missing}")
        out[str(name)] = {role: runs[members[role]] for role in ROLES if role in members}
    return out


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


def main_table(members: Set) -> str:
    lines = [
        "| role | run | val loss full / sparse | ppl 2K full / sparse | 4K full / sparse | 8K full / sparse "
        "| 8K, RoPE ×4: full / sparse | sparse/full at 2K | dropped mass (mean of layers) | KL full‖sparse "
        "| NIAH acc. full / sparse | tokens/s | wall-clock |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for role, run in members.items():
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
        lines.append(f"| {role} | {run['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def block_counts(members: Set) -> list[int]:
    return sorted({r["block_count"] for run in members.values() for r in run["eval"]["ppl"]["results"]
                   if r["mode"] == "sparse"})  # fmt: skip


def budget_table(members: Set) -> str:
    members = {role: run for role, run in members.items() if "ppl" in run["eval"]}
    counts = block_counts(members)
    lines = [
        "| role | run | " + " | ".join(f"K={k}" for k in counts) + " | full |",
        "|---" * (len(counts) + 3) + "|",
    ]
    for role, run in members.items():
        p = run["eval"]["ppl"]
        cells = [fmt(ppl(p, 2048, "sparse", k)) for k in counts] + [fmt(ppl(p, 2048, "full"))]
        lines.append(f"| {role} | {run['name']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def layer_table(members: Set) -> str:
    members = {role: members[role] for role in MAIN if "sparsity" in members.get(role, {}).get("eval", {})}
    if not members:
        return "(no `ssa eval sparsity` output for full, sparse or ssa in this set)"
    layers = len(next(iter(members.values()))["eval"]["sparsity"]["layers"])
    lines = [
        "| role: what | " + " | ".join(f"L{i}" for i in range(layers)) + " |",
        "|---" * (layers + 1) + "|",
    ]
    for what, key in (
        ("dropped mass", "dropped_mass"),
        ("KL, only this layer sparse", "kl_only_this_layer_sparse"),
    ):
        for role, run in members.items():
            ls = run["eval"]["sparsity"]["layers"]
            if key not in ls[0]:
                continue
            lines.append(f"| {role}: {what} | " + " | ".join(f"{layer[key]:.3f}" for layer in ls) + " |")
    return "\n".join(lines)


def orderings(members: Set) -> str:
    """The paper's orderings at this scale, each with the numbers it rests on: holds / does not hold, or
    not measured (naming the roles and evaluations it lacks)."""

    def p(role: str, length: int, mode: str, k: int | None = None) -> float:
        return ppl(members[role]["eval"]["ppl"], length, mode, k)

    def gap(role: str) -> float:
        return p(role, 2048, "sparse") / p(role, 2048, "full") - 1

    def layers(role: str, key: str) -> list[float]:
        return [layer[key] for layer in members[role]["eval"]["sparsity"]["layers"]]

    def first() -> tuple[bool, str]:
        gaps = {r: gap(r) for r in MAIN}
        ok = gaps["full"] > 0.02 and min(gaps, key=lambda r: abs(gaps[r])) == "ssa"
        return ok, ", ".join(f"{r} {100 * g:+.1f} %" for r, g in gaps.items())

    def second() -> tuple[bool, str]:
        ratio = p("ssa", 2048, "full") / p("full", 2048, "full")
        return abs(ratio - 1) < 0.05, (
            f"{p('ssa', 2048, 'full'):.2f} vs {p('full', 2048, 'full'):.2f} ({100 * (ratio - 1):+.1f} %)"
        )

    def third() -> tuple[bool, str]:
        lower = [
            a < b for a, b in zip(layers("ssa", "dropped_mass"), layers("full", "dropped_mass"), strict=True)
        ]
        kl = [members[r]["eval"]["sparsity"]["kl_all_layers_sparse"] for r in ("ssa", "full")]
        return sum(lower) > len(lower) / 2 and kl[0] < kl[1], (
            f"{sum(lower)} of {len(lower)} layers lower; KL {kl[0]:.2e} vs {kl[1]:.2e}"
        )

    def fourth() -> tuple[bool, str]:
        counts = block_counts({"ssa": members["ssa"]})
        curve = {r: [p(r, 2048, "sparse", k) for k in counts] for r in ("ssa", "full")}
        monotone = all(a >= b - 1e-9 for a, b in zip(curve["ssa"], curve["ssa"][1:], strict=False))
        steep = {r: curve[r][0] / curve[r][-1] for r in curve}
        return monotone and steep["ssa"] < steep["full"], (
            f"ppl(K={counts[0]}) / ppl(K={counts[-1]}): ssa {steep['ssa']:.2f}, full {steep['full']:.2f}; "
            f"ssa monotone: {monotone}"
        )

    def fifth() -> tuple[bool, str]:
        own = {
            "full": "full",
            "sparse": "sparse",
            "ssa": "sparse",
        }  # each model in the mode it is claimed for
        rise = {r: p(r, 8192, own[r]) / p(r, 2048, own[r]) for r in MAIN}
        return rise["ssa"] < rise["full"] and rise["sparse"] < rise["full"], (
            ", ".join(f"{r} ×{x:.2f}" for r, x in rise.items())
            + " (ppl 8K / 2K; ssa and sparse in sparse mode)"
        )

    def sixth() -> tuple[bool, str]:
        worse = {r: (gap(r), p(r, 2048, "full")) for r in ("no-fs", "no-sf")}
        holds = all(abs(g) > abs(gap("ssa")) or f > p("ssa", 2048, "full") for g, f in worse.values())
        return holds, (
            "; ".join(
                f"{r} ({members[r]['name']}): gap {100 * g:+.1f} %, full ppl {f:.2f}"
                for r, (g, f) in worse.items()
            )
            + f"; ssa: gap {100 * gap('ssa'):+.1f} %, full ppl {p('ssa', 2048, 'full'):.2f}"
        )

    claims: list[tuple[str, tuple[str, ...], tuple[str, ...], Callable[[], tuple[bool, str]]]] = [
        ("1. `full` worse in sparse mode; `ssa` the smallest full-vs-sparse gap", MAIN, ("ppl",), first),
        ("2. `ssa` full-mode ppl close to `full`'s (within 5 %)", ("ssa", "full"), ("ppl",), second),
        (
            "3. `ssa` lower dropped mass than `full` in most layers, lower KL",
            ("ssa", "full"),
            ("sparsity",),
            third,
        ),
        ("4. `ssa` budget curve monotone and flatter than `full`'s", ("ssa", "full"), ("ppl",), fourth),
        (
            "5. beyond the training length (8K = 4×), `ssa` and `sparse` rise less than `full`",
            MAIN,
            ("ppl",),
            fifth,
        ),
        (
            "6. removing either alignment direction widens the gap or worsens full-mode ppl",
            ("ssa", "no-fs", "no-sf"),
            ("ppl",),
            sixth,
        ),
    ]
    lines = ["| claim (paper) | at 40M / 2K | the numbers |", "|---|---|---|"]
    for claim, roles, evals, check in claims:
        lacking = [f"{r} {e}" for r in roles for e in evals if e not in members.get(r, {}).get("eval", {})]
        if lacking:
            lines.append(f"| {claim} | not measured | no {', '.join(lacking)} |")
        else:
            holds, numbers = check()
            lines.append(f"| {claim} | {'holds' if holds else '**does not hold**'} | {numbers} |")
    return "\n".join(lines)


def plot_training(curves: list[tuple[str, list[dict[str, Any]]]], title: str, path: Path) -> None:
    """Training cross-entropy of labelled metric rows, and the alignment term of those that log one."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for label, rows in curves:
        ce = [r for r in rows if "ce" in r]
        axes[0].plot([r["step"] for r in ce], [r["ce"] for r in ce], label=label, lw=1)
        align = [r for r in rows if r.get("align", 0) > 0]
        if align:
            axes[1].semilogy([r["step"] for r in align], [r["align"] for r in align], label=label)
    axes[0].set(xlabel="step (65,536 tokens each)", ylabel="training cross-entropy", title=title)
    axes[1].set(xlabel="step", ylabel="alignment D(a_full, a_sparse)", title=f"alignment term, {title}")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_budget(name: str, members: Set, path: Path) -> None:
    """Budget curve at 2K and perplexity by length of the set's evaluated full, sparse and ssa runs."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for role in MAIN:
        if "ppl" not in members.get(role, {}).get("eval", {}):
            continue
        p = members[role]["eval"]["ppl"]
        pts = sorted(
            (r["block_count"], r["ppl"])
            for r in p["results"]
            if r["mode"] == "sparse" and r["length"] == 2048
        )
        axes[0].plot(*zip(*pts, strict=True), marker="o", label=role)
        lengths = sorted({r["length"] for r in p["results"]})
        for mode, style in (("full", "-"), ("sparse", "--")):
            axes[1].plot(
                lengths, [ppl(p, n, mode) for n in lengths], style, marker=".", label=f"{role} {mode}"
            )
    axes[0].set(xscale="log", yscale="log", xlabel="block_count K (× 16 tokens)", ylabel="ppl at 2K",
                title=f"sparse budget at {name}")  # fmt: skip
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
    ap.add_argument("--sets", type=Path, help="the sets of runs to report (default: RESULTS/sets.yaml)")
    ap.add_argument("--doc", type=Path, default=Path("docs/RESULTS.md"), help="default: %(default)s")
    ap.add_argument("--img", type=Path, default=Path("docs/img"), help="default: %(default)s")
    args = ap.parse_args(argv)
    runs = load(args.results)
    try:
        sets = read_sets(args.sets or args.results / "sets.yaml", runs)
        regions = {}
        for name, members in sets.items():
            curves = [(f"{role}: {run['name']}", run["metrics"]) for role, run in members.items()]
            plot_training(curves, f"runs at {name}", args.img / f"repl-loss-{name}.png")
            plot_budget(name, members, args.img / f"repl-budget-{name}.png")
            tables = {"main": main_table(members), "budget": budget_table(members),
                      "layers": layer_table(members), "orderings": orderings(members)}  # fmt: skip
            regions |= {f"{table}-{name}": f"\n{text}\n" for table, text in tables.items()}
            print(f"{name}:\n{tables['orderings']}")
        stability = sorted((args.results / "stability").glob("*.metrics.jsonl"))
        curves = [(f.name.split(".metrics")[0], read_jsonl(f)) for f in stability]
        plot_training(curves, "stability runs", args.img / "repl-stability.png")
        args.doc.write_text(doc_regions.rewrite(args.doc.read_text(), "results", regions))
    except ValueError as e:
        ap.error(str(e))
    unreported = sorted(set(runs) - {run["name"] for members in sets.values() for run in members.values()})
    if unreported:
        print(f"runs in no set: {' '.join(unreported)}")


if __name__ == "__main__":
    main()
