"""Training recipe YAML + `key=value` overrides -> TrainConfig (model / data / lora / train sections), validated.

docs/design.md decision 4: the `train:` section mirrors the `transformers.TrainingArguments` fields the recipes use
(docs/original.md §5.3, 9.3: the original passed its `run:` block straight to TrainingArguments); `training_arguments()`
builds the real object from it. `data:` is the data pipeline's DataConfig (catalog resolved here, relative to
the recipe file). Everything is checked before any model is built.

No `from __future__ import annotations` here: stllm.config reads the dataclass field types to name the valid
keys of a section in its error messages, which needs real classes, not strings.
"""

import dataclasses
import difflib
import inspect
import json
import os
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stllm.config import ConfigError, load_config
from stllm.data.config import DataConfig, annotation_path, resolve_catalog


@dataclass
class ModelSection:
    """Which model to train: a converted stllm model folder (`init_from`) and changes to its configuration.

    `init_from` is the training start written by `python -m stllm convert` (or `python -m stllm tiny-model` for
    CPU runs). `config` changes fields of its StllmConfig (e.g. {video_input: mean, use_mask: false}); the valid
    keys are StllmConfig's own scalar fields (docs/original.md §1.7, §1.11, §2), read from the class itself,
    so this schema never mirrors the model's settings.
    """

    init_from: str = ""
    config: dict[str, Any] = field(default_factory=dict)


def model_config_fields() -> dict[str, type]:
    """StllmConfig's scalar constructor fields -> their type (int, float, str or bool; optional ones too)."""
    from stllm.models.configuration import StllmConfig

    hints = typing.get_type_hints(StllmConfig.__init__)
    out: dict[str, type] = {}
    for name in inspect.signature(StllmConfig.__init__).parameters:
        args = [a for a in typing.get_args(hints.get(name)) if a is not type(None)] or [hints.get(name)]
        if len(args) == 1 and args[0] in (int, float, str, bool):
            out[name] = args[0]
    return out


