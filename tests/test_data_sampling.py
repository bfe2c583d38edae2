"""Frame sampling: every mode against indices computed by hand from docs/original.md §4.4 / 7.1 / 7.2."""

from __future__ import annotations

import random

import numpy as np
import pytest

from stllm.data.sampling import FrameSampling, frame_indices


def idx(total, video_fps=30.0, first_idx=0, rng=None, **kw):
    return frame_indices(FrameSampling(**kw), total, video_fps, rng, first_idx=first_idx)


# (total frames, fps, sampling kwargs, expected indices, where it comes from)
CASES = [
    # docs/original.md §4.4 middle: linspace(0,10,5).astype(int) = [0,2,5,7,10] -> (b_k + b_{k+1}-1)//2
    (10, 30.0, dict(num_frames=4, mode="middle"), [0, 3, 5, 8]),
    (16, 30.0, dict(num_frames=16, mode="middle"), list(range(16))),
    # shorter than asked: n = vlen = 3 segments, padded with the last index
    (3, 30.0, dict(num_frames=8, mode="middle"), [0, 1, 2, 2, 2, 2, 2, 2]),
    (7, 30.0, dict(num_frames=4, mode="middle"), [0, 1, 3, 5]),
    # fix_start: b_k + fix_start
    (100, 30.0, dict(num_frames=4, mode="middle", fix_start=1), [1, 26, 51, 76]),
    # window [2 s, 4 s] at 30 fps: vlen = 60, offset 60
    (300, 30.0, dict(num_frames=4, mode="middle", start=2.0, end=4.0), [67, 82, 97, 112]),
    # docs/original.md §7.1 load_video: seg = 9/4 = 2.25; round(4.5) = 4 (half to even), so not [1,3,6,8]
    (10, 30.0, dict(num_frames=4, mode="uniform_middle"), [1, 3, 5, 8]),
    # fewer frames than asked: n = total, no padding (the eval loader returned fewer frames)
    (5, 30.0, dict(num_frames=8, mode="uniform_middle"), [0, 1, 2, 2, 3]),
    # docs/original.md §7.2 get_index, fps-1 rule: 299/30 s -> 9 segments, seg = 299/9
    (300, 30.0, dict(num_frames=0, mode="mvbench"), [16, 49, 82, 116, 149, 182, 215, 249, 282]),
    # bound [1, 3.5] s: start_idx 30, end_idx 105, 2.5 s -> clamped to 4; round(37.5) = 38
    (300, 30.0, dict(num_frames=0, mode="mvbench", start=1.0, end=3.5), [39, 58, 77, 95]),
    # fixed number of segments
    (300, 30.0, dict(num_frames=4, mode="mvbench"), [37, 112, 187, 261]),
    # fps mode: centres every 1 s at 10 fps video -> 5, 15, ..., 95
    (100, 10.0, dict(mode="fps", fps=1.0), [5, 15, 25, 35, 45, 55, 65, 75, 85, 95]),
    (100, 10.0, dict(mode="fps", fps=0.5), [10, 30, 50, 70, 90]),
    # too short for min_frames=4: 4 uniform_middle indices instead
    (20, 10.0, dict(mode="fps", fps=1.0), [2, 7, 12, 16]),
]


@pytest.mark.parametrize("total,fps,kw,expected", CASES)
def test_hand_computed_indices(total, fps, kw, expected):
    assert idx(total, fps, **kw) == expected


def test_uniform_middle_long():
    out = idx(300, num_frames=16, mode="uniform_middle")  # seg = 299/16 = 18.6875
    assert len(out) == 16 and out[0] == 9 and out[1] == 28 and out[-1] == 289


def test_mvbench_long_video_clamped_to_16():
    out = idx(1000, 25.0, num_frames=0, mode="mvbench")  # 39 s -> 16 segments, seg = 999/16
    assert len(out) == 16 and out[:2] == [31, 93] and out[-1] == 968


