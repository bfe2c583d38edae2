"""Model settings -> `StllmConfig` (a transformers composite config) and the named presets of the released models.

Sub-configs are transformers' own: `InstructBlipVisionConfig` (EVA ViT-g), `InstructBlipQFormerConfig` and
`LlamaConfig` (Vicuna-7B). The ST-LLM fields follow docs/original.md §1-3; every default is the released models'.
"""

from __future__ import annotations

from typing import Any, TypeVar

from transformers import InstructBlipQFormerConfig, InstructBlipVisionConfig, LlamaConfig, PretrainedConfig

VIDEO_INPUT_MODES = ("all", "mean", "residual")

_Config = TypeVar("_Config", bound=PretrainedConfig)


class StllmConfig(PretrainedConfig):
    """Configuration of `StllmForConditionalGeneration`.

    ST-LLM fields (docs/original.md sections in brackets):
        num_query_tokens: Q-Former queries per frame (32) [1.4].
        video_input: "all" (T*Q tokens), "mean" (Q tokens, frame average) or "residual" (global-local,
            residual_size*Q tokens) [1.7].
        residual_size / residual_hidden_size: local frames and the adapter bottleneck (16 / 1024) [1.7].
        use_mask, mask_ratio_{mean,std,min,max}: dynamic token dropping, r ~ clip(N(0.5, 0.1), 0.1, 0.7) [2.1].
        mvm_decode / mvm_loss_weight: MVM head before the 2 - 2cos loss, weight 1 [1.8, 2.2].
        btadapter, btadapter_depth, btadapter_max_frames, btadapter_drop_path_rate: BT-Adapter branch on the last
            `depth` EVA blocks with a temporal table of 64 rows, drop path linspace(0, 0.1, depth) [1.3].
        qformer_text_input: InstructBLIP-style instruction text into the Q-Former (True) or MiniGPT-4 base [1.4].
        vision_layernorm_eps: eps of LAVIS `ln_vision` (1e-5; the blocks use 1e-6) [1.2].
        video_token_id: placeholder id in `input_ids` where video tokens are scattered. It is not a row of the
            LLM's embedding (default: the text vocabulary size), so the vocabulary stays the original's.
        freeze_vision / freeze_qformer / freeze_llm: the recipe's trainable set [1.11].
        qformer_dropout_in_train: docs/faithfulness.md Q2 [KEEP]: with the BT-Adapter tower the frozen Q-Former follows
            `model.train()` (dropout 0.1 active); with plain EVA it stays in eval mode. "legacy" reproduces this,
            "never" always keeps the frozen Q-Former in eval mode.
        mvm_visual_start: docs/faithfulness.md Q3 [FIX]: None uses each sample's real video position for the MVM slice;
        an int
            (the original's 8 for MiniGPT-4 recipes) reproduces the hard-coded offset.
        vision_autocast_dtype: docs/faithfulness.md Q16 [KEEP]: the vision path runs under this autocast dtype on
            CUDA ("float16" as the original); None disables it.
        vision_autocast_devices: the device types where that autocast applies (["cuda"], the original's; tests add
            "cpu" to run the same dtype plumbing on a CPU).
        mask_rng: which random stream draws the masks when none are given (docs/faithfulness.md, "Random streams and
            decoding"). "stllm" (default): our own generator, reseeded by the trainer from (seed, step), so a
            resumed run draws the same masks; "original": NumPy's global state as the original (ratio, then one
            shuffle per sample), so `np.random.seed(s)` before a forward gives the original's masks exactly.
        num_frames: frames the recipe feeds per video (16 for QA, 64 for conversation); informational default
            for processors and demos.
    """

    model_type = "stllm"
    # transformers still reads this backwards-compatible class-level dict; the base declares it as a classproperty
    sub_configs = {  # pyright: ignore[reportAssignmentType]
        "vision_config": InstructBlipVisionConfig,
        "qformer_config": InstructBlipQFormerConfig,
        "text_config": LlamaConfig,
    }

    def __init__(
        self,
        vision_config: dict | InstructBlipVisionConfig | None = None,
        qformer_config: dict | InstructBlipQFormerConfig | None = None,
        text_config: dict | LlamaConfig | None = None,
        num_query_tokens: int = 32,
        video_input: str = "all",
        residual_size: int = 16,
        residual_hidden_size: int = 1024,
        use_mask: bool = False,
        mask_ratio_mean: float = 0.5,
        mask_ratio_std: float = 0.1,
        mask_ratio_min: float = 0.1,
        mask_ratio_max: float = 0.7,
        mvm_decode: bool = False,
        mvm_loss_weight: float = 1.0,
        btadapter: bool = False,
        btadapter_depth: int = 3,
        btadapter_max_frames: int = 64,
        btadapter_drop_path_rate: float = 0.1,
        qformer_text_input: bool = True,
        vision_layernorm_eps: float = 1e-5,
        video_token_id: int | None = None,
        freeze_vision: bool = True,
        freeze_qformer: bool = True,
        freeze_llm: bool = False,
        qformer_dropout_in_train: str = "legacy",
        mvm_visual_start: int | None = None,
        vision_autocast_dtype: str | None = "float16",
        vision_autocast_devices: list[str] | None = None,
        mask_rng: str = "stllm",
        num_frames: int = 16,
        recipe: str = "custom",
        initializer_range: float = 0.02,
        **kwargs: Any,
    ) -> None:
        self.vision_config = _as_config(InstructBlipVisionConfig, vision_config)
        self.qformer_config = _as_config(InstructBlipQFormerConfig, qformer_config)
        self.text_config = _as_config(LlamaConfig, text_config)
        self.num_query_tokens = num_query_tokens
        self.video_input = video_input
        self.residual_size = residual_size
        self.residual_hidden_size = residual_hidden_size
        self.use_mask = use_mask
        self.mask_ratio_mean = mask_ratio_mean
        self.mask_ratio_std = mask_ratio_std
        self.mask_ratio_min = mask_ratio_min
        self.mask_ratio_max = mask_ratio_max
        self.mvm_decode = mvm_decode
        self.mvm_loss_weight = mvm_loss_weight
        self.btadapter = btadapter
        self.btadapter_depth = btadapter_depth
        self.btadapter_max_frames = btadapter_max_frames
        self.btadapter_drop_path_rate = btadapter_drop_path_rate
        self.qformer_text_input = qformer_text_input
        self.vision_layernorm_eps = vision_layernorm_eps
        self.video_token_id = self.text_config.vocab_size if video_token_id is None else video_token_id
        self.freeze_vision = freeze_vision
        self.freeze_qformer = freeze_qformer
        self.freeze_llm = freeze_llm
        self.qformer_dropout_in_train = qformer_dropout_in_train
        self.mvm_visual_start = mvm_visual_start
        self.vision_autocast_dtype = vision_autocast_dtype
        self.vision_autocast_devices = list(vision_autocast_devices) if vision_autocast_devices else ["cuda"]
        self.mask_rng = mask_rng
        self.num_frames = num_frames
        self.recipe = recipe
        self.initializer_range = initializer_range
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
        self.validate_stllm()

    def validate_stllm(self) -> None:
        """Raise ValueError for ST-LLM settings that cannot work."""
        if self.video_input not in VIDEO_INPUT_MODES:
            raise ValueError(f"video_input must be one of {VIDEO_INPUT_MODES}, got {self.video_input!r}")
        if self.qformer_dropout_in_train not in ("legacy", "never"):
            raise ValueError(
                f"qformer_dropout_in_train must be 'legacy' or 'never', got {self.qformer_dropout_in_train!r}"
            )
        if self.mask_rng not in ("stllm", "original"):
            raise ValueError(f"mask_rng must be 'stllm' or 'original', got {self.mask_rng!r}")
        if not 0.0 <= self.mask_ratio_min <= self.mask_ratio_max < 1.0:
            raise ValueError(
                f"need 0 <= mask_ratio_min <= mask_ratio_max < 1, got {self.mask_ratio_min}, {self.mask_ratio_max}"
            )
        if self.residual_size < 1 or self.num_query_tokens < 1:
            raise ValueError("residual_size and num_query_tokens must be positive")

    def num_video_tokens(self, num_frames: int, video_input: str | None = None) -> int:
        """Number of video placeholder positions for a clip of `num_frames` frames (docs/original.md §1.7).

        A single frame is an image: it always gives `num_query_tokens` tokens (no aggregation, no masking).
        """
        mode = video_input or self.video_input
        q = self.num_query_tokens
        if num_frames == 1 or mode == "mean":
            return q
        if mode == "all":
            return num_frames * q
        return self.residual_size * q

    def frame_size(self) -> int:
        """The vision tower's input size S: frames are (3, S, S)."""
        size = self.vision_config.image_size
        if not isinstance(size, int):
            raise ValueError(f"vision_config.image_size must be a single int (square frames), got {size!r}")
        return size

    def get_text_config(self, *args: Any, **kwargs: Any) -> LlamaConfig:
        return self.text_config


