"""One error type for everything a user can get wrong: it names the problem and the fix."""

from __future__ import annotations

import difflib


class HeadplastError(Exception):
    """An error with a problem statement and the command or change that fixes it."""

    def __init__(self, problem: str, fix: str | None = None):
        self.problem = problem
        self.fix = fix
        super().__init__(problem if not fix else f"{problem}\n  fix: {fix}")


def did_you_mean(name: str, choices) -> str:
    by_lower = {str(c).lower(): str(c) for c in choices}
    close = difflib.get_close_matches(str(name).lower(), list(by_lower), n=3, cutoff=0.5)
    return f" Did you mean {', '.join(by_lower[c] for c in close)}?" if close else ""
