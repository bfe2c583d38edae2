"""Option matching, aggregation, prompt strings and protocol YAMLs against docs/original.md §7.0-7.5 (pure, fast)."""

from __future__ import annotations

import pytest

from stllm.config import load_config
from stllm.eval.config import EvalConfig, PromptConfig, validate
from stllm.eval.judge import build_messages, parse_reply
from stllm.eval.metrics import check_ans, check_ans_strict, score_mcqa, score_open_qa, score_vcgbench
from stllm.eval.prompts import build_prompt, mcqa_prediction, mcqa_question
from stllm.generation import postprocess, strip_leading_special
from tests.eval_layouts import CONFIGS

GT = "(A) walking slowly."

# (prediction, loose match per docs/original.md §7.2 check_ans, strict match)
MATCH_CASES = [
    ("(A) walking slowly.", True, True),
    ("(a", True, False),  # substring of "(a)"
    ("(a)", True, True),
    ("(a).", True, True),  # dots removed
    ("(a)xyz", True, False),  # gt option is a substring of the prediction's first word
    ("(", True, False),  # Q8: a bare "(" matches every answer
    ("(A)", True, True),  # case-insensitive
    ("(B) running", False, False),
    ("(b", False, False),
    ("A) walking", True, False),  # "a)" is a substring of "(a)": loose match, not an option in "(X)" form
    ("(AB) both", False, False),
    ("", True, False),  # empty first word is a substring of anything
]


@pytest.mark.parametrize("pred,loose,strict", MATCH_CASES)
def test_check_ans_table(pred: str, loose: bool, strict: bool) -> None:
    assert check_ans(pred, GT) is loose
    assert check_ans_strict(pred, GT) is strict


def test_score_mcqa_total_vs_macro_and_errors() -> None:
    recs = [
        {"task": "t1", "pred": "(A) x", "answer": "(A) x"},
        {"task": "t1", "pred": "(", "answer": "(B) y"},
        {"task": "t1", "pred": "(C) z", "answer": "(B) y"},
        {"task": "t2", "pred": "(B) y", "answer": "(A) x"},
        {"task": "t2", "id": "bad", "error": "MediaError: x"},
    ]
    m = score_mcqa(recs)
    assert m["tasks"]["t1"]["correct"] == 2 and m["tasks"]["t1"]["strict_correct"] == 1
    assert m["tasks"]["t2"]["total"] == 1 and m["item_errors"] == 1
    assert m["total_acc"] == pytest.approx(50.0)  # 2 of 4
    assert m["macro_acc"] == pytest.approx((200 / 3 + 0) / 2)
    assert m["strict_total_acc"] == pytest.approx(25.0)


def test_score_open_qa_original_rule() -> None:
    verdicts = [
        {"pred": "yes", "score": 5},
        {"pred": "No", "score": 1},
        {"pred": "maybe", "score": 3},
        {"pred": "yes, no", "score": "4"},
        {"pred": "nope", "score": 2.8},
        None,
    ]
    m = score_open_qa(verdicts)
    assert (m["yes"], m["no"], m["judged"], m["judge_failures"]) == (2, 2, 5, 1)
    assert m["accuracy"] == pytest.approx(50.0)  # yes / (yes + no), "maybe" counted in neither
    assert m["score"] == pytest.approx((5 + 1 + 3 + 4 + 2) / 5)  # count includes "maybe"; int(2.8) == 2


def test_score_vcgbench_excludes_failures() -> None:
    v = [
        ("correctness", {"score": 4}),
        ("correctness", None),
        ("detail", {"score": 2}),
        ("context", {"score": 3}),
        ("temporal", {"score": 1}),
        ("consistency", {"score": 5}),
    ]
    m = score_vcgbench(v)
    assert m["aspects"]["correctness"] == {"score_sum": 4, "judged": 1, "judge_failures": 1, "score": 4.0}
    assert list(m["aspects"]) == ["correctness", "detail", "context", "temporal", "consistency"]
    assert m["mean"] == pytest.approx(3.0) and m["judge_failures"] == 1


