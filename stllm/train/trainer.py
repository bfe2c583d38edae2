"""VideoQAItem datasets + model -> HF Trainer steps: tokenised samples, the docs/faithfulness.md Q20 sampler, loss
parts, logging.

Public Trainer hooks only (docs/design.md decision 7): `get_train_dataloader`, `compute_loss` and `log` are overridden;
saving extras, the checkpoint completion marker, checkpoint rotation and the divergence stop go through
TrainerCallbacks.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from transformers import Trainer, TrainerCallback

from stllm.config import ConfigError, save_config
from stllm.data.datasets import InstructionDataset, build_batch_sampler
from stllm.data.processor import StllmProcessor
from stllm.data.types import VideoQAItem
from stllm.errors import StllmError
from stllm.models.modeling import StllmForConditionalGeneration

logger = logging.getLogger(__name__)

CONFIG_FILE = "train_config.yaml"
# Written last into checkpoint-N, once everything else is on disk: a folder without it was cut short (killed while
# saving) and is never resumed from (docs/reliability.md, Training).
COMPLETE_FILE = "checkpoint_complete.json"


class TrainingDivergedError(StllmError):
    """The loss or the weights became NaN/inf: training stopped at that step, before anything was saved from it."""


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """.../checkpoint-<step> -> step; None for any other name."""
    m = re.fullmatch(r"checkpoint-(\d+)", Path(path).name)
    return int(m.group(1)) if m else None


def is_complete_checkpoint(path: str | os.PathLike) -> bool:
    """True when `path` is a checkpoint folder whose completion marker was written (so every file is whole)."""
    return (Path(path) / COMPLETE_FILE).is_file()


def checkpoints(output_dir: str | os.PathLike) -> list[tuple[int, Path, bool]]:
    """output_dir -> [(step, checkpoint folder, complete?)] sorted by step."""
    found = []
    for p in Path(output_dir).glob("checkpoint-*"):
        step = checkpoint_step(p)
        if p.is_dir() and step is not None:
            found.append((step, p, is_complete_checkpoint(p)))
    return sorted(found)


def mark_complete(path: str | os.PathLike, step: int) -> None:
    """Write the completion marker atomically (temporary file + rename), after everything else."""
    path = Path(path)
    tmp = path / (COMPLETE_FILE + ".tmp")
    files = sorted(str(f.relative_to(path)) for f in path.rglob("*") if f.is_file() and f != tmp)
    with open(tmp, "w") as fh:
        json.dump({"step": step, "files": files}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path / COMPLETE_FILE)


class TokenizedDataset(Dataset[dict[str, Any]]):
    """ConcatDataset of InstructionDatasets -> dicts of input_ids, labels, Q-Former ids and pixel_values."""

    def __init__(self, datasets: Sequence[InstructionDataset], processor: StllmProcessor) -> None:
        self.datasets = list(datasets)
        self.concat: ConcatDataset[VideoQAItem] = ConcatDataset(self.datasets)
        self.processor = processor

    def __len__(self) -> int:
        return len(self.concat)

    def set_epoch(self, epoch: int) -> None:
        for d in self.datasets:
            d.set_epoch(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.concat[index]
        frames = item.pixel_values.shape[0]  # (T, 3, S, S)
        out: dict[str, Any] = self.processor.training_example(
            item.instruction, item.question, item.answer, frames, is_image=item.is_image
        )
        out["pixel_values"] = item.pixel_values
        out["bad_media"] = len(item.extra.get("bad_media", ()))
        return out


class Collator:
    """Features -> the processor's right-padded batch, plus the batch's bad-media count (popped before forward)."""

    def __init__(self, processor: StllmProcessor) -> None:
        self.processor = processor

    def __call__(self, features: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
        bad = sum(int(f.pop("bad_media", 0)) for f in features)
        batch = self.processor.collate(features)
        batch["bad_media"] = torch.tensor(bad)
        return batch


class StllmTrainer(Trainer):
    """HF Trainer with the MetaLoader-style batches (docs/original.md §4.6, Q20), per-step masking seeds and loss
    parts."""

    def __init__(self, *args: Any, data_seed: int = 42, mixture: str = "meta_loader", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.data_seed, self.mixture = data_seed, mixture
        self.batch_sampler = None
        # The model returns a per-micro-batch mean loss (docs/original.md §3.3 step 6): the Trainer must divide by the
        # accumulation steps itself and must not pass num_items_in_batch.
        self.model_accepts_loss_kwargs = False
        self.loss_is_scaled_for_ga = False
        self._micro_step, self._last_step = 0, -1
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._bad_media_total = 0
        self._window_start = time.perf_counter()
        self._nonfinite: str | None = None  # what went non-finite in this step (set by compute_loss)

    # ------------------------------------------------------------------------------------------------ data
    def get_train_dataloader(self) -> DataLoader:
        """Batches from ONE dataset each (Q20), deterministic from (data seed, epoch), already sharded by rank.

        Not passed through accelerator.prepare (which would shard the batches a second time); the Trainer moves
        the tensors to the device, and its resume skips batches of this loader with accelerate's
        skip_first_batches, which replays the same sampler order and drops the consumed batches.
        """
        dataset = self._tokenized_dataset()
        sizes = [len(d) for d in dataset.datasets]
        sampler = build_batch_sampler(
            sizes,
            self.args.per_device_train_batch_size,
            mixture=self.mixture,
            seed=self.data_seed,
            rank=self.args.process_index,
            world_size=self.args.world_size,
        )
        if len(sampler) == 0:
            raise ConfigError(
                f"train.per_device_train_batch_size={self.args.per_device_train_batch_size}: no full batch per "
                f"rank in datasets of sizes {sizes} (world size {self.args.world_size}); lower the batch size"
            )
        self.batch_sampler = sampler
        self._window_start = time.perf_counter()  # throughput windows start with training, not with setup
        workers = self.args.dataloader_num_workers
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
            persistent_workers=self.args.dataloader_persistent_workers and workers > 0,
        )

    def set_data_epoch(self, epoch: int) -> None:
        """Sampler order and per-item randomness of pass `epoch` (called by DataEpochCallback)."""
        if self.batch_sampler is not None:
            self.batch_sampler.set_epoch(epoch)
        self._tokenized_dataset().set_epoch(epoch)

    def _tokenized_dataset(self) -> TokenizedDataset:
        dataset = self.train_dataset
        if not isinstance(dataset, TokenizedDataset):
            raise TypeError(f"StllmTrainer needs a TokenizedDataset as train_dataset, got {type(dataset).__name__}")
        return dataset

    # ------------------------------------------------------------------------------------------------ loss
    def _stllm_model(self) -> StllmForConditionalGeneration:
        """The ST-LLM model being trained, under its PEFT wrapper when LoRA is on."""
        model = self.model
        get_base_model = getattr(model, "get_base_model", None)  # a PEFT wrapper's
        base = get_base_model() if get_base_model is not None else model
        if not isinstance(base, StllmForConditionalGeneration):
            raise TypeError(f"StllmTrainer trains a StllmForConditionalGeneration, got {type(base).__name__}")
        return base

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
    ) -> Any:
        bad = inputs.pop("bad_media", None)
        step = self.state.global_step
        if step != self._last_step:
            self._micro_step, self._last_step = 0, step
        # Masking RNG from (seed, optimizer step, micro-batch): a resumed run draws the same masks (docs/original.md
        # §2.1).
        base = self._stllm_model()
        if model.training:
            base.seed_masking(self.args.seed * 1_000_003 + step * 1_024 + self._micro_step)
            self._micro_step += 1
        outputs = model(**inputs)
        if model.training and self._nonfinite is None and not bool(torch.isfinite(outputs.loss.detach()).all()):
            # the Trainer's log would show 0 here (logging_nan_inf_filter); DivergenceCallback stops at this step
            parts = {n: getattr(outputs, n, None) for n in ("lm_loss", "mvm_loss")}
            shown = ", ".join(f"{n} {float(v.detach()):.4g}" for n, v in parts.items() if v is not None)
            self._nonfinite = f"the loss is {float(outputs.loss.detach())}" + (f" ({shown})" if shown else "")
        if model.training:
            video_tokens = int((inputs["input_ids"] == base.config.video_token_id).sum())
            self._add("samples", inputs["input_ids"].shape[0])
            self._add("video_tokens", video_tokens)
            self._add("bad_media", int(bad) if bad is not None else 0)
            for name in ("lm_loss", "mvm_loss", "kept_ratio"):
                value = getattr(outputs, name, None)
                if value is not None:
                    self._add(name, float(value.detach()), count=True)
        return (outputs.loss, outputs) if return_outputs else outputs.loss

    def _add(self, key: str, value: float, count: bool = False) -> None:
        self._sums[key] = self._sums.get(key, 0.0) + value
        if count:
            self._counts[key] = self._counts.get(key, 0) + 1

    # ------------------------------------------------------------------------------------------------ logs
    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds lm_loss, mvm_loss, kept_ratio (means over ranks), samples/s, video tokens/s, bad media, memory."""
        if "loss" in logs and self._sums:
            keys = ["lm_loss", "mvm_loss", "kept_ratio", "samples", "video_tokens", "bad_media"]
            vals = torch.tensor(
                [[self._sums.get(k, 0.0) for k in keys], [self._counts.get(k, 0) for k in keys]],
                dtype=torch.float64,
                device=self.args.device,
            )
            if self.args.world_size > 1:
                vals = self.accelerator.reduce(vals, reduction="sum")
            sums, counts = dict(zip(keys, vals[0].tolist())), dict(zip(keys, vals[1].tolist()))
            elapsed = max(time.perf_counter() - self._window_start, 1e-9)
            for k in ("lm_loss", "mvm_loss", "kept_ratio"):
                if counts[k]:
                    logs[k] = round(sums[k] / counts[k], 6)
            logs["samples_per_second"] = round(sums["samples"] / elapsed, 3)
            logs["video_tokens_per_second"] = round(sums["video_tokens"] / elapsed, 1)
            self._bad_media_total += int(sums["bad_media"])
            logs["bad_media"] = self._bad_media_total
            if torch.cuda.is_available():
                logs["peak_gpu_mem_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            self._sums, self._counts = {}, {}
            self._window_start = time.perf_counter()
        super().log(logs, start_time)


def nonfinite_parameter(model: torch.nn.Module) -> str | None:
    """The name of the first trainable parameter holding NaN/inf, or None (one device sync for all of them).

    Only trainable parameters change in a step. Under ZeRO-3 a parameter's local data is empty and its shard is
    `ds_tensor`; each rank checks its own shard.
    """
    names, flags = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        data = p.data if p.numel() > 0 else getattr(p, "ds_tensor", p.data)
        if data.numel() > 0:
            names.append(name)
            flags.append(torch.isfinite(data).all())
    if not flags:
        return None
    ok = torch.stack(flags)  # (n_params,) bool
    if bool(ok.all()):
        return None
    return names[int((~ok).nonzero()[0, 0])]


class DivergenceCallback(TrainerCallback):
    """on_step_end (after the optimizer step, before the Trainer logs or saves) -> TrainingDivergedError when this
    step's loss or the updated weights are not finite.

    The recipes do not clip gradients (docs/faithfulness.md Q19), so a NaN/inf gradient reaches the weights
    through AdamW; checking the trainable weights after the step catches it, and checking the loss catches a
    NaN forward. Raising here means nothing from this step is saved: the newest checkpoint stays the last finite
    one. Every rank takes the same decision (one flag summed over ranks), so none is left waiting in a collective.
    """

    def __init__(self, trainer: StllmTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        trainer = self.trainer
        problem = trainer._nonfinite
        if problem is None:
            name = nonfinite_parameter(trainer._stllm_model())
            if name is not None:
                problem = f"parameter {name} is not finite after the optimizer step (a NaN/inf gradient)"
        if args.world_size > 1:
            flag = torch.tensor([0.0 if problem is None else 1.0], device=args.device)
            total = trainer.accelerator.reduce(flag, reduction="sum")
            if isinstance(total, torch.Tensor) and float(total.sum()) > 0 and problem is None:
                problem = "another rank's loss or weights are not finite"
        if problem is None:
            return
        complete = [p for _, p, ok in checkpoints(args.output_dir) if ok]
        kept = f"the newest complete checkpoint is {complete[-1].name}" if complete else "no checkpoint was saved"
        raise TrainingDivergedError(
            f"training diverged at step {state.global_step} ({args.output_dir}): {problem}; nothing from this "
            f"step was saved, {kept}; lower train.learning_rate (now {args.learning_rate:g})"
        )


class DataEpochCallback(TrainerCallback):
    """on_epoch_begin -> the sampler and datasets get the pass number (also right after a mid-epoch resume)."""

    def __init__(self, trainer: StllmTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.set_data_epoch(int(math.floor(state.epoch + 1e-6)) if state.epoch else 0)


class SaveExtrasCallback(TrainerCallback):
    """on_save -> the processor's tokenizer files and the resolved config into each checkpoint dir, then its
    completion marker (written last), then the rotation of old checkpoints (rank 0).

    The rotation is ours, not the Trainer's (run.py passes save_total_limit=None to TrainingArguments): the
    Trainer rotates before on_save, so with save_total_limit=1 a kill between its rotation and our marker would
    leave no complete checkpoint at all. Here the new checkpoint is marked complete first; only then are older
    complete ones beyond `save_total_limit` removed, and leftovers of killed saves older than it.
    """

    def __init__(self, processor: StllmProcessor, config: Any, save_total_limit: int | None = None) -> None:
        self.processor, self.config, self.save_total_limit = processor, config, save_total_limit

    def save_into(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.processor.save_pretrained(directory)
        save_config(self.config, directory / CONFIG_FILE)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                self.save_into(checkpoint)
                mark_complete(checkpoint, state.global_step)
                self.rotate(args.output_dir, state.global_step)

    def rotate(self, output_dir: str | os.PathLike, current: int) -> None:
        """Keep the newest `save_total_limit` complete checkpoints; drop incomplete ones older than `current`."""
        found = checkpoints(output_dir)
        complete = [p for _, p, ok in found if ok]
        doomed = [p for step, p, ok in found if not ok and step < current]
        if self.save_total_limit is not None and self.save_total_limit > 0:
            doomed += complete[: max(len(complete) - self.save_total_limit, 0)]
        for path in doomed:
            logger.info("deleting %s (save_total_limit=%s)", path, self.save_total_limit)
            shutil.rmtree(path, ignore_errors=True)


class ConsoleLogCallback(TrainerCallback):
    """on_log -> one `logger.info` line per logging step on rank 0 (the progress bar stays the Trainer's)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
            logger.info("step %d: %s", state.global_step, shown)
