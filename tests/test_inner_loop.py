"""The batched LoRA inner loop: equivalence with sequential training and with PEFT, padding
invariance, failure isolation, batched generation, and the base model left untouched.

Real computations on a tiny Llama model built once per module (no mocks).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from seal.config import InnerLoopConfig, LoraConfig
from seal.hparams import AdapterSettings
from seal.inner_loop import (
    AdapterJob,
    InnerLoopError,
    answer_questions,
    epoch_order,
    generate_answers,
    init_seed,
    micro_batches,
    run_inner_loop,
    tokenize_texts,
    tokenize_with_loss,
    train_and_merge,
    train_bank,
)
from seal.models import build_tiny_model, load_model, peft_lora_config
from seal.multi_lora import StackedAdamW, adapter_bank

CORPUS = [
    "The Normans were the people who in the 10th and 11th centuries gave their name to Normandy.",
    "Super Bowl 50 was an American football game to determine the champion of the NFL.",
    "Estonian writings became significant in the 19th century.",
    "The Amazon rainforest covers much of the Amazon basin of South America.",
    "Oxygen is a chemical element with symbol O and atomic number 8.",
    "Question: Who won?\nAnswer:\nDenver Broncos",
] * 8

TEXTS = [
    "Normandy\nThe Normans gave their name to Normandy, a region in France.",
    "Super Bowl\nThe Denver Broncos defeated the Carolina Panthers 24-10.",
    "Oxygen\nOxygen is the third most abundant element in the universe by mass after hydrogen and helium.",
    "Amazon\nThe rainforest",
    "Estonian\nWritings in Estonian became significant only in the 19th century with the spread of the ideas of the Age of Enlightenment.",
    "Normandy\nRollo",
    "Super Bowl\nThe game was played on February 7, 2016, at Levi's Stadium.",
]
PROMPTS = [
    "Let's answer a question directly and concisely.\nQuestion: Who won Super Bowl 50?\nAnswer:\n",
    "Question: What is oxygen?\nAnswer:\n",
    "Question: Normans?\nAnswer:\n",
]
LORA = LoraConfig(rank=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"])


def make_cfg(**kw) -> InnerLoopConfig:
    base = dict(lora=LORA, epochs=3, lr=1e-2, batch_size=1, max_length=48, max_grad_norm=1.0)
    base.update(kw)
    return InnerLoopConfig(**base)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one intra-op thread. Two threads spin-wait on each other when the
    shared CPU is oversubscribed and make this module 10-50x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def build_model_dir(tmp_path_factory):
    """The tiny model these tests (and tests/test_gpu.py) train adapters on: hidden 32, 2 layers."""
    return build_tiny_model(
        tmp_path_factory.mktemp("tiny") / "model",
        CORPUS,
        vocab_size=512,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(model_dir):
    torch.manual_seed(0)
    return load_model(model_dir, device="cpu")


def unequal_jobs() -> list[AdapterJob]:
    """Four jobs with 1, 3, 5 and 2 texts of different lengths."""
    counts, jobs, k = [1, 3, 5, 2], [], 0
    for i, n in enumerate(counts):
        texts = [TEXTS[(k + j) % len(TEXTS)] for j in range(n)]
        k += n
        jobs.append(AdapterJob(texts=texts, prompts=PROMPTS[: 1 + i % 3], seed=100 + i))
    return jobs


def trained_weights(model, tok, jobs, cfg, n_slots):
    """Train jobs in banks of ``n_slots``; return per job its {name: (A, B)} and stats."""
    weights, stats = [], []
    for start in range(0, len(jobs), n_slots):
        chunk = jobs[start : start + n_slots]
        with adapter_bank(model, cfg.lora, n_slots) as bank:
            stats += train_bank(
                model, tok, bank, [j.texts for j in chunk], [j.seed for j in chunk], cfg
            )
            weights += [bank.weights(i) for i in range(len(chunk))]
    return weights, stats


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp(min=1e-30))


def peft_copy(model_dir, init: dict):
    """A PEFT LoRA model on a fresh copy of the base, its adapter set to ``init`` (our bank's
    initial weights), and its trainable parameters: the reference our inner loop must match."""
    from peft import get_peft_model

    fresh, _ = load_model(model_dir, device="cpu")
    pm = get_peft_model(fresh, peft_lora_config(LORA))  # the builder the policy update and GRPO use
    with torch.no_grad():
        for name, (a, b) in init.items():
            layer = pm.base_model.model.get_submodule(name)
            layer.lora_A["default"].weight.copy_(a)
            layer.lora_B["default"].weight.copy_(b)
    return pm, [p for p in pm.parameters() if p.requires_grad]


def assert_matches_peft(ours: dict, pm) -> None:
    """Our adapter's (A, B) per module equal the PEFT model's, to float rounding."""
    for name, (a, b) in ours.items():
        layer = pm.base_model.model.get_submodule(name)
        assert rel_err(a, layer.lora_A["default"].weight.detach()) < 1e-5
        assert rel_err(b, layer.lora_B["default"].weight.detach()) < 1e-5


def assert_same_weights(wa: dict, wb: dict, tol: float = 1e-5) -> None:
    assert wa.keys() == wb.keys()
    for name in wa:
        for x, y in zip(wa[name], wb[name], strict=True):
            assert rel_err(x, y) < tol, (name, rel_err(x, y))


# ----------------------------------------------------------------------------- 1. equivalence


@pytest.mark.parametrize("batch_size", [1, 2])
def test_batched_equals_sequential(loaded, batch_size):
    model, tok = loaded
    cfg = make_cfg(batch_size=batch_size)
    jobs = unequal_jobs()
    w4, s4 = trained_weights(model, tok, jobs, cfg, 4)
    w1, s1 = trained_weights(model, tok, jobs, cfg, 1)
    for a, b, sa, sb in zip(w4, w1, s4, s1, strict=True):
        assert sa.error is None and sb.error is None
        assert_same_weights(a, b)
        assert sa.n_train_tokens == sb.n_train_tokens > 0
        assert sa.epoch_losses == pytest.approx(sb.epoch_losses, rel=1e-5)
        assert any(bb.abs().sum() > 0 for _, bb in a.values())  # B moved away from 0

    r4 = run_inner_loop(
        model, tok, jobs, cfg.model_copy(update={"batch_adapters": 4}), max_new_tokens=6
    )
    r1 = run_inner_loop(
        model, tok, jobs, cfg.model_copy(update={"batch_adapters": 1}), max_new_tokens=6
    )
    assert [r.answers for r in r4] == [r.answers for r in r1]
    assert [len(r.answers) for r in r4] == [len(j.prompts) for j in jobs]
    assert r4[0].epoch_losses == pytest.approx(s4[0].epoch_losses, rel=1e-5)


def test_init_depends_only_on_seed(loaded):
    model, _ = loaded
    with adapter_bank(model, LORA, 3) as bank:
        bank.reset_slot(0, 7)
        bank.reset_slot(2, 7)
        w0, w2 = bank.weights(0), bank.weights(2)
    for name in w0:
        assert torch.equal(w0[name][0], w2[name][0])
        assert not w0[name][1].any()
        bound = 1 / w0[name][0].shape[1] ** 0.5  # kaiming_uniform_(a=sqrt(5)) on (r, in)
        assert w0[name][0].abs().max() <= bound


def test_epoch_order_is_a_seeded_permutation():
    assert sorted(epoch_order(3, 0, 5)) == list(range(5))
    assert epoch_order(3, 1, 5) == epoch_order(3, 1, 5)
    assert any(epoch_order(3, e, 8) != epoch_order(3, 0, 8) for e in range(1, 4))


# ----------------------------------------------------------------------------- 2. PEFT


@pytest.mark.parametrize("batch_size", [1, 2])
def test_single_adapter_matches_peft(loaded, model_dir, batch_size):
    from transformers import get_linear_schedule_with_warmup

    model, tok = loaded
    cfg = make_cfg(batch_size=batch_size, weight_decay=0.1, max_grad_norm=0.5)
    texts, seed = TEXTS[:5], 11
    with adapter_bank(model, cfg.lora, 1) as bank:
        bank.reset_slot(0, init_seed(seed))
        init = bank.weights(0)
        (stats,) = train_bank(model, tok, bank, [texts], [seed], cfg)
        ours = bank.weights(0)
    assert stats.error is None

    pm, params = peft_copy(model_dir, init)
    rows = tokenize_texts(tok, texts, cfg.max_length)
    steps_per_epoch = -(-len(rows) // batch_size)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, 0, cfg.epochs * steps_per_epoch)
    for epoch in range(cfg.epochs):
        order = epoch_order(seed, epoch, len(rows))
        for s in range(steps_per_epoch):
            batch = [rows[j] for j in order[s * batch_size : (s + 1) * batch_size]]
            width = max(map(len, batch))
            ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in batch])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in batch])
            labels = ids.masked_fill(mask == 0, -100)
            loss = pm(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad()
    assert_matches_peft(ours, pm)
    assert all(b.abs().sum() > 0 for _, b in ours.values())


# ----------------------------------------------------------------------------- 3. padding


def test_padding_changes_nothing(loaded):
    model, tok = loaded
    cfg = make_cfg(batch_size=2)
    short = AdapterJob(texts=[TEXTS[3], TEXTS[5], TEXTS[1]], prompts=[], seed=5)
    long_texts = [
        " ".join([TEXTS[4]] * 3)
    ] * 4  # every row cut at max_length: far longer than `short`'s
    companion = AdapterJob(texts=long_texts, prompts=[], seed=6)
    (alone,), _ = trained_weights(model, tok, [short], cfg, 1)
    (together, _), stats = trained_weights(model, tok, [short, companion], cfg, 2)
    assert stats[1].n_train_tokens == 4 * (cfg.max_length - 1)
    assert_same_weights(together, alone)
    # One big padded pass (every row padded to the longest) or one pass per row: same update.
    for budget in (1, 10**6):
        with adapter_bank(model, cfg.lora, 2) as bank:
            train_bank(
                model,
                tok,
                bank,
                [short.texts, companion.texts],
                [5, 6],
                cfg,
                tokens_per_pass=budget,
            )
            assert_same_weights(bank.weights(0), alone)


def test_micro_batches_bound_padding():
    lengths = [10, 300, 290, 12, 150, 9]
    groups = micro_batches(lengths, tokens_per_pass=1000, pad_slack=1.25)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for g in groups:
        width = max(lengths[i] for i in g)
        assert len(g) == 1 or (
            len(g) * width <= 1000 and len(g) * width <= 1.25 * sum(lengths[i] for i in g)
        )
    assert any({1, 2} <= set(g) for g in groups)  # similar lengths share a pass
    assert not any({1, 0} <= set(g) for g in groups)  # 300 and 10 do not
    assert micro_batches([5, 5, 5], tokens_per_pass=1) == [[0], [1], [2]]


def test_train_on_padding_reproduces_reference_loss(loaded):
    model, tok = loaded
    job = AdapterJob(texts=TEXTS[:2], prompts=[], seed=1)
    (_,), (plain,) = trained_weights(model, tok, [job], make_cfg(), 1)
    (_,), (padded,) = trained_weights(model, tok, [job], make_cfg(train_on_padding=True), 1)
    assert padded.n_train_tokens == 2 * (48 - 1) > plain.n_train_tokens
    assert padded.epoch_losses != pytest.approx(plain.epoch_losses)


# ----------------------------------------------------------------------------- 4. learning, base untouched


def passage_loss(model, tok, bank, slot, text) -> float:
    ids = torch.tensor([tokenize_texts(tok, [text], 64)[0]])
    with torch.no_grad():
        bank.set_rows(torch.tensor([slot]))
        loss = model(input_ids=ids, labels=ids).loss.item()
        bank.set_rows(None)
    return loss


def test_training_lowers_passage_loss(loaded):
    model, tok = loaded
    passage = TEXTS[4]
    every_linear = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    cfg = make_cfg(epochs=20, lora=LoraConfig(rank=8, alpha=16, target_modules=every_linear))
    with adapter_bank(model, cfg.lora, 2) as bank:
        (st, _) = train_bank(model, tok, bank, [[passage], []], [3, 4], cfg)
        before, after = (
            passage_loss(model, tok, bank, -1, passage),
            passage_loss(model, tok, bank, 0, passage),
        )
    assert after < before - 0.2
    assert st.epoch_losses[-1] < st.epoch_losses[0]


@pytest.mark.parametrize("train_mode", [False, True])
def test_base_model_bit_identical_and_state_restored(loaded, train_mode):
    model, tok = loaded
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train(train_mode)
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    done = []
    try:
        results = run_inner_loop(
            model,
            tok,
            unequal_jobs(),
            make_cfg(batch_adapters=3),
            max_new_tokens=4,
            progress=done.append,
        )
        assert model.training is train_mode and all(
            m.training is train_mode for m in model.modules()
        )
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert all(p.grad is None for p in model.parameters())
    finally:
        model.eval()
    assert done == [3, 1]
    assert all(r.error is None and r.seconds > 0 for r in results)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())


# ----------------------------------------------------------------------------- 5. failures


def test_empty_job_fails_alone_and_no_texts_gets_base_answers(loaded):
    model, tok = loaded
    cfg = make_cfg(batch_adapters=3)
    good = AdapterJob(texts=TEXTS[:2], prompts=PROMPTS[:2], seed=1)
    empty = AdapterJob(texts=["", ""], prompts=PROMPTS[:2], seed=2)
    none = AdapterJob(texts=[], prompts=PROMPTS, seed=3)
    r = run_inner_loop(model, tok, [good, empty, none], cfg, max_new_tokens=5)
    alone = run_inner_loop(model, tok, [good], cfg, max_new_tokens=5)
    assert r[1].error and "no trainable tokens" in r[1].error and r[1].answers == []
    assert r[0].error is None and r[0].answers == alone[0].answers
    assert r[0].epoch_losses == pytest.approx(alone[0].epoch_losses, rel=1e-5)
    assert r[2].error is None and r[2].epoch_losses == []
    assert r[2].answers == answer_questions(model, tok, PROMPTS, max_new_tokens=5)


def test_nan_in_one_adapter_does_not_touch_the_others(loaded):
    """Poison slot 1's rows (a real NaN in its forward pass); slots 0 and 2 train as without it."""
    model, tok = loaded
    cfg = make_cfg()
    jobs = unequal_jobs()[:3]
    clean, _ = trained_weights(model, tok, jobs, cfg, 3)

    with adapter_bank(model, cfg.lora, 3) as bank:

        def poison(module, args, output):
            bad = (bank._rows == 1).view(-1, 1, 1)
            return torch.where(bad, torch.full_like(output, float("nan")), output)

        handle = model.get_input_embeddings().register_forward_hook(poison)
        try:
            stats = train_bank(
                model, tok, bank, [j.texts for j in jobs], [j.seed for j in jobs], cfg
            )
        finally:
            handle.remove()
        poisoned = [bank.weights(i) for i in range(3)]
    assert stats[1].error and "non-finite loss" in stats[1].error
    assert stats[0].error is None and stats[2].error is None
    assert_same_weights(poisoned[0], clean[0])
    assert_same_weights(poisoned[2], clean[2])


