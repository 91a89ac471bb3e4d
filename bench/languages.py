"""How well does each embedded model read each corpus language? Bits per character of the stories.

    python bench/languages.py [--model smollm2-135m --model gemma3-270m ...] [--per-emotion 2]

Bits per character (the stories' negative log-likelihood under the model, summed over tokens, over their
characters) is comparable across tokenizers, unlike perplexity per token. The first token of each story is
given (or the BOS the tokenizer adds) and not scored. Default: every installed embedded model, 2 stories per
emotion and language (60 + 60).
"""

from __future__ import annotations

import math

import click
import polars as pl

from emonn import corpus, models, steer


@click.command()
@click.option("--model", "model_names", multiple=True, help="Default: every installed embedded model.")
@click.option("--per-emotion", default=2, show_default=True, help="Stories per emotion and language.")
def main(model_names: tuple[str, ...], per_emotion: int) -> None:
    stories = corpus.load().group_by("lang", "emotion", maintain_order=True).head(per_emotion)
    names, skipped = (list(model_names), []) if model_names else models.installed()
    for line in skipped:
        click.echo(line)
    rows = []
    for name in names:
        model = models.load(name)
        for lang in ("en", "ja"):
            texts = stories.filter(pl.col("lang") == lang)["text"].to_list()
            ids = [model.tokenizer(text)["input_ids"] for text in texts]
            first = [row[:1] for row in ids]
            logprobs = steer.continuation_logprobs(model, first, [row[1:] for row in ids], batch_size=4)
            given = sum(len(model.tokenizer.decode(row, skip_special_tokens=True)) for row in first)
            chars = sum(len(text) for text in texts) - given
            bits = -sum(float(lp.sum()) for lp in logprobs) / math.log(2)
            rows.append({"model": name, "lang": lang, "stories": len(texts), "bits_per_char": bits / chars,
                         "tokens_per_char": sum(len(row) - 1 for row in ids) / chars})
        del model
    with pl.Config(tbl_hide_dataframe_shape=True, tbl_hide_column_data_types=True, float_precision=3):
        click.echo(pl.DataFrame(rows))


if __name__ == "__main__":
    main()
