"""Original ST-LLM / LAVIS / Vicuna / HF InstructBLIP checkpoints -> our model folder, strictly, shard by shard.

`python -m stllm convert --from-stllm DIR --recipe qa --out OUT` converts the released weights (docs/original.md
§6.1, §6.3); `--from-lavis --eva F --qformer F --llm DIR` and `--from-hf-instructblip DIR` build the training start
(docs/original.md §6.2).
Every source key is mapped or skipped by a rule with a reason; every model tensor gets a value from a named file
or from an initialisation listed in `conversion_report.json` (docs/design.md decision 3, docs/faithfulness.md
Q6c/Q24/Q25 [FIX]).
The target model exists only on the meta device; tensors flow from one source shard to one output shard.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from stllm.checkpoints.io import CheckpointError, iter_checkpoint
from stllm.checkpoints.keymap import ConversionResult, KeyMappingError, convert_original_state_dict
from stllm.checkpoints.writer import ShardWriter, parse_size
from stllm.config import ConfigError
from stllm.models.configuration import StllmConfig, preset_config
from stllm.models.modeling import StllmForConditionalGeneration

logger = logging.getLogger(__name__)

RECIPES = {
    "qa": "stllm-qa",
    "conversation": "stllm-conversation",
    "qa-minigpt4": "stllm-qa-minigpt4",
    "conversation-minigpt4": "stllm-conversation-minigpt4",
}
BENCHMARKS = {"qa": "MVBench, MSVD-QA, MSRVTT-QA, ActivityNet-QA", "conversation": "VideoChatGPT-Bench (VCGBench)"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
EMBED, ALIAS = "model.embed_tokens.weight", "model.stllm_model.embed_tokens.weight"
VOCAB_KEYS = ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight")
# docs/original.md §1.2/1.3: the original casts every Conv2d/Linear weight and bias of the vision tower (BT-Adapter
# included)
# to fp16 after loading; the q/v biases (our fused qkv.bias), norms, cls/pos embeddings stay fp32.
VIT_FP16 = re.compile(
    r"(vision_model\.embeddings\.patch_embedding|(vision_model\.encoder\.layers|btadapter\.spatial)"
    r"\.\d+(\.layer)?\.(self_attn\.projection|mlp\.fc[12])|btadapter\.temporal\.\d+\."
    r"(self_attn\.projection|temporal_fc))\.(weight|bias)|.*\.self_attn\.qkv\.weight"
)
# New modules that no starting checkpoint holds: they start from the model's own init (docs/original.md §1.3, 1.7, 1.8).
INIT_ALLOWED = re.compile(
    r"btadapter\.(cls_token|position_embedding\.weight|temporal\..+)|mvm_decoder\..+|"
    r"global_adapter\..+"
)
# BLIP-2 stage-1 checkpoint (MiniGPT-4 recipes): heads the original silently ignored with its non-strict load
# (docs/original.md §6.2).
BLIP2_SKIPS = [
    (
        r"(Qformer\.cls|vision_proj|text_proj|itm_head|t5_proj|t5_model|opt_proj|opt_model)\..+|temp",
        "BLIP-2 pre-training head, not part of ST-LLM (the original ignored it, docs/original.md §6.2)",
    )
]
HF_SKIPS = [(r"qformer\.embeddings\.position_ids|.*rotary_emb\.inv_freq", "buffer rebuilt from the config")]


@dataclass
class Source:
    """One input file or directory and how its keys reach the original ST-LLM naming (or ours, `ours=True`)."""

    label: str
    path: Path
    prefix: str = ""
    renames: list[tuple[str, str]] = field(default_factory=list)
    skips: list[tuple[str, str]] = field(default_factory=list)
    ours: bool = False
    fresh_start: bool = True  # a training start: vit fp16 rounding, BT-Adapter spatial copies, vocab resize apply


@dataclass
class Report:
    provenance: dict[str, str] = field(default_factory=dict)  # our key -> file (or "initialised: why")
    skipped: dict[str, str] = field(default_factory=dict)  # "file: source key" -> reason
    problems: list[str] = field(default_factory=list)


def meta_model(config: StllmConfig) -> StllmForConditionalGeneration:
    with torch.device("meta"):
        return StllmForConditionalGeneration(config)


class Converter:
    """Streams sources into a ShardWriter; collects every problem and raises them together at the end."""

    def __init__(
        self, config: StllmConfig, out: Path, dtype: torch.dtype, vit_fp16: bool, max_bytes: int, seed: int
    ) -> None:
        self.config, self.out, self.dtype, self.vit_fp16, self.seed = config, out, dtype, vit_fp16, seed
        self.model = meta_model(config)
        self.expected = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        self.writer = ShardWriter(out, max_bytes)
        self.report = Report()
        self.hashes: dict[str, str] = {}
        self.unknown: list[str] = []
        vc = config.vision_config
        first = vc.num_hidden_layers - config.btadapter_depth
        self.spatial_of = {first + k: k for k in range(config.btadapter_depth)} if config.btadapter else {}

    # ---------------------------------------------------------------------------------------------- streaming
    def add_source(self, src: Source) -> None:
        skips = [(re.compile(p), why) for p, why in src.skips]
        result = ConversionResult(state_dict={})  # q_bias and v_bias may sit in different shards
        for shard, items in iter_checkpoint(src.path):
            unknown: list[str] = []
            for key, tensor in tqdm(items, desc=f"{src.label}: {shard.name}", unit=" tensors", leave=False):
                why = next((w for p, w in skips if p.fullmatch(key)), None)
                if why is not None:
                    self.report.skipped[f"{shard.name}: {key}"] = why
                    continue
                if src.ours:
                    self.emit(key, tensor, shard, src)
                    continue
                okey = src.prefix + key
                for old, new in src.renames:
                    okey = re.sub(old, new, okey)
                if okey in (
                    EMBED,
                    ALIAS,
                ):  # docs/faithfulness.md Q24: the alias must equal the embedding, checked by checksum
                    self.hashes.setdefault(okey, _digest(tensor))
                n_skipped = len(result.skipped)
                convert_original_state_dict({okey: tensor}, result, unknown)
                if len(result.skipped) > n_skipped:
                    self.report.skipped[f"{shard.name}: {key}"] = result.skipped[okey]
                for target in list(result.state_dict):
                    self.emit(target, result.state_dict.pop(target), shard, src)
            self.unknown += [f"{shard}: {k}" for k in unknown]
            del items
            gc.collect()  # drop this shard's (memory-mapped) tensors before opening the next
        if result.pending:
            self.report.problems.append(f"{src.path}: fused q/v biases missing one half: {sorted(result.pending)}")

    def emit(self, target: str, tensor: torch.Tensor, shard: Path | str, src: Source | None) -> None:
        if target not in self.expected:
            self.report.problems.append(f"{shard}: {target} is not a parameter of the model")
            return
        if target in self.report.provenance:
            self.report.problems.append(f"{target} given twice: {self.report.provenance[target]} and {shard}")
            return
        want = self.expected[target]
        if tuple(tensor.shape) != want:
            fitted = self.fit_shape(target, tensor, want, shard, src)
            if fitted is None:
                return
            tensor = fitted
        fresh = src is None or src.fresh_start
        if self.vit_fp16 and fresh and VIT_FP16.fullmatch(target):
            tensor = tensor.to(
                torch.float16
            )  # docs/original.md §1.2 `vit_precision fp16`: values rounded as the original's
        self.writer.add(target, tensor.to(self.dtype).contiguous())
        self.report.provenance[target] = str(shard)
        layer = re.fullmatch(r"vision_model\.encoder\.layers\.(\d+)\.(.+)", target)
        if (
            fresh and layer and int(layer.group(1)) in self.spatial_of
        ):  # docs/original.md §1.3: spatial = copy of EVA block
            copy = f"btadapter.spatial.{self.spatial_of[int(layer.group(1))]}.layer.{layer.group(2)}"
            self.emit(copy, tensor.clone(), f"{shard} (copy of {target})", src)

    def fit_shape(
        self, target: str, tensor: torch.Tensor, want: tuple, shard: Path | str, src: Source | None
    ) -> torch.Tensor | None:
        rows = want[0] - tensor.shape[0]
        if src is not None and src.fresh_start and target in VOCAB_KEYS and rows > 0 and tensor.shape[1:] == want[1:]:
            # docs/original.md §1.6: Vicuna's 32000 rows + [PAD]; transformers 4.28 initialised new rows N(0, 0.02)
            g = torch.Generator().manual_seed(self.seed + VOCAB_KEYS.index(target))
            new = torch.randn((rows, *want[1:]), generator=g) * self.config.text_config.initializer_range
            self.report.provenance[f"{target}[{tensor.shape[0]}:]"] = (
                "initialised: N(0, 0.02) rows for [PAD] (docs/original.md §1.6)"
            )
            return torch.cat([tensor.float(), new]).to(tensor.dtype)
        self.report.problems.append(f"{shard}: {target} has shape {tuple(tensor.shape)}, the model needs {want}")
        return None

    # ----------------------------------------------------------------------------------------------- the end
    def initialise_missing(self) -> None:
        """New modules (BT-Adapter temporal, tables, MVM decoder, global adapter) from the model's own init."""
        missing = [k for k in self.expected if k not in self.report.provenance and INIT_ALLOWED.fullmatch(k)]
        if not missing:
            return
        torch.manual_seed(self.seed)
        roots = sorted({k.split(".")[0] for k in missing})
        for root in roots:
            module = self.model.get_submodule(root).to_empty(device="cpu")
            for sub in _post_order(module):  # children first, as transformers' initialize_weights
                self.model._init_weights(sub)
            params = dict(module.state_dict())
            for k in missing:
                if k.startswith(root + "."):
                    self.emit(
                        k,
                        params[k[len(root) + 1 :]].clone(),
                        "initialised (model init, docs/original.md §1.3/1.7/1.8)",
                        None,
                    )

    def finish(self, allow_init: bool) -> Report:
        if allow_init:
            self.initialise_missing()
        r = self.report
        if self.unknown:
            r.problems.append(f"{len(self.unknown)} source keys have no mapping rule: {sorted(self.unknown)}")
        if EMBED in self.hashes and ALIAS in self.hashes and self.hashes[EMBED] != self.hashes[ALIAS]:
            r.problems.append(
                f"{ALIAS} differs from {EMBED}: the alias must be the same tensor (docs/faithfulness.md Q24)"
            )
        missing = sorted(k for k in self.expected if k not in r.provenance)
        if missing:
            r.problems.append(f"{len(missing)} model keys have no value in any source: {missing}")
        if r.problems:
            self.writer.abort()
            raise KeyMappingError("conversion failed:\n  " + "\n  ".join(r.problems))
        self.writer.finish()
        return r