def test_mvbench_one_based_frame_folder():
    # MVBench tvqa frames: %05d.jpg from 1, fps 3; max_frame = 20 (1-based). Native numbers
    # [2, 5, 8, 12, 15, 18] (round(9.5) = 10) -> 0-based positions in the folder
    assert idx(20, 3.0, first_idx=1, num_frames=0, mode="mvbench") == [1, 4, 7, 11, 14, 17]
    assert idx(16, 3.0, first_idx=1, num_frames=8, mode="mvbench") == [0, 2, 4, 6, 8, 9, 11, 13]


def test_fps_mode_capped_at_max_frames():
    out = idx(100, 10.0, mode="fps", fps=2.0)  # 20 centres, np.around(2.5) = 2, truncated to 16
    assert len(out) == 16 and out[:4] == [2, 8, 12, 18]


def test_rand_never_takes_last_frame_of_a_segment():
    # docs/faithfulness.md Q15: range(b_k, b_{k+1}-1); boundaries [0, 25, 50, 75, 100]
    seen = set()
    for seed in range(300):
        out = idx(100, rng=random.Random(seed), num_frames=4, mode="rand")
        for k, i in enumerate(out):
            assert 25 * k <= i <= 25 * k + 23
        seen.update(out)
    assert {24, 49, 74, 99}.isdisjoint(seen) and {0, 23, 25, 48} <= seen


def test_rand_fallback_when_a_segment_has_one_frame():
    # linspace(0,7,5).astype(int) = [0,1,3,5,7]: the first segment has one frame -> n distinct sorted indices
    for seed in range(50):
        out = idx(7, rng=random.Random(seed), num_frames=4, mode="rand")
        assert out == sorted(out) and len(set(out)) == 4 and all(0 <= i < 7 for i in out)
    assert idx(16, rng=random.Random(1), num_frames=16, mode="rand") == list(range(16))


def test_rand_fallback_streams_default_vs_original():
    """Default: the fallback follows the caller's rng only (NumPy's global state is ignored), so a seeded item
    gets the same frames after a resume; fallback_rng="original" takes np.random.permutation from the global state
    (docs/original.md §4.4, docs/faithfulness.md "Random streams and decoding")."""
    runs = []
    for np_seed in (0, 1):
        np.random.seed(np_seed)
        runs.append(idx(7, rng=random.Random(3), num_frames=4, mode="rand"))
    assert runs[0] == runs[1]
    np.random.seed(11)
    got = idx(7, rng=random.Random(3), num_frames=4, mode="rand", fallback_rng="original")
    np.random.seed(11)
    assert got == sorted(int(i) for i in np.random.permutation(7)[:4])


def test_rand_pads_short_video_and_respects_window():
    assert idx(3, rng=random.Random(0), num_frames=6, mode="rand") == [0, 1, 2, 2, 2, 2]
    out = idx(300, rng=random.Random(0), num_frames=4, mode="rand", start=2.0, end=4.0)
    assert all(60 <= i < 120 for i in out)


def test_rand_is_deterministic_given_the_rng_and_accepts_numpy():
    a = idx(500, rng=random.Random(7), num_frames=16, mode="rand")
    assert a == idx(500, rng=random.Random(7), num_frames=16, mode="rand")
    b = idx(500, rng=np.random.default_rng(7), num_frames=16, mode="rand")
    assert b == idx(500, rng=np.random.default_rng(7), num_frames=16, mode="rand") and len(b) == 16


def test_window_past_the_end_is_clamped():
    assert max(idx(50, 10.0, num_frames=4, mode="middle", start=3.0, end=9.0)) == 49


def test_invalid_settings_and_describe():
    with pytest.raises(ValueError, match="unknown frame sampling mode"):
        FrameSampling(mode="random")
    with pytest.raises(ValueError):
        FrameSampling(num_frames=0, mode="rand")
    d = FrameSampling(num_frames=8, mode="uniform_middle").describe()
    assert d["num_frames"] == 8 and d["mode"] == "uniform_middle" and set(d) >= {"fps", "start", "end"}