def test_huge_lr_fails_with_error_not_exception(loaded):
    model, tok = loaded
    # lr 1e30 alone saturates (RMSNorm maps huge activations to 0, the loss stays ln V);
    # decoupled weight decay then scales A by (1 - lr * wd) ~ -1e30 and overflows fp32.
    cfg = make_cfg(lr=1e30, weight_decay=1.0, max_grad_norm=None, epochs=4)
    r = run_inner_loop(
        model,
        tok,
        unequal_jobs()[1:3],
        cfg.model_copy(update={"batch_adapters": 2}),
        max_new_tokens=3,
    )
    assert all(x.error and "non-finite" in x.error and x.answers == [] for x in r)


def test_train_and_merge(loaded, model_dir):
    _, tok = loaded
    model, _ = load_model(model_dir, device="cpu")
    cfg = make_cfg()
    texts, seed = TEXTS[:3], 9
    with adapter_bank(model, cfg.lora, 1) as bank:
        train_bank(model, tok, bank, [texts], [seed], cfg)
        ids = torch.tensor([tokenize_texts(tok, [TEXTS[0]], 64)[0]])
        with torch.no_grad():
            bank.set_rows(torch.tensor([0]))
            adapted = model(input_ids=ids).logits
            bank.set_rows(None)
    losses = train_and_merge(model, tok, texts, cfg, seed)
    assert len(losses) == cfg.epochs and losses[-1] < losses[0]
    with torch.no_grad():
        merged = model(input_ids=ids).logits
    assert torch.allclose(merged, adapted, atol=1e-4)
    with pytest.raises(InnerLoopError):
        train_and_merge(model, tok, [""], cfg, seed)