def test_mcqa_question_template() -> None:
    q, gt = mcqa_question("What?", ["a b", "c"], "c")
    assert q == "Question: What?\nOptions:\n(A) a b\n(B) c"
    assert gt == "(B) c"
    assert mcqa_question("What?", ["x"], "y")[1] == "(@) y"  # answer not among candidates: index -1 as the original


def test_prompt_strings_exact() -> None:
    mv = PromptConfig(
        style="mvbench",
        system="S\n",
        question_suffix="\nOnly give the best option.",
        answer_prefix="Best option:(",
        use_system=True,
    )
    assert build_prompt("Question: q", mv) == (
        "<ImageHere>###Human: S\nQuestion: q\nOnly give the best option.\n###Assistant: Best option:("
    )
    chat = PromptConfig(style="chat", system="S\n", use_system=True)
    assert build_prompt("why?", chat) == "<ImageHere>S\n###Human: why? ###Assistant: "
    chat.use_system = False
    assert build_prompt("why?", chat) == "<ImageHere>###Human: why? ###Assistant: "
    mini = PromptConfig(style="minigpt4", minigpt4_system="M.")
    assert build_prompt("why?", mini) == "M.###Human: <Video><ImageHere></Video> why?###Assistant: "


def test_postprocess_and_mcqa_prediction() -> None:
    assert strip_leading_special([0, 1, 5]) == [5] and strip_leading_special([1, 0, 5]) == [0, 5]
    assert postprocess(" Assistant: fine. ###Human: more") == "fine."
    assert postprocess("a Assistant: b Assistant: c") == "c"
    cfg = PromptConfig(return_prefix="(", first_line_only=True)
    assert mcqa_prediction(" B) run\nbecause", cfg) == "(B) run"
    assert mcqa_prediction("", cfg) == "("


def test_protocol_yamls() -> None:
    cfgs = {p.stem: load_config(EvalConfig, p) for p in CONFIGS.glob("*.yaml")}
    assert set(cfgs) >= {"mvbench", "tvbench", "vcgbench", "msvd_qa", "msrvtt_qa", "anet_qa"}
    for c in cfgs.values():
        validate(c)
    mv = cfgs["mvbench"]
    assert len(mv.tasks) == 20 and sum(t.bound for t in mv.tasks) == 5
    assert [t.data_type for t in mv.tasks].count("frame") == 1
    assert mv.prompt.system.startswith("Carefully watch the video") and mv.prompt.system.endswith(
        "select the best option that accurately addresses the question.\n"
    )
    assert (mv.prompt.question_suffix, mv.prompt.answer_prefix, mv.prompt.return_prefix) == (
        "\nOnly give the best option.",
        "Best option:(",
        "(",
    )
    assert (mv.frames.rule, mv.frames.num_frames, mv.generation.num_beams, mv.generation.max_new_tokens) == (
        "mvbench",
        0,
        1,
        100,
    )
    assert len(cfgs["tvbench"].tasks) == 10 and cfgs["tvbench"].prompt.system == mv.prompt.system
    # docs/faithfulness.md Q27: system on for MVBench/VCGBench/ANet, off for MSVD/MSRVTT
    assert [cfgs[k].prompt.use_system for k in ("vcgbench", "anet_qa", "msvd_qa", "msrvtt_qa")] == [
        True,
        True,
        False,
        False,
    ]
    for k in ("vcgbench", "anet_qa", "msvd_qa", "msrvtt_qa"):
        g = cfgs[k].generation
        assert (g.num_beams, g.max_new_tokens, g.repetition_penalty, g.max_length) == (5, 300, 1.5, 2000)
        assert cfgs[k].prompt.system.endswith("give your answer that best addresses the question.\n")
    assert [cfgs[k].frames.num_frames for k in ("vcgbench", "anet_qa", "msvd_qa", "msrvtt_qa")] == [64, 16, 64, 64]
    judge = cfgs["vcgbench"].judge
    assert list(judge.prompts) == ["correctness", "detail", "context", "temporal", "consistency"]
    assert "'I don't know'" in "".join(judge.prompts["correctness"].user)
    assert judge.consistency_judge_q1_twice and judge.temperature is None and judge.model == "gpt-3.5-turbo"
    msgs = build_messages(cfgs["msvd_qa"].judge.prompts["qa"], {"question": "q?", "answer": "a", "pred": "{pred}"})
    assert "Question: q?\nCorrect Answer: a\nPredicted Answer: {pred}\n\n" in msgs[1]["content"]
    assert (
        msgs[0]["content"].startswith("You are an intelligent chatbot")
        and "------##INSTRUCTIONS: - " in (msgs[0]["content"])
    )


