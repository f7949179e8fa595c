"""Every GPU path of CycleDRUMS, end to end on one GPU, with the figures (about 5 minutes on one GPU).

    python benchmarks/gpu_check.py            # on a machine with CUDA: full sizes
    python benchmarks/gpu_check.py --dry-run  # tiny sizes on CPU (the test suite runs this)

Sections (each prints one line, and --json prints them all as one object):
  train     full-size CycleGAN step (ngf/ndf 64, 9 ResNet blocks, 256x256 windows), samples/s
            in fp32, bf16 autocast, and bf16 + channels-last; whether instance norm and
            reflection padding keep the channels-last layout or copy to NCHW
  generate  the generate job's stage functions on the GPU with inversion in the generator
            actor (pseudo-inverse + batched Griffin-Lim): clips/s and inversion s per clip
  score     Inception-v3 (random weights) activations per clip: clips/s
  demucs    random-weight htdemucs separating a stereo mix: real-time factor
  memory    peak GPU memory over the whole check
No Ray here: these are the exact functions the Ray jobs' actors call, timed directly.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from pipelines.mel import MelParams


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: str, warmup: int, iters: int) -> float:
    """Seconds per call of fn() after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / max(1, iters)


# ---------------------------------------------------------------- train


def layout_report(device: str) -> dict:
    """Do instance norm and reflection padding keep a channels-last input channels-last?"""
    x = torch.randn(2, 16, 32, 32, device=device).to(memory_format=torch.channels_last)
    norm = torch.nn.InstanceNorm2d(16).to(device)
    pad = torch.nn.ReflectionPad2d(3).to(device)
    return {name: bool(op(x).is_contiguous(memory_format=torch.channels_last))
            for name, op in (("instance_norm_keeps_channels_last", norm),
                             ("reflection_pad_keeps_channels_last", pad))}


def check_train(device: str, size: dict, steps: int, batch: int) -> dict:
    import contextlib
    import itertools
    import random

    from train.config import TrainConfig
    from train.steps import cyclegan_step
    from train.models import build_networks
    from train.pool import ImagePool

    arch = {k: size[k] for k in ("ngf", "ndf", "n_blocks")}
    cfg = TrainConfig(model="cyclegan", batch_size=batch, **arch).resolved()
    out = {"batch": batch, **size}
    variants = [("fp32", False, False)] + ([("bf16", True, False), ("bf16_channels_last", True, True)]
                                           if device == "cuda" else [])
    for name, bf16, channels_last in variants:
        torch.manual_seed(0)
        params = MelParams(n_mels=size["n_mels"], window_frames=size["frames"],
                           overlap_frames=min(50, size["frames"] // 4))
        nets = build_networks(cfg.to_dict() | {"mel_params": params.to_dict()})
        for net in nets.values():
            net.to(device)
            if channels_last:
                net.to(memory_format=torch.channels_last)
        opts = {k: torch.optim.Adam(itertools.chain(*(nets[n].parameters() for n in nets if n.startswith(p))),
                                    lr=cfg.lr, betas=(cfg.beta1, cfg.beta2))
                for k, p in (("gen", "gen_"), ("critic", "critic_"))}
        pools = {k: ImagePool(cfg.pool_size, random.Random(i)) for i, k in enumerate(("bass", "drums"))}
        shape = (batch, 1, size["n_mels"], size["frames"])
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        bass = torch.rand(shape, device=device).mul(2).sub(1).to(memory_format=fmt)
        drums = torch.rand(shape, device=device).mul(2).sub(1).to(memory_format=fmt)
        autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
        seconds = _timed(lambda: cyclegan_step(bass, drums, nets, nets, opts, pools, cfg, autocast),
                         device, warmup=1 if steps > 1 else 0, iters=steps)
        out[f"samples_per_s_{name}"] = round(batch / seconds, 3)
    out.update(layout_report(device))
    return out


# ---------------------------------------------------------------- generate


def check_generate(device: str, clips: int, seconds: float, size: dict, tmp: str) -> dict:
    import soundfile as sf

    from infer.generate_actor import GeneratorActor
    from infer.generate_decode import decode_batch
    from infer.generate_render import render_batch
    from pipelines.synth import SongPlan, render_song
    from train.checkpoint import write_checkpoint
    from train.config import TrainConfig
    from train.models import build_networks

    params = MelParams()
    config = TrainConfig(model="cyclegan", ngf=size["ngf"], ndf=size["ndf"], n_blocks=size["n_blocks"]).to_dict()
    config["mel_params"] = params.to_dict()
    nets = build_networks(config)
    checkpoint = f"{tmp}/checkpoint_000000"
    write_checkpoint(checkpoint, {k: v.state_dict() for k, v in nets.items()}, {"step": 0}, config, step=0, epoch=0)
    uris = []
    for i in range(clips):
        bass = render_song(SongPlan(name=f"s{i}", split="test", bpm=110.0 + i, root_midi=33, seed=i),
                           seconds, rate=44100)["bass"]
        uris.append(f"{tmp}/clip{i}.wav")
        sf.write(uris[-1], 0.8 * bass / max(1e-9, float(np.abs(bass).max())), 44100)
    actor = GeneratorActor(checkpoint, device, 8, 0.0, 0, n_iter=32)
    decoded = decode_batch({"clip_id": np.array([f"c{i}" for i in range(clips)], dtype=object),
                            "uri": np.array(uris, dtype=object)}, params.to_dict(), None)
    actor({k: v[:1] for k, v in decoded.items()})  # warm-up (cuDNN autotuning, Griffin-Lim setup)
    _sync(device)
    start = time.perf_counter()
    batch = actor(decoded)
    _sync(device)
    actor_seconds = time.perf_counter() - start
    rows = [json.loads(r) for r in render_batch(batch, params.to_dict(), f"{tmp}/out", None, 0.0, "model", None)["result"]]
    total = time.perf_counter() - start
    bad = [r for r in rows if r["error"]]
    if bad:
        raise RuntimeError(f"generate failed: {bad[0]}")
    return {"clips": clips, "clip_seconds": seconds, "inversion": f"generator actor ({device})",
            "clips_per_s_actor": round(clips / actor_seconds, 3), "clips_per_s_with_render": round(clips / total, 3),
            "invert_s_per_clip": round(float(np.mean([r["seconds_invert"] for r in rows])), 4),
            "generate_s_per_clip": round(float(np.mean([r["seconds_generate"] for r in rows])), 4)}


# ---------------------------------------------------------------- score


def check_score(device: str, clips: int, frames: int, tmp: str) -> dict:
    from infer.inception import InceptionFeatures, clip_activations, load_state_dict, save_random_weights

    weights = save_random_weights(f"{tmp}/inception.pth", seed=0)
    net = InceptionFeatures(load_state_dict(weights)).to(device).eval()
    params = MelParams()
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (params.n_mels, frames), dtype=np.uint8) for _ in range(clips)]
    clip_activations(net, images[:1], params.window_frames, device, 16)  # warm-up
    seconds = _timed(lambda: clip_activations(net, images, params.window_frames, device, 16), device, 0, 1)
    return {"clips": clips, "frames_per_clip": frames, "clips_per_s": round(clips / seconds, 3)}