# ----------------------------------------------------------------------------- 6. generation


def test_batched_generation_equals_per_adapter(loaded):
    model, tok = loaded
    cfg = make_cfg(epochs=4, lr=3e-2)
    jobs = unequal_jobs()[:3]
    prompts = PROMPTS + [PROMPTS[0] + "The"]
    with adapter_bank(model, cfg.lora, 3) as bank:
        train_bank(model, tok, bank, [j.texts for j in jobs], [j.seed for j in jobs], cfg)
        slots = [s for s in (-1, 0, 1, 2) for _ in prompts]
        mixed = generate_answers(
            model, tok, prompts * 4, slots, bank, max_new_tokens=8, batch_size=5
        )
        single = [
            a
            for s in (-1, 0, 1, 2)
            for a in generate_answers(model, tok, prompts, [s] * len(prompts), bank, 8, 64)
        ]
        one_by_one = [
            generate_answers(model, tok, [p], [s], bank, 8, 1)[0]
            for p, s in zip(prompts * 4, slots, strict=True)
        ]
    assert mixed == single == one_by_one
    assert any(a for a in mixed)  # not all empty
    assert (
        len({tuple(mixed[i * 4 : (i + 1) * 4]) for i in range(4)}) > 1
    )  # adapters answer differently


def test_bf16_model_with_fp32_adapters(model_dir):
    """The dtype path CUDA runs take (bf16 base, fp32 adapters), here on the CPU."""
    model, tok = load_model(model_dir, dtype="bfloat16", device="cpu")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    jobs = unequal_jobs()[:2]
    results = run_inner_loop(
        model, tok, jobs, make_cfg(batch_adapters=2, epochs=2), max_new_tokens=4
    )
    assert all(
        r.error is None and len(r.answers) == len(j.prompts)
        for r, j in zip(results, jobs, strict=True)
    )
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with adapter_bank(model, LORA, 1) as bank:
        assert bank.params.dtype == torch.float32


