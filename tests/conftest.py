"""Shared fixtures: tiny random-weight models (fast tier) and the embedded SmolLM2 (real tier)."""

from __future__ import annotations

import functools
import os

import pytest
import torch

from emonn import models

WORDS = ("the a cat dog sat ran on under mat house tree red blue big small happy sad night day she he it "
         "was is to and of in with walked slowly quickly home rain sun river old new friend letter").split()


def crash_after(calls: int, fn):
    """`fn`, killed (KeyboardInterrupt) when called more than `calls` times: a run interrupted mid-way."""
    count = 0

    def wrapped(*args, **kwargs):
        nonlocal count
        count += 1
        if count > calls:
            raise KeyboardInterrupt
        return fn(*args, **kwargs)

    return wrapped


def tiny_tokenizer(bos: bool = False, byte_level: bool = False):
    """An offline tokenizer: word-level over WORDS, or byte-level (any language, one token per byte);
    both with unknown, pad, eos and bos tokens at ids 0-3."""
    from tokenizers import Tokenizer, decoders, models as tmodels, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<unk>", "<pad>", "<eos>", "<bos>"]
    if byte_level:
        alphabet = pre_tokenizers.ByteLevel.alphabet()
        raw = Tokenizer(tmodels.BPE({t: i for i, t in enumerate(specials + sorted(alphabet))}, [], unk_token="<unk>"))
        raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        raw.decoder = decoders.ByteLevel()
    else:
        raw = Tokenizer(tmodels.WordLevel({w: i for i, w in enumerate(specials + WORDS)}, unk_token="<unk>"))
        raw.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if bos:
        raw.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=raw, unk_token="<unk>", pad_token="<pad>",
                                   eos_token="<eos>", bos_token="<bos>")


ARCHS = ("llama", "gemma3_text", "qwen2", "mistral", "gpt2")


@functools.cache
def _tiny_hf(arch: str, vocab_size: int = len(WORDS) + 4):
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(0)
    size = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    if arch == "gpt2":
        size = dict(vocab_size=vocab_size, n_embd=32, n_layer=4, n_head=4, n_positions=128)
    if arch == "gemma3_text":
        size.update(head_dim=8, sliding_window=8)
    config = AutoConfig.for_model(arch, **size, pad_token_id=1, eos_token_id=2, bos_token_id=3)
    return AutoModelForCausalLM.from_config(config).eval()


def tiny_model(arch: str = "llama", bos: bool = False, byte_level: bool = False) -> models.Model:
    """A random-weight 4-layer, d=32 model; `byte_level` gives it a tokenizer that reads any language."""
    tokenizer = tiny_tokenizer(bos=bos, byte_level=byte_level)
    hf = _tiny_hf(arch, len(tokenizer)).to(getattr(torch, os.environ.get("EMONN_TEST_DTYPE", "float32")))
    return models.wrap(hf, tokenizer, name=f"tiny-{arch}")


@pytest.fixture
def tiny():
    return tiny_model("llama")


@pytest.fixture(scope="session")
def smollm2():
    return models.load("smollm2-135m")


SENTENCES = [
    "the cat sat on the mat",
    "she walked slowly home in the rain and the old dog ran under the big tree",
    "it was night",
    "he ran to the river with a friend and a letter",
    "the red house",
    "a small blue house under a big old tree was new",
]
