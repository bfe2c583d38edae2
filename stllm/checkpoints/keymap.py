"""Original ST-LLM / LAVIS parameter names -> ours: a rule for every key, skips only with a stated reason.

The original names come from docs/original.md §6.1 (`model.*`, `model.stllm_model.*`, `lm_head.*`); ../shared/checkpoint-keys
lists them all. EVA's separate `q_bias`/`v_bias` become transformers' single `qkv.bias` = cat(q, 0, v): the
original's key bias is a fixed zero (docs/original.md §1.2), so nothing is lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

# (pattern, replacement) tried in order; the first full match wins.
_EVA_BLOCK = [
    (r"norm1\.(weight|bias)", r"layer_norm1.\1"),
    (r"norm2\.(weight|bias)", r"layer_norm2.\1"),
    (r"attn\.qkv\.weight", r"self_attn.qkv.weight"),
    (r"attn\.(q_bias|v_bias)", r"self_attn.qkv.bias#\1"),
    (r"attn\.proj\.(weight|bias)", r"self_attn.projection.\1"),
    (r"mlp\.(fc1|fc2)\.(weight|bias)", r"mlp.\1.\2"),
]
_BT_TEMPORAL = [
    (r"norm1\.(weight|bias)", r"layer_norm.\1"),
    (r"attn\.qkv\.weight", r"self_attn.qkv.weight"),
    (r"attn\.(q_bias|v_bias)", r"self_attn.qkv.bias#\1"),
    (r"attn\.proj\.(weight|bias)", r"self_attn.projection.\1"),
    (r"temporal_fc\.(weight|bias)", r"temporal_fc.\1"),
]
_QFORMER_LAYER = [
    (r"(attention|crossattention)\.self\.(query|key|value)\.(weight|bias)", r"\1.attention.\2.\3"),
    (r"(attention|crossattention)\.output\.(dense|LayerNorm)\.(weight|bias)", r"\1.output.\2.\3"),
    (r"(intermediate|intermediate_query)\.dense\.(weight|bias)", r"\1.dense.\2"),
    (r"(output|output_query)\.(dense|LayerNorm)\.(weight|bias)", r"\1.\2.\3"),
]

SKIP_RULES: list[tuple[str, str]] = [
    (
        r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq",
        "RoPE frequencies are a buffer recomputed from the config",
    ),
    (
        r"model\.stllm_model\.embed_tokens\.weight",
        "alias of model.embed_tokens.weight (the same tensor, docs/faithfulness.md Q24)",
    ),
    (
        r"model\.stllm_model\.residual_index",
        "cached local-frame indices, recomputed from T at every call (docs/faithfulness.md Q4)",
    ),
    (r"model\.stllm_model\.Qformer\.bert\.embeddings\.position_ids", "arange buffer, rebuilt by the Q-Former"),
]


def _rules() -> list[tuple[str, str]]:
    v = r"model\.stllm_model\.visual_encoder\."
    q = r"model\.stllm_model\.Qformer\.bert\."
    rules = [
        (r"model\.embed_tokens\.weight", "language_model.model.embed_tokens.weight"),
        (r"model\.norm\.weight", "language_model.model.norm.weight"),
        (r"model\.layers\.(\d+)\.(.+)", r"language_model.model.layers.\1.\2"),
        (r"lm_head\.weight", "language_model.lm_head.weight"),
        (r"model\.stllm_model\.query_tokens", "query_tokens"),
        (r"model\.stllm_model\.llama_proj\.(weight|bias)", r"language_projection.\1"),
        (r"model\.stllm_model\.mvm_decoder\.(head|norm)\.(weight|bias)", r"mvm_decoder.\1.\2"),
        (r"model\.stllm_model\.(down_proj|up_proj)\.(weight|bias)", r"global_adapter.\1.\2"),
        (r"model\.stllm_model\.ln_vision\.(weight|bias)", r"vision_model.post_layernorm.\1"),
        (v + r"cls_token", "vision_model.embeddings.class_embedding"),
        (v + r"pos_embed", "vision_model.embeddings.position_embedding"),
        (v + r"patch_embed\.proj\.(weight|bias)", r"vision_model.embeddings.patch_embedding.\1"),
        (v + r"BTAdapter_cls", "btadapter.cls_token"),
        (v + r"BTAdapter_position\.weight", "btadapter.position_embedding.weight"),
        (q + r"embeddings\.(word_embeddings|position_embeddings)\.weight", r"qformer.embeddings.\1.weight"),
        (q + r"embeddings\.LayerNorm\.(weight|bias)", r"qformer.embeddings.layernorm.\1"),
    ]
    rules += [(v + r"blocks\.(\d+)\." + p, r"vision_model.encoder.layers.\1." + r) for p, r in _shift(_EVA_BLOCK, 1)]
    rules += [(v + r"BTAdapter_S\.(\d+)\." + p, r"btadapter.spatial.\1.layer." + r) for p, r in _shift(_EVA_BLOCK, 1)]
    rules += [(v + r"BTAdapter_T\.(\d+)\." + p, r"btadapter.temporal.\1." + r) for p, r in _shift(_BT_TEMPORAL, 1)]
    rules += [
        (q + r"encoder\.layer\.(\d+)\." + p, r"qformer.encoder.layer.\1." + r) for p, r in _shift(_QFORMER_LAYER, 1)
    ]
    return rules


def _shift(rules: list[tuple[str, str]], by: int) -> list[tuple[str, str]]:
    """Renumber back-references \\k -> \\(k+by) so a prefix group can come first."""
    return [(p, re.sub(r"\\(\d)", lambda m: "\\" + str(int(m.group(1)) + by), r)) for p, r in rules]


_COMPILED = [(re.compile(p), r) for p, r in _rules()]
_SKIPS = [(re.compile(p), why) for p, why in SKIP_RULES]


class KeyMappingError(ValueError):
    """Source keys without a rule, or a converted state dict that does not fit the model."""


@dataclass
class MappedKey:
    target: str  # our parameter name
    slot: str | None = None  # "q_bias" / "v_bias" for the pieces of a fused qkv bias


def skip_reason(key: str) -> str | None:
    for pattern, why in _SKIPS:
        if pattern.fullmatch(key):
            return why
    return None


def map_original_key(key: str) -> MappedKey | None:
    """Original name -> our name (None if a skip rule applies). Raises KeyMappingError for an unknown key."""
    if skip_reason(key) is not None:
        return None
    for pattern, repl in _COMPILED:
        if pattern.fullmatch(key):
            target = pattern.sub(repl, key)
            if "#" in target:
                target, slot = target.split("#")
                return MappedKey(target, slot)
            return MappedKey(target)
    raise KeyMappingError(f"no mapping rule for original key {key!r}")


@dataclass
class ConversionResult:
    state_dict: dict[str, torch.Tensor]
    skipped: dict[str, str] = field(default_factory=dict)  # source key -> reason
    pending: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # fused bias waiting for its pair


def convert_original_state_dict(
    source: dict[str, torch.Tensor], result: ConversionResult | None = None, unknown: list[str] | None = None
) -> ConversionResult:
    """Map a (part of an) original state dict; call repeatedly with the same `result` for shard-by-shard use.

    q_bias and v_bias of one attention may arrive in different shards: they wait in `result.pending` until both
    are seen. Unknown keys are appended to `unknown` when given (so all can be reported at once), else raised.
    """
    result = result or ConversionResult(state_dict={})
    for key, tensor in source.items():
        try:
            mapped = map_original_key(key)
        except KeyMappingError:
            if unknown is None:
                raise
            unknown.append(key)
            continue
        if mapped is None:
            result.skipped[key] = skip_reason(key) or ""
            continue
        if mapped.slot is None:
            result.state_dict[mapped.target] = tensor
            continue
        parts = result.pending.setdefault(mapped.target, {})
        parts[mapped.slot] = tensor
        if len(parts) == 2:
            q, v = parts["q_bias"], parts["v_bias"]
            result.state_dict[mapped.target] = torch.cat([q, torch.zeros_like(q), v])  # fixed zero key bias
            del result.pending[mapped.target]
    return result


def expected_state_keys(model: torch.nn.Module) -> dict[str, tuple[int, ...]]:
    """Persistent parameters and buffers of `model` -> shape."""
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def check_state_dict_fits(
    state: dict[str, torch.Tensor] | dict[str, tuple[int, ...]],
    model: torch.nn.Module,
    source: str = "checkpoint",
    pending: dict | None = None,
) -> None:
    """Raise KeyMappingError listing missing, unexpected and wrong-shape keys (all of them, not the first)."""
    want = expected_state_keys(model)
    have = {k: tuple(v.shape) if isinstance(v, torch.Tensor) else tuple(v) for k, v in state.items()}
    missing = sorted(set(want) - set(have))
    unexpected = sorted(set(have) - set(want))
    shapes = sorted(
        f"{k}: {have[k]} in {source}, {want[k]} in the model" for k in set(want) & set(have) if have[k] != want[k]
    )
    problems = []
    if pending:
        problems.append(f"fused q/v biases missing one half: {sorted(pending)}")
    if missing:
        problems.append(f"{len(missing)} model keys have no value in {source}: {missing}")
    if unexpected:
        problems.append(f"{len(unexpected)} keys of {source} are not in the model: {unexpected}")
    if shapes:
        problems.append(f"{len(shapes)} shape mismatches: {shapes}")
    if problems:
        raise KeyMappingError(f"{source} does not fit the model:\n  " + "\n  ".join(problems))


def load_original_state_dict(
    model: torch.nn.Module, source: dict[str, torch.Tensor], name: str = "checkpoint"
) -> dict[str, str]:
    """Convert an original-named state dict and load it strictly; returns the skipped keys with reasons."""
    unknown: list[str] = []
    result = convert_original_state_dict(source, unknown=unknown)
    if unknown:
        raise KeyMappingError(f"{name}: {len(unknown)} keys have no mapping rule: {sorted(unknown)}")
    check_state_dict_fits(result.state_dict, model, name, result.pending)
    model.load_state_dict(result.state_dict, strict=True)
    return result.skipped