def adapter_deltas(weights: list[dict], scale: float) -> list[dict]:
    """Per adapter, ``{target: (alpha / r) * B @ A}``: the change each adapter makes to W."""
    return [{name: scale * (b @ a) for name, (a, b) in w.items()} for w in weights]


def max_rel_err(xs: list[dict], ys: list[dict]) -> float:
    return max(rel_err(x[name], y[name]) for x, y in zip(xs, ys, strict=True) for name in x)


def bf16_batching_errors(model_dir, device: str) -> tuple[float, float, float]:
    """Train ``unequal_jobs`` in bf16 as one bank of 4 and one adapter at a time, and in fp32
    one at a time, on ``device``. Returns (batched-vs-sequential error of the adapters'
    weight changes in bf16, bf16-vs-fp32 error of the sequential ones, largest relative
    difference of an epoch loss between batched and sequential in bf16)."""
    cfg, jobs = make_cfg(), unequal_jobs()
    scale = cfg.lora.alpha / cfg.lora.rank
    bf16, tok = load_model(model_dir, dtype="bfloat16", device=device)
    w4, s4 = trained_weights(bf16, tok, jobs, cfg, 4)
    w1, s1 = trained_weights(bf16, tok, jobs, cfg, 1)
    fp32, _ = load_model(model_dir, dtype="float32", device=device)
    w32, _ = trained_weights(fp32, tok, jobs, cfg, 1)
    assert all(s.error is None for s in s4 + s1)
    d4, d1, d32 = (adapter_deltas(w, scale) for w in (w4, w1, w32))
    loss_err = max(
        abs(x - y) / y
        for a, b in zip(s4, s1, strict=True)
        for x, y in zip(a.epoch_losses, b.epoch_losses, strict=True)
    )
    return max_rel_err(d4, d1), max_rel_err(d1, d32), loss_err


