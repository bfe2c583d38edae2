"""`python -m stllm bench train` -> median CPU training-step time without masking, with masking, with masking + MVM.

A model whose LLM dominates the cost (LLM hidden 512, 8 layers, vocab 1000; tiny vision tower and Q-Former),
16 frames x 32 query tokens = 512 video tokens per sample, AdamW step included. Three settings, interleaved
step by step so that load from other processes hits all three alike:
  (a) no masking; (b) 50% of the video tokens dropped (fixed `dropped_tokens`), mvm_loss_weight=0;
  (c) the same mask with the MVM loss: the extra no-grad full-sequence pass of docs/original.md §2.2 step 4.
Expected (docs/original.md §2): (b)/(a) ~ the kept share of the sequence (a bit less: attention is quadratic), and
(c)/(a) ~ (b)/(a) + the cost of one forward of the full sequence (~1/3 of a forward+backward step).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

import torch

from stllm.models.configuration import StllmConfig, eva_vit_g_config, qformer_base_config, vicuna_7b_config
from stllm.models.modeling import StllmForConditionalGeneration


def bench_config(num_query_tokens: int = 32) -> StllmConfig:
    """LLM-dominated model: Llama 512 x 8 layers, vocab 1000; vision and Q-Former at toy sizes."""
    return StllmConfig(
        vision_config=eva_vit_g_config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=28,
            patch_size=14,
            initializer_range=0.02,
        ),
        qformer_config=qformer_base_config(
            vocab_size=200,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            encoder_hidden_size=64,
        ),
        text_config=vicuna_7b_config(
            vocab_size=1000,
            hidden_size=512,
            intermediate_size=1376,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=8,
            pad_token_id=0,
        ),
        num_query_tokens=num_query_tokens,
        video_input="all",
        use_mask=True,
        mvm_decode=True,
        num_frames=16,
        vision_autocast_dtype=None,
    )


def make_batch(
    cfg: StllmConfig, batch: int, frames: int, text_len: int = 40, answer_len: int = 16
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    n_video = cfg.num_video_tokens(frames)
    text = torch.randint(3, cfg.text_config.vocab_size, (batch, text_len), generator=g)
    ids = torch.cat([torch.full((batch, n_video), cfg.video_token_id), text], dim=1)  # (B, L + text)
    labels = torch.full_like(ids, -100)
    labels[:, -answer_len:] = ids[:, -answer_len:]
    s = cfg.frame_size()
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": labels,
        "pixel_values": torch.randn(batch, frames, 3, s, s, generator=g),
        "qformer_input_ids": torch.randint(5, 200, (batch, 8), generator=g),
        "qformer_attention_mask": torch.ones(batch, 8, dtype=torch.long),
    }


def run(steps: int = 6, warmup: int = 2, batch: int = 2, frames: int = 16) -> dict[str, float]:
    """-> median step seconds per setting, the ratios and the kept share of the sequence."""
    torch.manual_seed(0)
    cfg = bench_config()
    model = StllmForConditionalGeneration(cfg).train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    inputs = make_batch(cfg, batch, frames)
    n_video = cfg.num_video_tokens(frames)
    dropped = torch.zeros(batch, n_video, dtype=torch.bool)
    g = torch.Generator().manual_seed(1)
    for row in dropped:
        row[torch.randperm(n_video, generator=g)[: n_video // 2]] = True  # 50% per sample, docs/original.md §2.1 step 3
    settings = {"a_no_mask": (False, None, 0.0), "b_mask": (True, dropped, 0.0), "c_mask_mvm": (True, dropped, 1.0)}
    times: dict[str, list[float]] = {k: [] for k in settings}
    for i in range(warmup + steps):
        for name, (use_mask, drop, weight) in settings.items():
            model.config.mvm_loss_weight = weight
            start = time.perf_counter()
            out = model(**inputs, use_mask=use_mask, dropped_tokens=drop)
            out.loss.backward()
            optim.step()
            optim.zero_grad(set_to_none=True)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    seq = inputs["input_ids"].shape[1]
    return {
        **med,
        "b_over_a": med["b_mask"] / med["a_no_mask"],
        "c_over_a": med["c_mask_mvm"] / med["a_no_mask"],
        "kept_share": (seq - n_video // 2) / seq,
        "seq_len": seq,
        "video_tokens": n_video,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stllm bench train", description=__doc__.splitlines()[0] if __doc__ else None
    )
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    r = run(args.steps, args.warmup, args.batch, args.frames)
    print(
        f"CPU, {torch.get_num_threads()} threads, batch {args.batch}, {args.frames} frames: sequence {r['seq_len']} "
        f"tokens of which {r['video_tokens']} video; median of {args.steps} steps"
    )
    print(f"(a) no masking            {r['a_no_mask'] * 1000:8.1f} ms/step")
    print(f"(b) masking 50%, no MVM   {r['b_mask'] * 1000:8.1f} ms/step   (b)/(a) = {r['b_over_a']:.3f}")
    print(f"(c) masking 50% + MVM     {r['c_mask_mvm'] * 1000:8.1f} ms/step   (c)/(a) = {r['c_over_a']:.3f}")
    print(f"share of the sequence kept after masking: {r['kept_share']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
