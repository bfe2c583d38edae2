"""`python -m stllm estimate CONFIG --gpus N --gpu-memory GB` -> parameters, model-state memory per GPU (ZeRO-2, ZeRO-3,
ZeRO-3 with CPU offload), activations per micro-batch with and without gradient checkpointing, and the settings to use.

Model: the recipe's `model.init_from/config.json` when it exists, else the preset named by --preset or by the
recipe's file name (stllm_qa*.yaml -> stllm-qa, stllm_conversation* -> stllm-conversation, *_minigpt4 variants,
tiny.yaml -> tiny), with the recipe's `model.config` changes applied; built on the meta device (no memory).

Model states (bytes per GPU), from DeepSpeed's own estimators on the TRAINABLE parameters T (bf16 weights and
gradients, fp32 master weights and Adam moments: 2 + 18 bytes each, the 18 sharded over the N GPUs), plus the
frozen parameters F in bf16 (2 bytes each: replicated under ZeRO-2, partitioned under ZeRO-3, on the CPU with
offload):
  ZeRO-2:           estimate_zero2_model_states_mem_needs(T, cpu_offload=False)  + 2 F
  ZeRO-3:           estimate_zero3_model_states_mem_needs(T, largest layer, cpu_offload=False) + 2 F / N
  ZeRO-3 offload:   estimate_zero3_model_states_mem_needs(T, largest layer, offload params + optimizer); host
                    memory per node = its CPU figure + 1.5 x 2 F

Activations (bytes per sample, bf16, SDPA / flash attention: no score matrix is stored). s = text + video tokens,
s_k = the tokens the LLM keeps after masking at the smallest mask ratio (the worst case, mask_ratio_min), h / i
the LLM width / MLP width, L its layers, V its vocabulary; v, i_v, t_v the EVA width, MLP width and tokens per
frame (1 + patches); T frames; q, i_q, l_q the Q-Former width, MLP width and layers, Q + Lq its query + text
tokens; d the BT-Adapter depth. Per decoder layer and token, autograd keeps 22 h + 8 i bytes (RMSNorm input in
fp32 and output, q/k/v, attention output and o_proj input; gate, up, SiLU output and their product):
  LLM, no checkpointing:  L (22 h + 8 i) s_k  + 10 V s_k           (bf16 logits, fp32 log-softmax, its gradient)
  LLM, checkpointing:     L 2 h s_k + (22 h + 8 i) s_k + 10 V s_k  (layer inputs + one layer recomputed)
  MVM target pass (no grad, masking + MVM only): 2 h s + (8 h + 6 i) s
  BT-Adapter (trained; its blocks are not checkpointed): d (34 v + 4 i_v) t_v T
  Q-Former (frozen, but gradients flow through it to the BT-Adapter): without checkpointing
      l_q (16 q + 4 i_q)(Q + Lq) T + 4 q t_v T l_q / 2 (cross-attention keys and values, every 2nd layer);
      with checkpointing l_q 2 q (Q + Lq) T + one layer's share
  frozen EVA, transient working set of one block: (12 v + 4 i_v) t_v T
Per GPU: model states + micro-batch x activations + 1.5 GiB (CUDA context, NCCL buffers) + 10% of the card
(allocator fragmentation). NOT CALIBRATED YET: these figures have not been checked against `python -m stllm bench
gpu` on a GPU (docs/performance.md, "Memory planner"); treat them as a first plan, not a guarantee.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from stllm.config import ConfigError
from stllm.models.configuration import PRESETS, StllmConfig, preset_config
from stllm.train.config import TrainConfig, load_train_config

GIB = 2**30
ORIGINAL_GPUS = 8  # docs/original.md §5.3: 16 per GPU x 8 GPUs = global batch 128
OVERHEAD_BYTES = int(1.5 * GIB)
FRAGMENTATION = 0.10
STAGES = ("zero2", "zero3", "zero3_offload")
# relative step time of each choice (rough, for ranking only): ZeRO-3 gathers weights every step, offload moves
# the optimizer to the CPU, checkpointing recomputes the forward, small micro-batches use the GPU less well
SLOWDOWN = {"zero2": 1.0, "zero3": 1.15, "zero3_offload": 2.5, "checkpointing": 1.33}
MICRO_BATCH_SLOWDOWN = {1: 1.3, 2: 1.15, 4: 1.05}


def preset_for(recipe: Path) -> str:
    """The preset a recipe file's name points at (stllm_conversation_minigpt4.yaml -> stllm-conversation-minigpt4)."""
    stem = recipe.stem
    if stem.startswith("tiny"):
        return "tiny"
    base = "stllm-conversation" if "conversation" in stem else "stllm-qa"
    return base + ("-minigpt4" if "minigpt4" in stem else "")


