"""MCQ scoring: the prefix-shared batched scorer equals scoring each full sequence on its own."""
import pytest
import torch

from lorasweep.config.spec import ModelSpec
from lorasweep.model import loading
from lorasweep.tasks import mcq
from lorasweep.tasks.formats import load_mcq, mcq_answer

ROWS = load_mcq("data/wordnet_mcq/validation.jsonl", limit=5)


def naive_logprob(model, prompt, answer):
    """log p(answer | prompt) from one unpadded forward pass of prompt + answer."""
    ids = torch.tensor([prompt + answer])
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(logprobs[len(prompt) + k - 1, t].item() for k, t in enumerate(answer))


@pytest.mark.parametrize("family", ["qwen3", "llama", "gpt2"])
def test_batched_prefix_shared_scores_equal_naive_scores(family):
    model, tok = loading.load_model(ModelSpec(name=f"tiny-{family}", family=family, source="tiny"), "causal_lm")
    model.eval()
    items = [(mcq.prompt_ids(tok, r), [tok(mcq_answer(r["options"], j), add_special_tokens=False)["input_ids"]
                                      for j in range(len(r["options"]))]) for r in ROWS]
    assert len({len(p) for p, _ in items}) > 1  # prompts of different lengths: padding is exercised
    with torch.no_grad():
        batched = mcq.score_options(model, tok.pad_token_id, items)
        expected = [[naive_logprob(model, p, a) for a in answers] for p, answers in items]
    assert batched == [pytest.approx(e, abs=1e-4) for e in expected]


def test_evaluate_counts_correct_answers_and_reports_se():
    model, tok = loading.load_model(ModelSpec(name="tiny-qwen3", family="qwen3", source="tiny"), "causal_lm")
    metrics = mcq.evaluate(model, tok, ROWS, batch_size=2, max_length=512)
    with torch.no_grad():
        items = [(mcq.prompt_ids(tok, r), [tok(mcq_answer(r["options"], j), add_special_tokens=False)["input_ids"]
                                          for j in range(4)]) for r in ROWS]
        scores = mcq.score_options(model, tok.pad_token_id, items)
    correct = sum(s.index(max(s)) == r["answer"] for s, r in zip(scores, ROWS))
    assert metrics["n"] == 5 and metrics["accuracy"] == correct / 5
    assert metrics["accuracy_se"] == pytest.approx((correct / 5 * (1 - correct / 5) / 5) ** 0.5)