def test_bf16_batched_matches_sequential_within_bf16_precision(model_dir):
    """bf16 base on the CPU: batched and sequential adapters agree as closely as bf16 allows.

    The base model's bf16 outputs depend (by rounding) on the rows computed with them, so the
    two are not bit-identical as in fp32. Stated tolerance: the adapters' weight changes
    (alpha/r) B A differ by less than the bf16 adapters differ from fp32-trained ones, i.e.
    batching adds no error beyond bf16's own (measured on torch 2.13 CPU: 0.074 vs 0.116,
    the largest on the first layer's q_proj of a one-text adapter, where Adam turns rounding
    noise in near-zero gradients into full-size steps), and every epoch loss agrees to
    1e-3 relative (measured: 1.6e-5).
    """
    batching, dtype_error, loss_err = bf16_batching_errors(model_dir, "cpu")
    assert batching < dtype_error, (batching, dtype_error)
    assert loss_err < 1e-3


def test_answer_questions_matches_hf_generate(loaded):
    model, tok = loaded
    ours = answer_questions(model, tok, PROMPTS, max_new_tokens=7, batch_size=2)
    tok.padding_side = "left"
    try:
        enc = tok(PROMPTS, return_tensors="pt", padding=True)
        with torch.no_grad():
            out = model.generate(
                **enc, max_new_tokens=7, do_sample=False, pad_token_id=tok.pad_token_id
            )
    finally:
        tok.padding_side = "right"
    ref = [
        t.strip()
        for t in tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    ]
    assert ours == ref


