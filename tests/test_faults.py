"""Fault injection on real ``seal train`` runs (tiny model, 2 real SQuAD passages): what survives.

* SIGKILL in the middle of round 0, then ``seal train --resume``: the journaled evaluations
  are kept (not recomputed: their timings survive) and the run ends with exactly the journal
  and metrics of an uninterrupted run.
* A partially written last journal line: skipped with a warning, every other record kept.
* A full disk (ENOSPC) while the merged policy is written: the previous checkpoint survives
  whole, no temporary folder is left, and a resume finishes the run identically.
* LLM-judge requests that fail (HTTP 500) or hang (past the timeout): those answers are
  recorded as ungraded (None), the round completes, and the API key is nowhere on disk or
  in the output.
* NaN loss (a poisoned token embedding in one self-edit), an over-long and an empty
  self-edit, CUDA out-of-memory (retried with smaller adapter batches, then recorded): each
  is confined to its own evaluation, recorded with its reason and ``inner.failure_reward``.
* A resume with a recipe that differs in result-changing keys is refused, naming them.
* Two ``seal train`` processes on one directory: the second is refused at once (the lock,
  ``seal.rundir.hold_run_dir``), the first finishes with a lone run's metrics.

Nothing in ``seal`` is mocked except, for OOM, the inner loop's entry point (no GPU here).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import time
import zlib
from pathlib import Path

import pytest
import torch
from rich.console import Console
from train_helpers import (
    REPO,
    count_evaluations,
    journal,
    kill_when,
    metrics,
    one_thread,
    run_cli,
    seal_train_cmd,
    subprocess_env,
    tiny_overrides,
    tiny_recipe,
)

from seal.config import RecipeError, load_recipe, recipe_to_dict
from seal.journal import journal_key, merge_journal, read_journal, seal_partial_line
from seal.rundir import (
    MARKER,
    RunDir,
    append_jsonl,
    read_jsonl,
    write_json_atomic,
    write_jsonl_atomic,
)
from seal.seeding import derive_seed
from seal.train import load_train_passages, train

try:
    from judge_server import JudgeServer, Reply, contains_grader
except ImportError:  # tests/ became a package
    from tests.judge_server import JudgeServer, Reply, contains_grader

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


def quiet() -> Console:
    return Console(file=io.StringIO(), width=120)


def raw_seconds(run_dir: Path) -> dict[tuple, float]:
    """Identity -> recorded ``seconds`` of every journaled evaluation (all journal files)."""
    return {journal_key(r): r["seconds"] for r in read_journal(RunDir(run_dir)) if r.get("kind") == "evaluation"}


def file_hashes(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def tmp_leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_squad_model, data_root) -> Path:
    """An uninterrupted 2-round run (each round: 6 evaluations, a TRL policy update)."""
    run = tmp_path_factory.mktemp("reference") / "run"
    with one_thread():
        train(tiny_recipe(tiny_squad_model, data_root, rl__rounds=2), run, console=quiet())
    return run


@pytest.fixture(scope="module")
def killed(tmp_path_factory, tiny_squad_model, data_root) -> Path:
    """The same recipe as ``reference``, run by ``python -m seal.cli train`` and SIGKILLed as
    soon as two of round 0's six evaluations are in the journal."""
    run = tmp_path_factory.mktemp("killed") / "run"
    log = run.parent / "log.txt"
    cmd = seal_train_cmd(tiny_overrides(tiny_squad_model, data_root, rl__rounds=2), run_dir=run)
    proc = kill_when(cmd, log, lambda: count_evaluations(run / "journal.jsonl") >= 2, "journaling an evaluation")
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "round_0" / "metrics.json").exists(), "killed too late: round 0 had finished"
    assert 2 <= count_evaluations(run / "journal.jsonl") < 6
    return run


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ----------------------------------------------------------------------------- kill and resume