def model_config(recipe: Path, cfg: TrainConfig, preset: str | None) -> tuple[StllmConfig, str]:
    """-> (the recipe's StllmConfig, where it came from)."""
    init = Path(cfg.model.init_from) if cfg.model.init_from else None
    if preset is None and init is not None and (init / "config.json").is_file():
        model_cfg, source = StllmConfig.from_pretrained(init), f"{init}/config.json"
    else:
        name = preset or preset_for(recipe)
        if name not in PRESETS:
            raise ConfigError(f"--preset {name!r}: not a preset; choose from {', '.join(PRESETS)}")
        model_cfg, source = preset_config(name), f"preset {name}"
    for key, value in cfg.model.config.items():
        setattr(model_cfg, key, value)
    try:
        model_cfg.validate_stllm()
    except ValueError as err:
        raise ConfigError(f"{recipe}: model.config: {err}") from err
    return model_cfg, source


@dataclass
class Params:
    total: int
    trainable: int
    largest_layer: int  # the most parameters one module owns directly (DeepSpeed's ZeRO-3 gather unit)

    @property
    def frozen(self) -> int:
        return self.total - self.trainable


def count_params(model_cfg: StllmConfig) -> Params:
    """Build on the meta device (no memory, seconds even at 8B) -> counts under the recipe's trainable set."""
    from stllm.models.modeling import StllmForConditionalGeneration

    with torch.device("meta"):
        model = StllmForConditionalGeneration(model_cfg)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return Params(total, trainable, largest)


