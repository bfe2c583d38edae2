"""Language pretraining for the quickstart's tiny LLM: the synthetic tasks told in words.

ST-LLM starts from Vicuna, an LLM that already reads and reasons over sequences, and the paper's claim is that
such an LLM models time in video when it is given every frame's tokens. A tiny LLM drawn at random knows
nothing: measured while designing the quickstart (docs/quickstart.md), one trained from scratch on the video
questions never learns to answer by option letter within a CPU budget. So the quickstart first pretrains its
LLM on text: the same four tasks, each clip described frame by frame in words ("red three" = colour and column,
see stllm.quickstart.drawing), asked and answered in exactly the training format, with the description where the video
tokens go. This is the miniature's Vicuna; video training then starts from it, for every variant alike.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import torch
from tqdm import tqdm

from stllm.data.processor import StllmProcessor
from stllm.quickstart.drawing import LETTERS, TASKS, mcq

logger = logging.getLogger(__name__)


def text_example(
    processor: StllmProcessor, rng: random.Random, frames: int, word_dropout: float = 0.0
) -> tuple[dict[str, list[int]], str, int]:
    """One task drawn at random, told in words -> ({input_ids, labels}, task, index of the answer's letter token).

    The sequence is the training format of stllm.data.processor with the frame words in place of the video
    tokens; labels cover the answer only ("Best option:(X) answer" + terminator), as in video training.
    With probability `word_dropout` the description loses a share of its words drawn as ST-LLM draws its
    masking ratio (N(0.5, 0.1) clipped to [0.1, 0.7], docs/original.md §2.1), the rest kept in order: the tiny LLM
    learns to
    read a description with words missing, as a pretrained LLM does (see pretrain_language_model).
    """
    task = rng.choice(list(TASKS))
    clip = TASKS[task][0](rng, frames, 64)
    question, options, gt = mcq(clip, rng)
    example = processor.training_example("", question, f"Best option:{gt}", num_frames=1)
    video_id = processor.config.video_token_id
    ids, labels = example["input_ids"], example["labels"]
    first = ids.index(video_id)
    last = len(ids) - ids[::-1].index(video_id)
    context = processor.tokenizer.encode(" ".join(clip.words))
    if word_dropout and rng.random() < word_dropout:
        drop = int(min(max(rng.gauss(0.5, 0.1), 0.1), 0.7) * len(context))
        dropped = set(rng.sample(range(len(context)), drop))
        context = [t for i, t in enumerate(context) if i not in dropped]
    ids = ids[:first] + context + ids[last:]
    labels = labels[:first] + [-100] * len(context) + labels[last:]
    letter = processor.tokenizer.sp.piece_to_id(LETTERS[options.index(clip.answer)])
    letter_at = ids.index(letter, len(ids) - sum(label != -100 for label in labels))
    return {"input_ids": ids, "labels": labels}, task, letter_at


@torch.no_grad()
def letter_accuracy(
    language_model: torch.nn.Module, processor: StllmProcessor, seed: int, frames: int, per_task: int = 50
) -> dict[str, float]:
    """Held-out text questions -> % per task whose option letter the LLM ranks first among A/B (the letter that
    greedy decoding writes after "Best option:(", as MVBench scores it)."""
    rng = random.Random(seed)
    letters = [processor.tokenizer.sp.piece_to_id(x) for x in LETTERS[:2]]
    examples: dict[str, list[tuple[list[int], int]]] = {task: [] for task in TASKS}
    while min(len(v) for v in examples.values()) < per_task:
        example, task, at = text_example(processor, rng, frames)
        if len(examples[task]) < per_task:
            examples[task].append((example["input_ids"][: at + 1], at))
    was_training = language_model.training
    language_model.eval()
    accuracy = {}
    for task, rows in examples.items():
        batch = processor.collate([{"input_ids": ids, "labels": ids} for ids, _ in rows])  # right-padded
        logits = language_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        at = torch.tensor([a for _, a in rows])  # right padding: row r's letter is predicted at at[r] - 1
        scores = logits[torch.arange(len(rows)), at - 1][:, letters]  # (N, 2)
        truth = torch.tensor([letters.index(ids[a]) for ids, a in rows])
        accuracy[task] = 100.0 * (scores.argmax(-1) == truth).float().mean().item()
    language_model.train(was_training)
    return accuracy


def pretrain_language_model(
    model_dir: str | Path,
    max_steps: int,
    seed: int,
    frames: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    check_every: int = 250,
    target: float = 100.0,
    word_dropout: float = 0.5,
    progress: bool = True,
) -> tuple[dict[str, float], int]:
    """Train the LLM of the saved model in model_dir on the tasks in words until it answers held-out questions
    by letter at `target` % on every task (checked every `check_every` steps) or max_steps; save it in place.

    Only the LLM changes (the vision tower, Q-Former and projection are saved as they were). The learning
    curve is a long plateau then a jump, whose step varies with the seed (3250-3500 measured with the
    default word dropout, 1000-2000 without), hence the stopping rule. `word_dropout` is the share of examples
    that lose words (text_example): without it the LLM finds each frame's words by their position, and after
    dynamic masking, which drops video tokens and closes the gaps (docs/original.md §2.1), it no longer does
    (docs/quickstart.md). -> (held-out letter accuracy per task, steps taken); the held-out seed is one no training
    batch uses.
    """
    from stllm.models.modeling import StllmForConditionalGeneration

    model_dir = Path(model_dir)
    model = StllmForConditionalGeneration.from_pretrained(model_dir)
    processor = StllmProcessor.from_pretrained(model_dir, model.config)
    lm = model.language_model
    lm.train()
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=lr, weight_decay=0.0)
    t0 = time.perf_counter()
    accuracy: dict[str, float] = {}
    steps = 0
    bar = tqdm(range(max_steps), desc="language pretraining", disable=not progress, mininterval=2.0)
    for step in bar:
        rng = random.Random(seed * 1_000_003 + step)
        batch = processor.collate([text_example(processor, rng, frames, word_dropout)[0] for _ in range(batch_size)])
        loss = lm(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        steps = step + 1
        if step % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
        if steps % check_every == 0 or steps == max_steps:
            accuracy = letter_accuracy(lm, processor, seed=-1 - seed, frames=frames)
            bar.set_postfix(loss=f"{loss.item():.3f}", held_out_min=f"{min(accuracy.values()):.0f}%")
            if min(accuracy.values()) >= target:
                break
    bar.close()
    logger.info(
        "language pretraining: %d steps in %.0f s, held-out letter accuracy %s",
        steps,
        time.perf_counter() - t0,
        accuracy,
    )
    model.save_pretrained(model_dir)
    return accuracy, steps
