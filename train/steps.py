"""The two models' update rules: one optimiser step of CycleGAN or of Pix2Pix.

DDP notes (docs/design.md, "Training"): the generator update feeds fakes through the
*plain* critic modules with their gradients switched off, so no critic DDP forward is
pending without a backward; the critic update goes through the DDP-wrapped critics.
`wrapped` and `plain` are {network key: module} for the same parameters (train/setup.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from train.config import TrainConfig

# What each update returns, in the order the log writes them.
LOSS_NAMES = {
    "cyclegan": ("loss_g", "loss_g_adv", "loss_cycle", "loss_identity", "loss_paired",
                 "loss_d_bass", "loss_d_drums"),
    "pix2pix": ("loss_g", "loss_g_adv", "loss_l1", "loss_d_drums"),
}


def gan_loss(logits: torch.Tensor, real: bool, mode: str) -> torch.Tensor:
    """LSGAN (least squares on raw outputs) or vanilla (BCE on logits), in fp32."""
    logits = logits.float()
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    if mode == "lsgan":
        return F.mse_loss(logits, target)
    return F.binary_cross_entropy_with_logits(logits, target)


def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
    for net in nets:
        for p in net.parameters():
            p.requires_grad_(flag)


def cyclegan_step(bass, drums, wrapped, plain, optimizers, pools, cfg: TrainConfig,
                  autocast) -> dict[str, torch.Tensor]:
    """One CycleGAN update: both generators, then both critics.  bass = domain A, drums = B.

    With cfg.lambda_paired > 0 the batches are pairs (drums[i] is bass[i]'s own drums) and
    the generated drums are also pulled toward them.
    """
    to_drums, to_bass = wrapped["gen_bass_to_drums"], wrapped["gen_drums_to_bass"]
    critics = [plain["critic_bass"], plain["critic_drums"]]
    set_requires_grad(critics, False)
    with autocast():
        fake_drums, fake_bass = to_drums(bass), to_bass(drums)
        adv = (gan_loss(plain["critic_drums"](fake_drums), True, cfg.gan_mode)
               + gan_loss(plain["critic_bass"](fake_bass), True, cfg.gan_mode))
        cycle = cfg.lambda_cycle * (F.l1_loss(to_bass(fake_drums).float(), bass)
                                    + F.l1_loss(to_drums(fake_bass).float(), drums))
        identity = torch.zeros((), device=bass.device)
        if cfg.lambda_identity > 0:
            identity = cfg.lambda_cycle * cfg.lambda_identity * (
                F.l1_loss(to_drums(drums).float(), drums) + F.l1_loss(to_bass(bass).float(), bass))
        paired = torch.zeros((), device=bass.device)
        if cfg.lambda_paired > 0:
            paired = cfg.lambda_paired * F.l1_loss(fake_drums.float(), drums)
        loss_g = adv + cycle + identity + paired
    optimizers["gen"].zero_grad(set_to_none=True)
    loss_g.backward()
    optimizers["gen"].step()
    set_requires_grad(critics, True)

    shown_drums = pools["drums"].query(fake_drums.detach().float())
    shown_bass = pools["bass"].query(fake_bass.detach().float())
    with autocast():
        critic_drums, critic_bass = wrapped["critic_drums"], wrapped["critic_bass"]
        loss_d_drums = 0.5 * (gan_loss(critic_drums(drums), True, cfg.gan_mode)
                              + gan_loss(critic_drums(shown_drums), False, cfg.gan_mode))
        loss_d_bass = 0.5 * (gan_loss(critic_bass(bass), True, cfg.gan_mode)
                             + gan_loss(critic_bass(shown_bass), False, cfg.gan_mode))
    optimizers["critic"].zero_grad(set_to_none=True)
    (loss_d_drums + loss_d_bass).backward()
    optimizers["critic"].step()
    return {"loss_g": loss_g.detach(), "loss_g_adv": adv.detach(), "loss_cycle": cycle.detach(),
            "loss_identity": identity.detach(), "loss_paired": paired.detach(),
            "loss_d_bass": loss_d_bass.detach(),
            "loss_d_drums": loss_d_drums.detach()}


def pix2pix_step(bass, drums, wrapped, plain, optimizers, cfg: TrainConfig,
                 autocast) -> dict[str, torch.Tensor]:
    """One Pix2Pix update (reference order): critic on (bass, drums) pairs, then generator."""
    generator, critic = wrapped["gen_bass_to_drums"], wrapped["critic_drums"]
    with autocast():
        fake = generator(bass)
        loss_d = 0.5 * (gan_loss(critic(torch.cat([bass, fake.detach()], 1)), False, cfg.gan_mode)
                        + gan_loss(critic(torch.cat([bass, drums], 1)), True, cfg.gan_mode))
    optimizers["critic"].zero_grad(set_to_none=True)
    loss_d.backward()
    optimizers["critic"].step()

    set_requires_grad([plain["critic_drums"]], False)
    with autocast():
        adv = gan_loss(plain["critic_drums"](torch.cat([bass, fake], 1)), True, cfg.gan_mode)
        l1 = cfg.lambda_l1 * F.l1_loss(fake.float(), drums)
        loss_g = adv + l1
    optimizers["gen"].zero_grad(set_to_none=True)
    loss_g.backward()
    optimizers["gen"].step()
    set_requires_grad([plain["critic_drums"]], True)
    return {"loss_g": loss_g.detach(), "loss_g_adv": adv.detach(), "loss_l1": l1.detach(),
            "loss_d_drums": loss_d.detach()}
