"""Benchmark YAML (configs/eval/*.yaml) + `key=value` overrides -> EvalConfig (typed, saved beside every result).

Defaults are neutral; each benchmark's protocol (docs/original.md §7.2-7.5) lives in its YAML as data. Every [FIX] of
docs/original.md §11
that touches evaluation is a switch here, with the default named in the field comment.
Load with `stllm.config.load_config(EvalConfig, path, overrides)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from stllm.config import ConfigError
from stllm.generation import GenerationConfig

# benchmark type -> what phase 2 does with it (plain dict, docs/design.md decision 4)
BENCHMARK_TYPES: dict[str, str] = {
    "mcqa": "multiple choice, option matching (MVBench, TVBench; docs/original.md §7.2)",
    "vcgbench": "open answers, five GPT-judged scores (VideoChatGPT-Bench; docs/original.md §7.3)",
    "open_qa": "open answers, GPT-judged yes/no + score (MSVD/MSRVTT/ActivityNet-QA; docs/original.md §7.4)",
}
LAYOUTS = ("mvbench", "vcgbench", "msvd", "msrvtt", "anet")


@dataclass
class TaskSpec:
    """One row of an MVBench-style task table (docs/original.md §7.2): annotation json, media root, data type, bound
    flag."""

    name: str = ""
    json: str = ""  # file name inside EvalConfig.anno_dir
    media: str = ""  # media root, relative to data_root
    data_type: str = "video"  # video | frame (jpg folder, 1-based %05d.jpg) | gif
    bound: bool = False  # use the item's start/end (seconds)
    fps: float = 0.0  # frame folders / gifs have no fps of their own: 3 (tvqa frames_fps3_hq), 25 (gif); 0 = read it


@dataclass
class FramesConfig:
    """Test-time frame rule (docs/original.md §7.1 generic loader, 7.2 get_index)."""

    # uniform_middle (docs/original.md §7.1, VCGBench/QA) | mvbench (docs/original.md §7.2 get_index)
    rule: str = "uniform_middle"
    num_frames: int = 16  # mvbench rule: 0 => fps-1 rule (clip seconds, floored, clamped to [min_frames, max_frames])
    min_frames: int = 4
    max_frames: int = 16
    # resize shorter side (bicubic) + center crop, CLIP mean/std (docs/original.md §7.1); 0 = the model's input size
    size: int = 0


@dataclass
class PromptConfig:
    """Model prompt protocol (docs/original.md §7.2 ask_simple, 7.3 get_context_emb_sim / get_context_emb)."""

    # mvbench (ask_simple) | chat (InstructBLIP base, get_context_emb_sim) | minigpt4 (get_context_emb)
    style: str = "chat"
    system: str = ""  # system text S (protocol string, from the benchmark YAML)
    use_system: bool = True  # docs/faithfulness.md Q27: on for MVBench/VCGBench/ANet, off for MSVD/MSRVTT
    question_suffix: str = ""  # MVBench: "\nOnly give the best option."
    answer_prefix: str = ""  # MVBench: "Best option:(" (appended after "###Assistant: ")
    return_prefix: str = ""  # MVBench: "(" put back in front of the answer
    first_line_only: bool = False  # MVBench keeps the first line of the stripped answer
    minigpt4_system: str = ""  # CONV_VIDEO_Vicuna0 system text, for MiniGPT-4-base models (style=minigpt4)


@dataclass
class JudgePrompt:
    """One judge aspect: system and user message, each the concatenation of its pieces (kept as in the source)."""

    system: list[str] = field(default_factory=list)
    # placeholders: {question} {answer} {pred} {question1} {question2} {pred1} {pred2}
    user: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=lambda: ["score"])  # keys the parsed reply must have


@dataclass
class JudgeConfig:
    """OpenAI-compatible chat-completions judge (docs/design.md decision 8, docs/original.md §7.3/7.4, Q33)."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-3.5-turbo"  # the original: unversioned gpt-3.5-turbo
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key (the key is never stored)
    temperature: float | None = None  # None = field not sent (API default), as the original
    concurrency: int = 3  # the original ran --num_tasks 3 chunks
    max_retries: int = 5  # docs/faithfulness.md Q33 [FIX]: bounded (the original retried forever)
    backoff: float = 1.0  # first retry wait (s), doubled each retry
    max_backoff: float = 60.0
    timeout: float = 60.0  # seconds per HTTP call, in all (a server that trickles bytes cannot stretch it)
    cache_dir: str = ""  # "" = <predictions dir>/judge_cache
    consistency_judge_q1_twice: bool = (
        True  # docs/faithfulness.md Q9 [KEEP]: the consistency judge sees Q1 as both questions
    )
    prompts: dict[str, JudgePrompt] = field(default_factory=dict)  # aspect -> prompt (protocol data, from the YAML)


