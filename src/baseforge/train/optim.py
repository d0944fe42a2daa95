"""The optimizers of a run: AdamW (the write-up's baseline), or Muon + AdamW.

Both come back as one `Optimizers` object with the interface the loop needs (zero_grad,
step, state_dict, load_state_dict, param_groups), so gradient accumulation, clipping, the
LR schedule, the fp16 scaler and exact resume treat them alike.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any

import torch

from baseforge.config import TrainConfig
from baseforge.errors import UserError
from baseforge.train.muon import Muon, neuron_moment_shape, param_groups_for_muon
from baseforge.train.precision import native_bf16


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    # Biases, norm gains and embeddings: the usual "do not decay" set (1-D params plus wte/wpe).
    return param.ndim < 2 or name.startswith(("transformer.wte", "transformer.wpe"))


def adamw_groups(named_params, cfg: TrainConfig, lr: float) -> list[dict]:
    params = [(n, p) for n, p in named_params if p.requires_grad]
    if cfg.decay_all:
        return [{"params": [p for _, p in params], "weight_decay": cfg.weight_decay, "lr": lr, "base_lr": lr}]
    decay = [p for n, p in params if not _no_decay(n, p)]
    rest = [p for n, p in params if _no_decay(n, p)]
    return [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr": lr, "base_lr": lr},
        {"params": rest, "weight_decay": 0.0, "lr": lr, "base_lr": lr},
    ]


def make_adamw(groups, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    # float(): a config.json may hold 0 for 0.0, and AdamW refuses betas that are not both floats
    args: dict[str, Any] = dict(betas=(float(cfg.beta1), float(cfg.beta2)), eps=cfg.eps)
    if device.type in ("cuda", "cpu") and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        # One kernel for the whole update: on CPU 3.5x faster than foreach (see train-throughput.md).
        try:
            return torch.optim.AdamW(groups, fused=True, **args)
        except RuntimeError:  # a torch without the fused kernel for this device
            pass
    return torch.optim.AdamW(groups, **args)


class Optimizers:
    """One or more torch optimizers stepped together."""

    def __init__(self, **optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    @property
    def param_groups(self):
        return [g for opt in self.optimizers.values() for g in opt.param_groups]

    def rate(self, name: str) -> float | None:
        """The learning rate of optimizer `name` now ("adamw", "muon"); None when the run has no such one.
        Each one's groups share a rate (set_lr_multiplier scales the same base)."""
        opt = self.optimizers.get(name)
        return opt.param_groups[0]["lr"] if opt is not None else None

    def set_lr_multiplier(self, multiplier: float) -> None:
        for group in self.param_groups:
            group["lr"] = group["base_lr"] * multiplier

    def zero_grad(self) -> None:
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)

    def step(self, scaler=None) -> None:
        for opt in self.optimizers.values():
            if scaler is not None:
                scaler.step(opt)
            else:
                opt.step()

    def unscale_(self, scaler) -> None:
        for opt in self.optimizers.values():
            scaler.unscale_(opt)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.optimizers.items()}

    def load_state_dict(self, state: dict, source="the checkpoint") -> None:
        """The optimizers' states from a checkpoint (`source` names it in errors), each checked against
        the live run's own layout: the same optimizers, groups and parameters, and every per-parameter
        tensor (moments, momentum) the shape of its parameter. torch checks only the group sizes."""
        if not isinstance(state, dict) or set(state) != set(self.optimizers):
            found = sorted(state) if isinstance(state, dict) else type(state).__name__
            raise UserError(f"{source} has optimizers {found}, this run has {sorted(self.optimizers)}")
        for name, opt in self.optimizers.items():
            try:
                with run_hyperparameters_kept(opt):
                    opt.load_state_dict(state[name])
            except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
                raise UserError(f"{source}: the {name} state does not fit this run ({exc})") from None
            _check_state_shapes(opt, name, source)


def _check_state_shapes(opt: torch.optim.Optimizer, name: str, source) -> None:
    for group in opt.param_groups:
        for p in group["params"]:
            for key, value in opt.state.get(p, {}).items():
                want = neuron_moment_shape(p.shape) if key == "neuron_second_moment" else tuple(p.shape)
                if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != want:
                    raise UserError(
                        f"{source}: {name} {key} has shape {tuple(value.shape)}, not {want}, for a parameter "
                        f"of shape {tuple(p.shape)}; the checkpoint is corrupt or from another model: "
                        "resume from another one"
                    )


# Group settings the run's config decides, not the checkpoint: the rates, the decay, Muon's variants
# (a checkpoint from before a variant existed has no key for it).
RUN_KEYS = ("base_lr", "weight_decay", "ns", "normuon", "normuon_beta2", "cautious_wd")


@contextlib.contextmanager
def run_hyperparameters_kept(opt: torch.optim.Optimizer):
    """Around loading an optimizer's state: the run's config wins over the checkpoint for RUN_KEYS
    (so --set lr=... on --resume takes effect); moments and step counts are the checkpoint's."""
    keep: list[dict[str, Any]] = [{k: g[k] for k in RUN_KEYS if k in g} for g in opt.param_groups]
    yield
    for group, values in zip(opt.param_groups, keep):
        group.update(values)


def build_optimizers(model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> Optimizers:
    named = list(model.named_parameters())
    if cfg.optimizer == "adamw":
        return Optimizers(adamw=make_adamw(adamw_groups(named, cfg, cfg.lr), cfg, device))
    muon_params = param_groups_for_muon(model)[0]  # the rest, AdamW's, is every other parameter
    muon_ids = {id(p) for p in muon_params}
    rest = [(n, p) for n, p in named if id(p) not in muon_ids]
    muon = Muon(
        [{"params": muon_params, "lr": cfg.muon_lr, "base_lr": cfg.muon_lr}],
        momentum=cfg.muon_momentum,
        weight_decay=cfg.muon_weight_decay,
        ns=cfg.muon_ns,
        normuon=cfg.normuon,
        cautious_wd=cfg.cautious_wd,
        ns_dtype=torch.bfloat16 if native_bf16(device) else torch.float32,
    )
    return Optimizers(muon=muon, adamw=make_adamw(adamw_groups(rest, cfg, cfg.lr), cfg, device))