def test_sigkill_mid_round_then_resume_equals_uninterrupted(killed, reference, tiny_squad_model, data_root, tmp_path):
    run = copy_run(killed, tmp_path / "run")
    before = raw_seconds(run)
    res = run_cli(seal_train_cmd(tiny_overrides(tiny_squad_model, data_root, rl__rounds=2), resume=run))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "resuming" in res.stdout

    assert journal(run) == journal(reference)
    assert metrics(run) == metrics(reference)
    # What the killed run finished was read back, not recomputed: its timings survived.
    after = raw_seconds(run)
    assert before and all(after[k] == v for k, v in before.items())
    m0 = json.loads((run / "round_0" / "metrics.json").read_text())
    assert m0["timing"]["evaluations_computed_by_rank"] == [6 - len(before)]
    assert not list(run.glob("journal.rank*.jsonl"))


def test_partial_last_journal_line_is_skipped_and_the_rest_kept(killed, reference, tiny_squad_model, data_root, tmp_path):
    run = copy_run(killed, tmp_path / "run")
    path = run / "journal.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    torn = json.loads(lines[-1])
    assert torn["kind"] == "evaluation"
    path.write_text("".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])  # a crash mid-append
    kept = raw_seconds(run)  # warns and skips the torn line
    assert journal_key(torn) not in kept and len(kept) == count_evaluations(path)

    with one_thread(), pytest.warns(UserWarning, match="partially written"):
        train(tiny_recipe(tiny_squad_model, data_root, rl__rounds=2), run, resume=True, console=quiet())

    assert journal(run) == journal(reference)
    assert metrics(run) == metrics(reference)
    after = raw_seconds(run)
    assert all(after[k] == v for k, v in kept.items())  # the other records were kept as they were
    assert journal_key(torn) in after  # the torn one was recomputed
    assert all(json.loads(line) for line in path.read_text().splitlines())  # merged journal is clean


def test_a_journal_torn_inside_a_utf8_character_or_holding_other_bytes_resumes(killed, reference, tiny_squad_model, data_root, tmp_path):
    """Before: every --resume failed with UnicodeDecodeError. Now a line that is not UTF-8 (in the
    middle) and a last line cut inside a multi-byte character are dropped like any torn line."""
    run = copy_run(killed, tmp_path / "run")
    path = run / "journal.jsonl"
    lines = path.read_bytes().split(b"\n")[:-1]
    torn = json.loads(lines[-1])
    torn["answers"] = ["caf\u00e9 \u2028 na\u00efve"] + torn["answers"][1:]
    torn_bytes = json.dumps(torn, ensure_ascii=False).encode()
    cut = torn_bytes.index("\u00e9".encode()) + 1  # inside the two bytes of the e-acute
    bad = b'{"kind": "evaluation", "round": 0, "passage": 9, "note": "\xff\xfe"}'
    path.write_bytes(b"\n".join([*lines[:1], bad, *lines[1:-1]]) + b"\n" + torn_bytes[:cut])
    with pytest.warns(UserWarning, match="corrupt"):
        kept = raw_seconds(run)
    whole = [json.loads(x) for x in lines[:-1]]
    assert set(kept) == {journal_key(r) for r in whole if r["kind"] == "evaluation"} and journal_key(torn) not in kept

    with one_thread(), pytest.warns(UserWarning, match="partially written"):
        train(tiny_recipe(tiny_squad_model, data_root, rl__rounds=2), run, resume=True, console=quiet())
    assert journal(run) == journal(reference)
    assert metrics(run) == metrics(reference)
    assert journal_key(torn) in raw_seconds(run)  # recomputed


def test_records_with_unicode_line_separators_survive_a_write_read_round_trip(tmp_path):
    """U+2028, U+0085 and the other characters str.splitlines() breaks on, written raw by
    ensure_ascii=False, stay inside their record (the reader splits on \\n only)."""
    text = "a\u2028b\u2029c\u0085d\x1ce\x1df\x1eg\x0bh\x0ci\rj"
    rows = [{"kind": "evaluation", "round": 0, "passage": p, "self_edit": 0, "repetition": 0, "answers": [text]} for p in range(3)]
    for row in rows:
        append_jsonl(tmp_path / "journal.jsonl", row)
    assert read_jsonl(tmp_path / "journal.jsonl") == rows
    assert merge_journal(RunDir(tmp_path)) == rows and read_journal(RunDir(tmp_path)) == rows
    write_jsonl_atomic(tmp_path / "m.jsonl", rows)
    assert read_jsonl(tmp_path / "m.jsonl") == rows