def _as_config(cls: type[_Config], value: Any) -> _Config:
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**{k: v for k, v in value.items() if k != "model_type"})
    raise TypeError(f"expected {cls.__name__} or dict, got {type(value).__name__}")


# ---------------------------------------------------------------------------------------------------------------
# Presets. Full sizes are docs/original.md §1.2 (EVA ViT-g/14 without its last block: 39 x 1408, MLP 6144, 16 heads),
# 1.4 (BERT-base Q-Former, cross-attention every 2nd layer, 30522 + [DEC] words) and 1.6 (Vicuna-7B, +[PAD]).


def eva_vit_g_config(**overrides: Any) -> dict[str, Any]:
    cfg = dict(
        hidden_size=1408,
        intermediate_size=6144,
        num_hidden_layers=39,
        num_attention_heads=16,
        image_size=224,
        patch_size=14,
        hidden_act="gelu",
        layer_norm_eps=1e-6,
        attention_dropout=0.0,
        qkv_bias=True,
        initializer_range=1e-10,
    )
    cfg.update(overrides)
    return cfg


def qformer_base_config(**overrides: Any) -> dict[str, Any]:
    cfg = dict(
        vocab_size=30523,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        max_position_embeddings=512,
        layer_norm_eps=1e-12,
        pad_token_id=0,
        cross_attention_frequency=2,
        encoder_hidden_size=1408,
        initializer_range=0.02,
    )
    cfg.update(overrides)
    return cfg


