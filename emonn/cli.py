"""The `emonn` command: build, probe with and share emotion vectors, and browse every study's results.

    emonn vectors build --model gemma3-270m --lang en      # fit and save vectors with a model card
    emonn probe "I just took 500 mg of Tylenol" --vectors outputs/vectors/smollm2-135m-en
    emonn report outputs                                   # one index.html over every study and model

Every subcommand has `--help`; an `EmonnError` ends it with one line (`Error: ...`) and exit code 1.
"""

from __future__ import annotations

import click

from emonn import runs


class Group(click.Group):
    """A click group whose subcommands print an `EmonnError` on one line and exit 1."""

    command_class = runs.Command


@click.group(cls=Group)
def main() -> None:
    """Find, measure and steer emotion representations in language models."""


if __name__ == "__main__":
    main()
