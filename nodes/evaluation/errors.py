"""The runner's one error type: a message that names what is wrong and how to fix it."""

MAX_LISTED = 20  # rows named in one refusal; the rest are counted


class EvaluationError(Exception):
    def __init__(self, what: str, problem: str, fix: str):
        super().__init__(f"{what}: {problem}{chr(10) if chr(10) in problem else ' '}Fix: {fix}")


def refuse_rows(source: str, problems: list[tuple[str, str]], total: int, fix: str) -> EvaluationError:
    """One refusal naming every row that cannot run (`problems`: (where, why) per row)."""
    lines = [f"\n  {where}: {why}" for where, why in problems[:MAX_LISTED]]
    if len(problems) > MAX_LISTED:
        lines.append(f"\n  ... and {len(problems) - MAX_LISTED} more")
    return EvaluationError(source, f"{len(problems)} of {total} rows cannot run:{''.join(lines)}", fix)