def _post_order(module: torch.nn.Module) -> list[torch.nn.Module]:
    out = []
    for child in module.children():
        out += _post_order(child)
    return out + [module]


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().data).hexdigest()


# ------------------------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m stllm convert", description=__doc__.splitlines()[0] if __doc__ else None
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--from-stllm", type=Path, metavar="DIR", help="released QA_weight / conversation_weight")
    src.add_argument("--from-lavis", action="store_true", help="training start: --eva, --qformer, --llm")
    src.add_argument("--from-hf-instructblip", type=Path, metavar="DIR", help="transformers InstructBLIP directory")
    p.add_argument("--recipe", choices=sorted(RECIPES), required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--eva", type=Path, help="LAVIS eva_vit_g.pth")
    p.add_argument(
        "--qformer",
        type=Path,
        help="instruct_blip_vicuna7b_trimmed.pth (blip2_pretrained_flant5xxl.pth for the minigpt4 recipes)",
    )
    p.add_argument("--projection", type=Path, help="minigpt4 recipes: MiniGPT-4 stage-1 file with llama_proj.*")
    p.add_argument("--llm", type=Path, help="Vicuna HF directory (model.* / lm_head.*)")
    p.add_argument("--config", type=Path, help="StllmConfig JSON (or a model dir) instead of the recipe's preset")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: float16 for --from-stllm, else float32")
    p.add_argument(
        "--vit-fp16",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="round EVA/BT-Adapter linear weights through fp16 as the original (training starts)",
    )
    p.add_argument("--llm-tokenizer", type=Path, help="Llama tokenizer.model (default: from the LLM/source dir)")
    p.add_argument("--qformer-vocab", type=Path, help="BERT vocab.txt (default: from the source dir)")
    p.add_argument(
        "--no-tokenizer",
        action="store_true",
        help="write weights only (the directory then needs tokenizer files before eval or the demos)",
    )
    p.add_argument("--max-shard-size", default="2GB")
    p.add_argument("--seed", type=int, default=0, help="seed of the initialised new modules and [PAD] rows")
    return p


def load_target_config(args: argparse.Namespace) -> StllmConfig:
    if args.config is None:
        return preset_config(RECIPES[args.recipe])
    path = args.config / "config.json" if args.config.is_dir() else args.config
    try:
        return StllmConfig.from_json_file(str(path))
    except (OSError, ValueError, TypeError) as err:  # missing, not UTF-8 / JSON (ValueErrors), bad values
        raise ConfigError(f"--config {path}: not a readable StllmConfig JSON ({str(err).splitlines()[0]})") from err


def sources_for(args: argparse.Namespace, config: StllmConfig) -> list[Source]:
    if args.from_stllm is not None:
        return [Source("ST-LLM checkpoint", args.from_stllm, fresh_start=False)]
    if args.from_hf_instructblip is not None:
        return [Source("HF InstructBLIP", args.from_hf_instructblip, ours=True, skips=HF_SKIPS)]
    need = {"--eva": args.eva, "--qformer": args.qformer, "--llm": args.llm}
    if not config.qformer_text_input:
        need["--projection"] = args.projection
    if None in need.values():
        raise SystemExit(f"--from-lavis needs {', '.join(k for k, v in need.items() if v is None)}")
    v, m = "model.stllm_model.visual_encoder.", "model.stllm_model."
    qformer = Source("Q-Former", args.qformer, m, renames=[(r"^model\.stllm_model\.llm_proj\.", m + "llama_proj.")])
    if not config.qformer_text_input:
        qformer.skips = BLIP2_SKIPS
    srcs = [Source("EVA ViT-g", args.eva, v), qformer, Source("Vicuna", args.llm)]
    if args.projection is not None:
        srcs.append(Source("projection", args.projection, m))
    return srcs


def default_tokenizer_files(args: argparse.Namespace) -> tuple[Path | None, Path | None]:
    roots = [d for d in (args.from_stllm, args.llm, args.from_hf_instructblip) if d is not None and d.is_dir()]
    tok = args.llm_tokenizer or next((d / "tokenizer.model" for d in roots if (d / "tokenizer.model").is_file()), None)
    vocab = args.qformer_vocab or next(
        (f for d in roots for f in (d / "vocab.txt", d / "qformer_tokenizer" / "vocab.txt") if f.is_file()), None
    )
    return tok, vocab


def save_tokenizers(config: StllmConfig, out: Path, tok: Path | None, vocab: Path | None) -> bool:
    """docs/original.md §3.1 special-token setup through the processor; False when there are no files
    (--no-tokenizer)."""
    if tok is None or vocab is None:
        return False
    from stllm.data.processor import (
        StllmProcessor,
    )  # models never import data at module level (docs/design.md decision 3)

    vocab_dir = vocab.parent if vocab.name == "vocab.txt" else vocab
    StllmProcessor.from_files(config, tok, vocab_dir).save_pretrained(out)
    return True


def model_card(args: argparse.Namespace, config: StllmConfig, sources: list[Source], dtype: torch.dtype) -> str:
    base = args.recipe.split("-")[0]
    kind = "the released ST-LLM weights" if args.from_stllm else "a training start (not trained for ST-LLM yet)"
    lines = [
        f"# ST-LLM ({args.recipe})",
        "",
        f"Converted by `python -m stllm convert` from {kind}.",
        "",
        f"- recipe: {args.recipe} (preset {config.recipe}), video input `{config.video_input}`, "
        f"{config.num_frames} frames, BT-Adapter {'on' if config.btadapter else 'off'}",
        f"- meant for: {BENCHMARKS[base]}",
        f"- dtype: {str(dtype).replace('torch.', '')}",
        "- sources: " + "; ".join(f"{s.label}: `{s.path.name}`" for s in sources),
        "- provenance of every tensor and every skipped source key: `conversion_report.json`",
        "",
        "Paper: ST-LLM, Liu et al. 2024 (arXiv 2404.00308).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    config = load_target_config(args)
    dtype = DTYPES[args.dtype or ("float16" if args.from_stllm else "float32")]
    sources = sources_for(args, config)
    tokenizer_files = default_tokenizer_files(args)
    if None in tokenizer_files and not args.no_tokenizer:
        # checked before the (long) conversion: a model directory without tokenizer files cannot be evaluated
        missing = [
            flag
            for flag, f in zip(("--llm-tokenizer tokenizer.model", "--qformer-vocab vocab.txt"), tokenizer_files)
            if f is None
        ]
        raise SystemExit(
            f"convert: no tokenizer found in the source directories; pass {' and '.join(missing)} "
            f"(the released weights ship none, docs/original.md §5.4), or --no-tokenizer to write weights only"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    conv = Converter(config, args.out, dtype, args.vit_fp16, parse_size(args.max_shard_size), args.seed)
    try:
        for src in sources:
            logger.info("reading %s from %s", src.label, src.path)
            conv.add_source(src)
        report = conv.finish(allow_init=args.from_stllm is None)
    except (CheckpointError, KeyMappingError):
        conv.writer.abort()
        raise
    config.dtype = dtype
    config.save_pretrained(args.out)
    has_tok = save_tokenizers(config, args.out, *tokenizer_files)
    (args.out / "README.md").write_text(model_card(args, config, sources, dtype))
    (args.out / "conversion_report.json").write_text(
        json.dumps(
            {
                "sources": {s.label: str(s.path) for s in sources},
                "tensors": report.provenance,
                "skipped_source_keys": report.skipped,
                "tokenizer": has_tok,
            },
            indent=1,
        )
    )
    counts: dict[str, int] = {}
    for origin in report.provenance.values():
        counts[origin.split(" (copy")[0]] = counts.get(origin.split(" (copy")[0], 0) + 1
    print(f"converted {len(conv.expected)} tensors into {args.out}")
    for origin, n in sorted(counts.items()):
        print(f"  {n:5d} from {origin}")
    reasons: dict[str, int] = {}
    for why in report.skipped.values():
        reasons[why] = reasons.get(why, 0) + 1
    for why, n in sorted(reasons.items()):
        print(f"  {n:5d} source keys skipped: {why}")
    init = sorted(k for k, v in report.provenance.items() if v.startswith("initialised"))
    if init:
        print(f"  initialised ({len(init)}): {', '.join(init)}")
    return 0