# ---------------------------------------------------------------- demucs


def check_demucs(device: str, seconds: float, full: bool) -> dict:
    from pipelines.separation import separate, tiny_model

    if full:
        from demucs.htdemucs import HTDemucs

        torch.manual_seed(0)
        model = HTDemucs(sources=["drums", "bass", "other", "vocals"]).eval()  # htdemucs' shape, random weights
    else:
        model = tiny_model(seed=0).eval()
    model.to(device)
    wav = torch.randn(2, int(seconds * model.samplerate)) * 0.1
    separate(model, wav[:, : model.samplerate * 2], model.samplerate, 22050, device)  # warm-up
    took = _timed(lambda: separate(model, wav, model.samplerate, 22050, device), device, 0, 1)
    return {"model": "htdemucs (random weights)" if full else "tiny Demucs", "audio_seconds": seconds,
            "realtime_factor": round(seconds / took, 2)}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict:
    import tempfile

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on CPU: checks that every path runs")
    ap.add_argument("--json", action="store_true", help="print all figures as one JSON object")
    args = ap.parse_args(argv)
    if args.dry_run:
        device = "cpu"
        train_size = {"ngf": 8, "ndf": 8, "n_blocks": 2}
        shape = {"n_mels": 64, "frames": 64}
        steps, batch, clips, clip_s, score_clips, demucs_s = 1, 1, 1, 4.0, 2, 3.0
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device (use --dry-run to check the code paths on CPU)")
        device = "cuda"
        train_size = {"ngf": 64, "ndf": 64, "n_blocks": 9}
        shape = {"n_mels": 256, "frames": 256}
        steps, batch, clips, clip_s, score_clips, demucs_s = 20, 4, 16, 30.0, 256, 60.0
        torch.cuda.reset_peak_memory_stats()
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)"}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        started = time.perf_counter()
        sections = [
            ("train", lambda: check_train(device, {**train_size, **shape}, steps, batch)),
            ("generate", lambda: check_generate(device, clips, clip_s, train_size, tmp)),
            ("score", lambda: check_score(device, score_clips, 1300 if device == "cuda" else 300, tmp)),
            ("demucs", lambda: check_demucs(device, demucs_s, full=device == "cuda")),
        ]
        for name, run in sections:
            t0 = time.perf_counter()
            report[name] = run()
            report[name]["seconds"] = round(time.perf_counter() - t0, 2)
            if not args.json:
                print(f"{name}: {json.dumps(report[name])}", flush=True)
        report["total_seconds"] = round(time.perf_counter() - started, 1)
    if device == "cuda":
        report["peak_gpu_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    print(json.dumps(report) if args.json else f"total {report['total_seconds']} s, "
          f"peak GPU memory {report.get('peak_gpu_memory_gib', 'n/a')} GiB")
    return report


if __name__ == "__main__":
    main()
