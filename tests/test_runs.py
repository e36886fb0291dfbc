"""The code version recorded with every model."""

import re
import subprocess
from pathlib import Path

from fusion_core.data.runs import code_version


def test_code_version_is_the_release_and_the_git_commit():
    repo = Path(__file__).resolve().parent.parent
    version = code_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+(\+[0-9a-f]{12}(\.dirty)?)?", version), version
    if (repo / ".git").exists():
        head = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        assert f"+{head}" in version
