"""(model dir) -> a local gradio page: upload a video, chat about it with streamed answers (docs/original.md §8).

    python -m stllm web --model DIR [--examples V1.mp4 V2.mp4] [--host 127.0.0.1] [--port 7860] [--share]

Safe by default: binds 127.0.0.1 (`--host 0.0.0.0` to serve a network), no public share link unless `--share`,
analytics off, uploads limited to `--max-upload-mb`. Each browser session has its own `Chat` in `gr.State`; the
model is shared and its calls are serialised. API names for gradio_client: /upload, /ask, /reset.
Differences from the original page: multi-turn, the video is encoded once per upload, no double-wrapped prompt
(docs/faithfulness.md Q12), streamed answers (see stllm/demo/engine.py).
"""

from __future__ import annotations

import os

os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"  # before gradio is imported: no usage reporting

import argparse
import logging
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr
import torch

from stllm.data.video import MediaError
from stllm.demo.engine import Chat, ChatEngine, ChatSettings, at_least, positive, quiet_libraries
from stllm.errors import StllmError

logger = logging.getLogger(__name__)

NO_VIDEO = "Upload a video (or pick an example), then press **Upload & start chat**."
Messages = list[dict[str, str]]


def _media_message(path: str, err: Exception) -> str:
    """MediaError -> one line for the page, naming the file but not the server's temporary folder."""
    name = Path(path).name
    problem = str(getattr(err, "problem", err)).replace(str(path), name)
    return f"⚠️ Could not read **{name}** as a video: {problem}. Please upload a video file."


def make_handlers(engine: ChatEngine, defaults: ChatSettings, max_upload_mb: float) -> dict[str, Any]:
    """The page's callbacks, plain functions of (inputs..., state) so tests can call them without a server."""

    def upload(video: str | None, frames: int, state: Chat | None) -> tuple[Chat | None, Messages, str]:
        if not video:
            return state, [], NO_VIDEO
        size_mb = os.path.getsize(video) / 2**20
        if size_mb > max_upload_mb:
            return (
                None,
                [],
                (f"⚠️ **{Path(video).name}** is {size_mb:.1f} MB; this page accepts videos up to {max_upload_mb:g} MB."),
            )
        chat = Chat(engine, ChatSettings(**{**vars(defaults), "num_frames": int(frames)}))
        try:
            chat.load_video(video)
        except MediaError as err:
            logger.info("rejected upload %s: %s", video, err)
            return None, [], _media_message(video, err)
        n = chat.frames.shape[0]
        return chat, [], f"✅ Video ready ({n} frames). Ask a question below."

    def ask(
        question: str,
        history: Messages | None,
        state: Chat | None,
        frames: int,
        beams: int,
        temperature: float,
        sample: bool,
        max_new_tokens: int,
    ) -> Iterator[tuple[Messages, str, str]]:
        history = list(history or [])
        question = (question or "").strip().replace("\\n", "\n")  # a typed \n is a line break, as in the terminal
        if state is None:
            yield history, question, NO_VIDEO
            return
        if not question:
            yield history, "", "Type a question first."
            return
        s = state.settings
        s.num_beams, s.max_new_tokens = int(beams), int(max_new_tokens)
        s.do_sample, s.temperature = bool(sample), float(temperature)
        try:
            state.set_frames(int(frames))
        except MediaError as err:
            yield history, question, _media_message(state.video_path or "", err)
            return
        history.append({"role": "user", "content": question})
        history.append({"role": "assistant", "content": ""})
        note = "Beam search answers at once (no streaming)." if s.num_beams > 1 else "Streaming…"
        for partial in state.stream(question):
            history[-1] = {"role": "assistant", "content": partial}
            yield history, "", note
        yield history, "", f"Turn {len(state.history)} answered."

    def reset(state: Chat | None) -> tuple[Chat | None, Messages, str]:
        if state is None:
            return None, [], NO_VIDEO
        state.reset()
        return state, [], "Conversation cleared; the video stays loaded."

    return {"upload": upload, "ask": ask, "reset": reset}


