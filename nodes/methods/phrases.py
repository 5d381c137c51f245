"""Phrases of one encoded prompt and their token rows (pure): DeLeaker's entities, the heatmap's words."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Phrases:
    """Phrases tied to one encoded prompt: their names, their CONDITIONING rows and the prompt's row count, and
    the same for each extra text stream of the family (HiDream's Llama rows)."""

    names: tuple[str, ...]
    positions: tuple[tuple[int, ...], ...]  # each phrase's CONDITIONING rows
    length: int  # the prompt's CONDITIONING rows
    prompt: object = None  # the encoded prompt's tag (text.provenance.PromptTag): the positive entries to use
    family: str = "flux"
    extra: tuple[tuple[str, tuple[tuple[int, ...], ...], int], ...] = ()  # (stream, each phrase's rows, length)

    def streams(self) -> dict:
        """{text stream: (each phrase's rows in it, the prompt's rows in it)}, for Layout.with_phrases."""
        return {"prompt": (self.positions, self.length), **{name: (rows, n) for name, rows, n in self.extra}}
