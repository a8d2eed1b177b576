"""The bench's readable outputs: ``report.md``, CSV tables and ``results.json``.

Files (all written atomically through :mod:`seal.rundir`):

* ``report.md``        -- per protocol and student: accuracy table with CIs and paper figures,
  the ranking, pairwise differences (row minus column), the continual matrices and the
  compatibility matrix; links to the plots;
* ``results.json``     -- every number below, plus the setup;
* ``summary.csv``      -- one row per (protocol, student, source);
* ``comparisons.csv``  -- one row per (protocol, student, pair of sources);
* ``continual.csv``    -- one row per (student, source, step, passage) of the continual protocol;
* ``verdicts.csv``     -- one row per (protocol, student, source, passage, question): the score.

Numbers in the report are percentage points; the CSV/JSON files hold fractions.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from seal.bench.analysis import headline, round_comparisons
from seal.rundir import write_json_atomic, write_text_atomic

PROTOCOL_TITLES = {
    "single": "Protocol 1: single passage (one adapter per passage; paper Table 2)",
    "multi": "Protocol 2: multi-passage continued pretraining (one adapter on all passages)",
    "continual": "Protocol 3: continual self-edits (one merged update per passage, in sequence)",
}


def points(x: float, signed: bool = False) -> str:
    """A fraction in points with one decimal: 0.4104 -> '41.0' ('+41.0' with ``signed``)."""
    value = round(100 * x, 1) + 0.0  # + 0.0 turns -0.0 into 0.0: no "-0.0" in tables
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def pct(x: float | None) -> str:
    """The percent formatter of every bench output: :func:`points`, or 'n/a' for None."""
    return "n/a" if x is None else points(x)


def ci(iv: dict | None, signed: bool = False) -> str:
    """'41.0 [38.2, 43.9]' (or '+4.4 [+1.1, +7.6]' with ``signed``), in points."""
    if iv is None:
        return "n/a"
    return f"{points(iv['value'], signed)} [{points(iv['lo'], signed)}, {points(iv['hi'], signed)}]"


def answer_lines(name: str, n_passages: int, student: str, table: dict) -> list[str]:
    """The Answer section's bullet for one (protocol, student): best source, its ties, own vs others."""
    answer = headline(table)
    if answer["best"] is None:
        return [f"- **{name}**, student `{student}`: nothing was scored"]
    best = answer["best"]
    line = f"- **{name}**, student `{student}`, {n_passages} passages: best **{best['source']}** {ci(best['accuracy'])}"
    if answer["tied"] and not answer["below"]:
        line = f"- **{name}**, student `{student}`, {n_passages} passages: every source is tied with the highest, {best['source']} {ci(best['accuracy'])}"
    elif answer["tied"]:
        line += "; tied with it: " + ", ".join(f"{source} ({ci(diff, signed=True)})" for source, diff in answer["tied"])
    if answer["below"]:
        line += "; below it: " + ", ".join(f"{source} ({ci(diff, signed=True)})" for source, diff in answer["below"])
    out = [line + "."]
    for own, other, diff in answer["own_vs_other"]:
        verdict = "own data better" if diff["lo"] > 0 else "other model's data better" if diff["hi"] < 0 else "tie"
        out.append(f"  - own vs other: {own} − {other} = {ci(diff, signed=True)} points: **{verdict}**")
    return out


def _verdict(diff: dict) -> str:
    return "better" if diff["lo"] > 0 else "worse" if diff["hi"] < 0 else "tie"


def round_lines(name: str, student: str, table: dict, rounds: dict[str, int]) -> list[str]:
    """The Answer's opening bullets when the bench scores a training run's rounds: the last
    round against round 0, then each round against the previous (points [CI], verdict)."""
    comps = round_comparisons(table, rounds)
    if not comps:
        return []
    later, earlier, diff = comps[0]
    out = [f"- **Did ReST-EM improve the policy?** ({name}, student `{student}`) {later} − {earlier} = {ci(diff, signed=True)} points: **{_verdict(diff)}**."]
    for later, earlier, diff in comps[1:]:
        out.append(f"  - {later} − {earlier} = {ci(diff, signed=True)}: {_verdict(diff)}")
    return out


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in columns})
    return buf.getvalue()


def _flat(iv: dict | None, prefix: str) -> dict:
    if iv is None:
        return {}
    return {prefix: iv["value"], f"{prefix}_lo": iv["lo"], f"{prefix}_hi": iv["hi"]}


