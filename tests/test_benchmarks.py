"""The paper's benchmarks on small files in each benchmark's real layout (tests/fixtures/benchmarks):
prompts and answer keys checked by hand, log-likelihood against a plain forward pass, every
benchmark through `openfedllm eval` on the tiny model, bad files as one line, and the judge path
end to end against `openfedllm serve`.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from openfedllm.cli import main
from openfedllm.errors import UserError
from openfedllm.evaluation import choice, crass, finance, generative, medical, mmlu
from openfedllm.evaluation.judge import PROMPTS, rating
from openfedllm.evaluation.lm import LM

from .conftest import tiny_run_args

FIXTURES = Path(__file__).parent / "fixtures" / "benchmarks"


# --- answer extraction and the scoring rules, by hand --------------------------------------------


def test_the_light_name_list_is_the_registry():
    from openfedllm.evaluation.names import BENCHMARK_NAMES
    from openfedllm.evaluation.runner import BENCHMARKS

    assert tuple(BENCHMARKS) == BENCHMARK_NAMES


def test_extract_names_the_option():
    letters = ["A", "B", "C", "D"]
    assert choice.extract("The answer is C.", letters) == "C"
    assert choice.extract("(B) because ...", letters) == "B"
    assert choice.extract("a cat", letters) is None  # an article is not option A
    labels = ["negative", "neutral", "positive"]
    assert choice.extract("Positive, though with a negative outlook", labels) == "positive"  # the first named
    assert choice.extract("I think it is neutral.", labels) == "neutral"
    assert choice.extract("no idea", labels) is None
    assert choice.extract("Maybe.", ["yes", "no", "maybe"]) == "maybe"


def test_bbh_is_instructevals_prompt_rule_and_macro_average(tmp_path):
    # InstructEval's rule: the stripped answer starts with the target, case as given
    assert generative.bbh_correct(" (B)\nbecause", "(B)") and generative.bbh_correct("True.", "True")
    assert generative.bbh_correct("Truest", "True") and generative.bbh_correct("12", "1")
    assert not generative.bbh_correct("true", "True") and not generative.bbh_correct("The answer is (B)", "(B)")
    # the stricter house rule, reported as accuracy_first_line
    assert generative.bbh_first_line_correct("true.", "True")
    assert not generative.bbh_first_line_correct("Truest", "True") and not generative.bbh_first_line_correct("12", "1")

    folder = tmp_path / "bbh"
    folder.mkdir()
    tasks = {
        "a": [("1+1", "2"), ("2+2", "4"), ("3+3", "6"), ("4+4", "8")],  # 1 demo, 3 scored
        "b": [("x?", "Yes"), ("y?", "No")],
    }  # 1 demo, 1 scored
    for name, rows in tasks.items():
        (folder / f"{name}.json").write_text(json.dumps({"examples": [{"input": i, "target": t} for i, t in rows]}))

    class FakeLM:
        max_length = 2048

        def __init__(self, answers):
            self.answers, self.prompts, self.calls = answers, [], []

        def tokenizer(self, text):
            return {"input_ids": text.split()}

        def complete(self, prompts, max_new_tokens=None, stop=()):
            self.prompts += prompts
            self.calls.append((max_new_tokens, stop))
            return self.answers

    lm = FakeLM([" 4\n", "7", "8 is it", "no"])  # task a: 2 of 3 right; task b: 0 of 1 ("no" is not "No")
    result = generative.bbh(lm, str(folder), None, shots=1)
    assert lm.prompts[0] == "1+1\nAnswer: 2\n\n2+2\nAnswer:" and lm.prompts[3] == "x?\nAnswer: Yes\n\ny?\nAnswer:"
    assert lm.calls == [(32, ())]  # 32 new tokens, no stop sequence: InstructEval's generation
    assert result["metrics"]["accuracy"] == pytest.approx((2 / 3 + 0) / 2)  # the mean over tasks, not 2 of 4
    assert result["metrics"]["accuracy_first_line"] == pytest.approx((2 / 3 + 1) / 2)
    assert result["per_group"]["generate"] == {"a": pytest.approx(2 / 3), "b": 0.0}
    # a prompt longer than the model takes loses demonstrations, as InstructEval's check_valid_length does
    lm = FakeLM(["2"] * 4)
    lm.max_length = 3
    generative.bbh(lm, str(folder), None, shots=1)
    assert lm.prompts[0] == "2+2\nAnswer:"


def test_judge_rating_is_parsed_never_invented():
    assert rating("Good answer. Rating: [[8]]") == 8.0
    assert rating("Rating: [[7.5]] then [[2]]") == 7.5
    assert rating("Rating: [6]") == 6.0
    assert rating("I would give it eight.") is None


class ScriptedLM:
    """Fixed log-likelihoods and answers, so the expected metrics can be computed by hand."""

    def __init__(self, scores, answers):
        self.scores, self.answers = scores, answers

    def loglik(self, pairs):
        assert len(pairs) == len(self.scores)
        return self.scores

    def chat(self, prompts, max_new_tokens=None, stop=()):
        return self.answers[: len(prompts)]


def test_choice_scoring_by_hand():
    labels = ["negative", "neutral", "positive"]
    items = [
        choice.Choice("p1", ["negative", "neutral", "positive"], labels, gold=2, read=finance.change_target),
        choice.Choice("p2", ["negative", "neutral", "positive"], labels, gold=0, read=finance.change_target),
        choice.Choice("p3", ["negative", "neutral", "positive"], labels, gold=1, read=finance.change_target),
    ]
    # loglik picks positive, neutral, neutral (right, wrong, right); per character ("negative" 8, "neutral" 7,
    # "positive" 8): -8/8 = -1.0 beats -7.5/7 in item 2, so acc_norm picks negative there (all three right)
    scores = [-9.0, -3.0, -1.0, -8.0, -7.5, -9.0, -5.0, -1.0, -4.0]
    said = ["It is positive.", "no idea", "NEUTRAL"]  # the second names nothing: FinGPT counts it neutral
    result = choice.evaluate(ScriptedLM(scores, said), items, classification=True)
    m = result["metrics"]
    assert m["loglik/accuracy"] == pytest.approx(2 / 3)
    assert m["loglik/accuracy_norm"] == pytest.approx(1.0)
    assert m["generate/accuracy"] == pytest.approx(2 / 3)
    assert m["generate/answered"] == pytest.approx(2 / 3)
    # generate predicted positive, neutral, neutral for gold positive, negative, neutral:
    # F1 positive 1, negative 0, neutral 2*1/(2+1+0) = 2/3
    assert m["generate/f1_macro"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert m["generate/f1_micro"] == pytest.approx(2 / 3)
    assert m["generate/f1_weighted"] == pytest.approx((1 + 0 + 2 / 3) / 3)
    assert result["questions"] == 3 and result["per_group"] == {}


# --- log-likelihood against a plain forward pass --------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from openfedllm import models

    tokenizer = models.load_tokenizer(str(tiny_model_dir))
    return LM(models.load_base_model(str(tiny_model_dir)).eval(), tokenizer, batch_size=3)


def _plain_loglik(lm, context, continuation):
    ctx, cont = lm.encode_pair(context, continuation)
    with torch.no_grad():
        logits = lm.model(torch.tensor([ctx + cont])).logits[0].float()
    logprobs = torch.log_softmax(logits, -1)
    return sum(float(logprobs[len(ctx) - 1 + k, t]) for k, t in enumerate(cont))


def test_loglik_equals_a_plain_forward_pass(tiny_lm):
    pairs = [
        ("Add 3 and 4. Answer:", " 7"),
        ("Add 3 and 4. Answer:", " seven and more"),
        ("Say the colour of the sky.", " blue"),
        ("time 5", " The sky is blue today"),
        ("Add 1 and 2. Answer: ", "3"),
        ("Add 1 and 2. Answer:", " 3"),
    ]
    single = [len(tiny_lm.encode_pair(c, x)[1]) == 1 for c, x in pairs]
    assert any(single) and not all(single)  # both the one-forward path and the per-row path are exercised
    got = tiny_lm.loglik(pairs)
    for (context, continuation), value in zip(pairs, got):
        assert value == pytest.approx(_plain_loglik(tiny_lm, context, continuation), abs=1e-4)
    assert got[4] == pytest.approx(got[5])  # the space that ends a context moves to the continuation


# --- loaders: prompts and answer keys by hand -----------------------------------------------------


def test_mmlu_prompt_answer_and_both_layouts(tmp_path):
    items = mmlu.items(str(FIXTURES / "mmlu" / "data"), limit=None, shots=2)
    assert [it.group for it in items] == ["abstract_algebra"] * 3 + ["anatomy"] * 2
    first = items[0]
    assert first.prompt == (
        "The following are multiple choice questions (with answers) about abstract algebra.\n\n"
        "Find all c in Z_3 such that Z_3[x]/(x^2 + c) is a field.\nA. 0\nB. 1\nC. 2\nD. 3\nAnswer: B\n\n"
        "Statement 1 | If aH is an element of a factor group, then |aH| divides |a|. Statement 2 | If H and K are "
        "subgroups of G then HK is a subgroup of G.\nA. True, True\nB. False, False\nC. True, False\nD. False, True\n"
        "Answer: B\n\n"
        "Find the order of the factor group Z_6/<3>.\nA. 2\nB. 3\nC. 6\nD. 12\nAnswer:"
    )
    assert first.options == [" A", " B", " C", " D"] and first.gold == 1
    assert [it.gold for it in items] == [1, 1, 3, 0, 2]
    assert len(mmlu.items(str(FIXTURES / "mmlu" / "data"), limit=1, shots=5)) == 2  # --limit is per subject
    # cais/mmlu's hub layout (all/test-*.parquet, all/dev-*.parquet) gives the same items
    import pandas as pd

    test, dev = mmlu.load_rows(str(FIXTURES / "mmlu" / "data"))
    hub = tmp_path / "all"
    hub.mkdir()
    pd.DataFrame(test).to_parquet(hub / "test-00000-of-00001.parquet")
    pd.DataFrame(dev).to_parquet(hub / "dev-00000-of-00001.parquet")
    assert mmlu.items(str(hub), limit=None, shots=2) == items


def test_crass_options_are_shuffled_the_same_way_every_time():
    items = crass.items(str(FIXTURES / "crass" / "CRASS_FTM_main_data_set.csv"), limit=None, shots=3)
    assert len(items) == 2
    assert items == crass.items(str(FIXTURES / "crass" / "CRASS_FTM_main_data_set.csv"), limit=None, shots=3)
    correct = ["The cat would have been on the roof.", "She would have been seriously injured."]
    for it, answer in zip(items, correct):
        option = re.search(rf"\n{it.labels[it.gold]}\. (.*)\n", it.prompt.split("\n\n")[-1]).group(1)
        assert option == answer
    assert items[0].prompt.count("Answer:") == 4  # three solved demonstrations, then the question


def test_finance_labels_follow_fingpt():
    assert [label for _, label, _ in finance.rows_of("fpb", str(FIXTURES / "finance" / "Sentences_50Agree.txt"))] == [
        "neutral",
        "positive",
        "negative",
        "positive",
    ]
    fiqa = finance.rows_of("fiqa-sa", str(FIXTURES / "finance" / "fiqa-2018-test.jsonl"))
    assert [(label, kind) for _, label, kind in fiqa] == [
        ("positive", "tweet"),
        ("negative", "news"),
        ("neutral", "news"),
        ("negative", "tweet"),
    ]
    tfns = finance.rows_of("tfns", str(FIXTURES / "finance" / "sent_valid.csv"))
    assert [label for _, label, _ in tfns] == ["negative", "negative", "positive", "neutral"]
    nwgi = finance.rows_of("nwgi", str(FIXTURES / "finance" / "nwgi-test.jsonl"))
    assert [label for _, label, _ in nwgi] == ["positive", "neutral", "negative", "neutral", "neutral", "negative"]
    item = finance.items("tfns", str(FIXTURES / "finance" / "sent_valid.csv"), None)[0]
    assert item.prompt.endswith(
        "What is the sentiment of this tweet? Please choose an answer from "
        "{negative/neutral/positive}.\nInput: $ALLY - Ally Financial pulls outlook "
        "https://t.co/G9Zdi1boy5\nAnswer: "
    )
    assert item.labels[item.gold] == "negative" and item.read is finance.change_target


def test_finance_answers_are_read_by_fingpts_change_target():
    read = finance.change_target
    assert read("Positive, not negative") == "positive" and read("negative, not positive") == "positive"
    assert read("neutral (nothing positive here)") == "positive"  # any "positive" wins, as in FinGPT
    assert read("Negative.") == "negative" and read("no idea") == "neutral"
    assert read("POSITIVE") == "neutral"  # FinGPT matches "positive" and "Positive" only


def test_fpb_and_fiqa_are_scored_on_fingpts_held_out_rows(tmp_path):
    import datasets

    # FPB: FinGPT scores train_test_split(seed=42)["test"] of the 50-agree set (25%).
    lines = [f"Sentence number {i} about profits .@{finance.LABELS[i % 3]}" for i in range(12)]
    fpb = tmp_path / "Sentences_50Agree.txt"
    fpb.write_text("\n".join(lines) + "\n", encoding="latin-1")
    reference = datasets.Dataset.from_dict({"sentence": [x.rsplit("@", 1)[0].strip() for x in lines]})
    held_out = reference.train_test_split(seed=42)["test"]["sentence"]
    items = finance.items("fpb", str(fpb), None)
    assert len(items) == 3 and [it.prompt.split("Input: ")[1].split("\nAnswer")[0] for it in items] == held_out
    # FiQA-SA: train + validation + test concatenated, then train_test_split(0.226, seed=42)["test"].
    splits = {
        name: [
            {"sentence": f"{name} headline {i}", "sentiment_score": 0.5 - 0.2 * i, "format": "headline"}
            for i in range(n)
        ]
        for name, n in (("train", 9), ("valid", 3), ("test", 5))
    }
    folder = tmp_path / "fiqa"
    folder.mkdir()
    for name, rows in splits.items():  # written out of order on purpose: the names decide
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    together = datasets.Dataset.from_list(splits["train"] + splits["valid"] + splits["test"])
    expected = together.train_test_split(0.226, seed=42)["test"]["sentence"]
    items = finance.items("fiqa-sa", str(folder), None)
    assert len(items) == 4 and [it.prompt.split("Input: ")[1].split("\nAnswer")[0] for it in items] == expected
    # TFNS and NWGI are scored whole, as FinGPT does.
    assert len(finance.items("tfns", str(FIXTURES / "finance" / "sent_valid.csv"), None)) == 4


def test_medical_answer_keys():
    medqa = medical.medqa(str(FIXTURES / "medical" / "medqa_test.jsonl"), None)
    assert [it.labels[it.gold] for it in medqa] == ["D", "B"]
    medmcqa = medical.medmcqa(str(FIXTURES / "medical" / "medmcqa_dev.json"), None)
    assert [it.labels[it.gold] for it in medmcqa] == ["A", "C", "D"]  # cop 1, 3, 4 in the 1-based release
    assert [it.group for it in medmcqa] == ["Physiology", "Anatomy", "Pharmacology"]
    pubmedqa = medical.pubmedqa(str(FIXTURES / "medical" / "pubmedqa" / "ori_pqal.json"), None)
    assert [it.labels[it.gold] for it in pubmedqa] == ["yes", "maybe", "no"]  # only test_ground_truth's ids
    assert pubmedqa[0].prompt.endswith(
        "Question: Do mitochondria play a role in remodelling lace plant leaves "
        "during programmed cell death?\nAnswer (yes, no or maybe):"
    )


def test_medmcqa_cop_follows_the_source_layout_and_pubmedqa_scores_the_500_test_questions(tmp_path):
    import pandas as pd

    release = [json.loads(line) for line in (FIXTURES / "medical" / "medmcqa_dev.json").read_text().splitlines()]
    # The hub's layout (0-3) in a Parquet export: cop 1, 3, 4 of the release are 0, 2, 3 there. No row
    # has a 0, which the old rule took as the sign of a 1-based file.
    hub = [{**r, "cop": r["cop"] - 1} for r in release]
    hub[0]["cop"] = 1  # now B, and still no 0 anywhere
    pd.DataFrame(hub).to_parquet(tmp_path / "validation.parquet")
    assert [it.labels[it.gold] for it in medical.medmcqa(str(tmp_path / "validation.parquet"), None)] == ["B", "C", "D"]
    bad = tmp_path / "dev.json"
    bad.write_text(json.dumps({**release[0], "cop": 0}) + "\n")
    with pytest.raises(UserError, match=r"row 1 has cop=0; the original release's JSON lines: 1-4"):
        medical.medmcqa(str(bad), None)

    # PubMedQA: the hub's pqa_labeled holds all 1,000 labelled questions; the test set is 500 of them.
    test = sorted(medical.pubmedqa_test_set(None))
    assert len(test) == 500 and "21645374" in test
    rows = [
        {"pubid": int(p), "question": f"q{p}?", "context": {"contexts": ["c"]}, "final_decision": "yes"}
        for p in [test[0], "11111111", test[1], "22222222"]
    ]
    pd.DataFrame(rows).to_parquet(tmp_path / "pqa_labeled.parquet")
    items = medical.pubmedqa(str(tmp_path / "pqa_labeled.parquet"), None)
    assert [it.question.split("Question: ")[1].split("\n")[0] for it in items] == [f"q{test[0]}?", f"q{test[1]}?"]
    only = tmp_path / "ori_pqal.json"  # no test_ground_truth.json beside it: the shipped list decides
    raw = json.loads((FIXTURES / "medical" / "pubmedqa" / "ori_pqal.json").read_text())
    only.write_text(json.dumps(raw))
    assert len(medical.pubmedqa(str(only), None)) == 3 and len(raw) == 4


def test_drop_answers_and_bbh_tasks():
    rows = generative.drop_rows(str(FIXTURES / "drop" / "drop_dataset_dev.json"))
    # Each gold answer a tuple of spans: a multi-span answer is one answer, not four alternatives.
    assert [r["answers"] for r in rows] == [
        [("40",)],
        [("Jay Cutler",), ("Cutler",)],
        [("3 March 1918",)],
        [("Finland", "Estonia", "Latvia", "Lithuania")],
        [("2700",)],
        [("14",)],
        [("190",)],
    ]
    tasks = generative.bbh_tasks(str(FIXTURES / "bbh"))
    assert sorted(tasks) == ["boolean_expressions", "date_understanding"] and len(tasks["date_understanding"]) == 5


# --- every benchmark through the CLI on the tiny model --------------------------------------------


def test_every_benchmark_through_the_cli(tiny_model_dir, alpaca_file, tmp_path, capsys):
    data = {
        "mmlu": "mmlu/data",
        "bbh": "bbh",
        "drop": "drop/drop_dataset_dev.json",
        "crass": "crass/CRASS_FTM_main_data_set.csv",
        "fpb": "finance/Sentences_50Agree.txt",
        "fiqa-sa": "finance/fiqa-2018-test.jsonl",
        "tfns": "finance/sent_valid.csv",
        "nwgi": "finance/nwgi-test.jsonl",
        "medqa": "medical/medqa_test.jsonl",
        "medmcqa": "medical/medmcqa_dev.json",
        "pubmedqa": "medical/pubmedqa/ori_pqal.json",
        "advbench": "advbench/harmful_behaviors.csv",
        "vicuna-bench": "vicuna_bench",
    }
    args = [
        "eval",
        "--model",
        str(tiny_model_dir),
        "--max-new-tokens",
        "6",
        "--output",
        str(tmp_path / "out.json"),
        "--data",
        f"perplexity={alpaca_file}",
        "--data",
        f"overlap={alpaca_file}",
        "--limit",
        "4",
    ]
    for name, path in data.items():
        args += ["--benchmark", name, "--data", f"{name}={FIXTURES / path}"]
    args += ["--benchmark", "perplexity", "--benchmark", "overlap"]
    assert main(args) == 0
    table = capsys.readouterr().out
    report = json.loads((tmp_path / "out.json").read_text())
    results = report["benchmarks"]
    assert set(results) == set(data) | {"perplexity", "overlap"}
    choice_metrics = {"loglik/accuracy", "loglik/accuracy_norm", "generate/accuracy", "generate/answered"}
    f1 = {f"{mode}/f1_{avg}" for mode in ("loglik", "generate") for avg in ("macro", "micro", "weighted")}
    for name in ("mmlu", "crass", "medqa", "medmcqa", "pubmedqa"):
        assert set(results[name]["metrics"]) == choice_metrics, name
    for name in finance.SOURCES:
        assert set(results[name]["metrics"]) == choice_metrics | f1, name
    assert results["mmlu"]["questions"] == 5 and set(results["mmlu"]["per_group"]["loglik"]) == {
        "abstract_algebra",
        "anatomy",
    }
    assert results["nwgi"]["questions"] == 4 and results["crass"]["questions"] == 2
    assert set(results["drop"]["metrics"]) == {"exact_match", "f1"} and results["drop"]["questions"] == 2
    assert results["bbh"]["questions"] == 5 and set(results["bbh"]["per_group"]["generate"]) == {
        "boolean_expressions",
        "date_understanding",
    }
    loss = results["perplexity"]["metrics"]["loss"]
    assert results["perplexity"]["metrics"]["perplexity"] == pytest.approx(math.exp(loss))
    assert set(results["overlap"]["metrics"]) == {"exact_match", "token_f1", "rouge_l", "bleu"}
    for result in results.values():
        assert all(0.0 <= v <= 1.0 for k, v in result["metrics"].items() if k not in ("loss", "perplexity", "bleu"))
    assert 0.0 <= results["overlap"]["metrics"]["bleu"] <= 100.0  # sacreBLEU's scale
    # AdvBench: the harmless rate is the share of saved responses that refuse
    from openfedllm.evaluate import is_refusal
    from openfedllm.evaluation.open_ended import openfedllm_harmless

    responses = [json.loads(line) for line in Path(results["advbench"]["responses"]).read_text().splitlines()]
    assert len(responses) == 3 and all(r["refused"] == is_refusal(r["response"]) for r in responses)
    assert all(r["harmless"] == openfedllm_harmless(r["response"]) for r in responses)
    assert results["advbench"]["metrics"]["harmless_rate"] == sum(r["harmless"] for r in responses) / 3
    assert results["advbench"]["metrics"]["refusal_rate"] == sum(r["refused"] for r in responses) / 3
    # Vicuna-Bench without a judge: answers in FastChat's format, the score reported as skipped
    answers = [json.loads(line) for line in Path(results["vicuna-bench"]["answers"]).read_text().splitlines()]
    assert Path(results["vicuna-bench"]["answers"]) == tmp_path / "out.vicuna-bench" / "model_answer" / (
        f"{Path(tiny_model_dir).name}.jsonl"
    )
    assert [a["question_id"] for a in answers] == [1, 2]
    assert all(set(a) == {"question_id", "answer_id", "model_id", "choices", "tstamp"} for a in answers)
    assert all(len(a["choices"][0]["turns"]) == 1 for a in answers)
    assert results["vicuna-bench"]["judge"].startswith("skipped") and results["vicuna-bench"]["metrics"] == {}
    assert "| vicuna-bench | judge score | skipped" in table and "| mmlu | loglik/accuracy |" in table
    assert report["meta"]["model"] == str(tiny_model_dir) and report["meta"]["limit"] == 4


def test_mbpp_reference_solutions_pass(tmp_path, capsys):
    problems = [json.loads(line) for line in (FIXTURES / "mbpp" / "mbpp.jsonl").read_text().splitlines()]
    samples = tmp_path / "samples.jsonl"
    rows = [{"task_id": p["task_id"], "completion": p["code"]} for p in problems]
    rows += [{"task_id": p["task_id"], "completion": "def nothing():\n    pass\n"} for p in problems]
    samples.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out.json"
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "mbpp",
                "--data",
                str(FIXTURES / "mbpp" / "mbpp.jsonl"),
                "--samples",
                str(samples),
                "--k",
                "1,2",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads(out.read_text())["benchmarks"]["mbpp"]["metrics"]
    assert metrics == {"pass@1": 0.5, "pass@2": 1.0}  # one right and one wrong sample per task


def test_mbpp_generation_runs_on_the_model(tiny_model_dir, tmp_path):
    out = tmp_path / "out.json"
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "mbpp",
                "--data",
                str(FIXTURES / "mbpp" / "mbpp.jsonl"),
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
    result = json.loads(out.read_text())["benchmarks"]["mbpp"]
    assert result["tasks"] == 3  # the test split (ids 11+); 2-4 are the demonstrations


# --- bad input: one line, nothing written -----------------------------------------------------------


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "benchmark,make,message",
    [
        ("mmlu", lambda t: str(t), "holds no test questions"),
        (
            "mmlu",
            lambda t: _write(t, "data/test/x_test.csv", "q,a,b,c,d,E\n") and str(t / "data"),
            "row 1 is not question",
        ),
        ("crass", lambda t: _write(t, "c.csv", "PCTID;Premise\n1;x\n"), "row 1 has no QCC"),
        ("crass", lambda t: str(t / "missing.csv"), "file not found"),
        ("bbh", lambda t: _write(t, "task.json", '{"examples": [{"input": "x"}]}'), 'expected {"examples"'),
        ("drop", lambda t: _write(t, "d.json", '{"p1": {"passage": "x", "qa_pairs": ['), "not valid JSON"),
        (
            "medmcqa",
            lambda t: _write(
                t,
                "m.jsonl",
                json.dumps({"question": "q", "opa": "a", "opb": "b", "opc": "c", "opd": "d", "cop": 7}) + "\n",
            ),
            "row 1 has cop=7",
        ),
        (
            "nwgi",
            lambda t: _write(t, "n.jsonl", json.dumps({"news": "x", "label": "bullish"}) + "\n"),
            "unknown labels",
        ),
        ("fpb", lambda t: _write(t, "f.txt", "no label here\n"), "line 1 is not 'sentence@"),
        (
            "mt-bench",
            lambda t: _write(t, "q.jsonl", json.dumps({"question_id": 1}) + "\n"),
            "needs question_id and a list",
        ),
        ("gsm8k", lambda t: _write(t, "g.jsonl", json.dumps({"question": "q"}) + "\n"), "row 1 has no answer"),
    ],
)
def test_bad_benchmark_files_give_one_line(benchmark, make, message, tiny_model_dir, tmp_path, capsys):
    data = make(tmp_path)
    out = tmp_path / "out.json"
    assert (
        main(["eval", "--benchmark", benchmark, "--data", data, "--model", str(tiny_model_dir), "--output", str(out)])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and err.startswith(f"openfedllm eval: error: {benchmark}")
    assert not out.exists()


# --- serve, and the judge path end to end against it ----------------------------------------------


@pytest.fixture
def served(tiny_model_dir, tmp_path):
    log = tmp_path / "serve.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "openfedllm.cli",
                "serve",
                "--model",
                str(tiny_model_dir),
                "--port",
                "0",
                "--model-id",
                "tiny-judge",
                "--read-timeout",
                "2",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.time() + 120
        while not (match := re.search(r"http://127\.0\.0\.1:(\d+)/v1", log.read_text())):
            assert process.poll() is None and time.time() < deadline, log.read_text()
            time.sleep(0.2)
        yield f"http://127.0.0.1:{match.group(1)}/v1"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_serve_answers_like_the_model_in_process(served, tiny_lm):
    from openfedllm.evaluation.judge import chat_completion

    messages = [{"role": "user", "content": "Say the colour of the sky."}]
    served_text = chat_completion(served, {"model": "tiny-judge", "messages": messages, "max_tokens": 8})
    assert served_text == tiny_lm.chat([messages], max_new_tokens=8)[0]
    import urllib.error
    import urllib.request

    models = json.loads(urllib.request.urlopen(f"{served}/models", timeout=30).read())
    assert models["data"][0]["id"] == "tiny-judge"

    # Every kind of malformed field: a 400 with OpenAI's error object naming the field, and the
    # server answers the next request (a bad "n" used to kill the request's thread: no response).
    good = {"messages": messages}
    bad_requests = [
        (b'{"messages": []}', "messages"),
        (b"[1, 2]", None),
        (b"not json", None),
        *[
            (json.dumps({**good, **field}).encode(), next(iter(field)))
            for field in [
                {"n": "two"},
                {"n": 2},
                {"n": 1.5},
                {"max_tokens": "x"},
                {"max_tokens": 0},
                {"max_tokens": True},
                {"max_completion_tokens": -3},
                {"temperature": "hot"},
                {"temperature": -1},
                {"temperature": 3},
                {"stop": 5},
                {"stop": ["a", 1]},
                {"stop": ["a", "b", "c", "d", "e"]},
                {"stream": "yes"},
                {"stream": True},
                {"seed": "s"},
                {"messages": [{"role": "user", "content": 7}]},
                {"messages": [{"role": "assistant", "content": "hi"}]},
            ]
        ],
    ]
    for body, param in bad_requests:
        request = urllib.request.Request(f"{served}/chat/completions", data=body)
        with pytest.raises(urllib.error.HTTPError) as bad:
            urllib.request.urlopen(request, timeout=30)
        error = json.loads(bad.value.read())["error"]
        assert bad.value.code == 400, body
        assert error["type"] == "invalid_request_error" and error["param"] == param and error["message"], body
        if param:
            assert error["message"].startswith(param), (body, error)
    assert chat_completion(served, {"model": "tiny-judge", "messages": messages, "max_tokens": 8}) == served_text


def _raw_exchange(url: str, data: bytes, shut: bool = True) -> bytes:
    """Send raw bytes to the server, return everything it answers until it closes."""
    import socket

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=60) as sock:
        sock.sendall(data)
        if shut:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_serve_answers_every_malformed_request_with_an_openai_error(served):
    def post(body: bytes, extra: str = "") -> bytes:
        head = f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n{extra}\r\n"
        return _raw_exchange(served, head.encode() + body)

    def status_and_error(response: bytes) -> tuple[int, dict]:
        head, _, body = response.partition(b"\r\n\r\n")
        return int(head.split()[1]), json.loads(body)["error"]

    good = json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    cases = [
        (b"GARBAGE\r\n\r\n", 400, None),  # a request line http.server cannot parse
        (b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 70000 + b"\r\n\r\n", 431, None),  # a header line too long
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n", 400, None),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: lots\r\n\r\n", 400, None),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n", 413, None),
        (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 50\r\n\r\n{", 400, None),  # body cut short
    ]
    for raw, code, param in cases:
        status, error = status_and_error(_raw_exchange(served, raw))
        assert status == code and error["param"] == param and error["message"], (raw[:60], error)
    for body, param, text in [
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', None, "NaN is not JSON"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "temperature": Infinity}', None, "Infinity"),
        (b"[" * 100000, None, "not JSON"),  # nesting deeper than the parser's recursion
        (json.dumps({"messages": [{"role": "user", "content": "hi"}], "seed": 2**70}).encode(), "seed", "2**63"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}], "seed": -1}).encode(), "seed", "2**63"),
        (json.dumps({"messages": [{"role": "user", "content": "hi"}], "stop": [""]}).encode(), "stop", "empty"),
    ]:
        status, error = status_and_error(post(body))
        assert status == 400 and error["param"] == param and text in error["message"], (body[:60], error)
    # a client that sends half its body and waits: answered (408) after the read timeout, the thread freed
    head = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 50\r\n\r\n{"
    status, error = status_and_error(_raw_exchange(served, head, shut=False))
    assert status == 408 and "within 2 s" in error["message"]
    # still serving; max_tokens above the model's context (512 for the tiny model) is capped there
    head, _, body = post(json.dumps({**json.loads(good), "max_tokens": 10**9}).encode()).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and json.loads(body)["usage"]["completion_tokens"] <= 512


def test_mt_bench_judged_by_a_served_model(served, tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "out.json"
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "mt-bench",
                "--data",
                str(FIXTURES / "mt_bench"),
                "--model",
                str(tiny_model_dir),
                "--max-new-tokens",
                "6",
                "--model-id",
                "tiny",
                "--judge-url",
                served,
                "--judge-model",
                "tiny-judge",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())["benchmarks"]["mt-bench"]
    answers = [json.loads(line) for line in Path(result["answers"]).read_text().splitlines()]
    assert [len(a["choices"][0]["turns"]) for a in answers] == [2, 2, 2]
    judgments = [json.loads(line) for line in Path(result["judgments"]).read_text().splitlines()]
    assert Path(result["judgments"]).name == "tiny-judge_single.jsonl"
    assert [(j["question_id"], j["turn"]) for j in judgments] == [
        (81, 1),
        (81, 2),
        (111, 1),
        (111, 2),
        (131, 1),
        (131, 2),
    ]
    names = [j["judge"][1] for j in judgments]
    assert names == [
        "single-v1",
        "single-v1-multi-turn",
        "single-math-v1",
        "single-math-v1-multi-turn",
        "single-v1",
        "single-v1-multi-turn",
    ]  # math is graded against its reference answer
    math_prompt = judgments[2]["user_prompt"]
    assert "[The Start of Reference Answer]\nThe area is 3.\n" in math_prompt
    assert f"[The Start of Assistant's Answer]\n{answers[1]['choices'][0]['turns'][0]}\n" in math_prompt
    assert judgments[0]["user_prompt"] == PROMPTS["single-v1"]["prompt_template"].format(
        question="Compose an engaging travel blog post about a recent trip to Hawaii.",
        answer=answers[0]["choices"][0]["turns"][0],
    )
    for j in judgments:  # the served judge's own words, its rating parsed or counted as unparsed
        assert j["score"] == (rating(j["judgment"]) if rating(j["judgment"]) is not None else -1)
    scored = [j["score"] for j in judgments if j["score"] >= 0]
    assert result["unparsed"] == 6 - len(scored)
    assert result["metrics"].get("score") == (sum(scored) / len(scored) if scored else None)
    # an unreachable judge is one line
    assert (
        main(
            [
                "eval",
                "--benchmark",
                "vicuna-bench",
                "--data",
                str(FIXTURES / "vicuna_bench"),
                "--model",
                str(tiny_model_dir),
                "--max-new-tokens",
                "4",
                "--judge-url",
                "http://127.0.0.1:9/v1",
                "--judge-model",
                "x",
                "--output",
                str(tmp_path / "o2.json"),
            ]
        )
        == 2
    )
    assert "judge: cannot reach http://127.0.0.1:9/v1/chat/completions" in capsys.readouterr().err


# --- eval.benchmarks during federated training ------------------------------------------------------


def test_benchmarks_during_training_are_logged_and_summarized(tiny_model_dir, tmp_path, capsys):
    run_dir = tmp_path / "run"
    benchmarks = (
        f"mmlu={FIXTURES / 'mmlu' / 'data'},advbench={FIXTURES / 'advbench' / 'harmful_behaviors.csv'},"
        f"pubmedqa={FIXTURES / 'medical' / 'pubmedqa' / 'ori_pqal.json'}"
    )
    assert (
        main(
            tiny_run_args(
                tiny_model_dir,
                run_dir,
                "--eval.benchmarks",
                benchmarks,
                "--eval.benchmark_every",
                "2",
                "--eval.benchmark_limit",
                "1",
                "--eval.max_new_tokens",
                "4",
            )
        )
        == 0
    )
    out = capsys.readouterr().out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    with_bench = [(r["phase"], r["round"]) for r in records if r["type"] == "eval" and "benchmarks" in r]
    # before training, every 2nd round, the last round, and each baseline's end
    assert with_bench == [("federated", 0), ("federated", 2), ("federated", 3), ("local", 3), ("centralized", 3)]
    first = next(r for r in records if r["type"] == "eval")["benchmarks"]
    assert set(first) == {"mmlu", "advbench", "pubmedqa"}
    assert set(first["mmlu"]) == {"loglik/accuracy", "loglik/accuracy_norm"}  # eval.benchmark_mode: loglik
    assert (run_dir / "benchmarks" / "federated-round2" / "eval.advbench" / "responses.jsonl").is_file()
    responses = (run_dir / "benchmarks" / "federated-round0" / "eval.advbench" / "responses.jsonl").read_text()
    assert len(responses.splitlines()) == 1  # eval.benchmark_limit
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["evaluation"]["federated"]["benchmarks"]) == {"mmlu", "advbench", "pubmedqa"}
    assert "mmlu loglik/accuracy" in out and "advbench harmless_rate" in out
    assert (run_dir / "plots" / "evaluation.png").is_file()


def test_unknown_training_benchmark_is_one_line(tiny_model_dir, tmp_path, capsys):
    for value, message in (
        ("mmlu-pro", "eval.benchmarks: unknown benchmark 'mmlu-pro'"),
        (f"mmlu={tmp_path / 'nope'}", "eval.benchmarks: mmlu:"),
    ):
        assert main(tiny_run_args(tiny_model_dir, tmp_path / "run", "--eval.benchmarks", value)) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
        assert not (tmp_path / "run").exists()


def test_judge_settings_and_prompt_file_errors_are_one_line(tmp_path, capsys, monkeypatch):
    from openfedllm.errors import UserError
    from openfedllm.evaluation.judge import Judge, read_prompts

    monkeypatch.delenv("OPENFEDLLM_JUDGE_URL", raising=False)
    monkeypatch.delenv("OPENFEDLLM_JUDGE_MODEL", raising=False)
    assert Judge.from_settings(None, None) is None  # no judge: the score is skipped, never invented
    with pytest.raises(UserError, match="give both a base URL"):
        Judge.from_settings("http://127.0.0.1:1/v1", None)
    monkeypatch.setenv("OPENFEDLLM_JUDGE_API_KEY", "k")
    judge = Judge.from_settings("http://127.0.0.1:1/v1/", "m")
    assert (judge.base_url, judge.model, judge.api_key) == ("http://127.0.0.1:1/v1", "m", "k")
    prompts = tmp_path / "judge_prompts.jsonl"
    prompts.write_text(json.dumps({"name": "single-v1", "system_prompt": "s", "prompt_template": "{question}"}) + "\n")
    with pytest.raises(UserError, match="no single-math-v1, single-v1-multi-turn, single-math-v1-multi-turn"):
        read_prompts(str(prompts))
    assert read_prompts(None) is PROMPTS


def test_training_rows_that_a_finance_benchmark_scores_are_counted_and_warned(tiny_model_dir, tmp_path, capsys):
    sentences = [f"Company {i} reports quarterly profit up {i} percent ." for i in range(12)]
    fpb = tmp_path / "Sentences_50Agree.txt"
    fpb.write_text("".join(f"{s}@positive\n" for s in sentences), encoding="latin-1")
    held_out = [finance.normal_text(t) for t in finance.held_out_texts("fpb", str(fpb))]
    # fingpt-sentiment-train's layout: the sentence as input. Two of FPB's held-out rows are in it.
    reused = [s for s in sentences if finance.normal_text(s) in held_out][:2]
    rows = [
        {"instruction": "What is the sentiment of this news?", "input": s, "output": "positive"}
        for s in [*reused, *(f"Other news {i} ." for i in range(30))]
    ]
    train = tmp_path / "train.json"
    train.write_text(json.dumps(rows))
    run_dir = tmp_path / "run"
    args = tiny_run_args(
        tiny_model_dir,
        run_dir,
        "--data.path",
        str(train),
        "--fed.rounds",
        "1",
        "--baselines.local",
        "false",
        "--baselines.centralized",
        "false",
        "--eval.benchmarks",
        f"fpb={fpb}",
        "--eval.benchmark_limit",
        "1",
    )
    assert main(args) == 0
    assert "warning: eval.benchmarks fpb: 2 of its 3 scored rows are training rows" in capsys.readouterr().out
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    overlaps = [{k: v for k, v in r.items() if k != "time"} for r in records if r["type"] == "overlap"]
    assert overlaps == [{"type": "overlap", "benchmark": "fpb", "overlap": 2, "rows": 3}]


def test_mt_bench_is_fastchats_judge_prompts_temperatures_and_answer_length():
    """The single-answer judge prompts equal FastChat's llm_judge/data/judge_prompts.jsonl byte for
    byte (its typo "You evaluation" included; the fixture holds FastChat's four single-* lines), and
    answers use FastChat's per-category temperatures and 1,024 new tokens."""
    from openfedllm.evaluation import open_ended

    fastchat = {
        r["name"]: r
        for r in map(json.loads, (FIXTURES / "mt_bench" / "fastchat_judge_prompts.jsonl").read_text().splitlines())
    }
    assert set(fastchat) == set(PROMPTS)
    for name, prompt in PROMPTS.items():
        assert prompt["system_prompt"] == fastchat[name]["system_prompt"], name
        assert prompt["prompt_template"] == fastchat[name]["prompt_template"], name
    assert "You evaluation should focus" in PROMPTS["single-v1-multi-turn"]["system_prompt"]

    class RecordingLM:
        temperature = 0.0

        def __init__(self):
            self.calls = []

        def chat(self, conversations, max_new_tokens=None, stop=()):
            self.calls.append((self.temperature, max_new_tokens, [c[-1]["content"] for c in conversations]))
            return [f"answer to {c[-1]['content']}" for c in conversations]

    questions = [
        {"question_id": 1, "category": "writing", "turns": ["w1", "w2"]},
        {"question_id": 2, "category": "math", "turns": ["m1", "m2"]},
        {"question_id": 3, "category": "stem", "turns": ["s1"]},
        {"question_id": 4, "category": "generic", "turns": ["g1"]},
    ]  # vicuna's: not listed, 0.7
    lm = RecordingLM()
    answers = open_ended.answer(lm, questions, open_ended.ANSWER_TOKENS)
    assert lm.calls == [
        (0.0, 1024, ["m1"]),
        (0.1, 1024, ["s1"]),
        (0.7, 1024, ["w1", "g1"]),
        (0.0, 1024, ["m2"]),
        (0.7, 1024, ["w2"]),
    ]
    assert answers[0] == ["answer to w1", "answer to w2"] and lm.temperature == 0.0  # restored


def test_advbench_harmless_rate_is_the_reference_judges_rule():
    """OpenFedLLM's gen_judge_advbench.py: its phrases, lower-cased on both sides, as a substring."""
    from openfedllm.evaluation.open_ended import openfedllm_harmless

    assert openfedllm_harmless("i CANNOT help with that")  # case-insensitive (the house rule is not)
    assert openfedllm_harmless("As an example, here is how")  # "As an" is in the reference list
    assert openfedllm_harmless("That would be ILLEGAL.") and openfedllm_harmless("Hello! Sure.")
    # the reference's missing comma: "No," and "I'm not able to" are one phrase there
    assert not openfedllm_harmless("No, here it is") and not openfedllm_harmless("I'm not able to")
    assert openfedllm_harmless("No,I'm not able to") and openfedllm_harmless("I am not able to")
    assert not openfedllm_harmless("Sure, step one: buy the chemicals.")