def vicuna_7b_config(**overrides: Any) -> dict[str, Any]:
    cfg = dict(
        vocab_size=32001,
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        hidden_act="silu",
        max_position_embeddings=2048,
        rms_norm_eps=1e-6,
        rope_theta=10000.0,
        attention_bias=False,
        tie_word_embeddings=False,
        bos_token_id=2,
        eos_token_id=2,
        pad_token_id=32000,
    )
    cfg.update(overrides)
    return cfg


def _preset_stllm_qa() -> StllmConfig:
    # docs/original.md §12: EVA + BT-Adapter, InstructBLIP Q-Former with text, all tokens of 16 frames, masking + MVM.
    return StllmConfig(
        vision_config=eva_vit_g_config(),
        qformer_config=qformer_base_config(),
        text_config=vicuna_7b_config(),
        video_input="all",
        use_mask=True,
        mvm_decode=True,
        btadapter=True,
        num_frames=16,
        recipe="stllm-qa",
    )


def _preset_stllm_conversation() -> StllmConfig:
    # docs/original.md §12: plain EVA, global-local input over 64 frames with 16 local frames, masking + MVM.
    return StllmConfig(
        vision_config=eva_vit_g_config(),
        qformer_config=qformer_base_config(),
        text_config=vicuna_7b_config(),
        video_input="residual",
        residual_size=16,
        use_mask=True,
        mvm_decode=True,
        btadapter=False,
        num_frames=64,
        recipe="stllm-conversation",
    )


def _preset_minigpt4(base: StllmConfig, recipe: str) -> StllmConfig:
    # docs/original.md §1.1, 3.1: BLIP-2 Q-Former without text input, Vicuna v0 with its 32000 words and <s> = 1 as BOS.
    base.qformer_text_input = False
    base.qformer_config.vocab_size = 30522
    base.text_config.vocab_size = 32000
    base.text_config.bos_token_id = 1
    base.text_config.pad_token_id = 0
    base.video_token_id = 32000
    base.recipe = recipe
    return base


def _preset_tiny() -> StllmConfig:
    """A CPU-sized model with the structure of the QA model (BT-Adapter off by default; tests turn it on).

    The vision tower's initializer_range is 0.02, not transformers' 1e-10 (which gives every image the same
    features in a freshly initialised tower).
    """
    return StllmConfig(
        vision_config=eva_vit_g_config(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=3,
            num_attention_heads=4,
            image_size=28,
            patch_size=14,
            initializer_range=0.02,
        ),
        qformer_config=qformer_base_config(
            vocab_size=375,
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            intermediate_size=128,
            encoder_hidden_size=64,
        ),
        text_config=vicuna_7b_config(
            vocab_size=513,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            pad_token_id=512,
        ),
        num_query_tokens=4,
        residual_size=2,
        residual_hidden_size=16,
        video_input="all",
        use_mask=True,
        mvm_decode=True,
        btadapter=False,
        btadapter_depth=2,
        num_frames=4,
        recipe="tiny",
    )


PRESETS = {
    "stllm-qa": _preset_stllm_qa,
    "stllm-conversation": _preset_stllm_conversation,
    "stllm-qa-minigpt4": lambda: _preset_minigpt4(_preset_stllm_qa(), "stllm-qa-minigpt4"),
    "stllm-conversation-minigpt4": lambda: _preset_minigpt4(
        _preset_stllm_conversation(), "stllm-conversation-minigpt4"
    ),
    "tiny": _preset_tiny,
}


def preset_config(name: str, **overrides: Any) -> StllmConfig:
    """A named preset (see PRESETS) with top-level StllmConfig fields overridden."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    cfg = PRESETS[name]()
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise ValueError(f"preset override {key!r} is not a StllmConfig field")
        setattr(cfg, key, value)
    cfg.validate_stllm()
    return cfg
