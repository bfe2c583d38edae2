"""`python -m stllm <command> ...` -> stllm.cli.main."""

from stllm.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
