import pathlib
import sys
import textwrap

import pytest

HERE = pathlib.Path(__file__).resolve().parent
# The harness beside this file, and the SDK itself, importable without an install.
sys.path[:0] = [str(HERE), str(HERE.parent)]

from harness import Child  # noqa: E402 (found through the sys.path line above)


@pytest.fixture
def start(tmp_path):
    """Starts a handler from source; every child is killed at teardown."""
    children = []

    def start_handler(source: str) -> Child:
        script = tmp_path / f"handler{len(children)}.py"
        script.write_text(textwrap.dedent(source))
        child = Child(script)
        children.append(child)
        return child

    yield start_handler
    for child in children:
        child.kill()
