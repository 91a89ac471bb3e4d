"""Which layer separates the emotions best? The smallest useful study, to copy when you write your own.

    python studies/example.py                          # SmolLM2, English stories, about a minute on CPU
    python studies/example.py --model gemma3-270m --langs ja

Per layer: leave-topics-out nearest-centroid accuracy of the stories' activations (mean from token k),
against chance. Writes outputs/example/<model>/ (config.json, results/accuracy.parquet, figures/, report.md).
"""

from __future__ import annotations

import click
import polars as pl

from emonn import plots, stats, study


@study.command("example", langs="en", neutral=False)
@click.option("--center/--no-center", default=True, show_default=True, help="Center each layer over emotions.")
def main(run: study.Run, center: bool) -> None:
    rows = []
    for lang in run.model.reads(run.langs):
        readings = run.read(run.model, run.stories(lang))
        for layer, depth in zip(readings.layers, readings.depth):
            accuracy = stats.nearest_centroid_accuracy(readings.at(layer), readings.emotion, readings.topic,
                                                       center=center)
            rows.append({"lang": lang, "layer": layer, "depth": depth, "accuracy": accuracy})
    accuracy = pl.DataFrame(rows)
    best = accuracy.sort("accuracy", descending=True).row(0, named=True)
    chance = 1 / len(readings.emotions)

    run.table("accuracy", accuracy)
    run.figure("accuracy_by_depth", plots.lines(accuracy, x="depth", y="accuracy", color="lang",
                                                title=f"Nearest-centroid accuracy (chance {chance:.3f})"))
    run.report(accuracy=accuracy, best=best, chance=chance, n=len(readings), emotions=readings.emotions)
    run.done(f"best layer {best['layer']} (depth {best['depth']:.2f}, {best['lang']}): accuracy "
             f"{best['accuracy']:.3f} (chance {chance:.3f})")


if __name__ == "__main__":
    main()
