"""``model.shard: fsdp``: the frozen base sharded over 2 CPU processes (gloo, FSDP2) gives the
unsharded single-process run's baselines, adapter losses, answers and rewards exactly; plus
the recipe switch, the launch config and what a sharded model refuses."""

from __future__ import annotations

import json
import socket
import sys

import pytest
from shard_worker import summary
from train_helpers import REPO, one_thread, run_cli

from seal.config import ModelConfig
from seal.models import load_model
from seal.sharding import SHARD_MODES, ShardingError, decoder_layers, is_sharded, shard_model

WORKER = REPO / "tests" / "shard_worker.py"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
@pytest.mark.timeout(120)
def test_sharded_inner_loop_equals_unsharded(tiny_squad_model, data_root, tmp_path):
    """Exact equality, not a tolerance: every rank all-gathers each layer's full weights
    (copies, no arithmetic), feeds them the same rows in the same order and so runs the
    unsharded model's float operations; no gradient is averaged between ranks (each rank
    computes the whole bank's gradient itself)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
        str(WORKER), str(tiny_squad_model), str(data_root), str(tmp_path),
    ]  # fmt: skip
    res = run_cli(cmd, timeout=110, PYTHONPATH=str(REPO))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["sharded"] and ranks[0]["world_size"] == 2
    assert ranks[0]["local_numel"] < 0.6 * ranks[0]["full_numel"]  # each rank holds about half
    assert "does not support a sharded base" in ranks[0]["merge"]  # train_and_merge refuses

    model, tokenizer = load_model(tiny_squad_model, "float32", "cpu")
    with one_thread():
        expected = summary(model, tokenizer, data_root)
    for got in ranks:
        assert got["baseline"] == expected["baseline"]
        assert got["adapters"] == expected["adapters"]  # losses, tokens, answers, errors, rewards
    trained = [a for a in expected["adapters"] if a["losses"]]
    assert len(trained) == 3 and all(len(a["losses"]) == 2 for a in trained)  # the test trains something


def test_shard_switch_defaults_to_none():
    cfg = ModelConfig(name_or_path="x")
    assert cfg.shard == "none" and SHARD_MODES == ("none", "fsdp")
    assert ModelConfig(name_or_path="x", shard="fsdp").shard == "fsdp"
    with pytest.raises(ValueError):
        ModelConfig(name_or_path="x", shard="zero3")


def test_collectives_are_no_ops_without_sharding(tiny_squad_model):
    import torch

    from seal.sharding import all_ranks_agree, copy_from_main, no_grad_for, run_forward

    model, _ = load_model(tiny_squad_model, "float32", "cpu")
    flags = torch.tensor([True, False])
    assert all_ranks_agree(model, flags) is flags
    x = torch.ones(3)
    copy_from_main(model, x)
    assert torch.equal(x, torch.ones(3)) and run_forward(model, max, 2, 5) == 5
    with no_grad_for(model):
        assert torch.is_inference_mode_enabled()


def test_other_ranks_of_a_sharded_run_never_call_the_judge():
    from seal.stages import AbstainingJudge

    assert AbstainingJudge().grade([("q", "gold", "answer")] * 3) == [None, None, None]


def test_sharding_needs_a_process_group(tiny_squad_model):
    model, _ = load_model(tiny_squad_model, "float32", "cpu")
    assert len(decoder_layers(model)) == 2 and not is_sharded(model)
    with pytest.raises(ShardingError, match="process group"):
        shard_model(model, "cpu")


def test_fsdp_launch_config_loads():
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(REPO / "launch" / "accelerate_fsdp_inner.yaml"))
    assert cfg.distributed_type.value == "MULTI_GPU"  # seal shards the base itself, FSDP2 (seal.sharding)
    text = (REPO / "launch" / "README.md").read_text()
    assert "accelerate_fsdp_inner.yaml" in text and "model.shard=fsdp" in text