def test_journal_files_merge_dedupe_and_seal(tmp_path):
    """Per-rank journal files (a killed distributed run) are read together, a partial last line
    is sealed before the next append, and the merge leaves one clean, ordered journal.jsonl."""
    run = RunDir(tmp_path)
    ev = lambda p, e, **kw: {"kind": "evaluation", "round": 0, "passage": p, "self_edit": e, "repetition": 0, "seconds": 1.0, **kw}  # noqa: E731
    (tmp_path / "journal.jsonl").write_text(json.dumps(ev(1, 0)) + "\n" + json.dumps(ev(0, 0)) + "\n" + '{"kind": "evalu')
    (tmp_path / "journal.rank1.jsonl").write_text(json.dumps(ev(0, 1)) + "\n" + json.dumps(ev(0, 0, seconds=9.0)) + "\n")
    with pytest.warns(UserWarning, match="corrupt"):
        rows = read_journal(run)
    assert [(r["passage"], r["self_edit"]) for r in rows] == [(0, 0), (0, 1), (1, 0)]
    assert rows[0]["seconds"] == 1.0  # the first seen (journal.jsonl) wins

    with pytest.warns(UserWarning, match="partially written"):
        seal_partial_line(run.journal)
    seal_partial_line(run.journal)  # idempotent, no second warning needed
    with pytest.warns(UserWarning, match="corrupt"):
        merged = merge_journal(run, [ev(2, 0)])
    assert [(r["passage"], r["self_edit"]) for r in merged] == [(0, 0), (0, 1), (1, 0), (2, 0)]
    assert not (tmp_path / "journal.rank1.jsonl").exists()
    assert [json.loads(x) for x in run.journal.read_text().splitlines()] == merged


# ----------------------------------------------------------------------------- full disk


def test_full_disk_on_checkpoint_write_keeps_the_previous_checkpoint(reference, tiny_squad_model, data_root, tmp_path, monkeypatch):
    from transformers import PreTrainedModel

    real_save = PreTrainedModel.save_pretrained
    fail_in = {"round_1"}

    def disk_full(self, save_directory, *args, **kwargs):
        """A writer that runs out of space part-way through round 1's merged policy."""
        folder = Path(save_directory)
        if folder.parent.name in fail_in:
            (folder / "model.safetensors").write_bytes(b"\0" * 4096)  # a partial write, then
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder / "model.safetensors"))
        return real_save(self, save_directory, *args, **kwargs)

    recipe = tiny_recipe(tiny_squad_model, data_root, rl__rounds=2)
    run = tmp_path / "run"
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    with one_thread(), pytest.raises(OSError) as err:
        train(recipe, run, console=quiet())
    assert err.value.errno == errno.ENOSPC
    # The previous checkpoint (round 0's merged policy) survives, whole and unchanged.
    assert file_hashes(run / "round_0" / "policy") == file_hashes(reference / "round_0" / "policy")
    # Round 1's checkpoint never appeared, half-written or otherwise; no temporary folder is left.
    assert not (run / "round_1" / "policy").exists()
    assert tmp_leftovers(run / "round_1") == []
    assert not (run / "round_1" / "metrics.json").exists()
    # Everything finished before the failure is on disk.
    assert count_evaluations(run / "journal.jsonl") == 12
    assert (run / "round_1" / "sft_rows.jsonl").exists()
    assert [m["round"] for m in read_jsonl(run / "metrics.jsonl")] == [0]

    # Space freed: the resume finishes with the uninterrupted run's results.
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real_save)
    with one_thread():
        train(recipe, run, resume=True, console=quiet())
    assert journal(run) == journal(reference)
    assert metrics(run) == metrics(reference)

    # Overwriting: a crash after round 1's policy was written but before it was marked
    # finished makes the resume redo the update; the disk fills again while the new copy is
    # written: the existing checkpoint in the same place survives unchanged.
    (run / "round_1" / "sft.json").unlink()
    (run / "round_1" / "metrics.json").unlink()
    before = file_hashes(run / "round_1" / "policy")
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", disk_full)
    with one_thread(), pytest.raises(OSError):
        train(recipe, run, resume=True, console=quiet())
    assert file_hashes(run / "round_1" / "policy") == before
    assert tmp_leftovers(run / "round_1") == [] and not (run / "round_1" / ".policy.old").exists()
    monkeypatch.setattr(PreTrainedModel, "save_pretrained", real_save)
    with one_thread():
        train(recipe, run, resume=True, console=quiet())
    assert metrics(run) == metrics(reference)


