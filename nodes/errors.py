"""User-facing errors: every message names the node, the input and the fix."""


class LeaklessInputError(ValueError):
    def __init__(self, node: str, input_name: str, problem: str, fix: str = ""):
        self.node, self.input_name, self.problem, self.fix = node, input_name, problem, fix
        problem = problem.rstrip()
        message = f"{node}: input '{input_name}': {problem}" + ("" if problem.endswith((".", "!", "?")) else ".")
        if fix:
            message += f" Fix: {fix}"
        super().__init__(message)


def input_error(node: str, input_name: str, error: Exception, fix: str) -> LeaklessInputError:
    """A lower-level error (a phrase not found, a bad selection...) restated for the user: `raise ... from None`."""
    return LeaklessInputError(node, input_name, str(error), fix)


# ComfyUI shows the exception's module-qualified type; the loader's module name is a file path.
LeaklessInputError.__module__ = "leakless"
