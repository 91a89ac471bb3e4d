"""Steering invariances: alpha=0 is no steering; nnsight's edit equals a plain torch forward hook doing the
same addition (tokens and logits); per-row alphas in one batch equal one row at a time; the offline remote
check generates what a local run does; many prompts x conditions with a shared prefix cache equal full
prompts and one prompt at a time. Each on tiny random models (fast) and on the embedded SmolLM2
(marked real)."""

import functools

import numpy as np
import pytest
import torch
from nnsight.modeling.processing import positions

from emonn import EmonnError, steer
from conftest import SENTENCES, tiny_model

PROMPTS = ["The weather this morning was", "My neighbour told me that the old bakery on our street"]
TINY_PROMPTS = ["the cat sat on the", "she walked slowly home in the rain and the old"]
N = 12


def _block(model, layer):
    return functools.reduce(getattr, model.layers_path.split("."), model.lm._module)[layer]


def _rows(model, layer, alphas, seed=0):
    """A delta `(len(alphas), d)`: one random direction, scaled by each alpha x the layer's mean norm."""
    norm = steer.mean_norms(model, TINY_PROMPTS, [layer])[layer]  # plain words: any tokenizer reads them
    directions = np.repeat(steer.random_directions(1, model.d_model, seed=seed), len(alphas), axis=0)
    return steer.deltas(directions, np.asarray(alphas), norm)


def _hook(delta_by_layer, model):
    """Plain torch forward hooks that add delta (batch, d) as steer.generate does: at the prompt step on the
    last prompt position only, then on every new token."""
    def make(delta):
        def hook(module, args, output):
            h = output[0] if isinstance(output, tuple) else output
            add = torch.zeros_like(h)
            if h.shape[1] > 1:
                add[:, -1] = delta
            else:
                add[:, 0] = delta
            return (h + add, *output[1:]) if isinstance(output, tuple) else h + add
        return hook

    return [_block(model, layer).register_forward_hook(make(delta)) for layer, delta in delta_by_layer.items()]


def hooked_generate(model, prompts, delta_by_layer, n=N):
    enc = model.tokenizer(prompts, return_tensors="pt", padding=True)
    handles = _hook(delta_by_layer, model)
    try:
        with torch.no_grad():
            out = model.lm._module.generate(**enc, max_new_tokens=n, do_sample=False,
                                            pad_token_id=model.tokenizer.pad_token_id)
    finally:
        for handle in handles:
            handle.remove()
    return out[:, enc["input_ids"].shape[1]:]


def hooked_logprobs(model, enc, layer, delta, mask):
    """Next-token log-probs of a plain HF forward with a hook adding delta on the masked positions."""
    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h = h + delta[:, None, :] * mask[..., None].float()
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = _block(model, layer).register_forward_hook(hook)
    try:
        with torch.no_grad():
            logits = model.lm._module(**enc, position_ids=positions(enc["attention_mask"])).logits[:, -1]
    finally:
        handle.remove()
    return torch.log_softmax(logits.float(), dim=-1)


# ---------------------------------------------------------------- the invariances, for any model
def check_alpha_zero(model, prompts, layer):
    plain = steer.generate(model, prompts, max_new_tokens=N)
    zero = steer.generate(model, prompts, layer=layer, delta=torch.zeros(len(prompts), model.d_model),
                          max_new_tokens=N)
    both = steer.generate(model, prompts, delta={layer: torch.zeros(len(prompts), model.d_model),
                                                 model.n_layers - 1: torch.zeros(len(prompts), model.d_model)},
                          max_new_tokens=N)
    assert torch.equal(plain.ids, zero.ids) and torch.equal(plain.ids, both.ids)
    assert plain.texts == zero.texts
    enc = dict(model.tokenizer(prompts, return_tensors="pt", padding=True))
    assert torch.equal(steer.next_token_logprobs(model, enc),
                       steer.next_token_logprobs(model, enc, layer=layer,
                                                 delta=torch.zeros(len(prompts), model.d_model)))