@dataclass
class EvalConfig:
    """Everything phase 1 (`eval`) and phase 2 (`score`) need; saved as eval_config.yaml beside the predictions."""

    benchmark: str = ""  # name recorded in results: mvbench, tvbench, vcgbench, msvd_qa, msrvtt_qa, anet_qa
    type: str = "mcqa"  # see BENCHMARK_TYPES
    layout: str = "mvbench"  # annotation reader, see LAYOUTS
    data_root: str = ""  # every path below is relative to it (or absolute)
    anno_dir: str = ""  # mvbench layout: folder with the per-task json files
    tasks: list[TaskSpec] = field(default_factory=list)  # mvbench layout: task table (docs/original.md §7.2)
    # mvbench layout: add every other *.json in anno_dir as a task (media: <discovered_media_root>/<stem>)
    discover_tasks: bool = False
    discovered_media_root: str = ""  # media root for discovered tasks, relative to data_root
    # run a subset (the original's --specified_item): task names or json stems, e.g. only_tasks=[action_sequence];
    # mvbench layout: tasks of the table; vcgbench layout: generic, temporal, consistency; [] = every task
    only_tasks: list[str] = field(default_factory=list)
    # task -> question json (vcgbench: generic/temporal/consistency; QA layouts: one file)
    question_files: dict[str, str] = field(default_factory=dict)
    answer_file: str = ""  # anet layout: test_a.json, aligned by list index
    video_dir: str = ""  # vcgbench / QA layouts
    video_extensions: list[str] = field(default_factory=lambda: [".mp4", ".avi", ".mov", ".mkv"])
    anet_video_prefix: str = "v_"
    anet_try_extensions: bool = (
        True  # docs/faithfulness.md Q10 [FIX]: ANet names lack an extension; False = exact path as the original
    )
    vcgbench_keep_previous_video: bool = (
        False  # docs/faithfulness.md Q29 [FIX]; True = reuse the previous video if none matches
    )
    legacy_mvbench_all_tokens: bool = (
        False  # docs/faithfulness.md Q1 [FIX]; True = MVBench feeds all T*32 tokens whatever video_input
    )
    limit: int = 0  # > 0: only the first N items, in file order (smoke runs)
    frames: FramesConfig = field(default_factory=FramesConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    batch_size: int = 1
    retry_errors: bool = True  # a rerun retries items whose video failed to load
    dtype: str = "auto"  # auto (fp16 on CUDA, as docs/original.md §7.0; fp32 on CPU) | float16 | bfloat16 | float32
    output_dir: str = "eval_outputs"
    judge: JudgeConfig = field(default_factory=JudgeConfig)


def validate(cfg: EvalConfig) -> None:
    """Raise ConfigError for values the schema's types cannot express (names the field and the choices)."""
    if cfg.type not in BENCHMARK_TYPES:
        raise ConfigError(f"type={cfg.type!r}; choose one of {', '.join(BENCHMARK_TYPES)}")
    if cfg.layout not in LAYOUTS:
        raise ConfigError(f"layout={cfg.layout!r}; choose one of {', '.join(LAYOUTS)}")
    if cfg.frames.rule not in ("uniform_middle", "mvbench"):
        raise ConfigError(f"frames.rule={cfg.frames.rule!r}; choose uniform_middle or mvbench")
    if cfg.prompt.style not in ("mvbench", "chat", "minigpt4"):
        raise ConfigError(f"prompt.style={cfg.prompt.style!r}; choose mvbench, chat or minigpt4")
    if cfg.batch_size < 1:
        raise ConfigError("batch_size must be >= 1")
    for task in cfg.tasks:
        if task.data_type not in ("video", "frame", "gif"):
            raise ConfigError(f"task {task.name!r}: data_type={task.data_type!r}; choose video, frame or gif")
    if cfg.only_tasks and cfg.layout not in ("mvbench", "vcgbench"):
        raise ConfigError(f"only_tasks applies to the mvbench and vcgbench layouts, not layout={cfg.layout!r}")
    if cfg.limit < 0:
        raise ConfigError(f"limit={cfg.limit}: must be >= 0 (0 = every item)")
    if cfg.type != "mcqa":
        j = cfg.judge
        if j.timeout <= 0 or j.max_retries < 0 or j.concurrency < 1:
            raise ConfigError("judge.timeout must be > 0, judge.max_retries >= 0 and judge.concurrency >= 1")
