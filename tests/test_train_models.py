"""Networks and the checkpoint contract, without Ray."""
from __future__ import annotations

import json
import os

import pytest
import torch

from pipelines.mel import MelParams
from train.checkpoint import (CheckpointNotFoundError, list_checkpoints, load_generator,
                              resolve_checkpoint, write_checkpoint)
from train.config import TrainConfig
from train.models import (PatchCritic, ResnetGenerator, UnetGenerator, build_critic,
                          build_generator, build_networks, count_parameters)

SMALL = dict(ngf=8, ndf=8, n_blocks=2)


def test_paper_parameter_counts():
    cfg = TrainConfig().to_dict()
    assert count_parameters(build_generator(cfg)) == 11_365_633
    assert count_parameters(build_critic(cfg)) == 2_762_689


def test_shapes_and_paper_defaults():
    x = torch.randn(2, 1, 256, 256)
    gen = ResnetGenerator(ngf=8, n_blocks=2)
    y = gen(x)
    assert y.shape == x.shape and y.abs().max() <= 1.0
    # 70x70 PatchGAN on 256x256: a 30x30 grid of patch logits.
    assert PatchCritic(ndf=8)(x).shape == (2, 1, 30, 30)
    unet = UnetGenerator(ngf=8, downs=8)
    assert unet(x).shape == x.shape
    with pytest.raises(ValueError, match="divisible"):
        unet(torch.randn(1, 1, 64, 64))
    cyc, p2p = TrainConfig().resolved(), TrainConfig(model="pix2pix").resolved()
    assert (cyc.norm, cyc.dropout, cyc.gan_mode) == ("instance", False, "lsgan")
    assert (p2p.norm, p2p.dropout, p2p.gan_mode) == ("batch", True, "vanilla")
    assert set(build_networks(TrainConfig(model="pix2pix", **SMALL).to_dict())) == {
        "gen_bass_to_drums", "critic_drums"}
    # Pix2Pix's critic sees (bass, drums) as two channels.
    assert build_critic(p2p.to_dict() | SMALL).net[0].in_channels == 2


def test_bad_config_is_rejected():
    with pytest.raises(ValueError, match="model"):
        TrainConfig(model="vae").resolved()
    with pytest.raises(ValueError, match="norm"):
        TrainConfig(norm="layer").resolved()
    with pytest.raises(ValueError, match="unknown training options"):
        TrainConfig.from_dict({"ngf": 8, "nfg": 8})


def test_lr_schedule_constant_then_linear_to_zero():
    cfg = TrainConfig()
    factors = [cfg.lr_factor(s, 10) for s in range(10)]
    assert factors[:5] == [1.0] * 5
    assert factors[5:] == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


def _fake_checkpoint(folder, step, params=MelParams(n_mels=64, window_frames=64)):
    cfg = TrainConfig(**SMALL).resolved().to_dict() | {"mel_params": params.to_dict()}
    nets = build_networks(cfg)
    weights = {k: v.state_dict() for k, v in nets.items()}
    write_checkpoint(str(folder), weights, {"step": step}, cfg, step=step, epoch=0)
    return nets