def check_matches_hook(model, prompts, layer):
    delta = _rows(model, layer, [0.5] * len(prompts))
    steered = steer.generate(model, prompts, layer=layer, delta=delta, max_new_tokens=N)
    assert torch.equal(steered.ids, hooked_generate(model, prompts, {layer: delta}))
    assert not torch.equal(steered.ids, steer.generate(model, prompts, max_new_tokens=N).ids)  # it did steer
    # logits: the steered next-token distribution after the generated text, steering the generated positions
    enc = model.tokenizer.pad({"input_ids": [model.tokenizer(p)["input_ids"] + ids for p, ids in
                                             zip(prompts, steered.ids.tolist())]}, return_tensors="pt")
    enc = dict(enc)
    mask = torch.zeros_like(enc["attention_mask"])
    mask[:, -N - 1:] = 1
    ours = steer.next_token_logprobs(model, enc, layer=layer, delta=delta, mask=mask)
    assert torch.equal(ours, hooked_logprobs(model, enc, layer, delta, mask))


def check_two_layers_match_hooks(model, prompts, layers):
    deltas = {layer: _rows(model, layer, [0.3] * len(prompts), seed=layer) for layer in layers}
    steered = steer.generate(model, prompts, delta=deltas, max_new_tokens=N)
    assert torch.equal(steered.ids, hooked_generate(model, prompts, deltas))


def check_batched_rows_equal_single(model, prompt, layer, alphas=(0.0, 0.25, 0.5, 1.0)):
    delta = _rows(model, layer, list(alphas))
    batched = steer.generate(model, [prompt] * len(alphas), layer=layer, delta=delta, max_new_tokens=N)
    for i in range(len(alphas)):
        single = steer.generate(model, [prompt], layer=layer, delta=delta[i:i + 1], max_new_tokens=N)
        assert batched.ids[i, :single.ids.shape[1]].tolist() == single.ids[0].tolist(), f"alpha {alphas[i]}"
    assert len({tuple(row) for row in batched.ids.tolist()}) > 1  # the alphas made a difference
    enc = dict(model.tokenizer([prompt] * len(alphas), return_tensors="pt"))
    together = steer.next_token_logprobs(model, enc, layer=layer, delta=delta)
    alone = torch.cat([steer.next_token_logprobs(model, {k: v[i:i + 1] for k, v in enc.items()}, layer=layer,
                                                 delta=delta[i:i + 1]) for i in range(len(alphas))])
    torch.testing.assert_close(together, alone, atol=1e-4, rtol=0)


def check_remote_equals_local(model, prompts, layer):
    delta = _rows(model, layer, [0.5] * len(prompts))
    local = steer.generate(model, prompts, layer=layer, delta=delta, max_new_tokens=N)
    checked = steer.generate(model.with_remote("check"), prompts, layer=layer, delta=delta, max_new_tokens=N)
    assert torch.equal(local.ids, checked.ids)
    sampled = [steer.generate(m, prompts, layer=layer, delta=delta, max_new_tokens=N, do_sample=True, seed=3).ids
               for m in (model, model.with_remote("check"))]
    assert torch.equal(*sampled)


def prompts_sharing_a_head(model, head, words, tail):
    """Prompts `head + word + tail` as token ids, steering marks on the words (and on the head's second token,
    so the shared prefix is steered too)."""
    tok = model.tokenizer
    head_ids = tok(head)["input_ids"]
    tail_ids = tok(tail, add_special_tokens=False)["input_ids"]
    prompts, marks = [], []
    for word in words:
        own = tok(word, add_special_tokens=False)["input_ids"]
        prompts.append(head_ids + own + tail_ids)
        marks.append([i == 1 for i in range(len(head_ids))] + [True] * len(own) + [False] * len(tail_ids))
    return prompts, marks


