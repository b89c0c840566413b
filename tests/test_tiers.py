"""The test tiers (README, Tests): the default run is the fast tier (tests marked ``full`` deselected), every
module keeps tests in it unless the whole module is marked ``full``, and CI runs the README's full-suite command."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

from conftest import FULL_COMMAND

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands() -> list[str]:
    """Every line of the README's bash blocks."""
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```bash\n(.*?)```", f.read(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines()]


def test_ci_runs_the_readmes_full_suite_command():
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        last = [line for line in f.read().splitlines() if line.strip()][-1]
    assert last in readme_commands(), f".ci/run ends with {last!r}, which the README does not show"
    assert last.endswith(FULL_COMMAND) and '".[test-full]"' in last


def test_readme_shows_the_fast_command():
    assert 'pip install -e ".[test]" && python -m pytest -q' in readme_commands()


def test_the_default_run_is_the_fast_tier_and_covers_every_module():
    done = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert re.search(r"\d+/\d+ tests collected \(\d+ deselected\)", done.stdout), done.stdout[-1000:]
    assert f"fast tier: run the full suite with `{FULL_COMMAND}`" in done.stdout
    fast = {line.split("::")[0] for line in done.stdout.splitlines() if "::" in line}
    for path in sorted(glob.glob(os.path.join(ROOT, "tests", "test_*.py"))):
        with open(path) as f:
            whole_module_full = re.search(r"^pytestmark = pytest\.mark\.full\b", f.read(), re.M)
        name = os.path.relpath(path, ROOT)
        if whole_module_full:
            assert name not in fast, f"{name} is marked full as a whole, yet collected in the fast tier"
        else:
            assert name in fast, f"{name} has no test in the fast tier: keep a small representative there"
