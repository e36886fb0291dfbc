"""A doctor's check: its outcome, and a hint for what to do about it."""

from __future__ import annotations

from dataclasses import dataclass

PASS, WARN, FAIL = "PASS", "WARN", "FAIL"
PACKAGES = {"tensorflow": "tensorflow", "tf-keras": "tf-keras", "keras": "keras", "ray": "ray",
            "prefect": "prefect client"}  # distribution: check name
WORKER_TIMEOUT_S = 180.0
INSTALL_HINT = "install Fusion with its pinned versions: pip install -c constraints.txt -e ."


@dataclass(frozen=True)
class Check:
    """One check's outcome; ``hint`` tells the user what to do about a FAIL (or WARN)."""

    name: str
    status: str
    detail: str
    hint: str = ""

    def lines(self) -> list[str]:
        return [f"{self.status} {self.name}: {self.detail}"] + ([f"  hint: {self.hint}"] if self.hint else [])




def one_line(err: BaseException, secret: str | None = None) -> str:
    """``Type: first line of the message``, short, with ``secret`` masked."""
    text = (str(err).strip().splitlines() or [""])[0][:300]
    if secret:
        text = text.replace(secret, "***")
    return f"{type(err).__name__}: {text}" if text else type(err).__name__

