"""Original ST-LLM / LAVIS parameter names -> ours: a rule for every key, skips only with a stated reason.

The original names come from docs/original.md §6.1 (`model.*`, `model.stllm_model.*`, `lm_head.*`);
tests/data/checkpoint-keys lists those of the released checkpoints. EVA's separate `q_bias`/`v_bias` become
transformers' single `qkv.bias` = cat(q, 0, v): the original's key bias is a fixed zero (docs/original.md §1.2), so
nothing is lost. `original_key_list` runs the rules backwards: a config -> the original checkpoint's names, shapes and
dtypes (what `python -m stllm bench convert` writes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from stllm.errors import StllmError
from stllm.models.configuration import StllmConfig
from stllm.models.modeling import StllmForConditionalGeneration

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


class KeyMappingError(StllmError, ValueError):
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


# ------------------------------------------------------------------------------------------ ours -> original
EMBED_ALIAS = "model.stllm_model.embed_tokens.weight"  # the LLM input embedding registered a second time


def _original_order() -> list[str]:
    """The original's state_dict order (its module registration order); `#` stands for a block / layer index."""
    m, v, q = "model.stllm_model.", "model.stllm_model.visual_encoder.", "model.stllm_model.Qformer.bert."
    wb = ("weight", "bias")
    eva_block = [f"norm1.{x}" for x in wb] + ["attn.q_bias", "attn.v_bias", "attn.qkv.weight"]
    eva_block += [f"attn.proj.{x}" for x in wb] + [f"norm2.{x}" for x in wb]
    eva_block += [f"mlp.{fc}.{x}" for fc in ("fc1", "fc2") for x in wb]
    bt_temporal = ["attn.q_bias", "attn.v_bias", "attn.qkv.weight"] + [f"attn.proj.{x}" for x in wb]
    bt_temporal += [f"norm1.{x}" for x in wb] + [f"temporal_fc.{x}" for x in wb]
    attention = [f"self.{p}.{x}" for p in ("query", "key", "value") for x in wb]
    attention += [f"output.{p}.{x}" for p in ("dense", "LayerNorm") for x in wb]
    qformer_layer = [f"{a}.{x}" for a in ("attention", "crossattention") for x in attention]
    qformer_layer += [f"intermediate.dense.{x}" for x in wb]
    qformer_layer += [f"output.{p}.{x}" for p in ("dense", "LayerNorm") for x in wb]
    qformer_layer += [f"intermediate_query.dense.{x}" for x in wb]
    qformer_layer += [f"output_query.{p}.{x}" for p in ("dense", "LayerNorm") for x in wb]
    order = ["model.embed_tokens.weight"]
    order += [f"model.layers.#.self_attn.{p}_proj.weight" for p in "qkvo"]
    order += ["model.layers.#.self_attn.rotary_emb.inv_freq"]  # transformers 4.28 only
    order += [f"model.layers.#.mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    order += [f"model.layers.#.{p}.weight" for p in ("input_layernorm", "post_attention_layernorm")]
    order += ["model.norm.weight", m + "query_tokens", m + "residual_index"]
    order += [f"{m}{p}.{x}" for p in ("down_proj", "up_proj", "mvm_decoder.head", "mvm_decoder.norm") for x in wb]
    order += [v + "cls_token", v + "pos_embed", v + "BTAdapter_cls"] + [f"{v}patch_embed.proj.{x}" for x in wb]
    order += [v + "blocks.#." + k for k in eva_block] + [v + "BTAdapter_S.#." + k for k in eva_block]
    order += [v + "BTAdapter_T.#." + k for k in bt_temporal] + [v + "BTAdapter_position.weight"]
    order += [f"{m}ln_vision.{x}" for x in wb] + [q + "embeddings.position_ids"]
    order += [f"{q}embeddings.{p}.weight" for p in ("word_embeddings", "position_embeddings")]
    order += [f"{q}embeddings.LayerNorm.{x}" for x in wb] + [q + "encoder.layer.#." + k for k in qformer_layer]
    order += [f"{m}llama_proj.{x}" for x in wb] + [EMBED_ALIAS, "lm_head.weight"]
    return order


_ORDER = {name: rank for rank, name in enumerate(_original_order())}
_INDEX = re.compile(r"\.(\d+)\.")


def original_order_key(name: str) -> tuple:
    """Sort key that puts original names in the original's state_dict order (block by block, as modules nest)."""
    template = _INDEX.sub(".#.", name)
    if template not in _ORDER:
        raise KeyMappingError(f"{name!r} has no place in the original's key order")
    group = template.split("#")[0]  # every key of one block sorts together, blocks by index
    first = min(r for t, r in _ORDER.items() if t.split("#")[0] == group)
    return first, tuple(int(i) for i in _INDEX.findall(name)), _ORDER[template]


# docs/original.md §1.2/1.3/6.1: the released checkpoints hold the LLM in float16 (loaded with torch_dtype float16),
# the vision tower's Conv2d/Linear weights and biases in float16 (BT-Adapter included; the original casts them after
# loading), the integer buffers as int64 and everything else (q/v biases, norms, cls/pos embeddings, Q-Former,
# projection, adapters, MVM decoder, RoPE inv_freq) in float32.
_FP16 = re.compile(
    r"(model\.embed_tokens|model\.norm|lm_head|model\.stllm_model\.embed_tokens)\.weight"
    r"|model\.layers\.\d+\.(?!self_attn\.rotary_emb\.).+"
    r"|model\.stllm_model\.visual_encoder\.(patch_embed\.proj|(blocks|BTAdapter_S)\.\d+\.(attn\.proj|mlp\.fc[12])"
    r"|BTAdapter_T\.\d+\.(attn\.proj|temporal_fc))\.(weight|bias)"
    r"|model\.stllm_model\.visual_encoder\.(blocks|BTAdapter_S|BTAdapter_T)\.\d+\.attn\.qkv\.weight"
)
_INT64 = re.compile(r"model\.stllm_model\.(residual_index|Qformer\.bert\.embeddings\.position_ids)")


def original_dtype(name: str) -> str:
    """The dtype (torch name without `torch.`) a tensor of the released ST-LLM checkpoints is stored in."""
    if _INT64.fullmatch(name):
        return "int64"
    return "float16" if _FP16.fullmatch(name) else "float32"


_GROUP = re.compile(r"\(([^()]*)\)")
_BACKREF = re.compile(r"\\(\d)")


@dataclass
class _InverseRule:
    ours: re.Pattern  # matches our name; group gK holds what the original rule's group K captured
    pieces: list[str]  # the original name: literal text at even positions, group names (gK) at odd ones
    slot: str | None = None  # gK of a fused q/v bias: the original has one key per alternative of that group
    slot_values: tuple[str, ...] = ()


def _invert_rule(pattern: str, replacement: str) -> _InverseRule:
    """An original->ours rule (literal text and capture groups, nothing else) turned around."""
    groups = _GROUP.findall(pattern)
    rule = _InverseRule(re.compile(""), [])
    if "#" in replacement:
        replacement, slot_ref = replacement.split("#")
        ref_match = _BACKREF.fullmatch(slot_ref)
        if ref_match is None:
            raise ValueError(f"rule {pattern!r}: slot reference {slot_ref!r} is not a back-reference")
        k = int(ref_match.group(1))
        rule.slot, rule.slot_values = f"g{k}", tuple(groups[k - 1].split("|"))
    ours, pos = "", 0
    for ref in _BACKREF.finditer(replacement):
        k = int(ref.group(1))
        ours += re.escape(replacement[pos : ref.start()]) + f"(?P<g{k}>{groups[k - 1]})"
        pos = ref.end()
    rule.ours = re.compile(ours + re.escape(replacement[pos:]))
    pos = 0
    for k, group in enumerate(_GROUP.finditer(pattern), start=1):
        rule.pieces += [re.sub(r"\\(.)", r"\1", pattern[pos : group.start()]), f"g{k}"]
        pos = group.end()
    rule.pieces.append(re.sub(r"\\(.)", r"\1", pattern[pos:]))
    return rule


_INVERSE = [_invert_rule(p, r) for p, r in _rules()]


def invert_key(key: str) -> list[str]:
    """Our parameter name -> the original name(s): q_bias and v_bias for a fused qkv bias, else one name.

    Every answer is checked by running it forwards through `map_original_key`.
    """
    for rule in _INVERSE:
        match = rule.ours.fullmatch(key)
        if match is None:
            continue
        values = match.groupdict()
        names = []
        for slot_value in rule.slot_values or (None,):
            if rule.slot is not None:
                values[rule.slot] = slot_value
            name = "".join(values[p] if i % 2 else p for i, p in enumerate(rule.pieces))
            back = map_original_key(name)
            if back is None or back.target != key or back.slot != slot_value:
                raise KeyMappingError(f"inverting {key!r} gave {name!r}, which maps back to {back}")
            names.append(name)
        return names
    raise KeyMappingError(f"no mapping rule produces our key {key!r}")


def original_key_list(config: StllmConfig) -> list[tuple[str, tuple[int, ...], str]]:
    """[(original name, shape, dtype name)] of an original ST-LLM checkpoint of this model, in the original's order.

    Every persistent tensor of our model on the meta device, named back: the fused EVA `qkv.bias` (3D) becomes
    `q_bias` and `v_bias` (D each), the LLM input embedding also appears as its alias `model.stllm_model.embed_tokens
    .weight`, and the original's persistent buffers are added: the Q-Former `position_ids` (1, max positions) and,
    for the global-local input, `residual_index` (residual_size) (docs/original.md §1.7, §6.1). Without Q-Former text
    input the original has no word/position embeddings and no text FFNs (docs/original.md §1.4), so they are left
    out. Dtypes follow the released checkpoints (`original_dtype`). The list is what the original saves under the
    transformers of its reference runs (4.40); transformers 4.28 also wrote one `model.layers.N.self_attn.rotary_emb
    .inv_freq` (head_dim / 2, float32) per LLM layer, which the converter skips.
    """
    with torch.device("meta"):
        model = StllmForConditionalGeneration(config)
    entries: list[tuple[str, tuple[int, ...]]] = []
    for key, tensor in model.state_dict().items():
        names = invert_key(key)
        shape = tuple(tensor.shape)
        if len(names) == 2:  # cat(q, 0, v): the zero key bias is not stored
            shape = (shape[0] // 3,)
        entries += [(name, shape) for name in names]
        if names == ["model.embed_tokens.weight"]:
            entries.append((EMBED_ALIAS, shape))
    q = "model.stllm_model.Qformer.bert."
    entries.append((q + "embeddings.position_ids", (1, config.qformer_config.max_position_embeddings)))
    if config.video_input == "residual":
        entries.append(("model.stllm_model.residual_index", (config.residual_size,)))
    if not config.qformer_text_input:
        text_only = re.compile(
            re.escape(q)
            + r"(embeddings\.(word|position)_embeddings\.weight|encoder\.layer\.\d+\.(intermediate|output)\..+)"
        )
        entries = [e for e in entries if not text_only.fullmatch(e[0])]
    entries.sort(key=lambda e: original_order_key(e[0]))
    return [(name, shape, original_dtype(name)) for name, shape in entries]
