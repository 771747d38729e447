"""The DeepSpeed engine around the backbone, and the optimizers of both halves of the model.

Two halves, two kinds of parallelism:

* the backbone is data-parallel: DeepSpeed averages its gradients over ranks (ZeRO 0/1/2
  partitions optimizer state and gradients, never the result), clips them and steps;
* the classifier and centre shards are model-parallel: each rank owns different rows, so
  they stay out of DeepSpeed (averaging them would mix different classes) and get their
  own torch optimizer. The losses give each shard exactly dL/dW_shard.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from facetrain.pipeline.config import TrainConfig
from torch import nn

OPTIMIZER_STATE_KEYS = {"sgd": ("momentum_buffer",), "adamw": ("exp_avg", "exp_avg_sq")}


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    """fp32 on CPU; on GPU bf16 where the card has it (Ampere and later), else fp16; unless
    the config names one."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    if device.type != "cuda":
        return "fp32"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def make_optimizer(params, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    train = cfg.train
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=train.momentum, weight_decay=train.weight_decay
        )
    return torch.optim.AdamW(params, lr=lr, weight_decay=train.weight_decay)


def deepspeed_config(cfg: TrainConfig, world_size: int) -> dict:
    """The engine always holds fp32 weights: mixed precision is autocast around the forward
    (see precision.py), so DeepSpeed's own bf16/fp16 modes stay off. Under ZeRO 0 the
    averaged gradients sit in `.grad` and the Trainer clips them itself, in the same pass
    that measures their norm (`clip_backbone_grads_`); ZeRO 1/2 partition them, so
    DeepSpeed clips there."""
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch.size,
        "train_batch_size": cfg.data.batch.size * world_size,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": cfg.train.grad_clip if cfg.train.zero_stage > 0 else 0.0,
        "zero_optimization": {"stage": cfg.train.zero_stage},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        "zero_allow_untested_optimizer": True,
    }


def ensure_process_group() -> None:
    """Start a one-rank gloo group when none exists (a notebook, a plain script): DeepSpeed
    and the collectives assume one, and with one rank it costs nothing."""
    if dist.is_initialized():
        return
    from facetrain.pipeline.ports import free_port

    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )


def build_engine(backbone: nn.Module, cfg: TrainConfig, world_size: int):
    """`deepspeed.initialize` on an already-initialised process group; returns the engine."""
    import deepspeed

    # DeepSpeed insists on launcher variables even when the process group already exists
    # (e.g. tests/dist.py or a hand-made group): derive them from the group.
    if dist.is_initialized():
        os.environ.setdefault("RANK", str(dist.get_rank()))
        os.environ.setdefault("WORLD_SIZE", str(dist.get_world_size()))
        os.environ.setdefault("LOCAL_RANK", str(dist.get_rank()))
    optimizer = make_optimizer(backbone.parameters(), cfg, cfg.train.lr)
    overlap = world_size > 1 and cfg.train.zero_stage == 0
    module = backbone
    if overlap:
        # ZeRO-0 all-reduces every gradient after the backward pass; DDP's reducer sends
        # buckets while the backward still runs (measured on 2 CPU ranks: 0.25 s a step of
        # waiting otherwise). DeepSpeed then only clips and steps. BatchNorm statistics are
        # averaged after the step (collectives.average_buffers), not broadcast from rank 0.
        from torch.nn.parallel import DistributedDataParallel

        device_ids = (
            [backbone_device(backbone).index] if backbone_device(backbone).type == "cuda" else None
        )
        module = DistributedDataParallel(backbone, device_ids=device_ids, broadcast_buffers=False)
    engine, *_ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        config=deepspeed_config(cfg, world_size),
        dist_init_required=False,
    )
    if overlap:
        engine.enable_backward_allreduce = False
    return engine


def backbone_device(backbone: nn.Module) -> torch.device:
    return next(backbone.parameters()).device


def unwrapped(module: nn.Module) -> nn.Module:
    """The backbone itself, without the DDP wrapper build_engine may have put around it."""
    from torch.nn.parallel import DistributedDataParallel

    return module.module if isinstance(module, DistributedDataParallel) else module


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _base_optimizer(optimizer):
    """The torch optimizer inside DeepSpeed's wrappers (ZeRO, bf16)."""
    while hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def _is_partitioned(param: nn.Parameter) -> bool:
    return hasattr(param, "_hp_mapping") or hasattr(param, "ds_id")


def backbone_optimizer_state(engine, named_params: dict[str, nn.Parameter], optimizer: str) -> dict:
    """{"params": {name: {state key: full fp32 tensor}}, "step": n} for any ZeRO stage.

    Keyed by parameter name and never partitioned, so it loads under any world size.
    A collective call under ZeRO 1/2 (the owner ranks assemble each tensor): call on every rank.
    """
    from deepspeed.utils import safe_get_full_optimizer_state

    base = _base_optimizer(engine.optimizer)
    params: dict = {}
    for name, param in named_params.items():
        entry = {}
        for key in OPTIMIZER_STATE_KEYS[optimizer]:
            if _is_partitioned(param):
                value = safe_get_full_optimizer_state(param, key)
            else:
                value = base.state.get(param, {}).get(key)
            if value is not None:
                entry[key] = value.detach().float().cpu().clone()
        params[name] = entry
    steps = [state["step"] for state in base.state.values() if "step" in state]
    return {"params": params, "step": float(steps[0]) if steps else None}


def load_backbone_weights(engine, state: dict) -> None:
    """Load a backbone state_dict into the engine's module *and* into DeepSpeed's fp32
    master copies (ZeRO 1/2, bf16), which otherwise overwrite the weights at the next step."""
    from deepspeed.utils import safe_set_full_fp32_param

    module = unwrapped(engine.module)
    own = module.state_dict()
    module.load_state_dict({name: value.to(own[name].dtype) for name, value in state.items()})
    for name, param in module.named_parameters():
        if _is_partitioned(param):
            safe_set_full_fp32_param(param, state[name].float().to(param.device))


def materialise_optimizer_state(engine, input_shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """ZeRO creates its optimizer state at the first step, and a restore needs somewhere to
    write: take one step with a zero loss and learning rate 0 in eval mode (BatchNorm
    statistics untouched). Weights and state are overwritten by the restore right after."""
    device = next(engine.module.parameters()).device
    set_lr(engine.optimizer, 0.0)
    was_training = engine.module.training
    engine.eval()
    loss = engine(torch.zeros(input_shape, device=device, dtype=dtype)).float().sum() * 0.0
    engine.backward(loss)
    engine.step()
    engine.train(was_training)


def load_backbone_optimizer_state(
    engine, named_params: dict[str, nn.Parameter], state: dict
) -> None:
    from deepspeed.utils import safe_set_full_optimizer_state

    base = _base_optimizer(engine.optimizer)
    for name, param in named_params.items():
        for key, value in state["params"].get(name, {}).items():
            if _is_partitioned(param):
                safe_set_full_optimizer_state(param, value.to(param.device), key)
            else:
                base.state[param][key] = value.to(param.device, param.dtype).clone()
    if state.get("step") is not None:
        for param_state in base.state.values():
            if "step" in param_state or state["params"]:
                param_state["step"] = torch.tensor(state["step"])
