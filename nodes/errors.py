"""User-facing errors: every message names the node, the input and the fix, and repeats at most a short piece of
what the user wrote (`quoted`, `listed`); sizes read as `size` writes them."""

QUOTED_CHARS = 60  # characters of the user's text an error repeats
LISTED = 20  # items an error lists (words of the prompt, options)
MAX_PROBLEM = 1_000  # characters of a problem's text: the last resort when a message repeats more than it should


def cut(text: str, most: int) -> str:
    """`text`, or its first `most` - 1 characters and '…' when longer."""
    return text if len(text) <= most else text[:most - 1] + "\u2026"


def quoted(text) -> str:
    """`text` in single quotes for a message; a longer one cut to QUOTED_CHARS with '…' and its length."""
    text = str(text)
    if len(text) <= QUOTED_CHARS:
        return f"'{text}'"
    return f"'{cut(text, QUOTED_CHARS)}' ({len(text):,} characters)"


def listed(items, most: int = LISTED) -> str:
    """The first `most` of `items` (already spelled for the message), joined by ', ', and how many more."""
    items = list(items)
    shown = ", ".join(items[:most])
    return shown if len(items) <= most else f"{shown} and {len(items) - most:,} more"


def size(n: int) -> str:
    """Bytes for a message: '4.0 GiB', '19.2 KiB', '512 B'."""
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n:.1f} GiB"


class LeaklessInputError(ValueError):
    def __init__(self, node: str, input_name: str, problem: str, fix: str = ""):
        self.node, self.input_name, self.problem, self.fix = node, input_name, problem, fix
        problem = cut(problem.rstrip(), MAX_PROBLEM)
        message = f"{node}: input '{input_name}': {problem}" + ("" if problem.endswith((".", "!", "?")) else ".")
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)


def input_error(node: str, input_name: str, error: Exception, fix: str) -> LeaklessInputError:
    """A lower-level error (a phrase not found, a bad selection...) restated for the user: `raise ... from None`."""
    return LeaklessInputError(node, input_name, str(error), fix)


# ComfyUI shows the exception's module-qualified type; the loader's module name is a file path.
LeaklessInputError.__module__ = "leakless"
