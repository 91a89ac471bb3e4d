import torch

from emonn.reducers import last_token, mean_from, pool, weights


def test_mean_from_counts_real_tokens_under_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    w = mean_from(mask, start=2)
    assert torch.allclose(w[0], torch.tensor([0, 0, 0, 0, 0.5, 0.5]))
    assert torch.allclose(w[1], torch.tensor([0, 0, 0.25, 0.25, 0.25, 0.25]))


def test_mean_from_right_padding_and_short_texts_use_last_token():
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]])
    w = mean_from(mask, start=3)
    assert torch.equal(w[0], torch.tensor([0.0, 1, 0, 0]))  # 2 tokens <= start: its last token only
    assert torch.equal(w[1], torch.tensor([0.0, 0, 0, 1]))


def test_last_token_and_dispatch():
    mask = torch.tensor([[0, 1, 1], [1, 1, 0]])
    assert torch.equal(last_token(mask), torch.tensor([[0.0, 0, 1], [0, 1, 0]]))
    assert torch.equal(weights(mask, "last", 0), last_token(mask))
    assert torch.equal(weights(mask, "mean", 0), mean_from(mask, 0))


def test_pool_is_weighted_sum_and_accepts_tuples():
    h = torch.randn(2, 3, 4)
    w = torch.tensor([[0.0, 0.5, 0.5], [1.0, 0, 0]])
    expected = torch.stack([(h[0, 1] + h[0, 2]) / 2, h[1, 0]])
    assert torch.allclose(pool(h, w), expected)
    assert torch.allclose(pool((h, None), w), expected)
    assert pool(h.to(torch.bfloat16), w).dtype == torch.float32