def model_states(params: Params, gpus: int, nodes: int = 1) -> dict[str, dict[str, int]]:
    """stage -> {gpu: bytes per GPU, cpu: host bytes per node} (module docstring), from DeepSpeed's estimators."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the estimators are plain arithmetic: no GPU needed
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    t, f = params.trainable, params.frozen
    per_node = max(1, gpus // nodes)
    cpu2, gpu2 = estimate_zero2_model_states_mem_needs(t, per_node, nodes, cpu_offload=False)
    cpu3, gpu3, _ = estimate_zero3_model_states_mem_needs(
        t, params.largest_layer, per_node, nodes, cpu_offload=False, cpu_offload_params=False
    )
    cpu3o, gpu3o, _ = estimate_zero3_model_states_mem_needs(
        t, params.largest_layer, per_node, nodes, cpu_offload=True, cpu_offload_params=True
    )
    return {
        "zero2": {"gpu": gpu2 + 2 * f, "cpu": cpu2},
        "zero3": {"gpu": gpu3 + 2 * f // gpus, "cpu": cpu3},
        "zero3_offload": {"gpu": gpu3o, "cpu": cpu3o + int(1.5 * 2 * f)},
    }


def activation_bytes(model_cfg: StllmConfig, frames: int, text_tokens: int, checkpointing: bool) -> int:
    """Activations kept for the backward pass of one sample, in bytes (module docstring's formula)."""
    c, tc, vc, qc = model_cfg, model_cfg.text_config, model_cfg.vision_config, model_cfg.qformer_config
    h, i, layers, vocab = tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers, tc.vocab_size
    n_video = c.num_video_tokens(frames)
    s = text_tokens + n_video
    dropped = int(c.mask_ratio_min * n_video) if c.use_mask and frames > 1 else 0
    s_k = s - dropped
    layer = 22 * h + 8 * i
    llm = (layers * 2 * h + layer if checkpointing else layers * layer) * s_k + 10 * vocab * s_k
    mvm = (2 * h + 8 * h + 6 * i) * s if dropped and c.mvm_loss_weight > 0 else 0
    v, iv = vc.hidden_size, vc.intermediate_size
    t_v = 1 + (c.frame_size() // int(cast(int, vc.patch_size))) ** 2
    eva = (12 * v + 4 * iv) * t_v * frames
    bt = qf = 0
    if c.btadapter:
        bt = c.btadapter_depth * (34 * v + 4 * iv) * t_v * frames
        q, iq, lq = qc.hidden_size, qc.intermediate_size, qc.num_hidden_layers
        tokens = c.num_query_tokens + 32  # queries + a Q-Former instruction text of ~32 tokens
        qf_layer = (16 * q + 4 * iq) * tokens + 4 * q * t_v
        qf = (lq * 2 * q * tokens + qf_layer if checkpointing else lq * qf_layer) * frames
    return int(llm + mvm + eva + bt + qf)


@dataclass
class Choice:
    stage: str
    checkpointing: bool
    micro_batch: int
    accumulation: int
    gpu_bytes: int
    slowdown: float


def plan(
    model_cfg: StllmConfig,
    params: Params,
    gpus: int,
    gpu_memory_gib: float,
    global_batch: int,
    frames: int,
    text_tokens: int,
    nodes: int = 1,
) -> list[Choice]:
    """Every (stage, checkpointing, micro-batch) that keeps the global batch and fits -> sorted fastest first."""
    states = model_states(params, gpus, nodes)
    budget = gpu_memory_gib * GIB * (1 - FRAGMENTATION) - OVERHEAD_BYTES
    out = []
    for stage in STAGES:
        for ckpt in (False, True):
            act = activation_bytes(model_cfg, frames, text_tokens, ckpt)
            for mb in (32, 16, 8, 4, 2, 1):
                if global_batch % (mb * gpus):
                    continue
                need = states[stage]["gpu"] + mb * act
                if need <= budget:
                    slow = SLOWDOWN[stage] * (SLOWDOWN["checkpointing"] if ckpt else 1.0)
                    slow *= MICRO_BATCH_SLOWDOWN.get(mb, 1.0)
                    out.append(Choice(stage, ckpt, mb, global_batch // (mb * gpus), need, slow))
    return sorted(out, key=lambda ch: (ch.slowdown, -ch.micro_batch))


def recipe_frames(cfg: TrainConfig, model_cfg: StllmConfig) -> int:
    frames = [d.num_frames for d in cfg.data.datasets if getattr(d, "num_frames", 0)]
    return max(frames) if frames else model_cfg.num_frames


def report(args: Any) -> tuple[str, list[Choice]]:
    recipe = Path(args.config)
    if not recipe.is_file():
        raise ConfigError(f"{recipe}: no such recipe file")
    cfg = load_train_config(recipe, args.overrides, check_files=False)
    model_cfg, source = model_config(recipe, cfg, args.preset)
    params = count_params(model_cfg)
    frames = args.frames or recipe_frames(cfg, model_cfg)
    t = cfg.train
    global_batch = args.global_batch or t.per_device_train_batch_size * t.gradient_accumulation_steps * ORIGINAL_GPUS
    if global_batch % args.gpus:
        raise ConfigError(f"--global-batch {global_batch} is not a multiple of --gpus {args.gpus}")
    states = model_states(params, args.gpus, args.nodes)
    g = lambda b: f"{b / GIB:7.1f} GiB"  # noqa: E731
    lines = [
        f"recipe {recipe} (model: {source}; {frames} frames, {args.text_tokens} text tokens, "
        f"video tokens {model_cfg.num_video_tokens(frames)}, masking {'on' if model_cfg.use_mask else 'off'})",
        f"parameters: {params.total:,} total, {params.trainable:,} trainable, {params.frozen:,} frozen; "
        f"largest layer {params.largest_layer:,}",
        f"model states per GPU ({args.gpus} GPUs, {args.nodes} node(s); DeepSpeed's estimators + frozen weights):",
    ]
    for stage in STAGES:
        lines.append(f"  {stage:<14} GPU {g(states[stage]['gpu'])}   host per node {g(states[stage]['cpu'])}")
    lines.append("activations per sample (bf16; NOT CALIBRATED against a GPU yet):")
    for ckpt in (False, True):
        act = activation_bytes(model_cfg, frames, args.text_tokens, ckpt)
        lines.append(f"  checkpointing {'on ' if ckpt else 'off'}  {g(act)}")
    recipe_stage = _recipe_stage(t.deepspeed)
    lines.append(
        f"the recipe as written: {recipe_stage or 'no DeepSpeed'}, micro-batch {t.per_device_train_batch_size}, "
        f"accumulation {t.gradient_accumulation_steps}, checkpointing {'on' if t.gradient_checkpointing else 'off'}"
    )
    if recipe_stage in states:
        act = activation_bytes(model_cfg, frames, args.text_tokens, t.gradient_checkpointing)
        need = states[recipe_stage]["gpu"] + t.per_device_train_batch_size * act
        fits = need <= args.gpu_memory * GIB * (1 - FRAGMENTATION) - OVERHEAD_BYTES
        lines.append(f"  needs about {g(need)} per GPU: {'fits' if fits else 'does NOT fit'} {args.gpu_memory:g} GB")
    choices = plan(model_cfg, params, args.gpus, args.gpu_memory, global_batch, frames, args.text_tokens, args.nodes)
    if not choices:
        lines.append(
            f"recommendation: nothing fits {args.gpus} x {args.gpu_memory:g} GB at global batch {global_batch}"
        )
    else:
        best = choices[0]
        ds = f"configs/deepspeed/{best.stage}.json"
        # recipes name their DeepSpeed JSON relative to themselves (stllm.train.config.load_train_config)
        beside = recipe.parent / ".." / "deepspeed" / f"{best.stage}.json"
        ds_arg = f"../deepspeed/{best.stage}.json" if beside.is_file() else ds
        lines += [
            f"recommendation for {args.gpus} x {args.gpu_memory:g} GB, global batch {global_batch}: {best.stage} "
            f"({ds}), micro-batch {best.micro_batch}, gradient accumulation {best.accumulation}, checkpointing "
            f"{'on' if best.checkpointing else 'off'} (about {g(best.gpu_bytes).strip()} per GPU)",
            f"  python -m stllm train {recipe} train.deepspeed={ds_arg} "
            f"train.per_device_train_batch_size={best.micro_batch} "
            f"train.gradient_accumulation_steps={best.accumulation} "
            f"train.gradient_checkpointing={str(best.checkpointing).lower()}",
            "other settings that fit (fastest first):",
        ]
        for ch in choices[1:6]:
            lines.append(
                f"  {ch.stage:<14} micro-batch {ch.micro_batch:>2} x accumulation {ch.accumulation:>2}, checkpointing "
                f"{'on ' if ch.checkpointing else 'off'}  {g(ch.gpu_bytes)}"
            )
    return "\n".join(lines), choices


def _recipe_stage(deepspeed_json: str | None) -> str | None:
    if not deepspeed_json:
        return None
    import json

    path = Path(deepspeed_json)
    if not path.is_file():
        return None
    zero = json.loads(path.read_text()).get("zero_optimization", {})
    stage = zero.get("stage")
    if stage == 3 and zero.get("offload_optimizer"):
        return "zero3_offload"
    return {2: "zero2", 3: "zero3"}.get(stage)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stllm estimate", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("config", help="training recipe (configs/train/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs in all")
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--gpu-memory", type=float, default=80.0, help="memory of one GPU, GB")
    parser.add_argument("--preset", default=None, help="model preset when the recipe's init_from is absent")
    parser.add_argument("--frames", type=int, default=0, help="frames per sample (default: the recipe's largest)")
    parser.add_argument(
        "--text-tokens", type=int, default=320, help="text tokens per sample (default: a 256-token answer + prompt)"
    )
    parser.add_argument("--global-batch", type=int, default=0, help="default: the recipe's on 8 GPUs (128)")
    args = parser.parse_args(argv)
    if args.gpus < 1 or args.nodes < 1 or args.gpu_memory <= 0 or args.gpus % args.nodes:
        raise ConfigError("--gpus, --nodes and --gpu-memory must be positive, --gpus a multiple of --nodes")
    text, _ = report(args)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
