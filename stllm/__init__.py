"""ST-LLM: every spatial-temporal video token into the LLM (arXiv 2404.00308), re-implemented on transformers."""

__version__ = "0.1.0"
