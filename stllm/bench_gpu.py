"""`python -m stllm bench gpu` -> numerics, training-step, evaluation and 64-frame chat figures of the full-size
models on one CUDA GPU (a table on stdout, `bench_gpu.json` and `bench_gpu.md` under --out).

One command, no downloads, at most about 8 minutes on one H100/H200 (each section has a time budget; a
configuration that does not fit is reported as "OOM" and the run goes on). Without CUDA the same code runs at
tiny size (the `tiny` preset with the BT-Adapter / the global-local input) so CI tests the command itself.

Sections (docs/performance.md, "GPU benchmark"):
1. numerics: the QA model (preset stllm-qa: EVA + BT-Adapter, all tokens) with random weights in float32,
   logits of one short clip; the same weights cast to bfloat16 (vision path under the recipe's fp16 autocast,
   docs/faithfulness.md Q16), logits again: relative error ||l16 - l32|| / ||l32|| and argmax agreement.
2. training: the bf16 QA model, masking (50% of the video tokens dropped, the ratio's mean, docs/original.md §2.1)
   + MVM, 16 frames, micro-batch 1/2/4, gradient checkpointing off/on, SDPA and flash-attention 2 (when
   installed). AdamW keeps bf16 states on the one GPU (the 8-GPU recipes shard fp32 states with ZeRO; this
   measures compute and activations, not the recipe's model-state memory: `python -m stllm estimate` does that).
3. evaluation: MVBench-like items (16 frames, configs/eval/mvbench.yaml's prompt, stop rule and greedy decoding,
   up to 100 new tokens) through stllm.inference.generate_raw in the inference dtype rule's dtype; items/s at
   batch 1 and the best batch, the projected time for 4,000 items (MVBench's size).
4. chat: the conversation model (preset stllm-conversation, global-local over 64 frames) answering with
   configs/eval/vcgbench.yaml's decoding (5 beams, up to 300 new tokens, repetition penalty 1.5).

Random weights decode until max_new_tokens (no stop sequence comes), so evaluation figures are an upper bound
on decoding time per item; frames are synthetic tensors (decoding video is `bench data`'s subject).

FLOPs of one training step (the MFU numerator), per sample, N_x = parameters of stage x that multiply every token:
  LLM, masked run, forward + backward:   6 N_llm s_kept + 12 L h s_kept^2        (PaLM's count, attention included)
  LLM, MVM target, forward without grad: 2 N_body s + 4 L h s^2                  (N_body: LLM without lm_head)
  EVA forward (frozen):                  2 N_eva T (1+P) + 4 L_v h_v T (1+P)^2
  BT-Adapter forward + backward:         6 N_bt T (1+P)
  Q-Former forward (+ input gradient when the BT-Adapter trains): (2 or 4) (N_qf T (Q+Lq) + N_kv T (1+P))
with s the sequence (video + text), s_kept = s - dropped video tokens, T frames, P patches, Q queries, Lq
Q-Former text tokens, N_kv the cross-attention key/value projections. MFU = FLOPs / step time / device peak
(bf16 dense: H100 SXM and H200 989 TFLOPS, H100 PCIe 756, A100 312; "unknown" otherwise). The count of
torch.utils.flop_counter over one step is printed beside it as a check.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import logging
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.flop_counter import FlopCounterMode

from stllm.config import ConfigError, load_config
from stllm.data.processor import StllmProcessor
from stllm.eval.config import EvalConfig
from stllm.eval.prompts import build_prompt, mcqa_question
from stllm.generation import GenerationConfig
from stllm.inference import generate_raw, resolve_dtype
from stllm.models.configuration import StllmConfig, preset_config
from stllm.models.modeling import StllmForConditionalGeneration
from stllm.testing import train_llama_tokenizer, write_bert_vocab

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
EVAL_CONFIGS = REPO / "configs" / "eval"
MVBENCH_ITEMS = 4000  # MVBench: 20 tasks x 200 questions

# bf16 dense tensor-core peaks (vendor data sheets), matched in this order against torch.cuda.get_device_name
PEAK_BF16 = [("H100 PCIe", 756e12), ("H100", 989e12), ("H200", 989e12), ("GH200", 989e12), ("A100", 312e12)]

QUESTION = "What does the person do after picking up the cup?"
CANDIDATES = ["Puts it on the table.", "Drinks from it.", "Throws it away.", "Washes it."]


@dataclass
class Plan:
    """Sizes and time budgets of one run: `full` on CUDA, `tiny` on a CPU."""

    mode: str
    device: str
    train_batches: list[int]
    eval_batches: list[int]
    frames: int = 16
    chat_frames: int = 64
    numerics_frames: int = 4
    warmup: int = 1
    steps: int = 3
    max_new_tokens: int | None = None  # None: the benchmark YAML's (tiny runs cap it to stay within seconds)
    budgets: dict[str, float] = field(default_factory=dict)  # section -> seconds


def make_plan(mode: str, device: str) -> Plan:
    if mode == "full":
        # H100/H200: setup ~1 min, training ~2 min, evaluation ~2.5 min, chat ~1.5 min: under 8 min in all
        return Plan(
            mode,
            device,
            train_batches=[1, 2, 4],
            eval_batches=[1, 4, 8, 16],
            budgets={"numerics": 60, "train": 120, "eval": 150, "chat": 90},
        )
    return Plan(
        mode,
        device,
        train_batches=[1, 2],
        eval_batches=[1, 2],
        frames=8,
        warmup=1,
        steps=2,
        max_new_tokens=8,
        budgets={"numerics": 5, "train": 6, "eval": 4, "chat": 4},
    )


def model_configs(mode: str) -> tuple[StllmConfig, StllmConfig]:
    """(QA config, conversation config): the released presets, or the tiny preset with the same structure."""
    if mode == "full":
        return preset_config("stllm-qa"), preset_config("stllm-conversation")
    qa = preset_config("tiny", btadapter=True, num_frames=16)
    conv = preset_config("tiny", video_input="residual", num_frames=64)
    return qa, conv


# ------------------------------------------------------------------------------------------------ model building
def build_random(cfg: StllmConfig, device: str, dtype: torch.dtype, seed: int = 0) -> StllmForConditionalGeneration:
    """Parameters on the meta device, then allocated on `device` in `dtype` and filled with N(0, 0.02) (norm weights 1,
    other vectors 0): seconds for the 8B model, where building it on a CPU first takes minutes. Buffers (rotary
    frequencies, position ids) are built for real on the CPU and moved over, so nothing is left uninitialised."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = StllmForConditionalGeneration(cfg)
    buffers = {name: buf.clone() for name, buf in model.named_buffers()}
    cast(torch.nn.Module, model).to(dtype)  # meta tensors: free
    model.to_empty(device=device)
    for name, buf in buffers.items():
        owner, _, leaf = name.rpartition(".")
        model.get_submodule(owner)._buffers[leaf] = buf.to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.02, generator=g)
            elif "norm" in name.lower() and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()
    model.apply_recipe_freezing()
    return model