def test_load_generator_from_checkpoint_and_run_folder(tmp_path):
    run = tmp_path / "run"
    _fake_checkpoint(run / "train" / "checkpoint_000000002", 2)
    nets = _fake_checkpoint(run / "train" / "checkpoint_000000010", 10)
    # An incomplete folder (interrupted upload) is never picked.
    os.makedirs(run / "train" / "checkpoint_000000012")
    torch.save({}, run / "train" / "checkpoint_000000012" / "weights.pt")

    latest = resolve_checkpoint(str(run))
    assert latest.endswith("checkpoint_000000010")
    assert resolve_checkpoint(latest) == latest
    assert len(list_checkpoints(str(run))) == 2

    weights = torch.load(os.path.join(latest, "weights.pt"), weights_only=True)
    assert set(weights) == {"gen_bass_to_drums", "gen_drums_to_bass", "critic_bass",
                            "critic_drums"}
    torch.load(os.path.join(latest, "state.pt"), weights_only=True)
    config = json.load(open(os.path.join(latest, "config.json")))
    assert config["model"] == "cyclegan" and config["ngf"] == 8

    gen, params, cfg = load_generator(str(run))
    assert not gen.training
    assert params == MelParams(n_mels=64, window_frames=64) and cfg["n_blocks"] == 2
    x = torch.randn(1, 1, 64, 64)
    expected = nets["gen_bass_to_drums"].eval()(x)
    assert torch.equal(gen(x), expected)


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="no checkpoint"):
        resolve_checkpoint(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        load_generator(str(tmp_path / "nowhere"))


def test_load_generator_from_s3(tmp_path, s3_endpoint, s3_bucket):
    import boto3

    nets = _fake_checkpoint(tmp_path / "ckpt", 4)
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    for name in os.listdir(tmp_path / "ckpt"):
        client.upload_file(str(tmp_path / "ckpt" / name), s3_bucket,
                           f"runs/a/train/checkpoint_000000004/{name}")
    path = resolve_checkpoint(f"s3://{s3_bucket}/runs/a", s3_endpoint_url=s3_endpoint)
    assert path == f"s3://{s3_bucket}/runs/a/train/checkpoint_000000004"
    gen, _, _ = load_generator(f"s3://{s3_bucket}/runs/a", s3_endpoint_url=s3_endpoint)
    x = torch.randn(1, 1, 64, 64)
    assert torch.equal(gen(x), nets["gen_bass_to_drums"].eval()(x))


def test_cli_help_lists_every_option_with_its_default():
    import argparse

    from cycledrums_cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    train_parser = sub.choices["train"]
    options = [a for a in train_parser._actions if a.option_strings and a.dest != "help"]
    assert {"--num-workers", "--resume", "--init-from", "--max-steps", "--ngf",
            "--checkpoint-every", "--s3-endpoint-url", "--address", "--device"} <= {
        s for a in options for s in a.option_strings}
    for action in options:
        assert "default" in (action.help or ""), action.option_strings
    args = parser.parse_args(["train", "data", "run", "--ngf", "8", "--no-dropout"])
    assert (args.ngf, args.dropout, args.n_blocks, args.func.__name__) == (8, False, None, "run_train")


def test_bad_training_data_is_a_clear_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from train.trainer import TrainSetupError, inspect_data

    with pytest.raises(TrainSetupError, match="no window data"):
        inspect_data(str(tmp_path / "missing"))
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.parquet").write_bytes(b"not parquet")
    with pytest.raises(TrainSetupError, match="not a Parquet window set"):
        inspect_data(str(tmp_path / "junk"))
    (tmp_path / "plain").mkdir()
    pq.write_table(pa.table({"x": [1]}), tmp_path / "plain" / "a.parquet")
    with pytest.raises(TrainSetupError, match="not a cycledrums window table"):
        inspect_data(str(tmp_path / "plain"))


def _cyclegan_l1_to_own_drums(lambda_paired: float, steps: int = 40) -> tuple[float, float]:
    """L1 of G(bass) to each bass window's own drums, before and after `steps` CycleGAN updates."""
    import contextlib

    from train.setup import WorkerRun, build_optimizers
    from train.steps import cyclegan_step

    torch.manual_seed(0)
    cfg = TrainConfig(ngf=4, ndf=4, n_blocks=1, lambda_paired=lambda_paired, lr=2e-3,
                      pool_size=0).resolved()
    nets = build_networks(cfg.to_dict())
    opt = build_optimizers(nets, WorkerRun(cfg, MelParams(), 1, steps, {}, {}), rank=0)
    # Each window's drums hit half a bar after its bass.  The drum windows as a set are the bass
    # windows (phases 0, 2, 4, 6 of 8), so only the pairing tells the model which one to play.
    bass = torch.full((4, 1, 32, 32), -0.8)
    drums = torch.full((4, 1, 32, 32), -0.8)
    for i in range(4):
        bass[i, ..., 2 * i::8] = 0.6
        drums[i, ..., (2 * i + 4) % 8::8] = 0.6

    def l1() -> float:
        with torch.no_grad():
            return float((nets["gen_bass_to_drums"](bass) - drums).abs().mean())

    before = l1()
    for _ in range(steps):
        losses = cyclegan_step(bass, drums, nets, nets, opt.optimizers, opt.pools, cfg,
                               contextlib.nullcontext)
    assert (float(losses["loss_paired"]) > 0) == (lambda_paired > 0)
    return before, l1()


def test_paired_term_pulls_the_cyclegan_toward_each_windows_own_drums():
    """--lambda-paired: on paired stems the generated drums move toward the true ones."""
    before, unpaired = _cyclegan_l1_to_own_drums(0.0)
    _, paired = _cyclegan_l1_to_own_drums(10.0)
    assert paired < 0.5 * before and paired < 0.5 * unpaired
    with pytest.raises(ValueError, match="lambda_paired"):
        TrainConfig(model="pix2pix", lambda_paired=1.0).resolved()
    assert TrainConfig(lambda_paired=1.0).resolved().paired_batches
    assert not TrainConfig().resolved().paired_batches