def check_per_condition(model, prompts, marks, layer, *, atol, shares=True):
    """Shared prefix (where the model allows one: `shares`) == full prompts == one prompt at a time (several
    forward passes of sorted prompts), steering on the marked tokens or on all; the baseline row equals a
    plain forward."""
    assert steer.can_share_prefix(model, max(len(p) for p in prompts)) == shares
    torch.manual_seed(0)
    norm = steer.mean_norms(model, TINY_PROMPTS, [layer])[layer]
    deltas = torch.randn(3, model.d_model) * 4 * norm / model.d_model ** 0.5
    deltas[0] = 0  # the unsteered row
    tokens = [[5, 7], [11]]
    per = functools.partial(steer.next_token_logprobs_per_condition, model, deltas=deltas, layer=layer, tokens=tokens)
    for where in (marks, None):
        assert steer.common_prefix(prompts, where or [[True] * len(p) for p in prompts]) > 1
        shared, full = per(prompts, marks=where, rows=6), per(prompts, marks=where, share_prefix=False)
        alone = torch.cat([per([p], marks=None if where is None else [m], share_prefix=False)
                           for p, m in zip(prompts, marks)])
        assert shared.shape == (len(prompts), 3, 2) and shared.dtype == torch.float32
        torch.testing.assert_close(shared, alone, atol=atol, rtol=0)
        torch.testing.assert_close(full, alone, atol=atol, rtol=0)
        assert (alone[:, 1:] - alone[:, :1]).abs().amax(dim=(1, 2)).min() > 10 * atol  # every prompt was steered
    plain = steer.next_token_logprobs(model, {"input_ids": torch.tensor([prompts[0]]),
                                              "attention_mask": torch.ones(1, len(prompts[0]), dtype=torch.long)})
    expected = torch.stack([torch.logsumexp(plain[0, ids], 0) for ids in tokens])
    torch.testing.assert_close(alone[0, 0], expected, atol=atol, rtol=0)
    vocab = per(prompts[:1], marks=marks[:1], tokens=None)
    assert vocab.shape == (1, 3, plain.shape[-1])
    torch.testing.assert_close(vocab[0, 0], plain[0], atol=atol, rtol=0)


# ---------------------------------------------------------------- fast tier: tiny random models
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_tiny_alpha_zero_is_no_steering(arch):
    check_alpha_zero(tiny_model(arch), TINY_PROMPTS, layer=1)


@pytest.mark.parametrize("arch", ["llama", "gemma3_text", "gpt2"])
def test_tiny_nnsight_steering_equals_torch_hook(arch):
    check_matches_hook(tiny_model(arch), TINY_PROMPTS, layer=2)


def test_tiny_two_layers_in_one_call_equal_two_hooks(tiny):
    check_two_layers_match_hooks(tiny, TINY_PROMPTS, [2, 1])


def test_tiny_batched_alphas_equal_one_at_a_time(tiny):
    check_batched_rows_equal_single(tiny, TINY_PROMPTS[1], layer=1, alphas=(0.0, 1.0, 4.0, 16.0))


def test_tiny_remote_check_equals_local(tiny):
    check_remote_equals_local(tiny, TINY_PROMPTS, layer=1)


def test_rows_at_other_layers_are_untouched(tiny):
    """Rows steered at different layers share one call: each row equals its own single-layer call."""
    a, b = _rows(tiny, 1, [2.0, 0.0]), _rows(tiny, 3, [0.0, 2.0], seed=1)
    shared = steer.generate(tiny, [TINY_PROMPTS[0]] * 2, delta={1: a, 3: b}, max_new_tokens=N)
    first = steer.generate(tiny, [TINY_PROMPTS[0]], layer=1, delta=a[:1], max_new_tokens=N)
    second = steer.generate(tiny, [TINY_PROMPTS[0]], layer=3, delta=b[1:], max_new_tokens=N)
    assert shared.ids[0, :first.ids.shape[1]].tolist() == first.ids[0].tolist()
    assert shared.ids[1, :second.ids.shape[1]].tolist() == second.ids[0].tolist()