class _ClampingTokenizer:
    """A tokenizer whose decode reads ids beyond its vocabulary as <unk> (id 0): the offline vocabulary is small,
    the full model's 32001 rows, and random weights emit any of them. Everything else is the wrapped tokenizer's."""

    def __init__(self, tokenizer: Any) -> None:
        self._tokenizer = tokenizer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __len__(self) -> int:
        return len(self._tokenizer)

    def decode(self, ids: Sequence[int], **kwargs: Any) -> str:
        n = len(self._tokenizer)
        return self._tokenizer.decode([int(i) if 0 <= int(i) < n else 0 for i in ids], **kwargs)


class BenchProcessor(StllmProcessor):
    """The processor over the clamping tokenizer (generated ids of random weights decode without errors)."""

    def __init__(self, tokenizer: Any, qformer_tokenizer: Any, config: Any, settings: Any = None) -> None:
        super().__init__(cast(Any, _ClampingTokenizer(tokenizer)), qformer_tokenizer, config, settings)


def make_processor(cfg: StllmConfig, workdir: Path, prompt_text: Sequence[str]) -> StllmProcessor:
    """Offline tokenizers (stllm.testing's, trained on the benchmark prompts) for `cfg`'s token layout."""
    sp = workdir / "tokenizer.model"
    if not sp.is_file():
        train_llama_tokenizer(sp, prompt_text)
        write_bert_vocab(workdir / "bert", prompt_text)
    return BenchProcessor.from_files(cfg, sp, workdir / "bert")


