"""Benchmark: emonn's steered generation vs a plain Hugging Face forward hook doing the same addition.

    python bench/steer.py [--model smollm2-135m] [--prompts 32] [--new-tokens 32] [--repeats 3]
                          [--device auto] [--dtype auto] [--random-init]

Both generate greedily from the same prompts with the same per-row addition `alpha * v_row` at one layer (at
the last prompt position, then at every new token, as `steer.generate` does), timed interleaved in one
process; prints new tokens per second of each and the ratio emonn / hook (target >= 0.9), and checks that
the two produce the same tokens. `--random-init` draws random weights of the model's real shapes (what a
GPU machine without the weights can run).
"""

from __future__ import annotations

import time

import click
import torch

from emonn import corpus, models, runs, steer


def _hooked_generate(model: models.Model, enc: dict, layer: int, delta: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Plain HF generate with a forward hook on the block: the same positions as `steer.generate`."""
    block = model.hf.get_submodule(model.layers_path)[layer]
    delta = delta.to(model.device, model.dtype)

    def hook(module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        h[:, -1:] += delta[:, None, :]  # the prompt step: its last position; later steps: the one new token
        return output

    handle = block.register_forward_hook(hook)
    try:
        with torch.no_grad():
            out = model.hf.generate(**enc, max_new_tokens=new_tokens, do_sample=False,
                                    pad_token_id=model.tokenizer.pad_token_id)
    finally:
        handle.remove()
    return out[:, enc["input_ids"].shape[1]:]


@click.command()
@click.option("--model", "name", default=models.DEFAULT_MODEL, show_default=True)
@click.option("--prompts", default=32, show_default=True)
@click.option("--new-tokens", default=32, show_default=True)
@click.option("--repeats", default=3, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--dtype", default="auto", show_default=True)
@click.option("--random-init", is_flag=True, help="Random weights of the model's shapes.")
def main(name: str, prompts: int, new_tokens: int, repeats: int, device: str, dtype: str, random_init: bool) -> None:
    model = models.load(name, device=device, dtype=dtype)
    if random_init:
        model = models.random_init(model, 0)
    texts = (corpus.load(neutral=True, langs=["en"])["text"].str.slice(0, 200).to_list() * prompts)[:prompts]
    layer = model.n_layers // 2
    norm = steer.mean_norms(model, texts[:8], [layer])[layer]
    directions = steer.random_directions(prompts, model.d_model, seed=0)
    delta = steer.deltas(directions, torch.linspace(0, 8, prompts).numpy(), norm)
    enc = {k: v.to(model.device) for k, v in model.tokenizer(texts, return_tensors="pt", padding=True).items()}
    times: dict[str, list[float]] = {"emonn": [], "hook": []}
    outputs = {}
    for _ in range(repeats + 1):  # the first round warms up and is not counted
        for kind in times:
            began = time.perf_counter()
            if kind == "emonn":
                ids = steer.generate(model, texts, layer=layer, delta=delta, max_new_tokens=new_tokens).ids
            else:
                ids = _hooked_generate(model, enc, layer, delta, new_tokens)
            if model.device.type == "cuda":
                torch.cuda.synchronize()
            times[kind].append(time.perf_counter() - began)
            outputs[kind] = ids.cpu()
    best = {kind: min(t[1:]) for kind, t in times.items()}
    tokens = prompts * new_tokens
    same = torch.equal(outputs["emonn"], outputs["hook"])
    click.echo(f"{model.name}{' (random init)' if random_init else ''}, {model.device}, {runs.dtype_name(model.dtype)}: "
               f"{prompts} prompts x {new_tokens} new tokens, layer {layer}, best of {repeats}")
    for kind, seconds in best.items():
        click.echo(f"  {kind:<6} {tokens / seconds:8.1f} new tok/s ({seconds:.2f} s)")
    click.echo(f"  ratio emonn / hook: {best['hook'] / best['emonn']:.2f}; same tokens: {same}")


if __name__ == "__main__":
    main()
