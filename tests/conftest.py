import sys
from pathlib import Path

import pytest

# Let tests import the shared fixture builders as `fixtures`.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Nothing a test does may write to the real user data folders. The folder does not exist yet, as on a new
    machine: whatever edgellm needs there, it must create itself."""
    monkeypatch.setenv("EDGELLM_HOME", str(tmp_path_factory.mktemp("home") / "edgellm"))
