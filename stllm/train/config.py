"""Training recipe YAML + `key=value` overrides -> TrainConfig (model / data / lora / train sections), validated.

DESIGN decision 4: the `train:` section mirrors the `transformers.TrainingArguments` fields the recipes use
(SPEC 5.3, 9.3: the original passed its `run:` block straight to TrainingArguments); `training_arguments()`
builds the real object from it. `data:` is the data pipeline's DataConfig (catalog resolved here, relative to
the recipe file). Everything is checked before any model is built.

No `from __future__ import annotations` here: stllm.config reads the dataclass field types to name the valid
keys of a section in its error messages, which needs real classes, not strings.
"""

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from stllm.config import ConfigError, load_config
from stllm.data.config import DataConfig, annotation_path, resolve_catalog


@dataclass
class ModelSection:
    """Which model to train: a converted stllm model directory (`init_from`) or a preset, plus field overrides.

    `preset` names the architecture (stllm.models.configuration.PRESETS); `init_from` is the converted training
    start (`python -m stllm convert ...`) whose config.json wins over the preset when it exists. With no
    `init_from`, the `tiny` preset gets offline tokenizers (stllm.tiny); a full-size preset needs `init_from`.
    Fields left at None keep the checkpoint's / preset's value (SPEC 1.7, 1.11, 2).
    """

    preset: str = "stllm-qa"
    init_from: str = ""
    video_input: Optional[str] = None  # all | mean | residual (SPEC 1.7)
    residual_size: Optional[int] = None
    use_mask: Optional[bool] = None  # SPEC 2.1 dynamic masking
    mask_ratio_mean: Optional[float] = None
    mask_ratio_std: Optional[float] = None
    mask_ratio_min: Optional[float] = None
    mask_ratio_max: Optional[float] = None
    mvm_decode: Optional[bool] = None  # SPEC 1.8 MVM head
    mvm_loss_weight: Optional[float] = None  # SPEC 2.2 step 7: 1.0; 0 disables the second (no-grad) LLM pass
    btadapter: Optional[bool] = None
    btadapter_depth: Optional[int] = None
    freeze_vision: Optional[bool] = None
    freeze_qformer: Optional[bool] = None
    freeze_llm: Optional[bool] = None
    qformer_dropout_in_train: Optional[str] = None  # SPEC Q2
    num_frames: Optional[int] = None

    def overrides(self) -> dict[str, Any]:
        """The StllmConfig fields this section sets (None = keep)."""
        skip = {"preset", "init_from"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name not in skip and getattr(self, f.name) is not None}


@dataclass
class LoraSection:
    """LoRA on the LLM's linear layers (r=0: off). Not in the released recipes (the original's path was dead,
    SPEC Q23); the recipe's non-LLM trainable modules (BT-Adapter, projection, MVM head) stay fully trained."""

    r: int = 0
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj",
                                                               "gate_proj", "up_proj", "down_proj"])


@dataclass
class TrainSection:
    """The `transformers.TrainingArguments` fields used by the recipes; defaults are SPEC 5.3's."""

    output_dir: str = "outputs/stllm"
    num_train_epochs: float = 2.0
    max_steps: int = -1
    per_device_train_batch_size: int = 16  # x 8 GPUs x accumulation 1 = global 128 (SPEC 5.3)
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03  # transformers 5 has no warmup_ratio: passed as warmup_steps < 1 (a ratio)
    warmup_steps: float = 0.0  # >= 1: exact steps (then warmup_ratio must be 0)
    lr_scheduler_type: str = "cosine"
    optim: str = "adamw_torch"  # SPEC 5.1 step 4 (transformers 5 defaults to adamw_torch_fused)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    # SPEC Q19 [KEEP]: no clipping in effect. Under DeepSpeed our JSONs have no `gradient_clipping` (transformers
    # only fills it when it is "auto"), so DeepSpeed does not clip; without DeepSpeed the HF Trainer would clip
    # at 1.0, hence 0 here.
    max_grad_norm: float = 0.0
    bf16: bool = True
    fp16: bool = False
    tf32: Optional[bool] = None  # SPEC 5.3 sets False; None leaves the backend default (CPU has no TF32)
    gradient_checkpointing: bool = True  # SPEC 5.3 use_grad_checkpoint
    logging_steps: float = 50
    logging_first_step: bool = False
    save_strategy: str = "epoch"
    save_steps: float = 500
    save_total_limit: Optional[int] = 1
    save_only_model: bool = False
    dataloader_num_workers: int = 4
    dataloader_pin_memory: bool = True
    dataloader_persistent_workers: bool = False
    seed: int = 42
    deepspeed: Optional[str] = None  # path of a DeepSpeed JSON (configs/deepspeed/*.json)
    report_to: str = "none"  # none | tensorboard | wandb | "tensorboard,wandb"
    run_name: Optional[str] = None
    use_cpu: bool = False
    ddp_backend: Optional[str] = None  # gloo for CPU runs
    ddp_timeout: int = 1800
    ddp_find_unused_parameters: Optional[bool] = None
    disable_tqdm: Optional[bool] = None
    full_determinism: bool = False
    torch_compile: bool = False