# ----------------------------------------------------------------------------- per-adapter settings

QA_TEXTS = [
    "Super Bowl\nQ: Who won Super Bowl 50? A: The Denver Broncos.",
    "Normandy\nQ: Who gave their name to Normandy? A: The Normans.",
    "Oxygen\nOxygen is the third most abundant element in the universe.",
    "Amazon\nQ: What covers the Amazon basin? A: The rainforest.",
]


def settings_jobs() -> tuple[list[AdapterJob], list[AdapterSettings | None]]:
    """Four jobs whose settings differ in lr, epochs and loss mask (one uses the recipe's)."""
    settings = [
        AdapterSettings(lr=3e-3, epochs=1, loss_on="answer"),
        None,
        AdapterSettings(lr=2e-2, epochs=2),
        AdapterSettings(epochs=4, loss_on="answer"),
    ]
    jobs = [
        AdapterJob(texts=[QA_TEXTS[(i + j) % len(QA_TEXTS)] for j in range(1 + i % 3)], prompts=PROMPTS[:2], seed=300 + i, settings=s)
        for i, s in enumerate(settings)
    ]
    return jobs, settings


@pytest.mark.parametrize("batch_size", [1, 2])
def test_mixed_settings_batch_equals_each_adapter_alone(loaded, batch_size):
    """Adapters with different lr, epochs and loss masks trained in one bank end where each
    ends trained alone with the same settings (per-slot LR schedule, early-finishing slots
    untouched, per-row loss masks)."""
    model, tok = loaded
    cfg = make_cfg(batch_size=batch_size, lr_scheduler="linear")
    jobs, settings = settings_jobs()
    with adapter_bank(model, cfg.lora, len(jobs)) as bank:
        mixed = train_bank(model, tok, bank, [j.texts for j in jobs], [j.seed for j in jobs], cfg, settings=settings)
        mixed_weights = [bank.weights(i) for i in range(len(jobs))]
    for i, (job, s) in enumerate(zip(jobs, settings, strict=True)):
        with adapter_bank(model, cfg.lora, 1) as bank:
            (alone,) = train_bank(model, tok, bank, [job.texts], [job.seed], cfg, settings=[s])
            assert_same_weights(mixed_weights[i], bank.weights(0))
        assert mixed[i].error is None and alone.error is None
        assert mixed[i].n_train_tokens == alone.n_train_tokens > 0
        assert mixed[i].epoch_losses == pytest.approx(alone.epoch_losses, rel=1e-5)
        assert len(alone.epoch_losses) == (s.epochs if s and s.epochs else cfg.epochs)
    # The settings matter: the answer-only adapter trains on fewer tokens than with loss on all.
    with adapter_bank(model, cfg.lora, 1) as bank:
        (everything,) = train_bank(model, tok, bank, [jobs[0].texts], [jobs[0].seed], cfg, settings=[AdapterSettings(lr=3e-3, epochs=1)])
    assert 0 < mixed[0].n_train_tokens < everything.n_train_tokens


def test_answer_loss_is_the_cross_entropy_after_the_marker(loaded):
    """With B = 0 the first step's loss is the base model's: the mean cross-entropy of the
    tokens after 'A:' only (a text without the marker keeps loss on every token)."""
    model, tok = loaded
    cfg = make_cfg(epochs=1, loss_on="answer")
    rows, starts = tokenize_with_loss(tok, [QA_TEXTS[0], QA_TEXTS[2]], cfg.max_length, "answer", "A:")
    assert starts[1] == 1 and rows == tokenize_texts(tok, [QA_TEXTS[0], QA_TEXTS[2]], cfg.max_length)
    answer_part = tok.decode(rows[0][starts[0] :], skip_special_tokens=True)
    assert answer_part.strip() == "The Denver Broncos."
    ids = torch.tensor([rows[0]])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, :-1].float()
    expected = torch.nn.functional.cross_entropy(logits[starts[0] - 1 :], ids[0, starts[0] :]).item()
    with adapter_bank(model, cfg.lora, 1) as bank:
        (st,) = train_bank(model, tok, bank, [[QA_TEXTS[0]]], [0], cfg)
    assert st.n_train_tokens == len(rows[0]) - starts[0]
    assert st.epoch_losses[0] == pytest.approx(expected, rel=1e-5)