# ----------------------------------------------------------------------------- the LLM judge

KEY_ENV = "SEAL_TEST_ROUND_JUDGE_KEY"
SECRET = "sk-seal-round-test-5e1d-NEVER-WRITE-ME"


def _bucket(question: str) -> int:
    return zlib.crc32(question.encode()) % 3


def test_judge_failures_are_recorded_ungraded_and_the_key_never_leaks(tiny_squad_model, data_root, tmp_path, monkeypatch, capsys, caplog):
    """A judge server that answers 500 for a third of the questions and hangs past the timeout
    for another third: those are ungraded (None) in the journal, the round completes."""

    def respond(call):
        b = _bucket(call.field("question"))
        if b == 0:
            return Reply(status=500)
        if b == 1:
            return Reply("yes", delay_s=5.0)  # hangs past timeout_s
        return contains_grader(call)

    monkeypatch.setenv(KEY_ENV, SECRET)
    out = io.StringIO()
    with JudgeServer(respond) as server:
        recipe = tiny_recipe(
            tiny_squad_model, data_root,
            qa__grader="judge", qa__judge__base_url=server.url, qa__judge__model="test-judge",
            qa__judge__api_key_env=KEY_ENV, qa__judge__max_retries=1, qa__judge__timeout_s=0.5,
            qa__judge__backoff_s=0.01, qa__judge__max_concurrency=8, rl__keep_regardless="false",
        )  # fmt: skip
        run = tmp_path / "run"
        with one_thread():
            train(recipe, run, console=Console(file=out, width=120))
        calls = list(server.calls)

    assert calls and all(c.headers.get("Authorization") == f"Bearer {SECRET}" for c in calls)
    rows = read_jsonl(run / "journal.jsonl")
    passages = {p.id: p for p in load_train_passages(recipe)}
    n_none = 0
    for row in rows:
        qs = [q.question for q in passages[row["passage_id"]].questions]
        for q, s in zip(qs, row["scores"], strict=True):
            if _bucket(q) in (0, 1):
                assert s is None, (q, s)  # failed or hung: ungraded, never silently wrong
                n_none += 1
            else:
                assert s in (0.0, 1.0)
    assert n_none > 0
    m = json.loads((run / "round_0" / "metrics.json").read_text())
    assert m["n_ungraded"] == sum(s is None for r in rows if r["kind"] == "evaluation" for s in r["scores"]) > 0
    assert m["n_evaluations"] == 6 and m["n_failed"] == 0

    # The key is used, and written nowhere: run directory, console, logs.
    for path in run.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in out.getvalue()
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err + caplog.text
    assert "api_key" not in (run / "config.yaml").read_text().replace("api_key_env", "")


# ----------------------------------------------------------------------------- bad self-edits