@pytest.mark.parametrize(
    "text,keys,expected,how",
    [
        ("{'score': 4}", ["score"], {"score": 4}, "literal_eval"),
        ("{'pred': 'yes', 'score': 4.8}", ["pred", "score"], {"pred": "yes", "score": 4}, "literal_eval"),
        ('Sure: {"pred": "no", "score": "2"} done', ["pred", "score"], {"pred": "no", "score": 2}, "embedded_dict"),
        ("{''score': 3}", ["score"], {"score": 3}, "regex"),
        ("I think 'score': 5", ["score"], {"score": 5}, "regex"),
    ],
)
def test_parse_reply(text: str, keys: list[str], expected: dict, how: str) -> None:
    assert parse_reply(text, keys) == (expected, how)


@pytest.mark.parametrize(
    "text,keys", [("no idea", ["score"]), ("{'pred': 'yes'}", ["pred", "score"]), ("{'score': 'high'}", ["score"])]
)
def test_parse_reply_failures(text: str, keys: list[str]) -> None:
    result, why = parse_reply(text, keys)
    assert result is None and why.startswith("malformed")


def test_degenerate_predictions_flagged() -> None:
    from stllm.eval.metrics import degenerate_predictions

    nan_model = [{"task": "t", "pred": "(", "answer": f"({x}) a"} for x in "ABCAB"]
    m = score_mcqa(nan_model)
    assert m["total_acc"] == 100.0 and m["strict_total_acc"] == 0.0  # the faithful loose score is kept
    d = degenerate_predictions(nan_model, mcqa=True)
    assert d["flagged"] and d["empty"] == 5 and d["identical"] and "trust the strict one" in d["summary"]
    words = degenerate_predictions(
        [{"pred": "(walking", "answer": "(A) x"}, {"pred": "(B) y", "answer": "(B) y"}], True
    )
    assert words["no_option_letter"] == 1 and words["flagged"] and not words["identical"]
    healthy = [{"pred": f"({x}) a", "answer": f"({x}) a"} for x in "ABCAB"]
    assert not degenerate_predictions(healthy, mcqa=True)["flagged"]
    same_truth = [{"pred": "(A) a", "answer": "(A) a"}] * 3  # identical answers for identical truths: fine
    assert not degenerate_predictions(same_truth, mcqa=True)["flagged"]
    open_qa = [{"pred": "", "answer": "yes"}, {"pred": "a dog", "answer": "no"}, {"error": "MediaError: x"}]
    d = degenerate_predictions(open_qa, mcqa=False)
    assert d["answered"] == 2 and d["empty"] == 1 and d["flagged"]


def test_item_error_records_are_not_scored() -> None:
    recs = [
        {"task": "t", "pred": "(A) x", "answer": "(A) x"},
        {"task": "t", "pred": "(A) x", "answer": "(A) x", "extra": {"item_error": "end before start"}},
    ]
    m = score_mcqa(recs)
    assert m["answered"] == 1 and m["item_errors"] == 1