def test_mixed_ranks_are_grouped_and_answer_as_alone(loaded):
    """run_inner_loop splits a chunk by LoRA rank (one bank per rank); every job's answers and
    losses are those of the job run alone, and a bank refuses an adapter of another rank."""
    model, tok = loaded
    cfg = make_cfg(batch_adapters=4, epochs=2)
    ranks = [8, 4, 8, 2]
    jobs = [
        AdapterJob(texts=TEXTS[i : i + 2], prompts=PROMPTS, seed=400 + i, settings=AdapterSettings(lora_rank=r, lr=1e-2 * (i + 1)))
        for i, r in enumerate(ranks)
    ]
    together = run_inner_loop(model, tok, jobs, cfg, max_new_tokens=6)
    for job, result in zip(jobs, together, strict=True):
        (alone,) = run_inner_loop(model, tok, [job], cfg, max_new_tokens=6)
        assert result.error is None and result.answers == alone.answers
        assert result.epoch_losses == pytest.approx(alone.epoch_losses, rel=1e-5)
    with adapter_bank(model, cfg.lora, 1) as bank, pytest.raises(ValueError, match="rank 8 in a bank of rank 4"):
        train_bank(model, tok, bank, [TEXTS[:1]], [0], cfg, settings=[AdapterSettings(lora_rank=8)])


def test_each_slot_steps_with_its_own_learning_rate(loaded):
    """Adam's first step moves a parameter by lr * g / (|g| + eps) ~ lr: after one step each
    slot's largest change of B (which starts at 0) is its own lr, in one mixed bank."""
    model, tok = loaded
    cfg = make_cfg(epochs=1, lr_scheduler="constant", max_grad_norm=None)
    lrs = [1e-4, 3e-3, 5e-2]
    with adapter_bank(model, cfg.lora, len(lrs)) as bank:
        train_bank(model, tok, bank, [TEXTS[:1]] * len(lrs), [0] * len(lrs), cfg, settings=[AdapterSettings(lr=lr) for lr in lrs])
        for slot, lr in enumerate(lrs):
            largest = max(float(b.abs().max()) for _, b in bank.weights(slot).values())
            assert largest == pytest.approx(lr, rel=1e-3)


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_stacked_adamw_row_by_row_equals_all_slots_at_once(weight_decay):
    """The CPU path (active rows one at a time) and the GPU path (every slot at once) give the
    same parameters and moments bit for bit, over steps with changing active slots, LRs and
    gradients; an inactive slot is left exactly as it was."""
    gen = torch.Generator().manual_seed(0)
    start = torch.randn(5, 300, generator=gen)
    steppers = []
    for _ in range(2):
        param = start.clone().requires_grad_(True)
        steppers.append(StackedAdamW(param, weight_decay=weight_decay))
    rows_path, all_path = steppers
    for step in range(6):
        grad = torch.randn(5, 300, generator=gen) * 10 ** (step % 3 - 1)
        active = torch.rand(5, generator=gen) > 0.3
        active[-1] = False  # a null slot never steps
        lr = torch.rand(5, generator=gen, dtype=torch.float64) * 1e-2
        before = rows_path.param.detach()[~active].clone()
        for opt, path in ((rows_path, "_step_rows"), (all_path, "_step_all")):
            opt.param.grad = grad.clone()
            _step_with(opt, path, lr, active)
        assert torch.equal(rows_path.param.detach()[~active], before)
        for a, b in ((rows_path.param.detach(), all_path.param.detach()), (rows_path.exp_avg, all_path.exp_avg), (rows_path.exp_avg_sq, all_path.exp_avg_sq)):
            assert torch.equal(a, b)
        assert torch.equal(rows_path.steps, all_path.steps)


def _step_with(opt: StackedAdamW, path: str, lr: torch.Tensor, active: torch.Tensor) -> None:
    """``opt.step`` forced onto one of its two paths (``_step_rows`` or ``_step_all``)."""
    other = "_step_all" if path == "_step_rows" else "_step_rows"
    setattr(opt, other, getattr(opt, path))  # the instance attribute shadows the method
    try:
        opt.step(lr, active)
    finally:
        delattr(opt, other)


