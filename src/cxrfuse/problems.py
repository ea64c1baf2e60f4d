"""Collect data problems (missing images, malformed rows, empty reports) instead of crashing.

Every ingest step records what it could not use in a :class:`ProblemLog`; the log is
summarised at the end and stored in the manifest metadata. ``strict=True`` turns the
first problem into an exception, for users who prefer to stop early.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field


class CxrfuseError(Exception):
    """Base class for errors that cxrfuse reports to users (the CLI prints them without a traceback)."""


class DataError(CxrfuseError):
    """Input data is missing or malformed; the message names the file, row or field."""


class ConfigError(CxrfuseError):
    """A config file or ``--set`` override is invalid; names the file, key path, allowed values."""


@dataclass(frozen=True)
class Problem:
    """One thing that could not be used, with where it was found."""

    kind: str  # short category, e.g. "missing-image", "malformed-xml", "empty-report"
    where: str  # file path, "file:row" or study id
    message: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.where}: {self.message}"


@dataclass
class ProblemLog:
    """Problems met during one run; raises at the first one when ``strict``."""

    strict: bool = False
    problems: list[Problem] = field(default_factory=list)

    def add(self, kind: str, where: str, message: str) -> None:
        problem = Problem(kind, str(where), message)
        if self.strict:
            raise DataError(f"{problem} (strict mode stops at the first problem)")
        self.problems.append(problem)

    def __len__(self) -> int:
        return len(self.problems)

    def counts(self) -> dict[str, int]:
        return dict(Counter(p.kind for p in self.problems))

    def to_records(self, limit: int = 200) -> list[dict[str, str]]:
        """The first ``limit`` problems as plain dicts (stored in manifest metadata)."""
        return [asdict(p) for p in self.problems[:limit]]

    def summary(self, examples: int = 3) -> str:
        """Human-readable summary: counts per kind and a few examples of each."""
        if not self.problems:
            return "no problems"
        lines = [f"{len(self.problems)} problem(s):"]
        for kind, n in sorted(self.counts().items(), key=lambda kv: -kv[1]):
            lines.append(f"  {kind}: {n}")
            for p in [p for p in self.problems if p.kind == kind][:examples]:
                lines.append(f"    e.g. {p.where}: {p.message}")
        return "\n".join(lines)