def _poisoned_model(src: Path, dst: Path, passages) -> tuple[Path, str]:
    """A copy of the tiny model whose input embedding of one token (absent from the passages,
    prompts and questions) is NaN: any text with that token trains to a NaN loss."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seal.prompts import qa_prompt, self_edit_prompt
    from seal.self_edits import train_texts

    tok = AutoTokenizer.from_pretrained(src)
    used: set[int] = set()
    for p in passages:
        texts = [self_edit_prompt("implications", p.title, p.context), *train_texts(p, None), *(qa_prompt(p.title, q.question) for q in p.questions)]
        for text in texts + [t for e in _clean_edits(p) for t in train_texts(p, e, True)]:
            used |= set(tok(text)["input_ids"])
    special = set(tok.all_special_ids)
    token = next(
        i for i in range(len(tok))
        if i not in used and i not in special and len(tok.decode([i]).strip()) >= 3 and i in tok(tok.decode([i]))["input_ids"]
    )  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(src)
    model.config.tie_word_embeddings = False  # keep the output layer finite
    model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
    with torch.no_grad():
        model.get_input_embeddings().weight[token] = float("nan")
    model.save_pretrained(dst)
    tok.save_pretrained(dst)
    return dst, tok.decode([token])


def _clean_edits(p) -> list[str]:
    sentences = [s.strip() for s in p.context.split(". ") if s.strip()]
    return ["\n".join(f"{i + 1}. {s}" for i, s in enumerate(sentences[:3])), "", HOSTILE]


# Model-generated text is data: format fields, template syntax, shell and Python must pass
# through as plain text (never formatted, rendered, evaluated or executed).
HOSTILE = "1. {title} {context!r} {{0}} {% raw %}{{ 7*7 }}\n2. $(touch PWNED) `touch PWNED` __import__('os').system('touch PWNED')"


def _preseeded_run(run: Path, recipe, edits: list[list[str]]) -> None:
    """A run directory whose round 0 self-edits are given (the resume path reads them)."""
    RunDir(run).start(recipe_to_dict(recipe), seeds={"seed": recipe.seed})
    write_json_atomic(
        run / "round_0" / "self_edits.json",
        [{"passage": i, "completions": e, "truncated": [False] * len(e)} for i, e in enumerate(edits)],
    )


def test_nan_loss_over_long_and_empty_self_edits_are_confined(tiny_squad_model, data_root, tmp_path):
    base = dict(inner__failure_reward=-0.25, inner__epochs=2, rl__keep_regardless="false")
    passages = load_train_passages(tiny_recipe(tiny_squad_model, data_root))
    poisoned, word = _poisoned_model(tiny_squad_model, tmp_path / "poisoned", passages)
    long_edit = " ".join(p.context for p in passages) * 20  # one line of ~10k words
    edits = [
        [_clean_edits(passages[0])[0], f"1. {word} {word} {word}", long_edit],  # NaN loss, over-long
        [_clean_edits(passages[1])[0], "", HOSTILE],  # empty self-edit, hostile text
    ]
    runs = {}
    for name, model in (("clean", tiny_squad_model), ("poisoned", poisoned)):
        recipe = tiny_recipe(model, data_root, **base)
        runs[name] = tmp_path / name
        _preseeded_run(runs[name], recipe, edits)
        with one_thread():
            train(recipe, runs[name], resume=True, console=quiet())

    rows = {(r["passage"], r["self_edit"]): r for r in journal(runs["poisoned"]) if r["kind"] == "evaluation"}
    bad = rows[(0, 1)]
    assert bad["error"].startswith("non-finite loss") and bad["reward"] == -0.25 and bad["answers"] == []
    assert rows[(0, 2)]["error"] is None  # over-long: cut to inner.max_length, trained
    assert rows[(0, 2)]["n_train_tokens"] <= 64 * rows[(0, 2)]["n_train_texts"]
    assert rows[(1, 1)]["error"] is None and rows[(1, 1)]["n_train_texts"] == 1  # empty: passage only
    assert rows[(1, 2)]["error"] is None and rows[(1, 2)]["n_train_texts"] == 3  # hostile: 2 lines + passage
    assert not (REPO / "PWNED").exists() and not Path("PWNED").exists() and not list(tmp_path.rglob("PWNED"))
    # The other evaluations are exactly what they are without the poison.
    clean = {(r["passage"], r["self_edit"]): r for r in journal(runs["clean"]) if r["kind"] == "evaluation"}
    for k, r in rows.items():
        if k != (0, 1):
            assert r == clean[k], k
    m = json.loads((runs["poisoned"] / "round_0" / "metrics.json").read_text())
    assert m["n_evaluations"] == 6 and m["n_failed"] == 1
    assert list(m["failures"]) == [bad["error"]]


def test_cuda_oom_is_retried_with_smaller_batches_then_recorded(reference, tiny_squad_model, data_root, tmp_path, monkeypatch):
    import seal.scoring

    recipe = tiny_recipe(tiny_squad_model, data_root, inner__batch_adapters=4, rl__keep_regardless="false")
    doomed = derive_seed(recipe.seed, "adapter", 0, 0, 1, 0)  # passage 0, self-edit 1: OOMs even alone
    real = seal.scoring.run_inner_loop
    sizes = []

    def tight_memory(model, tok, jobs, cfg, *args, **kwargs):
        sizes.append(len(jobs))
        if len(jobs) > 1 or jobs[0].seed == doomed:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(model, tok, jobs, cfg, *args, **kwargs)

    monkeypatch.setattr(seal.scoring, "run_inner_loop", tight_memory)
    run = tmp_path / "run"
    out = io.StringIO()
    with one_thread():
        train(recipe, run, console=Console(file=out, width=200))
    assert sizes == [4, 2, 1, 1, 2, 1, 1, 2, 1, 1]  # 4 -> 2+2 -> singles; then the last 2
    rows = {(r["passage"], r["self_edit"]): r for r in journal(run) if r["kind"] == "evaluation"}
    assert rows[(0, 1)]["error"].startswith("out of memory with 1 adapter(s) per batch")
    assert rows[(0, 1)]["reward"] is None  # inner.failure_reward (None: left out of the mean)
    ref = {(r["passage"], r["self_edit"]): r for r in journal(reference) if r["kind"] == "evaluation" and r["round"] == 0}
    for k, r in rows.items():
        if k != (0, 1):
            assert r == ref[k], k  # the retried ones equal an OOM-free run's
    assert "retrying in halves" in out.getvalue()
    assert json.loads((run / "round_0" / "metrics.json").read_text())["n_failed"] == 1


def test_truncated_self_edits_are_flagged(reference):
    saved = json.loads((reference / "round_0" / "self_edits.json").read_text())
    flags = {(row["passage"], e): t for row in saved for e, t in enumerate(row["truncated"])}
    assert all(isinstance(t, bool) for t in flags.values()) and any(flags.values())
    for r in journal(reference):
        if r["kind"] == "evaluation" and r["round"] == 0:
            assert r["truncated"] == flags[(r["passage"], r["self_edit"])]
    m = json.loads((reference / "round_0" / "metrics.json").read_text())
    assert m["n_truncated_self_edits"] == sum(flags.values())


# ----------------------------------------------------------------------------- two processes, one directory


def _holder_pid(run: Path) -> int | None:
    try:
        return json.loads((run / MARKER).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


def test_a_second_process_on_a_run_directory_is_refused_and_the_first_finishes_as_alone(tiny_squad_model, data_root, tmp_path):
    """Two ``seal train`` processes on one directory: while the first holds it, a second (fresh
    start or --resume) is refused at once (exit 2, naming the first's pid), and the first ends
    with the metrics of a lone run."""
    overrides = tiny_overrides(tiny_squad_model, data_root, data__n_train_passages=1, self_edit__k=2)
    lone = tmp_path / "lone"
    with one_thread():
        train(load_recipe(REPO / "recipes" / "squad_tiny_cpu.yaml", overrides), lone, console=quiet())

    run, log = tmp_path / "run", tmp_path / "first.log"
    with open(log, "w") as out:
        first = subprocess.Popen(seal_train_cmd(overrides, run_dir=run), cwd=REPO, env=subprocess_env(), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while _holder_pid(run) != first.pid:  # the first has claimed and locked the directory
                assert first.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, "the first process never locked its directory"
                time.sleep(0.01)
            seconds = []
            for second in (seal_train_cmd(overrides, run_dir=run), seal_train_cmd(overrides, resume=run)):
                t0 = time.monotonic()
                res = run_cli(second, timeout=120)
                seconds.append(time.monotonic() - t0)
                assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
                # Refused because the first held the lock, so before it finished.
                assert f"in use by another seal process (pid {first.pid}" in " ".join(res.stderr.split())
                assert "Traceback" not in res.stderr
            print(f"second process refused after {seconds[0]:.2f} s (fresh) and {seconds[1]:.2f} s (--resume), interpreter start included")
            assert first.wait(timeout=240) == 0, log.read_text()[-3000:]
        finally:
            if first.poll() is None:
                first.kill()
                first.wait()
    assert metrics(run) == metrics(lone)
    assert journal(run) == journal(lone)
    assert [x["resume"] for x in json.loads((run / "run.json").read_text())["launches"]] == [False]  # the others wrote nothing


# ----------------------------------------------------------------------------- resume checks


def test_resume_refuses_a_recipe_that_changes_results(reference, tiny_squad_model, data_root, tmp_path):
    run = copy_run(reference, tmp_path / "run")
    before = (run / "run.json").read_text()
    changed = tiny_recipe(tiny_squad_model, data_root, rl__rounds=2, inner__lr=0.5, rl__sft__epochs=3, qa__batch_size=7)
    with pytest.raises(RecipeError) as err:
        train(changed, run, resume=True, console=quiet())
    assert "inner.lr, rl.sft.epochs" in str(err.value)
    assert "qa.batch_size" not in str(err.value)  # speed only: allowed
    assert (run / "run.json").read_text() == before  # nothing written

    # Via the CLI: exit status 2 (a user error) and the same message.
    from typer.testing import CliRunner

    from seal.cli import app

    res = CliRunner().invoke(app, ["train", str(REPO / "recipes" / "squad_tiny_cpu.yaml"), *tiny_overrides(tiny_squad_model, data_root, rl__rounds=2, self_edit__k=4), "--resume", str(run)])
    assert res.exit_code == 2 and "self_edit.k" in res.output

    # Result-neutral changes are accepted; finished rounds are reused, not recomputed.
    same = tiny_recipe(tiny_squad_model, data_root, rl__rounds=2, inner__batch_adapters=3)
    with one_thread():
        train(same, run, resume=True, console=quiet())
    assert metrics(run) == metrics(reference)
    launches = json.loads((run / "run.json").read_text())["launches"]
    assert [x["resume"] for x in launches] == [False, True]


# ----------------------------------------------------------------------------- preflight (issue 20)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ("rl.sft.lr_scheduler=bogus", "rl.sft.lr_scheduler"),  # before: failed at the policy update, after every evaluation
        ("model.attn_implementation=bogus", "model.attn_implementation"),
        ("model.device=banana", "model.device"),  # before: a traceback
        ("rl.reward_threshold=.nan", "rl.reward_threshold"),  # before: kept nothing, exit 0
        ("inner.failure_reward=.nan", "inner.failure_reward"),  # before: NaN in metrics.jsonl, exit 0
        ("inner.lr=.inf", "inner.lr"),  # before: every evaluation failed, exit 0
        ("inner.lora.target_modules=[]", "inner.lora.target_modules"),  # likewise
        ("inner.lora.target_modules=[qproj]", "'qproj' match no module"),
        ("rl.sft.lora.target_modules=[c_attn]", "rl.sft.lora.target_modules"),
        ("data.train_file={empty}", "holds no passages"),  # before: trained nothing, exit 0
        ("qa.grader=judge", "SEAL_TEST_NO_KEY"),
    ],
)
def test_bad_settings_are_refused_at_load_before_any_work(tiny_squad_model, data_root, tmp_path, monkeypatch, override, named):
    """The issue's reduced recipe with one bad setting: `seal train` exits non-zero with one
    error naming the key or file, and nothing is written (no run directory, no evaluation)."""
    from typer.testing import CliRunner

    from seal.cli import app

    monkeypatch.delenv("SEAL_TEST_NO_KEY", raising=False)
    empty = tmp_path / "empty.json"
    empty.write_text("[]")
    run = tmp_path / "run"
    overrides = [f"model.name_or_path={tiny_squad_model}", "model.build_tiny=null", f"data.root={data_root}", "rl.rounds=1",
                 "data.n_train_passages=1", "self_edit.k=2", "inner.eval_times=1", "qa.judge.api_key_env=SEAL_TEST_NO_KEY",
                 override.format(empty=empty)]  # fmt: skip
    res = CliRunner().invoke(app, ["train", str(REPO / "recipes" / "squad_tiny_cpu.yaml"), *overrides, "--run-dir", str(run)])
    assert res.exit_code != 0 and isinstance(res.exception, SystemExit), res.output  # a handled user error
    said = " ".join(res.output.split())  # rich wraps long lines
    assert named in said and "Traceback" not in said, res.output
    assert not run.exists()
