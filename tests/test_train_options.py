"""Training options are defined once (TrainConfig fields) and drive the `train` flags and the
resume / fine-tuning rules."""
from __future__ import annotations

import dataclasses

import pytest

from cycledrums_cli import build_parser
from train.config import FIXED, FREE, KEPT, TrainConfig, option_fields

# Flags of `cycledrums train` that are not training options: where it runs, not what it learns.
JOB_FLAGS = {"data", "run_dir", "num_workers", "gpu", "device", "cpus_per_worker", "max_failures",
             "address", "s3_endpoint_url", "resume", "help", "command", "func", "verbose",
             "actors", "gpus_per_actor", "json"}


def train_parser():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices["train"]


def test_every_field_has_its_flag_and_every_flag_its_field():
    parser = train_parser()
    flag_dests = {a.dest for a in parser._actions} - JOB_FLAGS
    fields = {f.name for f in option_fields()}
    assert flag_dests == fields
    for f in option_fields():
        action = next(a for a in parser._actions if a.dest == f.name)
        assert "--" + f.name.replace("_", "-") in action.option_strings
        assert action.default is None  # unset flags leave the choice to the config
        assert action.help and f.metadata["help"] in action.help
        if f.metadata["choices"]:
            assert tuple(action.choices) == f.metadata["choices"]


def test_every_field_says_what_resume_may_do():
    for f in option_fields():
        assert f.metadata["on_resume"] in (FIXED, FREE, KEPT), f.name
        assert f.metadata["group"], f.name


def test_flags_parse_to_the_field_types():
    args = train_parser().parse_args(
        ["data", "run", "--ngf", "8", "--lr", "0.001", "--norm", "batch", "--no-dropout",
         "--compile", "--max-steps", "5", "--init-from", "s3://b/run"])
    assert (args.ngf, args.lr, args.norm, args.dropout, args.compile, args.max_steps,
            args.init_from) == (8, 0.001, "batch", False, True, 5, "s3://b/run")
    assert args.epochs is None and args.channels_last is None
    with pytest.raises(SystemExit):
        train_parser().parse_args(["data", "run", "--norm", "layer"])


def test_help_shows_paper_defaults():
    text = train_parser().format_help()
    assert "Adam learning rate (default: 0.0002)" in " ".join(text.split())
    assert "--n-blocks" in text and "--shuffle-buffer" in text


def test_resume_rules_come_from_the_fields():
    from train.trainer import ARCHITECTURE_FIELDS, RUN_CONTROL_FIELDS

    assert "lr" not in RUN_CONTROL_FIELDS and "epochs" in RUN_CONTROL_FIELDS
    assert set(ARCHITECTURE_FIELDS) == {"model", "ngf", "ndf", "n_blocks", "n_layers_d",
                                        "unet_downs", "norm", "dropout"}


def test_checkpoint_config_holds_only_user_options():
    saved = TrainConfig().resolved().to_dict()
    assert set(saved) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert not {"crash_at_step", "crash_rank", "extra"} & set(saved)
    # Checkpoints written before the test hooks left the config still load.
    old = saved | {"crash_at_step": None, "crash_rank": 1, "extra": {}}
    assert TrainConfig.from_dict(old) == TrainConfig.from_dict(saved)


def test_both_run_lengths_are_refused():
    from cycledrums_cli import main

    assert main(["train", "data", "run", "--epochs", "2", "--max-steps", "5"]) == 2


def test_auto_precision_takes_bf16_where_the_hardware_multiplies_it(monkeypatch):
    import torch

    from train.config import uses_bf16

    assert uses_bf16("auto", "cuda") and uses_bf16("bf16", "cpu") and not uses_bf16("fp32", "cuda")
    # On a CPU, auto follows the native-bf16 probes (AMX tiles or AVX512-BF16): bf16 is
    # emulated (slower than fp32) without them.
    for amx, avx512_bf16 in [(True, False), (False, True), (False, False)]:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16,
                            raising=False)
        assert uses_bf16("auto", "cpu") == (amx or avx512_bf16)
    monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported")  # a torch without the probes
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")
    assert not uses_bf16("auto", "cpu")
