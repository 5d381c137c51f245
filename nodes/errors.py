"""User-facing errors: every message names the node, the input and the fix."""


class LeaklessInputError(ValueError):
    def __init__(self, node: str, input_name: str, problem: str, fix: str = ""):
        self.node, self.input_name, self.problem, self.fix = node, input_name, problem, fix
        message = f"{node}: input '{input_name}': {problem}"
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)
