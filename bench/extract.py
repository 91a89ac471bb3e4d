"""Benchmark: emonn extraction vs bare Hugging Face forwards over the same batches, and its peak memory.

    python bench/extract.py [--model smollm2-135m] [--texts 240] [--repeats 3] [--device cpu|cuda] [--dtype ...]

Prints, from one run, the time of (a) emonn's trace (every layer reduced in-trace, then tracer.stop()),
(b) the decoder stack alone, `hf_model.model(...)` with the same pooling in torch (the true floor: no
lm_head), (c) the full `hf_model(...)`, and throughput ratios floor/emonn and full/emonn. Then peak RSS of
extracting 90 vs 720 texts in fresh processes: with the reduction in-trace it must not grow with
texts x layers x tokens.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import time
from pathlib import Path

import click
import torch
from nnsight.modeling.processing import positions

from emonn import corpus, models
from emonn.extract import START, activations, batches, forward_pooled
from emonn.reducers import mean_from, pool


def _texts(n: int) -> list[str]:
    frame = corpus.load(langs=["en"])
    texts = (frame["text"].to_list() * (n // len(frame) + 1))[:n]
    return [t if i < len(frame) else f"{i}. {t}" for i, t in enumerate(texts)]  # distinct beyond the corpus


def _hf_pooled(module: torch.nn.Module, enc: dict, start: int, device: str) -> torch.Tensor:
    """The same per-layer mean, from plain HF hidden states (no nnsight)."""
    enc = {k: v.to(device) for k, v in enc.items()}
    out = module(**enc, position_ids=positions(enc["attention_mask"]), output_hidden_states=True)
    w = mean_from(enc["attention_mask"], start)
    return torch.stack([pool(h, w) for h in out.hidden_states[1:]], 1)


def _status_kib(field: str) -> int:
    """A field of /proc/self/status in KiB (VmRSS: resident now; VmHWM: peak since the last reset)."""
    line = next(row for row in Path("/proc/self/status").read_text().splitlines() if row.startswith(field))
    return int(line.split()[1])


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started


@click.command()
@click.option("--model", "name", default=models.DEFAULT_MODEL, show_default=True)
@click.option("--texts", "n_texts", default=240, show_default=True, help="Stories per timing pass.")
@click.option("--batch-tokens", default=2048, show_default=True)
@click.option("--repeats", default=3, show_default=True, help="Passes per method; the fastest is kept.")
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="float32", type=click.Choice(["float32", "bfloat16"]), show_default=True)
@click.option("--memory/--no-memory", default=True, help="Also measure peak RSS for 90 vs 720 texts (CPU).")
@click.option("--memory-child", type=int, default=0, hidden=True)
def main(name: str, n_texts: int, batch_tokens: int, repeats: int, device: str, dtype: str, memory: bool,
         memory_child: int) -> None:
    model = models.load(name, dtype=getattr(torch, dtype))
    if memory_child:
        texts = _texts(memory_child)
        activations(model, texts[:1], progress=False)  # pages in the memory-mapped weights, allocator warm-up
        gc.collect()
        Path("/proc/self/clear_refs").write_text("5")  # Linux: reset the peak RSS to the current RSS
        before = _status_kib("VmRSS")
        acts = activations(model, texts, progress=False)
        print(f"{memory_child} {before / 1024:.1f} {(_status_kib('VmHWM') - before) / 1024:.1f} {acts.nbytes / 2**20:.1f}")
        return
    hf = model.hf.to(device)
    torch.set_grad_enabled(False)
    texts = _texts(n_texts)
    ids = model.tokenizer(texts)["input_ids"]
    groups = batches([len(row) for row in ids], batch_tokens)
    encs = [dict(model.tokenizer.pad({"input_ids": [ids[i] for i in g]}, return_tensors="pt")) for g in groups]
    methods = {
        "emonn trace + in-trace mean + stop": lambda: [forward_pooled(model, [ids[i] for i in g]) for g in groups],
        "HF decoder stack hf_model.model(...)": lambda: [_hf_pooled(hf.model, e, START, device) for e in encs],
        "HF full forward hf_model(...)": lambda: [_hf_pooled(hf, e, START, device) for e in encs],
    }
    for fn in methods.values():  # warm-up: first calls pay one-off costs
        fn()
    best = {label: float("inf") for label in methods}
    for _ in range(repeats):  # interleaved so drift hits every method alike
        for label, fn in methods.items():
            best[label] = min(best[label], _timed(fn))
    tokens = sum(len(row) for row in ids)
    print(f"\n{name} ({dtype}, {device}): {len(texts)} texts, {tokens} tokens, {len(groups)} batches, "
          f"best of {repeats}")
    for label, seconds in best.items():
        print(f"  {label:<38} {seconds:7.2f} s  {tokens / seconds:8.0f} tok/s")
    emonn_time = best["emonn trace + in-trace mean + stop"]
    print(f"  throughput ratio emonn / decoder stack: {best['HF decoder stack hf_model.model(...)'] / emonn_time:.3f}"
          f"  (target >= 0.95)")
    print(f"  throughput ratio emonn / full forward:  {best['HF full forward hf_model(...)'] / emonn_time:.3f}")
    if memory and device == "cpu":
        print("  peak RSS growth during extraction (fresh process each):")
        for n in (90, 720):
            out = subprocess.run([sys.executable, __file__, "--model", name, "--memory-child", str(n)],
                                 capture_output=True, text=True, check=True).stdout.split()[-4:]
            print(f"    {n:4d} texts: RSS after load {float(out[1]):7.1f} MiB, peak during extraction "
                  f"+{float(out[2]):6.1f} MiB (result array {float(out[3]):.1f} MiB)")


if __name__ == "__main__":
    main()