@dataclass
class Protocol:
    """A benchmark's prompt and decoding, read from configs/eval/<name>.yaml by the evaluation harness's own
    config loader and prompt builder (so bench gpu measures exactly what `python -m stllm eval` runs)."""

    config: EvalConfig

    @property
    def generation(self) -> GenerationConfig:
        return self.config.generation

    def build(self, question: str) -> str:
        return build_prompt(question, self.config.prompt)


def mcqa_text(question: str, candidates: Sequence[str]) -> str:
    """MVBench's question template (docs/original.md §7.2): "Question: q\nOptions:\n(A) c0\n(B) c1"."""
    return mcqa_question(question, candidates, candidates[0])[0]


def load_protocol(name: str) -> Protocol:
    """configs/eval/<name>.yaml -> its EvalConfig (prompt fields and GenerationConfig)."""
    path = EVAL_CONFIGS / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: not found (bench gpu reads the benchmark's prompt and decoding from it)")
    return Protocol(load_config(EvalConfig, path))


def training_batch(
    processor: StllmProcessor, cfg: StllmConfig, batch: int, frames: int, device: str, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """`batch` copies of one MVBench-like training sample (frames random) -> model inputs on `device`."""
    question, answer = mcqa_text(QUESTION, CANDIDATES), f"(B) {CANDIDATES[1]}"
    example = processor.training_example("", question, answer, frames)
    inputs = processor.collate([copy.deepcopy(example) for _ in range(batch)])
    g = torch.Generator().manual_seed(0)
    s = cfg.frame_size()
    inputs["pixel_values"] = torch.randn(batch, frames, 3, s, s, generator=g).to(dtype)  # (B, T, 3, S, S)
    return {k: v.to(device) for k, v in inputs.items()}


def half_dropped(batch: int, n_video: int, device: str) -> torch.Tensor:
    """(B, L) bool: the same 50% of the video tokens dropped in every row (the mask ratio's mean, docs/original.md
    §2.1), so every step costs the same."""
    g = torch.Generator().manual_seed(1)
    row = torch.zeros(n_video, dtype=torch.bool)
    row[torch.randperm(n_video, generator=g)[: n_video // 2]] = True
    return row.expand(batch, -1).clone().to(device)


# --------------------------------------------------------------------------------------------------- measuring
def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def peak_gib(device: str) -> float | None:
    """Peak allocated memory since the last reset (CUDA); None on a CPU (see `rss_gib`)."""
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def rss_gib() -> float:
    """The process' peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def device_peak_flops(device: str) -> tuple[str, float | None]:
    """(device name, bf16 dense peak FLOP/s or None when not in PEAK_BF16)."""
    if not device.startswith("cuda"):
        return "cpu", None
    name = torch.cuda.get_device_name()
    for key, peak in PEAK_BF16:
        if key in name:
            return name, peak
    return name, None


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _matmul_params(module: torch.nn.Module | None, exclude: Sequence[str] = ()) -> int:
    """Parameters of the 2-D weights of `module` (what multiplies each token), minus names containing `exclude`."""
    if module is None:
        return 0
    return sum(p.numel() for n, p in module.named_parameters() if p.ndim == 2 and not any(e in n for e in exclude))


def qformer_token_params(model: StllmForConditionalGeneration, frames: int, lq: int) -> float:
    """Sum over the Q-Former's matmul weights of (parameters x tokens they multiply) for one sample: self-attention
    on the Q queries + Lq text tokens, the query FFN and cross-attention query/output on Q, the text FFN on Lq, the
    cross-attention key/value on the 1+P frame features. Embedding tables are lookups, not counted."""
    c = model.config
    q = c.num_query_tokens
    feats = 1 + (c.frame_size() // int(cast(int, c.vision_config.patch_size))) ** 2
    total = 0
    for name, p in model.qformer.named_parameters():
        if p.ndim != 2 or "embeddings" in name:
            continue
        if "crossattention.attention.key" in name or "crossattention.attention.value" in name:
            n = feats
        elif "crossattention" in name or "_query" in name:
            n = q
        elif "intermediate" in name or "output.dense" in name and "attention" not in name:
            n = lq
        else:
            n = q + lq
        total += p.numel() * n
    return float(total * frames)


def step_flops(model: StllmForConditionalGeneration, batch: int, frames: int, seq: int, dropped: int, lq: int) -> float:
    """The analytic FLOPs of one masked + MVM training step (module docstring), for `batch` samples."""
    c = model.config
    lm = model.language_model
    n_llm = _matmul_params(lm, exclude=("embed_tokens",))
    n_body = n_llm - _matmul_params(lm.get_output_embeddings())
    layers, h = c.text_config.num_hidden_layers, c.text_config.hidden_size
    kept = seq - dropped
    llm = 6 * n_llm * kept + 12 * layers * h * kept**2
    mvm = 2 * n_body * seq + 4 * layers * h * seq**2 if c.mvm_loss_weight > 0 else 0
    v = c.vision_config
    tokens = 1 + (c.frame_size() // int(cast(int, v.patch_size))) ** 2
    n_eva = _matmul_params(model.vision_model.encoder)
    eva = 2 * n_eva * frames * tokens + 4 * v.num_hidden_layers * v.hidden_size * frames * tokens**2
    bt = 6 * _matmul_params(model.btadapter, exclude=("position_embedding",)) * frames * tokens
    # the frozen Q-Former also runs backward (input gradients only) when the BT-Adapter below it trains
    qf = (4 if model.btadapter is not None else 2) * qformer_token_params(model, frames, lq)
    return float(batch * (llm + mvm + eva + bt + qf))


@contextlib.contextmanager
def section_timer(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - start, 2)


# ---------------------------------------------------------------------------------------------------- sections
def run_numerics(
    cfg: StllmConfig, plan: Plan, processor: StllmProcessor
) -> tuple[dict[str, Any], StllmForConditionalGeneration]:
    """float32 logits vs bfloat16 logits of the same random weights -> figures, and the model (now bfloat16)."""
    ref_cfg = copy.deepcopy(cfg)
    ref_cfg.vision_autocast_dtype = None  # the reference is float32 throughout
    model = build_random(ref_cfg, plan.device, torch.float32).eval()
    inputs = training_batch(processor, cfg, 1, plan.numerics_frames, plan.device, torch.float32)
    with torch.no_grad():
        l32 = model(**inputs, use_mask=False).logits.float()  # (1, N, V)
    cast(torch.nn.Module, model).to(torch.bfloat16)  # PreTrainedModel.to's stub loses the binding
    model.config.vision_autocast_dtype = cfg.vision_autocast_dtype  # the recipe's vision autocast (Q16), CUDA only
    inputs["pixel_values"] = inputs["pixel_values"].to(torch.bfloat16)
    with torch.no_grad():
        l16 = model(**inputs, use_mask=False).logits.float()
    out = {
        "frames": plan.numerics_frames,
        "sequence": int(inputs["input_ids"].shape[1]),
        "rel_error": float((l16 - l32).norm() / l32.norm()),
        "max_abs_error": float((l16 - l32).abs().max()),
        "argmax_agreement": float((l16.argmax(-1) == l32.argmax(-1)).float().mean()),
        "finite": bool(torch.isfinite(l16).all()),
        "vision_autocast": cfg.vision_autocast_dtype if plan.device.startswith("cuda") else None,
    }
    del l16, l32, inputs
    free(plan.device)
    return out, model


def attention_kinds(device: str) -> list[str]:
    from transformers.utils.import_utils import is_flash_attn_2_available

    kinds = ["sdpa"]
    if device.startswith("cuda") and is_flash_attn_2_available():
        kinds.append("flash_attention_2")
    return kinds


def run_training(
    model: StllmForConditionalGeneration, plan: Plan, processor: StllmProcessor, peak: float | None
) -> list[dict[str, Any]]:
    """Training-step rows for every (attention, checkpointing, micro-batch); OOM and out-of-time rows included."""
    deadline = time.perf_counter() + plan.budgets["train"]
    cfg = model.config
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    n_video = cfg.num_video_tokens(plan.frames)
    rows: list[dict[str, Any]] = []
    counted = False
    for attn in attention_kinds(plan.device):
        try:
            model.set_attn_implementation(attn)
        except (ValueError, ImportError) as err:  # a sub-model without this kernel: say so, keep going
            rows.append({"attention": attn, "checkpointing": None, "batch": None, "status": f"unsupported: {err}"})
            continue
        for checkpointing in (False, True):
            if checkpointing:
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.activation_checkpointing_disable()
            for batch in plan.train_batches:
                row: dict[str, Any] = {"attention": attn, "checkpointing": checkpointing, "batch": batch}
                rows.append(row)
                if time.perf_counter() > deadline:
                    row["status"] = "skipped (time)"
                    continue
                try:
                    inputs = training_batch(processor, cfg, batch, plan.frames, plan.device, torch.bfloat16)
                    dropped = half_dropped(batch, n_video, plan.device)
                    row.update(_time_steps(model, optim, inputs, dropped, plan))
                    seq = int(inputs["input_ids"].shape[1])
                    lq = int(inputs["qformer_input_ids"].shape[1])
                    flops = step_flops(model, batch, plan.frames, seq, int(dropped[0].sum()), lq)
                    row.update(
                        status="ok",
                        sequence=seq,
                        kept_tokens=seq - int(dropped[0].sum()),
                        tokens_per_s=batch * seq / row["step_s"],
                        samples_per_s=batch / row["step_s"],
                        tflops_per_step=flops / 1e12,
                        mfu=(flops / row["step_s"] / peak) if peak else None,
                    )
                    if not counted and attn == "sdpa":  # one step under the FLOP counter, as a check
                        row["tflops_counted"] = _count_flops(model, inputs, dropped) / 1e12
                        counted = True
                except (torch.OutOfMemoryError, RuntimeError) as err:
                    if not is_oom(err):
                        raise
                    row["status"] = "OOM"
                    logger.warning("training %s: out of memory", row)
                finally:
                    optim.zero_grad(set_to_none=True)
                    inputs = dropped = None
                    free(plan.device)
    model.activation_checkpointing_disable()
    model.set_attn_implementation("sdpa")
    del optim
    free(plan.device)
    return rows


def _time_steps(
    model: StllmForConditionalGeneration,
    optim: torch.optim.Optimizer,
    inputs: dict[str, torch.Tensor],
    dropped: torch.Tensor,
    plan: Plan,
) -> dict[str, Any]:
    """warmup + steps optimizer steps -> median step / forward-backward / optimizer seconds, losses, peak memory."""
    step_s, fb_s, opt_s, losses = [], [], [], []
    base = 0.0
    for i in range(plan.warmup + plan.steps):
        if i == plan.warmup and plan.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated() / 2**30
        sync(plan.device)
        t0 = time.perf_counter()
        out = model(**inputs, use_mask=True, dropped_tokens=dropped)
        assert out.loss is not None
        out.loss.backward()
        sync(plan.device)
        t1 = time.perf_counter()
        optim.step()
        optim.zero_grad(set_to_none=True)
        sync(plan.device)
        t2 = time.perf_counter()
        losses.append(float(out.loss.detach()))
        if i >= plan.warmup:
            step_s.append(t2 - t0)
            fb_s.append(t1 - t0)
            opt_s.append(t2 - t1)
        del out
    peak = peak_gib(plan.device)
    return {
        "step_s": statistics.median(step_s),
        "fwd_bwd_s": statistics.median(fb_s),
        "optimizer_s": statistics.median(opt_s),
        "loss": losses[-1],
        "finite": all(torch.isfinite(torch.tensor(losses)).tolist()),
        "peak_gib": peak,
        "activation_gib": (peak - base) if peak is not None else None,
    }


def _count_flops(model: StllmForConditionalGeneration, inputs: dict[str, torch.Tensor], dropped: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        out = model(**inputs, use_mask=True, dropped_tokens=dropped)
        assert out.loss is not None
        out.loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def run_eval(
    model: StllmForConditionalGeneration, plan: Plan, processor: StllmProcessor, cfg: Protocol
) -> dict[str, Any]:
    """MVBench-like items through generate_raw at each batch size -> items/s rows, the best, 4,000-item projection."""
    deadline = time.perf_counter() + plan.budgets["eval"]
    question = mcqa_text(QUESTION, CANDIDATES)  # the Q-Former sees the question + options (docs/faithfulness.md Q28)
    prompt = cfg.build(question)
    s = model.config.frame_size()
    dtype = next(model.parameters()).dtype
    rows: list[dict[str, Any]] = []
    for batch in plan.eval_batches:
        row: dict[str, Any] = {"batch": batch}
        rows.append(row)
        if time.perf_counter() > deadline:
            row["status"] = "skipped (time)"
            continue
        pixels = torch.randn(batch, plan.frames, 3, s, s, generator=torch.Generator().manual_seed(batch)).to(dtype)
        try:
            if plan.device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            generate_raw(model, processor, pixels[:1], [prompt], [question], cfg.generation)  # warm-up
            times, tokens = [], 0
            while len(times) < 3 and (not times or time.perf_counter() < deadline):
                sync(plan.device)
                t0 = time.perf_counter()
                texts = generate_raw(model, processor, pixels, [prompt] * batch, [question] * batch, cfg.generation)
                sync(plan.device)
                times.append(time.perf_counter() - t0)
                tokens = sum(len(processor.tokenizer.encode(t)) for t in texts)
            sec = statistics.median(times)
            row.update(
                status="ok",
                seconds_per_batch=sec,
                items_per_s=batch / sec,
                new_tokens_per_item=tokens / batch,
                peak_gib=peak_gib(plan.device),
            )
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_oom(err):
                raise
            row["status"] = "OOM"
        finally:
            free(plan.device)
    ok = [r for r in rows if r.get("status") == "ok"]
    best = max(ok, key=lambda r: r["items_per_s"]) if ok else None
    at1 = next((r for r in ok if r["batch"] == 1), None)
    return {
        "dtype": str(dtype).replace("torch.", ""),
        "frames": plan.frames,
        "max_new_tokens": cfg.generation.max_new_tokens,
        "rows": rows,
        "items_per_s_batch1": at1["items_per_s"] if at1 else None,
        "best_batch": best["batch"] if best else None,
        "items_per_s_best": best["items_per_s"] if best else None,
        "hours_4000_batch1": MVBENCH_ITEMS / at1["items_per_s"] / 3600 if at1 else None,
        "hours_4000_best": MVBENCH_ITEMS / best["items_per_s"] / 3600 if best else None,
    }


def run_chat(cfg: StllmConfig, plan: Plan, processor: StllmProcessor, ecfg: Protocol) -> dict[str, Any]:
    """The conversation model answering about 64-frame clips (VcgBench decoding) -> seconds per answer."""
    deadline = time.perf_counter() + plan.budgets["chat"]
    dtype = resolve_dtype("auto", plan.device)
    out: dict[str, Any] = {"frames": plan.chat_frames, "dtype": str(dtype).replace("torch.", "")}
    try:
        if plan.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        model = build_random(cfg, plan.device, dtype, seed=1).eval()
        s = cfg.frame_size()
        pixels = torch.randn(1, plan.chat_frames, 3, s, s, generator=torch.Generator().manual_seed(2)).to(dtype)
        question = "Describe what happens in the video in detail."
        prompt = ecfg.build(question)
        times, tokens = [], []
        while len(times) < 3 and (not times or time.perf_counter() < deadline):
            sync(plan.device)
            t0 = time.perf_counter()
            texts = generate_raw(model, processor, pixels, [prompt], [question], ecfg.generation)
            sync(plan.device)
            times.append(time.perf_counter() - t0)
            tokens.append(len(processor.tokenizer.encode(texts[0])))
        out.update(
            status="ok",
            seconds_per_answer=statistics.median(times),
            answers=len(times),
            new_tokens=statistics.median(tokens),
            num_beams=ecfg.generation.num_beams,
            max_new_tokens=ecfg.generation.max_new_tokens,
            peak_gib=peak_gib(plan.device),
        )
        del model
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not is_oom(err):
            raise
        out["status"] = "OOM"
    free(plan.device)
    return out


# ------------------------------------------------------------------------------------------------------ report
def _fmt(value: Any, spec: str = ".3g") -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return format(value, spec)
    return str(value)


def markdown(result: dict[str, Any]) -> str:
    """The result dict -> markdown tables (also printed)."""
    n = result["numerics"]
    lines = [
        f"# bench gpu ({result['mode']}): {result['device_name']}, torch {result['torch']}",
        "",
        f"numerics (QA model, {n['frames']} frames, {n['sequence']} positions): bf16 vs fp32 logits relative error "
        f"{_fmt(n['rel_error'])}, max abs {_fmt(n['max_abs_error'])}, argmax agreement {_fmt(n['argmax_agreement'])}",
        "",
        f"training (QA model, {result['plan']['frames']} frames, masking 50% + MVM, bf16, AdamW):",
        "",
        "| attention | checkpointing | batch | status | step s | fwd+bwd s | opt s | tokens/s | TFLOP/step | MFU "
        "| peak GiB | activations GiB | loss |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["train"]:
        lines.append(
            f"| {r['attention']} | {'on' if r['checkpointing'] else 'off'} | {_fmt(r['batch'])} | {r['status']} | "
            f"{_fmt(r.get('step_s'))} | {_fmt(r.get('fwd_bwd_s'))} | {_fmt(r.get('optimizer_s'))} | "
            f"{_fmt(r.get('tokens_per_s'), '.4g')} | {_fmt(r.get('tflops_per_step'))} | {_fmt(r.get('mfu'), '.1%')} | "
            f"{_fmt(r.get('peak_gib'))} | {_fmt(r.get('activation_gib'))} | {_fmt(r.get('loss'), '.4g')} |"
        )
    counted = [r for r in result["train"] if "tflops_counted" in r]
    if counted:
        r = counted[0]
        lines += ["", f"FLOPs check (batch {r['batch']}): analytic {_fmt(r['tflops_per_step'])} TFLOP, "
                  f"torch.utils.flop_counter {_fmt(r['tflops_counted'])} TFLOP"]  # fmt: skip
    e = result["eval"]
    lines += [
        "",
        f"evaluation (MVBench-like, {e['frames']} frames, {e['dtype']}, greedy, <= {e['max_new_tokens']} new tokens):",
        "",
        "| batch | status | s/batch | items/s | new tokens/item | peak GiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in e["rows"]:
        lines.append(
            f"| {r['batch']} | {r['status']} | {_fmt(r.get('seconds_per_batch'))} | {_fmt(r.get('items_per_s'))} | "
            f"{_fmt(r.get('new_tokens_per_item'))} | {_fmt(r.get('peak_gib'))} |"
        )
    lines += [
        "",
        f"4,000 items: {_fmt(e['hours_4000_batch1'])} h at batch 1, {_fmt(e['hours_4000_best'])} h at batch "
        f"{_fmt(e['best_batch'])}",
    ]
    c = result["chat"]
    lines += [
        "",
        f"chat (conversation model, {c['frames']} frames, {c['dtype']}): {c.get('status')}, "
        f"{_fmt(c.get('seconds_per_answer'))} s per answer ({_fmt(c.get('new_tokens'))} new tokens, "
        f"{_fmt(c.get('num_beams'))} beams), peak {_fmt(c.get('peak_gib'))} GiB",
        "",
        f"section seconds: {result['seconds']}",
    ]
    return "\n".join(lines) + "\n"


def run(mode: str, device: str, out: Path | None) -> dict[str, Any]:
    """Every section in order -> the result dict (also written to out/bench_gpu.json and .md)."""
    plan = make_plan(mode, device)
    torch.manual_seed(0)
    qa_cfg, conv_cfg = model_configs(mode)
    mv, vcg = load_protocol("mvbench"), load_protocol("vcgbench")
    if plan.max_new_tokens is not None:
        mv.generation.max_new_tokens = vcg.generation.max_new_tokens = plan.max_new_tokens
    name, peak = device_peak_flops(device)
    timings: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        text = [mv.config.prompt.system, vcg.config.prompt.system, QUESTION, *CANDIDATES]
        qa_proc = make_processor(qa_cfg, Path(tmp), text)
        conv_proc = make_processor(conv_cfg, Path(tmp), text)
    with section_timer(timings, "numerics"):
        numerics, model = run_numerics(qa_cfg, plan, qa_proc)
    with section_timer(timings, "train"):
        train = run_training(model, plan, qa_proc, peak)
    with section_timer(timings, "eval"):
        cast(torch.nn.Module, model).to(
            resolve_dtype("auto", device)
        ).eval()  # the inference dtype rule (fp16 on CUDA, fp32 on a CPU)
        evaluation = run_eval(model, plan, qa_proc, mv)
    del model
    free(device)
    with section_timer(timings, "chat"):
        chat = run_chat(conv_cfg, plan, conv_proc, vcg)
    result = {
        "mode": mode,
        "device": device,
        "device_name": name,
        "peak_bf16_flops": peak,
        "torch": torch.__version__,
        "plan": asdict(plan),
        "numerics": numerics,
        "train": train,
        "eval": evaluation,
        "chat": chat,
        "seconds": timings,
        "cpu_peak_rss_gib": rss_gib(),
    }
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "bench_gpu.json").write_text(json.dumps(result, indent=2))
        (out / "bench_gpu.md").write_text(markdown(result))
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stllm bench gpu", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--out", type=Path, default=None, help="folder for bench_gpu.json and bench_gpu.md")
    parser.add_argument(
        "--size", choices=["auto", "full", "tiny"], default="auto", help="auto: full on CUDA, tiny on a CPU"
    )
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: CUDA is not available on this machine")
    mode = args.size if args.size != "auto" else ("full" if device.startswith("cuda") else "tiny")
    if mode == "full" and not device.startswith("cuda"):
        raise ConfigError("--size full needs a CUDA device (the 8B models do not fit a CPU run)")
    start = time.perf_counter()
    result = run(mode, device, args.out)
    print(markdown(result), end="")
    print(f"total {time.perf_counter() - start:.0f} s" + (f"; written to {args.out}" if args.out else ""))
    bad = [r for r in result["train"] if r.get("status") == "ok" and not r["finite"]]
    if not result["numerics"]["finite"] or bad:
        print("stllm bench gpu: error: non-finite loss or logits (see the table)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
