"""Collect data problems (missing images, malformed rows, empty reports) instead of crashing.

Every ingest step records what it could not use in a :class:`ProblemLog`; the log is
summarised at the end and stored in the manifest metadata. ``strict=True`` turns the
first problem into an exception, for users who prefer to stop early.
"""

from __future__ import annotations

import errno
from collections import Counter
from dataclasses import asdict, dataclass, field


class CxrfuseError(Exception):
    """Base class for errors that cxrfuse reports to users (the CLI prints them without a traceback)."""


class DataError(CxrfuseError):
    """Input data is missing or malformed; the message names the file, row or field."""


class ConfigError(CxrfuseError):
    """A config file or ``--set`` override is invalid; names the file, key path, allowed values."""


_FULL = "free space (or write elsewhere) and rerun: finished work is kept, temporary files removed"
_DENIED = "make it writable or choose another folder"
_FILES = "raise the open-file limit (`ulimit -n`) or use fewer workers"
OS_FAULTS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on device", _FULL),
    errno.EDQUOT: ("disk quota exceeded", _FULL),
    errno.EFBIG: ("file too large for the file system", _FULL),
    errno.EACCES: ("permission denied", _DENIED),
    errno.EPERM: ("operation not permitted", _DENIED),
    errno.EROFS: ("read-only file system", _DENIED),
    errno.EMFILE: ("too many open files in this process", _FILES),
    errno.ENFILE: ("too many open files on the system", _FILES),
    errno.EIO: ("input/output error", "check the disk and rerun"),
}
"""The OS errors a lab meets (a full disk, a read-only mount, a file limit): one ``error:``
line naming the path and cause (exit code 2) rather than "unexpected"."""


def os_fault(exc: BaseException) -> OSError | None:
    """The first OS fault (:data:`OS_FAULTS`, or a short write) in ``exc`` and its causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and (
            current.errno in OS_FAULTS or (current.errno is None and "written" in str(current))
        ):
            return current
        current = current.__cause__ or current.__context__
    return None


def describe_os_fault(err: OSError) -> str:
    """"PATH: no space left on device (ENOSPC); free space ..." for one OS fault."""
    cause, advice = OS_FAULTS.get(err.errno or 0, (f"short write ({err})", _FULL))
    code = f" ({errno.errorcode.get(err.errno, err.errno)})" if err.errno else ""
    where = f"{err.filename}: " if err.filename else "while writing (the file was not named): "
    return f"{where}{cause}{code}; {advice}"


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
