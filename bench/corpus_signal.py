"""Evidence that the corpus carries emotion signal: leave-topics-out nearest-centered-centroid accuracy per layer.

    python bench/corpus_signal.py [--runs smollm2-135m:en,gemma3-270m:en,gemma3-270m:ja] [--out outputs]

For each model and language: comprehension activations of every shipped story (mean over tokens >=
`--start`, shared activation cache), then at each layer leave-one-topic-out classification: the 30
emotion centroids are built from the stories of the other topics, centered on their mean, and each
held-out story gets the emotion of the centroid with the highest cosine (`stats.nearest_centroid_accuracy`).
Chance is 1/30. Prints one table (accuracy per layer), the best layer per run, and writes
outputs/corpus_signal/embedded/results/accuracy.parquet.
"""

from __future__ import annotations

import time
from pathlib import Path

import click
import numpy as np
import polars as pl

from emonn import corpus, extract, models, runs, stats


def leave_topics_out(acts: np.ndarray, stories: pl.DataFrame) -> np.ndarray:
    """Accuracy per layer `(n_layers,)` of stories `(n, n_layers, d)` classified by centroids of other topics."""
    labels, topics = stories["emotion"].to_numpy(), stories["topic"].to_numpy()
    return np.array([stats.nearest_centroid_accuracy(acts[:, layer], labels, topics) for layer in range(acts.shape[1])])


@click.command(cls=runs.Command)
@click.option("--runs", "pairs", default="smollm2-135m:en,gemma3-270m:en,gemma3-270m:ja", show_default=True,
              help="comma-separated model:lang pairs")
@click.option("--start", default=extract.START, show_default=True, help="first token position of the mean")
@click.option("--out", type=click.Path(path_type=Path), default=runs.OUT, show_default=True)
def main(pairs: str, start: int, out: Path) -> None:
    """Leave-topics-out emotion classification accuracy per layer, per embedded model and language."""
    wanted: dict[str, list[str]] = {}
    for pair in pairs.split(","):
        name, _, lang = pair.strip().partition(":")
        wanted.setdefault(name, []).append(lang or "en")
    run = runs.Run.create(out, "corpus_signal", "embedded", {"runs": pairs, "start": start})
    results = []
    for name, langs in wanted.items():
        model = models.load(name)
        cache = runs.activation_cache(out, model, "mean", start)
        for lang in langs:
            started = time.perf_counter()
            stories = corpus.load(langs=[lang])
            acts = extract.activations(model, stories["text"].to_list(), start=start, cache=cache)
            accuracy = leave_topics_out(acts, stories)
            results.append(pl.DataFrame({"model": name, "lang": lang, "layer": np.arange(model.n_layers),
                                         "depth": [model.depth(i) for i in range(model.n_layers)],
                                         "accuracy": accuracy, "n_stories": len(stories),
                                         "n_topics": stories["topic"].n_unique()}))
            print(f"{name} {lang}: {len(stories)} stories, {stories['topic'].n_unique()} topics, "
                  f"{time.perf_counter() - started:.0f} s")
    table = pl.concat(results)
    run.table("accuracy", table)
    wide = table.with_columns(run=pl.col("model") + " " + pl.col("lang")).pivot(
        "run", index="layer", values="accuracy", sort_columns=False).sort("layer")
    with pl.Config(tbl_rows=-1, tbl_cols=-1, float_precision=3, tbl_hide_dataframe_shape=True):
        print(f"leave-one-topic-out nearest-centroid accuracy (chance {1 / len(corpus.emotion_names()):.3f})")
        print(wide)
    for (name, lang), part in table.group_by("model", "lang", maintain_order=True):
        best = part.row(int(part["accuracy"].arg_max()), named=True)
        print(f"best {name} {lang}: layer {best['layer']} (depth {best['depth']:.2f}), accuracy {best['accuracy']:.3f}")
    print(f"results: {run.folder}")


if __name__ == "__main__":
    main()