def build_app(
    engine: ChatEngine,
    examples: Sequence[str] = (),
    defaults: ChatSettings | None = None,
    max_upload_mb: float = 200.0,
    title: str = "ST-LLM video chat",
) -> gr.Blocks:
    """Engine + example videos -> the Blocks page (launch it yourself, or via `main`)."""
    defaults = defaults or ChatSettings(max_new_tokens=1000)  # the original page: 1000 new tokens, 5 beams
    h = make_handlers(engine, defaults, max_upload_mb)
    with gr.Blocks(title=title, analytics_enabled=False) as app:
        gr.Markdown(f"# {title}\nUpload a video and chat about it. Follow-up questions reuse the encoded video.")
        state = gr.State(None)  # one Chat per browser session
        with gr.Row():
            with gr.Column(scale=1):
                video = gr.Video(label="Video", sources=["upload"], elem_id="video")
                if examples:
                    gr.Examples(examples=[[str(p)] for p in examples], inputs=[video], label="Example videos")
                upload_btn = gr.Button("Upload & start chat", variant="primary", elem_id="upload-btn")
                status = gr.Markdown(NO_VIDEO, elem_id="status")
                frames = gr.Slider(1, 96, value=defaults.num_frames, step=1, label="Video frames")
                beams = gr.Slider(1, 10, value=defaults.num_beams, step=1, label="Beam search width")
                sample = gr.Checkbox(value=defaults.do_sample, label="Sample (temperature acts only when on)")
                temperature = gr.Slider(0.1, 2.0, value=defaults.temperature, step=0.1, label="Temperature")
                max_new = gr.Slider(8, 1000, value=defaults.max_new_tokens, step=1, label="Max new tokens")
            with gr.Column(scale=2):
                chatbot = gr.Chatbot(label="ST-LLM", elem_id="chatbot", height=480)
                question = gr.Textbox(label="Question", placeholder="Ask about the video", elem_id="question")
                with gr.Row():
                    ask_btn = gr.Button("Ask", variant="primary", elem_id="ask-btn")
                    reset_btn = gr.Button("Reset conversation", elem_id="reset-btn")
        upload_btn.click(h["upload"], [video, frames, state], [state, chatbot, status], api_name="upload")
        ask_inputs = [question, chatbot, state, frames, beams, temperature, sample, max_new]
        ask_outputs = [chatbot, question, status]
        ask_btn.click(h["ask"], ask_inputs, ask_outputs, api_name="ask")
        question.submit(h["ask"], ask_inputs, ask_outputs, api_visibility="private")
        reset_btn.click(h["reset"], [state], [state, chatbot, status], api_name="reset")
    return app


def launch(
    app: gr.Blocks,
    host: str = "127.0.0.1",
    port: int | None = None,
    share: bool = False,
    max_upload_mb: float = 200.0,
    examples: Sequence[str] = (),
    block: bool = True,
) -> gr.Blocks:
    """Queue + launch with the safe defaults; `block=False` returns at once (tests)."""
    if share:
        logger.warning("--share: gradio opens a PUBLIC link; anyone with it can use this model and upload files")
    if host not in ("127.0.0.1", "localhost"):
        logger.warning("serving on %s: reachable from other machines", host)
    app.queue(default_concurrency_limit=4).launch(
        server_name=host,
        server_port=port,
        share=share,
        max_file_size=int(max_upload_mb * 2**20),
        allowed_paths=[str(Path(p).resolve()) for p in examples],
        prevent_thread_lock=not block,
        show_error=False,
        ssr_mode=False,
        quiet=not block,
    )
    return app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m stllm web", description="A local gradio page to chat with an ST-LLM model about a video."
    )
    p.add_argument("--model", required=True, help="converted model directory")
    p.add_argument("--examples", nargs="*", default=[], help="example videos offered on the page")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: this machine only)")
    p.add_argument("--port", type=at_least(1), default=None, help="port (default: gradio picks 7860 or the next free)")
    p.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    p.add_argument("--max-upload-mb", type=positive, default=200.0, help="largest accepted upload")
    p.add_argument("--frames", type=at_least(1), default=64, help="frames sampled from the video (original: 64)")
    p.add_argument("--beams", type=at_least(1), default=5, help="beam width (original: 5; 1 streams)")
    p.add_argument("--max-new-tokens", type=at_least(1), default=1000)
    p.add_argument("--no-system", action="store_true", help="leave the system text out of the prompt (quickstart)")
    p.add_argument("--answer-prefix", default="", help='text the answer starts with, e.g. "Best option:("')
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    quiet_libraries()
    missing = [p for p in args.examples if not Path(p).is_file()]
    if missing:
        print(f"error: example video not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        engine = ChatEngine.from_pretrained(args.model, device=args.device, dtype=args.dtype)
    except (StllmError, OSError) as err:  # ModelLoadError names the folder and the problem
        print(f"error: cannot load the model: {err}", file=sys.stderr)
        return 2
    defaults = ChatSettings(
        num_frames=args.frames,
        num_beams=args.beams,
        max_new_tokens=args.max_new_tokens,
        use_system=not args.no_system,
        answer_prefix=args.answer_prefix,
    )
    app = build_app(engine, args.examples, defaults, args.max_upload_mb)
    launch(app, args.host, args.port, args.share, args.max_upload_mb, args.examples)
    return 0


if __name__ == "__main__":
    sys.exit(main())