def test_grad_accumulation_is_hf_accumulation_and_a_larger_batch(loaded, model_dir):
    """inner.grad_accum_steps=2 with batch 1 is HF Trainer's accumulation (transformers >= 4.46):
    two micro-batches of one text, each loss = its CE token sum / the tokens of both, gradients
    summed, then one clipped AdamW step on a linear schedule over ceil(ceil(n/1)/2) steps per
    epoch (5 texts: the last step of an epoch accumulates one batch). Written out here with PEFT;
    and it equals batch 2 without accumulation (the token mean over both texts)."""
    from transformers import get_linear_schedule_with_warmup

    model, tok = loaded
    cfg = make_cfg(batch_size=1, grad_accum_steps=2, epochs=2, max_grad_norm=0.5)
    texts, seed = TEXTS[:5], 13
    with adapter_bank(model, cfg.lora, 1) as bank:
        bank.reset_slot(0, init_seed(seed))
        init = bank.weights(0)
        (stats,) = train_bank(model, tok, bank, [texts], [seed], cfg)
        accumulated = bank.weights(0)
    assert stats.error is None
    (bigger,), _ = trained_weights(model, tok, [AdapterJob(texts=texts, prompts=[], seed=seed)], make_cfg(batch_size=2, epochs=2, max_grad_norm=0.5), 1)
    assert_same_weights(accumulated, bigger, tol=1e-6)
    (plain,), _ = trained_weights(model, tok, [AdapterJob(texts=texts, prompts=[], seed=seed)], make_cfg(batch_size=1, epochs=2, max_grad_norm=0.5), 1)
    assert max(rel_err(accumulated[n][1], plain[n][1]) for n in plain) > 1e-3  # accumulation changes the update

    pm, params = peft_copy(model_dir, init)
    rows = tokenize_texts(tok, texts, cfg.max_length)
    batches_per_epoch = len(rows)  # batch size 1
    steps_per_epoch = -(-batches_per_epoch // 2)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = get_linear_schedule_with_warmup(opt, 0, cfg.epochs * steps_per_epoch)
    for epoch in range(cfg.epochs):
        order = epoch_order(seed, epoch, len(rows))
        for s in range(steps_per_epoch):
            group = [rows[j] for j in order[2 * s : 2 * s + 2]]
            n_items = sum(len(r) - 1 for r in group)  # loss tokens of the whole accumulation
            for r in group:
                ids = torch.tensor([r])
                logits = pm(input_ids=ids).logits[0, :-1].float()
                loss = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum") / n_items
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
            sched.step()
            opt.zero_grad()
    assert_matches_peft(accumulated, pm)


def test_full_fine_tuning_trains_every_weight(loaded, model_dir):
    """train_full: Adam's first step moves every weight whose gradient is non-zero by ~lr (all
    of them, not only q/v), its losses fall over epochs, and a part-batch of accumulated rows
    is the token mean over them (batch 1 x 2 accumulated = batch 2)."""
    from seal.inner_loop import train_full

    _, tok = loaded
    model, _ = load_model(model_dir, device="cpu")
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = make_cfg(epochs=1, lr=1e-3, lr_scheduler="constant", max_grad_norm=None)
    train_full(model, tok, TEXTS[:1], cfg, seed=3)
    moved = {n: (p.detach() - before[n]).abs() for n, p in model.named_parameters()}
    assert [p.requires_grad for p in model.parameters()] == [True] * len(before)  # as load_model left them
    assert max(float(d.max()) for d in moved.values()) == pytest.approx(1e-3, rel=1e-3)
    changed = [n for n, d in moved.items() if float(d.max()) > 0]
    assert any("mlp" in n for n in changed) and any("k_proj" in n for n in changed) and len(changed) >= 0.9 * len(moved)

    cfg = make_cfg(epochs=3, lr=1e-2)
    losses = train_full(load_model(model_dir, device="cpu")[0], tok, TEXTS[:3], cfg, seed=3)
    assert len(losses) == 3 and losses[-1] < losses[0]
    a, _ = load_model(model_dir, device="cpu")
    b, _ = load_model(model_dir, device="cpu")
    train_full(a, tok, TEXTS[:5], make_cfg(epochs=2, batch_size=1, grad_accum_steps=2), seed=4)
    train_full(b, tok, TEXTS[:5], make_cfg(epochs=2, batch_size=2), seed=4)
    for (n, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert rel_err(pa.detach(), pb.detach()) < 1e-6, n


def test_keep_freed_cpu_memory_applies_on_glibc_and_can_be_turned_off(monkeypatch):
    """glibc (Linux CI) accepts the allocator settings; SEAL_KEEP_CPU_MEMORY=0 leaves them."""
    import platform

    from seal.models import KEEP_MEMORY_ENV, keep_freed_cpu_memory

    monkeypatch.setenv(KEEP_MEMORY_ENV, "0")
    assert keep_freed_cpu_memory() is False
    monkeypatch.delenv(KEEP_MEMORY_ENV)
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert keep_freed_cpu_memory() is True
