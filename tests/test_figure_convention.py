"""One figure convention (docs/figures.md, interp/figures/viz.py): every registered method's default figure, on the same
check run as the contract tests, has a title that fits the report's width, titled axes, titled colourbars with
their unit, layer 0 at the bottom, a centred diverging scale for signed values, and no fixed width."""

import pytest

from interp.figures.viz import check_convention
from interp.vocabulary import package_methods

from .test_contract import ENTRIES, fixture_model, run_entry


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.name for e in ENTRIES])
def test_default_figure_follows_the_convention(entry, models):
    result = run_entry(entry, fixture_model(entry, models), "fixture")[2]
    problems = check_convention(result.figure())
    assert not problems, f"{entry.name}: {problems}"


def test_the_convention_page_names_every_registered_method():
    from pathlib import Path

    page = (Path(__file__).resolve().parents[1] / "docs" / "figures.md").read_text()
    missing = [e.name for e in package_methods() if f"`{e.name}`" not in page]
    assert not missing, f"docs/figures.md does not describe the figures of {missing}"
