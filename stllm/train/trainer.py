"""VideoQAItem datasets + model -> HF Trainer steps: tokenised samples, the docs/faithfulness.md Q20 sampler, loss
parts, logging.

Public Trainer hooks only (docs/design.md decision 7): `get_train_dataloader`, `compute_loss` and `log` are overridden;
saving extras and throughput go through TrainerCallbacks.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from transformers import Trainer, TrainerCallback

from stllm.config import save_config
from stllm.data.datasets import InstructionDataset, build_batch_sampler
from stllm.data.processor import StllmProcessor
from stllm.data.types import VideoQAItem
from stllm.models.modeling import StllmForConditionalGeneration

logger = logging.getLogger(__name__)

CONFIG_FILE = "train_config.yaml"


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
            raise ValueError(
                f"no full batch of {self.args.per_device_train_batch_size} per rank in datasets of "
                f"sizes {sizes} (world size {self.args.world_size}); lower the batch size"
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


class DataEpochCallback(TrainerCallback):
    """on_epoch_begin -> the sampler and datasets get the pass number (also right after a mid-epoch resume)."""

    def __init__(self, trainer: StllmTrainer) -> None:
        self.trainer = trainer

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.trainer.set_data_epoch(int(math.floor(state.epoch + 1e-6)) if state.epoch else 0)


class SaveExtrasCallback(TrainerCallback):
    """on_save -> the processor's tokenizer files and the resolved config into each checkpoint dir (rank 0)."""

    def __init__(self, processor: StllmProcessor, config: Any) -> None:
        self.processor, self.config = processor, config

    def save_into(self, directory: str | Path) -> None:
        directory = Path(directory)
        self.processor.save_pretrained(directory)
        save_config(self.config, directory / CONFIG_FILE)

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if checkpoint.is_dir():
                self.save_into(checkpoint)


class ConsoleLogCallback(TrainerCallback):
    """on_log -> one `logger.info` line per logging step on rank 0 (the progress bar stays the Trainer's)."""

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if state.is_world_process_zero and logs:
            shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in logs.items())
            logger.info("step %d: %s", state.global_step, shown)