SUMMARY_COLUMNS = [
    "protocol", "student", "source", "source_string", "own_data", "learner", "accuracy", "accuracy_lo", "accuracy_hi",
    "micro", "micro_lo", "micro_hi", "gain", "gain_lo", "gain_hi", "micro_gain", "micro_gain_lo", "micro_gain_hi",
    "expected", "expected_statistic", "expected_holds", "n_passages", "n_questions", "n_runs", "n_failed", "seconds",
    "final", "acquired", "forgetting",
]  # fmt: skip
COMPARISON_COLUMNS = ["protocol", "student", "a", "b", "confidence", "diff", "diff_lo", "diff_hi", "micro_diff", "micro_diff_lo", "micro_diff_hi", "verdict", "n_passages"]


def summary_rows(results: dict) -> list[dict]:
    rows = []
    for proto in results["protocols"].values():
        for table in proto["tables"].values():
            for c in table["cells"]:
                rows.append({
                    **c, **_flat(c["accuracy"], "accuracy"), **_flat(c["micro"], "micro"),
                    **_flat(c["gain"], "gain"), **_flat(c["micro_gain"], "micro_gain"),
                    **{k: c.get("continual", {}).get(k) for k in ("final", "acquired", "forgetting")},
                })  # fmt: skip
    return rows


def comparison_rows(results: dict) -> list[dict]:
    return [
        {"protocol": name, "student": student, **c, **_flat(c["macro"], "diff"), **_flat(c["micro"], "micro_diff")}
        for name, proto in results["protocols"].items()
        for student, table in proto["tables"].items()
        for c in table["comparisons"]
    ]


def continual_rows(results: dict) -> list[dict]:
    proto = results["protocols"].get("continual")
    if not proto:
        return []
    rows = []
    for student, table in proto["tables"].items():
        for c in table["cells"]:
            for i, row in enumerate(c["continual"]["matrix"]):
                for j, acc in enumerate(row[: i + 1]):
                    rows.append({"student": student, "source": c["source"], "step": i, "passage": j, "accuracy": acc})
    return rows


def verdict_rows(verdicts: dict[tuple[str, str, str], list[list[float | None]]], passage_ids: list[str]) -> list[dict]:
    return [
        {"protocol": p, "student": student, "source": src, "passage": i, "passage_id": passage_ids[i], "question": q, "score": s}
        for (p, student, src), table in verdicts.items()
        for i, qs in enumerate(table)
        for q, s in enumerate(qs)
    ]


# ----------------------------------------------------------------------------- markdown


def _accuracy_table(table: dict, protocol: str) -> list[str]:
    cont = protocol == "continual"
    head = "| source | accuracy [95 % CI] | micro [95 % CI] | gain over base [95 % CI] |"
    head += " after last step / right after own step / forgotten |" if cont else ""
    head += " reference | holds? | passages | questions | failed |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for c in table["cells"]:
        exp = "" if c["expected"] is None else f"{pct(c['expected'])}" + (" (micro)" if c["expected_statistic"] == "micro" else "")
        holds = {None: "", True: "yes", False: "**no**"}[c["expected_holds"]]
        own = " *(own data)*" if c["own_data"] else ""
        own += f" *(learned by `{c['learner']}`)*" if c.get("learner") else ""
        row = f"| {c['source']}{own} | {ci(c['accuracy'])} | {ci(c['micro'])} | {ci(c['gain'], signed=True)} |"
        if cont:
            k = c["continual"]
            row += f" {pct(k['final'])} / {pct(k['acquired'])} / {pct(k['forgetting'])} |"
        row += f" {exp} | {holds} | {c['n_passages']} | {c['n_questions']} | {c['n_failed']}/{c['n_runs']} |"
        lines.append(row)
    return lines


def _pairwise_table(table: dict) -> list[str]:
    """Lower-triangular matrix: cell (row r, column c) = r - c with CI; bold when the CI excludes 0."""
    labels = [c["source"] for c in table["cells"]]
    comp = {(c["a"], c["b"]): c for c in table["comparisons"]}
    lines = ["| row − column | " + " | ".join(labels[:-1]) + " |", "|---|" + "---|" * (len(labels) - 1)]
    for i, r in enumerate(labels[1:], 1):
        cells = []
        for j, col in enumerate(labels[:-1]):
            if j >= i:
                cells.append("")
                continue
            c = comp[(col, r)]  # stored as a - b with a = column (listed first): flip to row - column
            if c["macro"] is None:
                cells.append("n/a")
                continue
            flipped = {"value": -c["macro"]["value"], "lo": -c["macro"]["hi"], "hi": -c["macro"]["lo"]}
            text = ci(flipped, signed=True)
            cells.append(f"**{text}**" if c["verdict"] != "tie" else text)
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return lines


