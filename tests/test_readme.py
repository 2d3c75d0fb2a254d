"""README.md keeps its promises: every Python block runs, the first commands are the two fresh-machine
commands (the second one is what CI runs), and no user doc names files outside the repository."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


@pytest.mark.parametrize("index", range(len(PYTHON_BLOCKS)))
def test_python_block_runs(index, one_thread, capsys):
    exec(compile(PYTHON_BLOCKS[index], f"README.md python block {index + 1}", "exec"), {"__name__": "readme"})


def test_readme_opens_with_the_two_fresh_machine_commands():
    bash = re.findall(r"```bash\n(.*?)```", README, re.S)
    assert PYTHON_BLOCKS and len(bash) >= 2
    assert bash[0].strip().startswith("python3 -m venv .venv && . .venv/bin/activate && pip install -e . && sjvae "
                                      "train --dataset mnist-mini --device cpu")
    assert bash[1].strip() == ('python3 -m venv .venv && . .venv/bin/activate && pip install -e ".[test]" && '
                               'python -m pytest -q --durations=10')


def test_user_docs_stay_inside_the_repository():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    banned = re.compile(r"\.\./shared|\.devkit|device[- ]kit|reference_spec|DESIGN\.md|esvae_paper\.txt|"
                        r"spikingjelly_api\.md|\bissue[s]? ?#?\d+")
    found = [f"{p.name}:{i}: {line.strip()}" for p in docs for i, line in enumerate(p.read_text().splitlines(), 1)
             if banned.search(line)]
    assert not found, "\n".join(found)
    for link in re.findall(r"!\[[^]]*\]\(([^)]+)\)", README):  # pictures the README shows are in the repository
        assert (ROOT / link).is_file(), link