def test_frames_rule_in_words_and_markdown_banner() -> None:
    from stllm.eval.score import describe_frames, to_markdown

    mv = load_config(EvalConfig, CONFIGS / "mvbench.yaml")
    words = describe_frames(mv.frames.__dict__)
    assert "1 frame per second" in words and "clamped to 4-16 frames" in words and "(0)" not in words
    assert describe_frames({"rule": "uniform_middle", "num_frames": 64, "size": 224}).startswith("64 frames")
    recs = [{"task": "t", "pred": "(", "answer": f"({x}) a"} for x in "AB"]
    from stllm.eval.metrics import degenerate_predictions

    metrics = {**score_mcqa(recs), "degenerate": degenerate_predictions(recs, True)}
    md = to_markdown(
        {
            "benchmark": "mvbench",
            "type": "mcqa",
            "model": "m",
            "metrics": metrics,
            "frames": mv.frames.__dict__,
            "generation": {"rule": "greedy", "num_beams": 1},
        }
    )
    assert md.splitlines()[2].startswith("> **WARNING: degenerate predictions: 2 of 2 empty")
    assert "frames: MVBench get_index, 1 frame per second" in md


@pytest.mark.parametrize("n_tasks", [1, 3, 20])
def test_mcqa_chart_labels_do_not_overlap(tmp_path, n_tasks: int) -> None:
    import matplotlib
    import matplotlib.figure

    matplotlib.use("Agg")
    from stllm.eval.score import plot

    tasks = {f"Counterfactual Inference {k}": {"acc": 50.0, "strict_acc": 40.0, "total": 2} for k in range(n_tasks)}
    metrics = {"tasks": tasks, "total_acc": 50.0, "strict_total_acc": 40.0}
    import matplotlib.pyplot as plt

    captured = {}
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(self, *a, **k):  # noqa: ANN001, ANN002, ANN003
        self.canvas.draw()
        boxes = [t.get_window_extent() for t in self.axes[0].get_yticklabels()]
        captured["overlap"] = any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
        return real_savefig(self, *a, **k)

    matplotlib.figure.Figure.savefig = spy  # type: ignore[method-assign]
    try:
        plot({"metrics": metrics, "type": "mcqa", "benchmark": "mvbench", "model": "m"}, tmp_path / "c.png")
    finally:
        matplotlib.figure.Figure.savefig = real_savefig  # type: ignore[method-assign]
        plt.close("all")
    assert captured["overlap"] is False and (tmp_path / "c.png").stat().st_size > 0


def test_qa_chart_has_two_axes(tmp_path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from stllm.eval.score import plot

    made = []
    real = plt.subplots

    def spy(*a, **k):  # noqa: ANN002, ANN003
        fig, ax = real(*a, **k)
        made.append(fig)
        return fig, ax

    plt.subplots = spy  # type: ignore[assignment]
    try:
        plot(
            {"metrics": {"accuracy": 100.0, "score": 4.0}, "type": "open_qa", "benchmark": "q", "model": "m"},
            tmp_path / "q.png",
        )
    finally:
        plt.subplots = real  # type: ignore[assignment]
    axes = made[0].axes
    assert len(axes) == 2 and axes[0].get_ylim() == (0.0, 100.0) and axes[1].get_ylim() == (0.0, 5.0)
    plt.close("all")


def test_unscorable_ground_truth_is_an_item_error_and_strict_reads_the_clean_text() -> None:
    """docs/faithfulness.md Q36: a ground truth with no text after its letter is never scored as correct; the
    strict letter reads pred_clean (the original's text may end in "</s>", Q35), the loose match reads pred."""
    from stllm.eval.metrics import score_mcqa

    records = [
        {"id": "a", "task": "t", "pred": "(A) left</s>", "pred_clean": "(A) left", "answer": "(A) left"},
        {"id": "b", "task": "t", "pred": "(A)", "pred_clean": "(A)", "answer": "(A)"},
    ]
    m = score_mcqa(records)
    assert m["answered"] == 1 and m["item_errors"] == 1
    assert m["total_acc"] == 100.0 and m["strict_total_acc"] == 100.0
    assert m["unscorable_ground_truth"] == [
        "b: ground truth '(A)' has no text after its option (the original raised IndexError)"
    ]
