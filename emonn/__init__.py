"""emonn: find, measure and steer emotion representations in language models (on nnsight)."""


class EmonnError(Exception):
    """A problem the user can fix; the message says what to do. Study CLIs print it on one line."""


__all__ = ["EmonnError"]