def check_model_overrides(overrides: dict[str, Any]) -> None:
    """Unknown StllmConfig keys or values of the wrong type -> ConfigError naming the key and the valid ones."""
    valid = model_config_fields()
    for key, value in overrides.items():
        if key not in valid:
            close = difflib.get_close_matches(key, list(valid), n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            raise ConfigError(f"model.config.{key}: not a StllmConfig field{hint}; valid: {', '.join(valid)}")
        want = valid[key]
        ok = value is None or (isinstance(value, want) and not (want is not bool and isinstance(value, bool)))
        ok = ok or (want is float and isinstance(value, int) and not isinstance(value, bool))
        if not ok:
            raise ConfigError(f"model.config.{key}={value!r}: expected {want.__name__}")


def resolved_model_config(section: ModelSection) -> Any:
    """init_from's config.json with the section's changes -> a validated StllmConfig.

    ConfigError for a config.json that does not read, or changes that make an invalid ST-LLM config (StllmConfig's
    own ValueError, reworded to name the model.config key the message is about, or all of them).
    """
    from stllm.models.configuration import StllmConfig

    path = Path(section.init_from) / "config.json"
    try:
        cfg = StllmConfig.from_pretrained(section.init_from)
    except (OSError, ValueError) as err:  # json.JSONDecodeError is a ValueError
        raise ConfigError(f"model.init_from: {path}: not a readable StllmConfig ({str(err).splitlines()[0]})") from err
    for key, value in section.config.items():
        setattr(cfg, key, value)
    try:
        cfg.validate_stllm()
    except ValueError as err:
        keys = [k for k in section.config if k in str(err)] or list(section.config)
        named = ", ".join(f"model.config.{k}={section.config[k]!r}" for k in keys) or f"model.init_from ({path})"
        raise ConfigError(f"{named}: {err}") from err
    return cfg


@dataclass
class LoraSection:
    """LoRA on the LLM (r=0: off). Defaults are the original's (docs/original.md §1.6: alpha 32, dropout 0.05,
    q_proj and v_proj); a recipe may list more projections. The recipe's non-LLM trainable modules (BT-Adapter,
    projection, MVM head) stay fully trained."""

    r: int = 0
    alpha: int = 32
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class TrainSection:
    """The `transformers.TrainingArguments` fields used by the recipes; defaults are docs/original.md §5.3's."""

    output_dir: str = "outputs/stllm"
    num_train_epochs: float = 2.0
    max_steps: int = -1
    per_device_train_batch_size: int = 16  # x 8 GPUs x accumulation 1 = global 128 (docs/original.md §5.3)
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-5
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03  # transformers 5 has no warmup_ratio: passed as warmup_steps < 1 (a ratio)
    warmup_steps: float = 0.0  # >= 1: exact steps (then warmup_ratio must be 0)
    lr_scheduler_type: str = "cosine"
    optim: str = "adamw_torch"  # docs/original.md §5.1 step 4 (transformers 5 defaults to adamw_torch_fused)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_epsilon: float = 1e-8
    # docs/faithfulness.md Q19 [KEEP]: no clipping in effect. Under DeepSpeed our JSONs have no `gradient_clipping`
    # (transformers
    # only fills it when it is "auto"), so DeepSpeed does not clip; without DeepSpeed the HF Trainer would clip
    # at 1.0, hence 0 here.
    max_grad_norm: float = 0.0
    bf16: bool = True
    fp16: bool = False
    tf32: bool | None = None  # docs/original.md §5.3 sets False; None leaves the backend default (CPU has no TF32)
    gradient_checkpointing: bool = True  # docs/original.md §5.3 use_grad_checkpoint
    logging_steps: float = 50
    logging_first_step: bool = False
    save_strategy: str = "epoch"
    save_steps: float = 500
    save_total_limit: int | None = 1
    save_only_model: bool = False
    dataloader_num_workers: int = 4
    dataloader_pin_memory: bool = True
    dataloader_persistent_workers: bool = False
    seed: int = 42
    deepspeed: str | None = None  # path of a DeepSpeed JSON (configs/deepspeed/*.json)
    report_to: str = "none"  # none | tensorboard | wandb | "tensorboard,wandb"
    run_name: str | None = None
    use_cpu: bool = False
    ddp_backend: str | None = None  # gloo for CPU runs
    ddp_timeout: int = 1800
    ddp_find_unused_parameters: bool | None = None
    disable_tqdm: bool | None = None
    full_determinism: bool = False
    torch_compile: bool = False


@dataclass
class TrainConfig:
    """A training recipe: configs/train/*.yaml."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainSection = field(default_factory=TrainSection)
    resume: str = (
        "auto"  # auto: latest output_dir/checkpoint-* (docs/original.md §5.1 step 5) | never | a checkpoint dir
    )


def load_train_config(
    path: str | os.PathLike, overrides: Sequence[str] = (), *, check_files: bool = True
) -> TrainConfig:
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
    check_model_overrides(m.config)
    if not check_files:
        return
    if t.deepspeed and not Path(t.deepspeed).is_file():
        raise ConfigError(f"train.deepspeed={t.deepspeed!r}: file not found")
    if t.deepspeed and cfg.lora.r > 0:
        stage = json.loads(Path(t.deepspeed).read_text()).get("zero_optimization", {}).get("stage", 0)
        if stage == 3:
            raise ConfigError(
                "lora.r > 0 with ZeRO-3 is not supported (the final LoRA merge needs whole weights); "
                "use configs/deepspeed/zero2.json"
            )
    missing = [
        f"{s.name}: {annotation_path(cfg.data, s)}"
        for s in cfg.data.datasets
        if not os.path.isfile(annotation_path(cfg.data, s))
    ]
    if missing:
        raise ConfigError(
            "annotation files not found (set data.data_root / data.anno_root; see docs/data.md): " + "; ".join(missing)
        )
    if not (Path(m.init_from) / "config.json").is_file():
        raise ConfigError(
            f"model.init_from={m.init_from!r} is not a stllm model folder (no config.json); create "
            f"it with `python -m stllm convert` (trainval.md), or `python -m stllm tiny-model` for a "
            f"tiny CPU model"
        )
    resolved_model_config(m)  # the model.config changes make a valid StllmConfig (before any model is built)


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
    values.update(
        remove_unused_columns=False, eval_strategy="no", activation_checkpointing_kwargs={"use_reentrant": False}
    )
    values.update(fixed)
    return TrainingArguments(**values)
