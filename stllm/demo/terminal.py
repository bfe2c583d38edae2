"""(model dir, video, questions typed in a terminal) -> streamed answers: the ST-LLM command-line chat
(docs/original.md §8).

    python -m stllm chat --model DIR --video PATH                      # interactive, multi-turn
    python -m stllm chat --model DIR --video PATH --question "..."     # one answer, then exit

Interactive commands: /video PATH, /reset, /frames N, /temperature T, /beams K, /help, /quit. A typed "\\n" is a
line break (multiple-choice questions put each option on its own line).
Differences from the original demo.py: multi-turn, the video is encoded once, no double-wrapped prompt
(docs/faithfulness.md Q12);
see stllm/demo/engine.py.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import TextIO

import torch

from stllm.data.video import MediaError
from stllm.demo.engine import Chat, ChatEngine, ChatSettings, at_least, non_negative, positive, quiet_libraries
from stllm.errors import StllmError

logger = logging.getLogger(__name__)

HELP = """commands:
  /video PATH        load another video (the conversation restarts)
  /reset             forget the conversation (the video stays)
  /frames N          frames sampled from the video (the video is read again)
  /temperature T     sampling temperature (T > 0 turns sampling on; 0 = greedy/beam search)
  /beams K           beam width (K > 1 answers at once: beam search cannot stream)
  a typed \\n         a line break in the question (e.g. "Question: ...\\nOptions:\\n(A) left\\n(B) right")
  /help              this text
  /quit              leave (Ctrl-D too)"""


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stllm chat", description="Chat with an ST-LLM model about a video, in the terminal."
    )
    p.add_argument("--model", required=True, help="converted model directory (config.json + processor files)")
    p.add_argument("--video", required=True, help="video file (mp4, avi, webm, gif, ...)")
    p.add_argument("--question", default=None, help="ask one question, print the answer and exit")
    p.add_argument("--frames", type=at_least(1), default=64, help="frames sampled from the video (original: 64)")
    p.add_argument("--beams", type=at_least(1), default=5, help="beam width (original: 5; 1 streams token by token)")
    p.add_argument(
        "--temperature",
        type=non_negative,
        default=0.0,
        help="> 0 samples with this temperature; 0 (default) = greedy/beam search as the original",
    )
    p.add_argument("--max-new-tokens", type=at_least(1), default=300)
    p.add_argument(
        "--repetition-penalty", type=positive, default=1.5, help="docs/faithfulness.md Q26: the original forced 1.5"
    )
    p.add_argument("--single-turn", action="store_true", help="only the current question in the prompt (original)")
    p.add_argument(
        "--no-system",
        action="store_true",
        help="leave the system text out of the prompt (models trained without it, e.g. the quickstart's)",
    )
    p.add_argument(
        "--answer-prefix",
        default="",
        help='text the answer starts with, e.g. "Best option:(" for multiple-choice models (MVBench, quickstart)',
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="auto: bfloat16 on CUDA, float32 on CPU",
    )
    p.add_argument("--verbose", action="store_true")
    return p.parse_args(argv)


def apply_temperature(settings: ChatSettings, temperature: float) -> None:
    """T > 0 -> sampling at T; 0 -> the original's deterministic decoding (temperature inactive)."""
    settings.do_sample = temperature > 0
    settings.temperature = temperature if temperature > 0 else 1.0


def print_stream(chat: Chat, question: str, out: TextIO) -> str:
    """Stream one answer to `out`, printing only the new characters of each partial answer."""
    shown = ""
    answer = ""
    for answer in chat.stream(question):
        if answer.startswith(shown):
            out.write(answer[len(shown) :])
        else:  # the final cut changed earlier text (rare): print the final answer on a fresh line
            out.write("\n" + answer)
        shown = answer
        out.flush()
    out.write("\n")
    out.flush()
    return answer


def _set_int(chat: Chat, arg: str, name: str, setter: Callable[[int], None], low: int) -> str:
    value = int(arg)
    if value < low:
        raise ValueError(f"{name} must be >= {low}")
    setter(value)
    return f"{name} = {value}"


def typed_text(line: str) -> str:
    """A question as typed on one line -> the question: each typed backslash-n is a line break."""
    return line.replace("\\n", "\n")


def run_command(chat: Chat, line: str) -> str | None:
    """One '/command args' line -> a message to print; None means quit. Raises ValueError/MediaError."""
    cmd, _, arg = line.partition(" ")
    arg = arg.strip()
    s = chat.settings
    if cmd in ("/quit", "/exit", "/q"):
        return None
    if cmd == "/help":
        return HELP
    if cmd == "/reset":
        chat.reset()
        return "conversation cleared"
    if cmd == "/video":
        if not arg:
            raise ValueError("usage: /video PATH")
        chat.load_video(arg)
        return f"loaded {arg} ({chat.frames.shape[0]} frames); new conversation"
    if cmd not in ("/frames", "/beams", "/temperature"):
        raise ValueError(f"unknown command {cmd} (type /help)")
    if not arg:
        raise ValueError(f"usage: {cmd} VALUE")
    if cmd == "/frames":
        return _set_int(chat, arg, "frames", chat.set_frames, 1)
    if cmd == "/beams":
        return _set_int(chat, arg, "beams", lambda k: setattr(s, "num_beams", k), 1)
    t = float(arg)  # /temperature
    if t < 0:
        raise ValueError("temperature must be >= 0")
    apply_temperature(s, t)
    return f"temperature = {t}" + ("" if t > 0 else " (greedy/beam search)")


def interactive(chat: Chat, inp: TextIO, out: TextIO) -> int:
    out.write(f"Chatting about {chat.video_path}. Type a question, or /help.\n")
    while True:
        out.write("You: ")
        out.flush()
        line = inp.readline()
        if not line:  # end of input
            out.write("\n")
            return 0
        line = line.strip()
        if not line:
            continue
        try:
            if line.startswith("/"):
                msg = run_command(chat, line)
                if msg is None:
                    return 0
                out.write(msg + "\n")
                continue
            out.write("ST-LLM: ")
            out.flush()
            print_stream(chat, typed_text(line), out)
        except (MediaError, ValueError) as err:
            out.write(f"error: {err}\n")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    quiet_libraries()
    settings = ChatSettings(
        num_frames=args.frames,
        num_beams=args.beams,
        max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty,
        single_turn=args.single_turn,
        use_system=not args.no_system,
        answer_prefix=args.answer_prefix,
    )
    apply_temperature(settings, args.temperature)
    try:
        engine = ChatEngine.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    except (StllmError, OSError) as err:  # ModelLoadError names the folder and the problem
        print(f"error: cannot load the model: {err}", file=sys.stderr)
        return 2
    chat = Chat(engine, settings)
    try:
        chat.load_video(args.video)
    except MediaError as err:
        print(f"error: cannot read the video: {err}", file=sys.stderr)
        return 2
    if args.question is not None:
        try:
            print_stream(chat, typed_text(args.question), sys.stdout)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        return 0
    return interactive(chat, sys.stdin, sys.stdout)


if __name__ == "__main__":
    sys.exit(main())
