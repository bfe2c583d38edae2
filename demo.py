"""Terminal chat about a video (the original's demo.py): `python demo.py --model DIR --video PATH`.

The same command from any directory: `python -m stllm chat --model DIR --video PATH` (stllm/demo/terminal.py).
"""

from stllm.demo.terminal import main

if __name__ == "__main__":
    raise SystemExit(main())