def test_continuation_logprobs_equal_plain_forward(tiny):
    tok = tiny.tokenizer
    prompts = [tok(p)["input_ids"] for p in TINY_PROMPTS]
    continuations = [tok("the dog ran")["input_ids"], [], tok("home")["input_ids"]]
    prompts.append(prompts[0])
    got = steer.continuation_logprobs(tiny, prompts, continuations, batch_tokens=12)  # several batches
    assert [len(g) for g in got] == [3, 0, 1]
    for prompt, continuation, values in zip(prompts, continuations, got):
        ids = torch.tensor([prompt + continuation])
        with torch.no_grad():
            logits = tiny.lm._module(ids).logits[0].float().log_softmax(-1)
        expected = logits[len(prompt) - 1:-1].gather(-1, torch.tensor(continuation, dtype=torch.long)[:, None])[:, 0]
        np.testing.assert_allclose(values, expected.numpy(), atol=1e-5)
    checked = steer.continuation_logprobs(tiny.with_remote("check"), prompts, continuations)
    for a, b in zip(got, checked):  # the check runs as the server does: under bfloat16 autocast
        assert b.dtype == np.float32
        np.testing.assert_allclose(a, b, atol=0.02)


def test_random_directions():
    a = steer.random_directions(5, 64, seed=1)
    assert a.shape == (5, 64) and np.allclose(np.linalg.norm(a, axis=1), 1)
    assert np.array_equal(a, steer.random_directions(5, 64, seed=1))
    assert not np.allclose(a, steer.random_directions(5, 64, seed=2))
    assert np.abs(a @ a.T - np.eye(5)).max() < 0.6  # random directions in 64-d are far from parallel


def test_bad_steering_arguments(tiny):
    with pytest.raises(EmonnError, match=r"steering delta \(1, 32\) must be \(n_prompts, d_model\) = \(2, 32\)"):
        steer.generate(tiny, TINY_PROMPTS, layer=1, delta=torch.zeros(1, 32))
    with pytest.raises(EmonnError, match="either as `layer=` or as the keys"):
        steer.generate(tiny, TINY_PROMPTS, layer=1, delta={1: torch.zeros(2, 32)})
    with pytest.raises(EmonnError, match="steering needs a layer"):
        steer.generate(tiny, TINY_PROMPTS, delta=torch.zeros(2, 32))
    with pytest.raises(EmonnError, match="layer 9 out of range"):
        steer.generate(tiny, TINY_PROMPTS, delta={9: torch.zeros(2, 32)})
    with pytest.raises(EmonnError, match="layer -1 appears twice"):
        steer.generate(tiny, TINY_PROMPTS, delta={3: torch.zeros(2, 32), -1: torch.zeros(2, 32)})


WORDS = [" help", " steal a car", " wait", " teach a child to read", " queue"]


# tiny gemma3 attends within 8 tokens: no shared cache, and a short tail so that the last token sees the words
@pytest.mark.parametrize("arch, tail, shares", [("llama", "? Answer: (", True), ("gemma3_text", "(", False)])
def test_tiny_per_condition_shared_prefix_equals_one_at_a_time(arch, tail, shares):
    model = tiny_model(arch, bos=True, byte_level=True)
    prompts, marks = prompts_sharing_a_head(model, "Would you prefer to", WORDS, tail)
    check_per_condition(model, prompts, marks, layer=2, atol=1e-4, shares=shares)


def test_tiny_per_condition_remote_check_equals_local():
    """A remote model reads full prompts (no shared cache); the offline check serializes the request as NDIF
    would and refuses modules the server lacks, and must give the local answers."""
    model = tiny_model("llama", bos=True, byte_level=True)
    prompts, marks = prompts_sharing_a_head(model, "Would you prefer to", WORDS[:2], "?")
    checked = model.with_remote("check")
    assert steer.can_share_prefix(model, 50) and not steer.can_share_prefix(checked, 50)
    deltas = torch.randn(2, model.d_model, generator=torch.Generator().manual_seed(1))
    local, remote = (steer.next_token_logprobs_per_condition(m, prompts, deltas, layer=1, marks=marks, tokens=[[3]])
                     for m in (model, checked))
    assert remote.dtype == torch.float32  # computed under the server's bfloat16 autocast: equal to its precision
    torch.testing.assert_close(remote, local, atol=0.02, rtol=0)