def _beats(table: dict) -> list[str]:
    wins, ties = [], []
    for c in table["comparisons"]:
        if c["verdict"] is None:
            continue
        if c["verdict"] == "tie":
            ties.append(f"{c['a']} vs {c['b']} ({ci(c['macro'], signed=True)})")
            continue
        flipped = {"value": -c["macro"]["value"], "lo": -c["macro"]["hi"], "hi": -c["macro"]["lo"]}
        win, lose, iv = (c["a"], c["b"], c["macro"]) if c["verdict"] == "a" else (c["b"], c["a"], flipped)
        wins.append(f"- **{win}** beats {lose}: {ci(iv, signed=True)} points")
    out = wins or ["- no difference is outside its interval: every pair is a tie at this sample size"]
    if ties and wins:
        out.append(f"- ties (interval contains 0): {'; '.join(ties)}" if len(ties) <= 8 else f"- the other {len(ties)} pairs are ties (see the table below)")
    return out


def _continual_matrices(table: dict) -> list[str]:
    lines = []
    for c in table["cells"]:
        m = c["continual"]["matrix"]
        n = len(m)
        lines += ["", f"**{c['source']}** — accuracy (%) on passage j (columns) after step i (rows):", ""]
        lines += ["| step | " + " | ".join(f"p{j}" for j in range(n)) + " |", "|---|" + "---|" * n]
        for i, row in enumerate(m):
            lines.append(f"| {i} | " + " | ".join(pct(x) if j <= i else "" for j, x in enumerate(row)) + " |")
    return lines


def _compatibility(results: dict, students: list[str]) -> list[str]:
    lines = []
    for name, cells in results["compatibility"].items():
        by = {(c["source"], c["student"]): c for c in cells}
        sources = list(dict.fromkeys(c["source"] for c in cells))
        lines += ["", f"**{name}**: gain over the student's own baseline, points [95 % CI]; *own* = the student wrote that data.", ""]
        lines += ["| data from ↓ / student → | " + " | ".join(students) + " |", "|---|" + "---|" * len(students)]
        for s in sources:
            row = []
            for student in students:
                c = by[(s, student)]
                text = ci(c["gain"], signed=True)
                if c["gain"] is not None and c["gain"]["lo"] > 0:
                    text = f"**{text}**"
                row.append(text + (" *own*" if c["own_data"] else ""))
            lines.append(f"| {s} | " + " | ".join(row) + " |")
    return lines


def _shares(shares: dict) -> str:
    return ", ".join(f"{k} {round(100 * v)} %" for k, v in shares.items()) or "—"


def hparams_lines(choices: dict[str, dict[str, dict]], rounds: dict[str, int]) -> list[str]:
    """The inner-loop settings each source's self-edits chose (single protocol), a table per
    student, round sources first in round order: self-edits with a valid setting, refused
    blocks, geometric-mean lr, mean epochs, and the shares of loss_on and lora_rank."""
    lines = ["Settings the self-edits of each source chose (hyperparameter blocks; keys left out count as the recipe's values)."]
    for student, by_source in choices.items():
        lines += ["", f"student `{student}`:", ""]
        lines += ["| source | round | self-edits | refused | lr (geo. mean) | epochs (mean) | loss_on | lora_rank |", "|---|---|---|---|---|---|---|---|"]
        order = sorted(by_source, key=lambda s: (s not in rounds, rounds.get(s, 0), s))
        for source in order:
            a, n_refused = by_source[source]["all"], by_source[source]["n_refused"]
            lr = f"{a['lr']:.3g}" if a["lr"] is not None else "—"
            epochs = f"{a['epochs']:.2f}" if a["epochs"] is not None else "—"
            lines.append(
                f"| {source} | {rounds.get(source, '')} | {a['n']} | {n_refused} | {lr} | {epochs} | {_shares(a['loss_on'])} | {_shares(a['lora_rank'])} |"
            )
    return lines


