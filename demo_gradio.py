"""Local web page to chat about a video (the original's demo_gradio.py): `python demo_gradio.py --model DIR`.

The same command from any directory: `python -m stllm web --model DIR` (stllm/demo/web.py).
"""

from stllm.demo.web import main

if __name__ == "__main__":
    raise SystemExit(main())
