from collections import Counter

from openfedllm.data import suite
from openfedllm.data.example import Example, first_line, is_correct


def test_suite_is_deterministic_and_balanced():
    a = suite.generate(10, seed=3)
    assert a == suite.generate(10, seed=3)
    assert a != suite.generate(10, seed=4)
    assert Counter(e.domain for e in a) == {d: 10 for d in suite.DOMAINS}


def test_heldout_never_repeats_a_training_example():
    train, held = suite.train_and_heldout(100, 15, seed=0)
    seen = {(e.instruction, e.input) for e in train}
    assert not any((e.instruction, e.input) in seen for e in held)
    assert Counter(e.domain for e in held) == {d: 15 for d in suite.DOMAINS}


def test_every_suite_answer_is_checkable_and_right():
    for e in suite.generate(30, seed=0):
        assert e.check != "none"
        assert is_correct(e, e.output) is True


def test_exact_and_number_checks_are_strict_about_format():
    label = Example("q", "positive", check="exact")
    assert is_correct(label, "Positive.\nBecause profits rose.")
    assert not is_correct(label, "The sentiment is positive.")
    number = Example("q", "42", check="number")
    assert is_correct(number, "42") and is_correct(number, "42.0")
    assert not is_correct(number, "The answer is 42")
    assert first_line("  `x + 1`.  \nmore") == "x + 1"


def test_python_expression_check_runs_the_answer_on_test_values():
    e = Example("q", "x * 2", check="python_expr")
    assert is_correct(e, "x + x") and is_correct(e, "2*x")
    assert not is_correct(e, "x ** 2")  # agrees at x=0 and x=2 only
    assert not is_correct(e, "x * 2 if x else 1")
    # anything that is not arithmetic on x is refused, never executed
    for hostile in [
        "__import__('os').system('true')",
        "open('f').read()",
        "(lambda: 1)()",
        "x ** 99999999",
        "y * 2",
        "'ab' * x",
    ]:
        assert not is_correct(e, hostile)


def test_free_text_examples_have_no_verdict():
    assert is_correct(Example("q", "anything"), "whatever") is None


def test_data_domains_restricts_training_and_heldout_to_those_domains():
    from openfedllm import config as cfg_mod
    from openfedllm.data import load_examples

    config = cfg_mod.build({"data": {"domains": ["general"], "train_per_domain": 8, "heldout_per_domain": 3}})
    train, held = load_examples(config.data, seed=1)
    assert {e.domain for e in train} == {e.domain for e in held} == {"general"}
    assert len(train) == 8 and len(held) == 3
    everything, _ = load_examples(cfg_mod.build({"data": {"train_per_domain": 8}}).data, seed=1)
    # the same stream per domain: the general examples are those of a run over all five domains
    assert sorted(e.instruction + e.input for e in train) == sorted(
        e.instruction + e.input for e in everything if e.domain == "general"
    )
