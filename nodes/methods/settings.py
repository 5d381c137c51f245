"""A method's settings, each declared once with its default, range and tooltip (pure: no ComfyUI import). The nodes'
inputs are built from these declarations (driver/schema.py), the methods' own settings take their defaults from
them, and tests/headless/test_docs_defaults.py fails when a help page (js/docs) or the README states another
default or range."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    name: str  # the node input's id
    kind: str  # "float", "int", "bool" or "choice"
    default: object
    tooltip: str  # may name {default}, {min}, {max} and {options}
    min: float | None = None
    max: float | None = None
    step: float | None = None
    options: tuple[str, ...] = ()
    optional: bool = False  # added after the node's release: saved prompts without it still run

    @property
    def shown_default(self) -> str:
        return shown(self.default)

    @property
    def shown_range(self) -> str:
        """'-3.0 to 5.0' (numbers), '' otherwise."""
        return f"{shown(self.min)} to {shown(self.max)}" if self.kind in ("float", "int") else ""

    def tooltip_text(self) -> str:
        return self.tooltip.format(default=self.shown_default, min=shown(self.min), max=shown(self.max),
                                   options=", ".join(self.options))


def shown(value) -> str:
    """How the docs and tooltips write a value: 1.0, 0.05, 6, 10000, on / off, an option as it is."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) >= 1000 else repr(value)
    return str(value)


def by_name(settings) -> dict[str, Setting]:
    return {s.name: s for s in settings}
