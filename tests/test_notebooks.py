"""Every notebook in notebooks/ runs top to bottom (executed with nbclient, from the repository root), so a
notebook that breaks fails CI. Notebooks are committed without outputs."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
needs_organisms = pytest.mark.skipif(
    not (ROOT / "data" / "organisms" / "dense" / "config.json").exists(),
    reason="the model organisms are not shipped in data/organisms/ yet: the notebooks and the full demo run on them",
)
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert any(p.name == "quickstart.ipynb" for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs committed"


@needs_organisms
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_top_to_bottom(path, capsys):
    """Run from notebooks/, as Jupyter starts there by default (data is found through interp.data_path); the
    measured runtime is printed, so the notebook never has to state one."""
    import time

    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    with capsys.disabled():
        print(f"\n{path.name}: ran top to bottom from notebooks/ in {time.perf_counter() - started:.0f} s")


def _numbers_in_prose(markdown: str) -> list[str]:
    """Digits in a Markdown cell outside code spans and code blocks: a number typed into prose."""
    text = re.sub(r"```.*?```", "", markdown, flags=re.S)
    text = re.sub(r"`[^`]*`", "", text)
    return re.findall(r"\S*\d\S*", text)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_no_measured_number_is_typed_in_markdown(path):
    """Numbers a notebook concludes come from its own variables (printed by code), so the text cannot disagree
    with the output above it; identifiers with digits go in code spans."""
    nb = nbformat.read(path, as_version=4)
    typed = {i: _numbers_in_prose(c.source) for i, c in enumerate(nb.cells) if c.cell_type == "markdown"}
    typed = {i: found for i, found in typed.items() if found}
    assert not typed, f"{path.name}: Markdown cells state numbers: {typed}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_find_data_through_one_helper(path):
    nb = nbformat.read(path, as_version=4)
    code = "\n".join(c.source for c in nb.cells if c.cell_type == "code")
    assert not re.search(r"[\"']data/", code), f"{path.name} names a data path directly; use interp.data_path(...)"
