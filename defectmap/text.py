"""Wording shared by the messages of every command."""


def plural(n: int, noun: str) -> str:
    """`n` and the noun, plural unless `n` is 1: 1 epoch, 340 epochs."""
    return f"{n} {noun}{'s' * (n != 1)}"
