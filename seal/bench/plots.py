"""PNG plots of a bench run (matplotlib, Agg backend: no display needed).

* ``plots/accuracy_<protocol>.png``  -- one horizontal bar per source (and student) with its 95 %
  CI whisker, the student's baseline as a dashed line, the reference figure as a diamond;
* ``plots/continual_<student>.png``  -- per source, the lower-triangular accuracy matrix of the
  continual protocol (the forgetting picture of the paper's Section 5);
* ``plots/compatibility_<protocol>.png`` -- sources x students heatmap of the gain over each
  student's baseline (only with more than one student);
* ``plots/rounds.png`` -- with sources marked by ReST-EM round: held-out no-passage accuracy of
  each round's policy's self-edits (95 % CI), the other sources as horizontal lines, and the
  training rewards per round of the ``seal train`` run.

All values are read from ``results.json``-shaped dicts (:func:`seal.bench.analysis.analyze`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: CI machines and GPU nodes have no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from seal.bench.report import pct, points  # noqa: E402
from seal.rundir import atomic_dir  # noqa: E402

_COLORS = plt.get_cmap("tab10").colors


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "x"


def accuracy_bars(proto: dict, name: str, path: Path) -> None:
    """Bar chart of one protocol: sources on the y axis (recipe order, top down), students as colours."""
    tables = proto["tables"]
    students = list(tables)
    sources = [c["source"] for c in tables[students[0]]["cells"]]
    n_s, n_st = len(sources), len(students)
    height = 0.8 / n_st
    fig, ax = plt.subplots(figsize=(11, 1.4 + 0.45 * n_s * max(1, n_st * 0.8)))
    y0 = np.arange(n_s)[::-1]  # first source on top
    xmax = 0.0
    for k, student in enumerate(students):
        color = _COLORS[k % len(_COLORS)]
        cells = tables[student]["cells"]
        y = y0 + (n_st - 1) / 2 * height - k * height
        vals = np.array([100 * c["accuracy"]["value"] if c["accuracy"] else np.nan for c in cells])
        lo = np.array([100 * c["accuracy"]["lo"] if c["accuracy"] else np.nan for c in cells])
        hi = np.array([100 * c["accuracy"]["hi"] if c["accuracy"] else np.nan for c in cells])
        hatch = ["//" if c["own_data"] else "" for c in cells]
        bars = ax.barh(y, np.nan_to_num(vals), height=height * 0.9, color=color, alpha=0.85, label=f"student {student}")
        for b, h in zip(bars, hatch, strict=True):
            b.set_hatch(h)
        ax.errorbar(vals, y, xerr=[vals - lo, hi - vals], fmt="none", ecolor="black", capsize=3, lw=1.2)
        for yy, v, h in zip(y, vals, hi, strict=True):
            if not np.isnan(v):
                ax.text(h + 0.4, yy, f"{v:.1f}", va="center", fontsize=8)
        base = tables[student]["baseline"]
        if base is not None:
            ax.axvline(100 * base["value"], color=color, ls="--", lw=1, label=f"{student}: no update ({100 * base['value']:.1f})")
        # Reference figures are the recipe model's (the first student's): drawn on its bars only.
        exp = [(yy, 100 * c["expected"]) for yy, c in zip(y, cells, strict=True) if c["expected"] is not None] if k == 0 else []
        if exp:
            ax.scatter([e for _, e in exp], [yy for yy, _ in exp], marker="D", facecolor="white", edgecolor="black",
                       linewidth=1.5, zorder=5, s=40, label="reference figure (paper)")  # fmt: skip
        xmax = max([xmax, *np.nan_to_num(hi), *(e for _, e in exp)])
    handles, labels = ax.get_legend_handles_labels()
    if any(c["own_data"] for t in tables.values() for c in t["cells"]):
        handles.append(Patch(facecolor="white", edgecolor="gray", hatch="//", label="hatched: the student's own data"))
        labels.append(handles[-1].get_label())
    ax.set_yticks(y0)
    ax.set_yticklabels(sources)
    ax.set_xlim(0, max(5.0, xmax * 1.15 + 2))
    when = "after the last step" if name == "continual" else "after the update"
    ax.set_xlabel(f"no-passage QA accuracy {when} (%), mean over passages")
    conf = tables[students[0]]["cells"][0]["accuracy"]
    level = f"{round(100 * conf['confidence'])} % CI" if conf else "CI"
    ax.set_title(f"{name}: {proto['n_passages']} passages; whiskers: {level} (bootstrap over passages)", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(handles, labels, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), framealpha=0.9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def continual_heatmaps(table: dict, student: str, path: Path) -> None:
    """One panel per source: accuracy (%) on passage j (x) after step i (y); blank above the diagonal."""
    cells = table["cells"]
    n = len(cells)
    cols = min(n, max(3, math.ceil(math.sqrt(n))))
    rows = math.ceil(n / cols)
    size = len(cells[0]["continual"]["matrix"])
    panel = max(2.6, 0.42 * size + 1.2)
    fig, axes = plt.subplots(rows, cols, figsize=(panel * cols + 1.0, panel * rows + 0.6), squeeze=False)
    mats = [np.array([[np.nan if x is None else 100 * x for x in r] for r in c["continual"]["matrix"]]) for c in cells]
    vmax = max(5.0, max((np.nanmax(m) for m in mats if np.isfinite(m).any()), default=5.0))
    im = None
    for ax, c, m in zip(axes.flat, cells, mats, strict=False):
        im = ax.imshow(np.ma.masked_invalid(m), vmin=0, vmax=vmax, cmap="viridis", origin="upper")
        if size <= 12:
            for i in range(size):
                for j in range(i + 1):
                    if np.isfinite(m[i, j]):
                        ax.text(j, i, f"{m[i, j]:.0f}", ha="center", va="center", fontsize=7, color="white" if m[i, j] < 0.6 * vmax else "black")
        k = c["continual"]
        ax.set_title(f"{c['source']}\nend {pct(k['final'])} %, forgot {pct(k['forgetting'])} pts", fontsize=8)
        ax.set_xlabel("passage j", fontsize=8)
        ax.set_ylabel("after step i", fontsize=8)
        ax.set_xticks(range(size))
        ax.set_yticks(range(size))
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle(f"continual self-edits, student {student}: accuracy (%) on each passage seen so far", fontsize=10)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    cax = fig.add_axes((0.93, 0.15, 0.015, 0.7))
    fig.colorbar(im, cax=cax, label="accuracy (%)")
    fig.savefig(path, dpi=130)
    plt.close(fig)


def compatibility_heatmap(cells: list[dict], name: str, path: Path) -> None:
    """Sources (rows) x students (columns): gain over the student's baseline; own-data cells framed."""
    sources = list(dict.fromkeys(c["source"] for c in cells))
    students = list(dict.fromkeys(c["student"] for c in cells))
    by = {(c["source"], c["student"]): c for c in cells}
    g = np.array([[100 * by[(s, t)]["gain"]["value"] if by[(s, t)]["gain"] else np.nan for t in students] for s in sources])
    lim = max(1.0, float(np.nanmax(np.abs(g))) if np.isfinite(g).any() else 1.0)
    fig, ax = plt.subplots(figsize=(2.2 * len(students) + 3.2, 0.55 * len(sources) + 1.6))
    im = ax.imshow(np.ma.masked_invalid(g), cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
    for i, s in enumerate(sources):
        for j, t in enumerate(students):
            c = by[(s, t)]
            if c["gain"] is None:
                continue
            iv = c["gain"]
            bold = iv["lo"] > 0 or iv["hi"] < 0
            dark = abs(100 * iv["value"]) > 0.6 * lim
            ax.text(j, i, f"{points(iv['value'], True)}\n[{points(iv['lo'], True)}, {points(iv['hi'], True)}]", ha="center", va="center",
                    fontsize=7, fontweight="bold" if bold else "normal", color="white" if dark else "black")  # fmt: skip
            if c["own_data"]:
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=2.5, ec="black"))
    ax.set_xticks(range(len(students)))
    ax.set_xticklabels([f"student\n{t}" for t in students], fontsize=8)
    ax.set_yticks(range(len(sources)))
    ax.set_yticklabels(sources, fontsize=8)
    ax.set_title(f"{name}: gain over each student's baseline (points); framed = own data; bold = CI excludes 0", fontsize=9)
    fig.colorbar(im, ax=ax, label="gain (points)")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def rounds_plot(table: dict, rounds: dict[str, int], train_metrics: list[dict], title: str, path: Path) -> None:
    """Accuracy per ReST-EM round (left) and the training run's rewards per round (right).

    Args:
        table: one student's single-protocol table of ``results.json`` (``cells`` with CIs).
        rounds: source label -> rounds of RL behind it (0: base policy).
        train_metrics: ``metrics.jsonl`` rows of the ``seal train`` run (may be empty).
    """
    # a source whose every evaluation failed (e.g. refused hyperparameter blocks) has no accuracy
    cells = {c["source"]: c for c in table["cells"] if c.get("accuracy") is not None}
    pts = sorted(((r, cells[s]) for s, r in rounds.items() if s in cells), key=lambda t: t[0])
    fig, axes = plt.subplots(1, 2 if train_metrics else 1, figsize=(11 if train_metrics else 6.5, 4.2), squeeze=False)
    ax = axes[0][0]
    xs = [r for r, _ in pts]
    ys = [100 * c["accuracy"]["value"] for _, c in pts]
    lo = [100 * (c["accuracy"]["value"] - c["accuracy"]["lo"]) for _, c in pts]
    hi = [100 * (c["accuracy"]["hi"] - c["accuracy"]["value"]) for _, c in pts]
    ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", capsize=4, color=_COLORS[0], label="policy's self-edits")
    others = [c for s, c in cells.items() if s not in rounds]
    for i, c in enumerate(others):
        ax.axhline(100 * c["accuracy"]["value"], ls="--", lw=1, color=_COLORS[(i + 1) % len(_COLORS)], label=c["source"])
    ax.set_xticks(xs)
    ax.set_xlabel("ReST-EM round of the policy (0 = base)")
    ax.set_ylabel("no-passage QA accuracy, held-out (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    if train_metrics:
        ax2 = axes[0][1]
        rs = [m["round"] for m in train_metrics]
        for key, label, j in (("mean_reward", "mean reward of samples", 0), ("best_of_k_reward", "best-of-k reward", 3)):
            vals = [100 * (m.get(key) or 0.0) for m in train_metrics]
            ax2.plot(rs, vals, marker="o", color=_COLORS[j], label=label)
        ax2.set_xticks(rs)
        ax2.set_xlabel("training round (policy of that round samples)")
        ax2.set_ylabel("reward (points of accuracy)")
        ax2.set_title("seal train: rewards on RL-training passages", fontsize=10)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def hparams_plot(choices: dict[str, dict], rounds: dict[str, int], train_metrics: list[dict], path: Path) -> bool:
    """How the policy's hyperparameter choices shift across ReST-EM rounds: one panel per
    setting (lr geometric mean on a log axis, mean epochs, share of each loss_on / lora_rank
    value), x = round. Lines: the bench's held-out self-edits of each round source (solid),
    and from ``train_metrics`` all samples (dashed) and the kept ones (dotted) of each
    training round. Returns False (nothing drawn) when no round carries choices.

    Args:
        choices: one student's source label -> :func:`seal.hparams.round_summary`.
        rounds: source label -> rounds of RL behind it.
        train_metrics: ``metrics.jsonl`` rows of the ``seal train`` run (rows with ``hparams``).
    """
    series: dict[str, list[tuple[int, dict]]] = {"held-out (bench)": sorted((r, choices[s]["all"]) for s, r in rounds.items() if s in choices)}
    trained = [m for m in train_metrics if m.get("hparams")]
    if trained:
        series["train: all samples"] = [(m["round"], m["hparams"]["all"]) for m in trained]
        series["train: kept"] = [(m["round"], m["hparams"]["kept"]) for m in trained]
    series = {k: [(r, v) for r, v in pts if v["n"]] for k, pts in series.items()}
    if not any(series.values()):
        return False
    styles = dict(zip(series, ("-", "--", ":"), strict=False))
    keys = ["lr", "epochs", "loss_on", "lora_rank"]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.6), squeeze=False)
    all_rounds = sorted({r for pts in series.values() for r, _ in pts})
    for ax, key in zip(axes[0], keys, strict=True):
        # One colour per value of a categorical setting, the same in every series.
        values = sorted({k for pts in series.values() for _, v in pts for k in v[key]}) if key in ("loss_on", "lora_rank") else []
        for name, pts in series.items():
            if not pts:
                continue
            xs = [r for r, _ in pts]
            if key in ("lr", "epochs"):
                ax.plot(xs, [v[key] for _, v in pts], styles[name], marker="o", color=_COLORS[0], label=name)
                continue
            for j, value in enumerate(values):
                ax.plot(xs, [v[key].get(value, 0.0) for _, v in pts], styles[name], marker="o", color=_COLORS[j % len(_COLORS)], label=f"{value} ({name})")
        ax.set_xticks(all_rounds)
        if key == "lr":
            ax.set_yscale("log")
        ax.set_title({"lr": "lr (geometric mean)", "epochs": "epochs (mean)"}.get(key, f"{key} (share)"), fontsize=10)
        ax.set_xlabel("ReST-EM round")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_plots(
    out: Path, results: dict, rounds: dict[str, int] | None = None, train_metrics: list[dict] | None = None, hparams: dict | None = None
) -> list[str]:
    """Draw every plot into ``out/plots`` (replaced whole, atomically); returns paths relative to ``out``.

    ``rounds`` (source label -> ReST-EM rounds) adds ``rounds.png`` from the single protocol's
    first student, with ``train_metrics`` (a train run's metrics.jsonl rows) beside it; with
    ``hparams`` (student -> source -> choices, hyperparameter self-edits) also
    ``hparams_rounds.png`` (:func:`hparams_plot`) for that student.
    """
    names: list[str] = []
    with atomic_dir(out / "plots") as tmp:
        if rounds and hparams:
            student_choices = next(iter(hparams.values()))
            if hparams_plot(student_choices, rounds, train_metrics or [], tmp / "hparams_rounds.png"):
                names.append("hparams_rounds.png")
        single = results["protocols"].get("single")
        if rounds and single:
            student, table = next(iter(single["tables"].items()))
            rounds_plot(table, rounds, train_metrics or [], f"student {student}, {single['n_passages']} held-out passages", tmp / "rounds.png")
            names.append("rounds.png")
        for name, proto in results["protocols"].items():
            f = f"accuracy_{name}.png"
            accuracy_bars(proto, name, tmp / f)
            names.append(f)
            if name == "continual":
                for student, table in proto["tables"].items():
                    f = f"continual_{_slug(student)}.png"
                    continual_heatmaps(table, student, tmp / f)
                    names.append(f)
            cells = results["compatibility"][name]
            if len({c["student"] for c in cells}) > 1:
                f = f"compatibility_{name}.png"
                compatibility_heatmap(cells, name, tmp / f)
                names.append(f)
    return [f"plots/{n}" for n in names]