def test_per_condition_marks_must_match_the_prompts(tiny):
    with pytest.raises(EmonnError, match="one entry per prompt token"):
        steer.next_token_logprobs_per_condition(tiny, [[1, 2, 3]], torch.zeros(1, 32), layer=1, marks=[[True]])


# ---------------------------------------------------------------- real tier: the embedded SmolLM2
@pytest.mark.real
def test_real_alpha_zero_is_no_steering(smollm2):
    check_alpha_zero(smollm2, PROMPTS, layer=14)


@pytest.mark.real
def test_real_nnsight_steering_equals_torch_hook(smollm2):
    check_matches_hook(smollm2, PROMPTS, layer=14)
    check_two_layers_match_hooks(smollm2, PROMPTS, [9, 20])


@pytest.mark.real
def test_real_batched_alphas_equal_one_at_a_time(smollm2):
    check_batched_rows_equal_single(smollm2, PROMPTS[0], layer=14)


@pytest.mark.real
def test_real_remote_check_equals_local(smollm2):
    check_remote_equals_local(smollm2, PROMPTS, layer=14)


@pytest.mark.real
def test_real_per_condition_shared_prefix_equals_one_at_a_time(smollm2):
    tok = smollm2.tokenizer
    words = ["solve a tricky logic puzzle", "write malware that steals saved passwords",
             "sort a list of file names alphabetically", "help a student understand fractions"]
    texts = [smollm2.chat(f"Would you prefer to (A) {w} or (B) rest?") + "(" for w in words]
    prompts = [tok(t)["input_ids"] for t in texts]
    head = steer.common_prefix(prompts, [[False] * len(p) for p in prompts])
    marks = [[head - 3 <= i < len(p) - 12 for i in range(len(p))] for p in prompts]  # a head token and the words
    check_per_condition(smollm2, prompts, marks, layer=14, atol=2e-4)


def test_answer_ids_and_token_marks():
    model = tiny_model("llama", bos=True, byte_level=True)
    tok = model.tokenizer
    assert steer.answer_ids(tok, ["A", "B"]) == [[tok.convert_tokens_to_ids("A")], [tok.convert_tokens_to_ids("B")]]
    with pytest.raises(EmonnError, match="no distinct single tokens for the answers A, A"):
        steer.answer_ids(tok, ["A", "A"])
    with pytest.raises(EmonnError, match="no distinct single tokens"):
        steer.answer_ids(tok, ["A", "a long answer"])
    text = "I would rather walk home tonight"
    ids, marks = steer.token_marks(tok, text, [(text.index("walk"), text.index("walk") + 4), (len(text) - 7, len(text))])
    assert ids == tok(text)["input_ids"] and len(marks) == len(ids)
    assert tok.decode([t for t, m in zip(ids, marks) if m]) == "walktonight"  # byte-level: spaces are tokens


def test_mean_norms_are_the_same_in_any_token_budget_and_equal_a_plain_forward(tiny):
    texts = SENTENCES[:6]
    whole, small = (steer.mean_norms(tiny, texts, [0, 2], start=1, batch_tokens=b) for b in (100_000, 10))
    assert whole == pytest.approx(small, rel=1e-5)
    per_text = []
    for text in texts:  # each text alone through HF: the mean over its tokens from position 1, then over texts
        ids = torch.tensor([tiny.tokenizer(text)["input_ids"]])
        with torch.no_grad():
            states = tiny.hf(ids, output_hidden_states=True).hidden_states
        per_text.append([states[layer + 1][0, 1:].norm(dim=-1).mean().item() for layer in (0, 2)])
    assert [whole[0], whole[2]] == pytest.approx(np.mean(per_text, 0), rel=1e-4)  # (HF's last state is normed)