def markdown(results: dict, setup: dict, plots: list[str]) -> str:
    """The whole ``report.md``."""
    students = setup["students"]
    lines = [
        f"# seal bench: {setup['name']}",
        "",
        "Does a model learn more from training data it writes itself (before and after SEAL's RL) "
        "than from data a stronger model writes for it? Each row is a source of inner-loop training "
        "data; each number is no-passage QA accuracy after the inner-loop update.",
        "",
        f"- students: {', '.join(f'`{s}`' for s in setup['student_paths'])}; grader: `{setup['grader']}`; "
        f"seed {setup['seed']}; {setup['bootstrap_samples']} bootstrap resamples.",
        "- **accuracy** is the paper's: the mean over passages of per-passage accuracy; **micro** is over questions. "
        f"Brackets are {round(100 * setup['confidence'])} % paired percentile bootstrap intervals that resample passages.",
        "- a difference whose interval contains 0 is a **tie**. The reference's own files show about ±1.5 points of "
        "run-to-run noise (grader and generation) on identical settings, so small gaps need many passages.",
    ]
    if setup["multiple_comparisons"] == "bonferroni":
        lines.append("- pairwise intervals are Bonferroni-widened for the number of pairs in each table.")
    else:
        lines.append("- pairwise intervals are not corrected for multiple comparisons (`bench.multiple_comparisons: bonferroni` widens them).")
    lines += ["", "## Answer", ""]
    rounds = setup.get("rounds") or {}
    for name, proto in results["protocols"].items():
        for student, table in proto["tables"].items():
            lines += round_lines(name, student, table, rounds)
    for name, proto in results["protocols"].items():
        for student, table in proto["tables"].items():
            lines += answer_lines(name, proto["n_passages"], student, table)
    lines += ["", "Differences are other − best (or own − other), macro accuracy, points [95 % CI]; a tie when the interval contains 0."]
    for name, proto in results["protocols"].items():
        lines += ["", f"## {PROTOCOL_TITLES[name]}", "", f"{proto['n_passages']} passages; inner loop: {setup['protocols'][name]}."]
        for student, table in proto["tables"].items():
            lines += ["", f"### student `{student}`", "", f"Baseline (no update): {ci(table['baseline'])} (micro {ci(table['baseline_micro'])}).", ""]
            lines += _accuracy_table(table, name)
            lines += ["", "Which source beats which (macro accuracy, points):", ""]
            lines += _beats(table)
            if len(table["cells"]) > 1:
                lines += ["", "Pairwise differences, row minus column (bold: interval excludes 0):", ""]
                lines += _pairwise_table(table)
            if name == "continual":
                lines += _continual_matrices(table)
    if len(students) > 1:
        lines += ["", "## Compatibility: data written by one model, learned by another", ""]
        lines += ["Not all synthetic data is yours to learn from: each column is a student, each row a source."]
        lines += _compatibility(results, students)
    if setup.get("hparams"):
        lines += ["", "## Hyperparameter choices", ""]
        lines += hparams_lines(setup["hparams"], rounds)
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    lines += [
        "",
        "## Files",
        "",
        "`results.json` (everything), `summary.csv`, `comparisons.csv`, `continual.csv`, `verdicts.csv` "
        "(per-question scores), `journal.jsonl` (every adapter: answers, scores, losses), `self_edits/` "
        "(self-edits sampled for this run, SEAL format), `config.yaml` and `run.json` (recipe, versions, seeds).",
        "",
    ]
    return "\n".join(lines)


def write_tables(out: Path, results: dict, setup: dict, verdicts: dict, passage_ids: list[str], plots: list[str]) -> None:
    """Write results.json, the CSV files and report.md into ``out``."""
    write_json_atomic(out / "results.json", {"setup": setup, **results})
    write_text_atomic(out / "summary.csv", _csv(summary_rows(results), SUMMARY_COLUMNS))
    write_text_atomic(out / "comparisons.csv", _csv(comparison_rows(results), COMPARISON_COLUMNS))
    if "continual" in results["protocols"]:
        write_text_atomic(out / "continual.csv", _csv(continual_rows(results), ["student", "source", "step", "passage", "accuracy"]))
    write_text_atomic(
        out / "verdicts.csv",
        _csv(verdict_rows(verdicts, passage_ids), ["protocol", "student", "source", "passage", "passage_id", "question", "score"]),
    )
    write_text_atomic(out / "report.md", markdown(results, setup, plots))
