"""`python -m stllm train CONFIG [key=value ...]` -> a trained model directory (weights + processor + config).

Order (docs/original.md §5.1): config and data are checked first (a typo fails in seconds, before any model is built),
then the model (converted checkpoint or preset) and its processor, then TrainingArguments (after the model:
like the original, no ZeRO-3 partitioned construction), then the HF Trainer. An output_dir that holds
checkpoint-* resumes from the latest complete one (docs/original.md §5.1 step 5; a folder cut short by a kill while
saving has no completion marker and is passed over with a warning). A loss or weights that turn NaN/inf stop the
run at that step with TrainingDivergedError, before anything from that step is saved.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from stllm.config import save_config
from stllm.data.datasets import AnnotationError, build_datasets
from stllm.data.processor import StllmProcessor
from stllm.models.configuration import StllmConfig
from stllm.models.lora import apply_lora
from stllm.models.modeling import StllmForConditionalGeneration, attention_implementation
from stllm.train.config import (
    ModelSection,
    TrainConfig,
    load_train_config,
    resolved_model_config,
    training_arguments,
)
from stllm.train.trainer import (
    CONFIG_FILE,
    Collator,
    ConsoleLogCallback,
    DataEpochCallback,
    DivergenceCallback,
    SaveExtrasCallback,
    StllmTrainer,
    TokenizedDataset,
    checkpoints,
    is_complete_checkpoint,
)

logger = logging.getLogger(__name__)


def model_config(section: ModelSection) -> StllmConfig:
    """The StllmConfig to train: init_from's config.json with the section's changes (ConfigError naming the
    model.config key when they make an invalid ST-LLM config)."""
    return resolved_model_config(section)


def build_model(section: ModelSection) -> tuple[StllmForConditionalGeneration, StllmProcessor]:
    """ModelSection -> (model in float32 with the recipe's trainable set, the processor for its config)."""
    cfg = model_config(section)
    model = StllmForConditionalGeneration.from_pretrained(
        section.init_from, config=cfg, dtype=torch.float32, attn_implementation=attention_implementation()
    )
    model.apply_recipe_freezing()
    return model, StllmProcessor.from_pretrained(section.init_from, model.config)


def latest_checkpoint(output_dir: str | Path) -> str | None:
    """output_dir/checkpoint-<step> with the highest step among the complete ones, or None.

    A newer folder without the completion marker (a save cut short) is passed over with a warning; the Trainer
    writes into it again when it reaches that step.
    """
    found = checkpoints(output_dir)
    complete = [(step, p) for step, p, ok in found if ok]
    newest_step, newest = complete[-1] if complete else (-1, None)
    for step, path, ok in found:
        if not ok and step > newest_step:
            logger.warning(
                "%s is incomplete (no completion marker: killed while saving, or written by an older stllm); "
                "resuming from %s instead",
                path,
                newest or "the start",
            )
    return str(newest) if newest is not None else None


def _setup_logging() -> None:
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(
        level=logging.INFO if rank == 0 else logging.WARNING, format=f"%(asctime)s [rank{rank}] %(name)s: %(message)s"
    )


def train(cfg: TrainConfig, callbacks: Sequence[Any] = ()) -> str:
    """A validated TrainConfig (+ extra TrainerCallbacks) -> trains, saves the final model into output_dir."""
    out = Path(cfg.train.output_dir)
    torch.manual_seed(cfg.train.seed)
    model, processor = build_model(cfg.model)
    # annotations are read before the (long) training starts; the transform's size is the model's
    datasets = build_datasets(cfg.data, image_size=model.config.frame_size())
    for d in datasets:  # malformed annotation items: dropped (counted and logged by the dataset), never a crash
        if len(d) == 0:
            why = "; ".join(f"item {n}: {reason}" for n, reason in d.dropped_items[:3]) or "the file lists no items"
            raise AnnotationError(f"{d.annotation}: dataset {d.spec.name!r} has no usable items ({why})")
    dropped = sum(len(d.dropped_items) for d in datasets)
    if dropped:
        logger.warning("%d malformed annotation items dropped (`python -m stllm data check` lists them)", dropped)
    if cfg.lora.r > 0:
        lora = cfg.lora
        model = apply_lora(model, lora.r, lora.alpha, lora.dropout, lora.target_modules)
    # the rotation of old checkpoints is SaveExtrasCallback's, after the new one is marked complete
    args = training_arguments(cfg.train, save_total_limit=None)
    trainer = StllmTrainer(
        model=model,
        args=args,
        train_dataset=TokenizedDataset(datasets, processor),
        data_collator=Collator(processor),
        data_seed=cfg.data.seed,
        mixture=cfg.data.mixture,
    )
    extras = SaveExtrasCallback(processor, cfg, save_total_limit=cfg.train.save_total_limit)
    # the progress bar prints the logs already; log lines only without it (e.g. batch jobs)
    console = [ConsoleLogCallback()] if args.disable_tqdm else []
    for callback in [DataEpochCallback(trainer), DivergenceCallback(trainer), extras, *console, *callbacks]:
        trainer.add_callback(callback)
    if trainer.is_world_process_zero():
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / CONFIG_FILE)
        n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(
            "model %s: %.1fM parameters, %.1fM trainable; %d samples in %d datasets",
            model.config.recipe if hasattr(model.config, "recipe") else type(model).__name__,
            sum(p.numel() for p in model.parameters()) / 1e6,
            n_train / 1e6,
            sum(len(d) for d in datasets),
            len(datasets),
        )
    resume = None
    if cfg.resume == "auto":
        resume = latest_checkpoint(out)
    elif cfg.resume != "never":
        resume = cfg.resume
    if resume:
        if not is_complete_checkpoint(resume):
            logger.warning("%s has no completion marker: it may be cut short (resume=%s)", resume, cfg.resume)
        logger.info("resuming from %s", resume)
    trainer.train(resume_from_checkpoint=resume)
    trainer.save_state()
    if cfg.lora.r > 0:
        # Our save layout has no adapters: merge LoRA into the LLM weights and save the plain model. Weights are
        # whole in every process here (DDP / ZeRO-2; ZeRO-3 with LoRA is refused by the config check).
        from peft import PeftModel

        if not isinstance(trainer.model, PeftModel):
            raise TypeError(f"LoRA training should leave a PeftModel, got {type(trainer.model).__name__}")
        merged = trainer.model.merge_and_unload()
        if trainer.is_world_process_zero():
            merged.save_pretrained(out)
    else:
        trainer.save_model(str(out))  # gathers ZeRO-3 shards (stage3_gather_16bit_weights_on_model_save)
    if trainer.is_world_process_zero():
        extras.save_into(out)
    # Every rank waits until rank 0 has written everything, then the process group is torn down in order: a rank
    # that left while rank 0 was still writing could abort at exit (SIGABRT from a live communication thread).
    trainer.accelerator.wait_for_everyone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    return str(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stllm train", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("config", help="recipe YAML (configs/train/*.yaml)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.max_steps=10")
    args = parser.parse_args(argv)
    _setup_logging()
    # a ConfigError (or TrainingDivergedError) reaches stllm.cli, which prints one line and exits 2
    cfg = load_train_config(args.config, args.overrides)
    train(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