@dataclass
class TrainConfig:
    """A training recipe: configs/train/*.yaml."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainSection = field(default_factory=TrainSection)
    resume: str = "auto"  # auto: latest output_dir/checkpoint-* (SPEC 5.1 step 5) | never | a checkpoint dir


def load_train_config(path: str | os.PathLike, overrides: Sequence[str] = (), *,
                      check_files: bool = True) -> TrainConfig:
    """YAML + overrides -> TrainConfig with the dataset catalog resolved and checked (no model is built).

    Raises ConfigError for an unknown key (naming the valid ones), an unknown dataset name, a missing
    annotation file or DeepSpeed JSON (`check_files`), or inconsistent settings.
    """
    cfg = load_config(TrainConfig, path, overrides)
    data = resolve_catalog(cfg.data, Path(path).parent)
    # The catalog has been folded into each DatasetSpec: the saved config no longer needs it.
    cfg.data = dataclasses.replace(data, catalog="")
    ds = cfg.train.deepspeed
    if ds and not Path(ds).is_absolute() and (Path(path).parent / ds).is_file():
        cfg.train.deepspeed = str((Path(path).parent / ds).resolve())  # recipes name it relative to themselves
    validate(cfg, check_files=check_files)
    return cfg


def validate(cfg: TrainConfig, *, check_files: bool = True) -> None:
    t, m = cfg.train, cfg.model
    if not cfg.data.datasets:
        raise ConfigError("data.datasets is empty: a training config must name at least one dataset")
    if t.warmup_ratio and t.warmup_steps:
        raise ConfigError("set train.warmup_ratio or train.warmup_steps, not both")
    if not 0.0 <= t.warmup_ratio < 1.0:
        raise ConfigError(f"train.warmup_ratio must be in [0, 1), got {t.warmup_ratio}")
    if cfg.resume not in ("auto", "never") and not Path(cfg.resume).is_dir():
        raise ConfigError(f"resume={cfg.resume!r}: not 'auto', 'never' or an existing checkpoint directory")
    if cfg.lora.r < 0:
        raise ConfigError(f"lora.r must be >= 0, got {cfg.lora.r}")
    from stllm.models.configuration import PRESETS

    if m.preset not in PRESETS:
        raise ConfigError(f"model.preset {m.preset!r} is unknown; choose from {', '.join(PRESETS)}")
    if not check_files:
        return
    if t.deepspeed and not Path(t.deepspeed).is_file():
        raise ConfigError(f"train.deepspeed={t.deepspeed!r}: file not found")
    if t.deepspeed and cfg.lora.r > 0:
        stage = json.loads(Path(t.deepspeed).read_text()).get("zero_optimization", {}).get("stage", 0)
        if stage == 3:
            raise ConfigError("lora.r > 0 with ZeRO-3 is not supported (the final LoRA merge needs whole weights); "
                              "use configs/deepspeed/zero2.json")
    missing = [f"{s.name}: {annotation_path(cfg.data, s)}" for s in cfg.data.datasets
               if not os.path.isfile(annotation_path(cfg.data, s))]
    if missing:
        raise ConfigError("annotation files not found (set data.data_root / data.anno_root; see docs/data.md):\n  "
                          + "\n  ".join(missing))
    if m.init_from and not (Path(m.init_from) / "config.json").is_file():
        raise ConfigError(f"model.init_from={m.init_from!r} is not a converted stllm model directory (no "
                          f"config.json); create it with `python -m stllm convert` (see trainval.md)")
    if not m.init_from and m.preset != "tiny":
        raise ConfigError(f"model.preset {m.preset!r} needs model.init_from (a converted training start with its "
                          f"tokenizer); only the tiny preset builds offline tokenizers")


def training_arguments(section: TrainSection, **fixed: Any):
    """TrainSection -> transformers.TrainingArguments (import deferred: it activates DeepSpeed's ZeRO-3 hooks)."""
    from transformers import TrainingArguments

    values = dataclasses.asdict(section)
    ratio = values.pop("warmup_ratio")
    if ratio:
        values["warmup_steps"] = ratio
    values["report_to"] = [r.strip() for r in section.report_to.split(",") if r.strip()] or "none"
    if values["report_to"] == ["none"]:
        values["report_to"] = "none"
    if str(values["save_strategy"]).lower() in ("false", "no"):  # YAML reads a bare `no` as False
        values["save_strategy"] = "no"
    # transformers 5.x renamed gradient_checkpointing -> activation_checkpointing (the old name warns)
    values["activation_checkpointing"] = values.pop("gradient_checkpointing")
    values.update(remove_unused_columns=False, eval_strategy="no",
                  activation_checkpointing_kwargs={"use_reentrant": False})
    values.update(fixed)
    return TrainingArguments(**values)
