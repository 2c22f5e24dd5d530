"""One vocabulary: the glossary page is generated from interp/vocabulary.py and the registry, the README links it,
and no registered method uses a parameter or column name outside it."""

from pathlib import Path

from interp import vocabulary
from interp.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_glossary_page_is_the_generated_one():
    page = (ROOT / "docs" / "glossary.md").read_text()
    assert page == vocabulary.glossary_markdown() + "\n", "docs/glossary.md is stale: run `interp glossary --out " \
                                                          "docs/glossary.md`"


def test_readme_links_the_glossary():
    assert "(docs/glossary.md)" in (ROOT / "README.md").read_text()


def test_every_method_speaks_the_vocabulary():
    outside = {}
    for entry in vocabulary.package_methods():
        names = [*entry.input_names, *entry.parameters]
        if entry.schema is not None:
            names += [*entry.schema.columns, *entry.schema.optional]
        known = {**vocabulary.PARAMETERS, **vocabulary.COLUMNS}
        missing = [n for n in names if n not in known]
        if missing:
            outside[entry.name] = missing
    assert not outside, f"names outside interp/vocabulary.py: {outside}"


def test_one_meaning_per_name_and_one_name_per_meaning():
    for table in (vocabulary.PARAMETERS, vocabulary.COLUMNS):
        meanings = list(table.values())
        assert len(set(meanings)) == len(meanings), "two names share one meaning"
        assert all(m.strip() and m.strip()[-1] in ".)" for m in meanings)


def test_the_cli_prints_the_glossary(capsys):
    assert main(["glossary"]) == 0
    assert capsys.readouterr().out == vocabulary.glossary_markdown() + "\n"
