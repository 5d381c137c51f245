"""The runner's one error type: a message that names what is wrong and how to fix it."""


class EvaluationError(Exception):
    def __init__(self, what: str, problem: str, fix: str):
        super().__init__(f"{what}: {problem} Fix: {fix}")
