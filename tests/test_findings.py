"""The README quotes the organism findings exactly as docs/findings.py computes them (mean [95 % CI] over
prompts, and the p-values of the compared conditions); skipped only while an organism it reads is not shipped.
About a CPU-minute (docs/findings.py runs torch on one thread)."""

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_readme_quotes_the_computed_findings():
    for name in ("dense", "moe"):
        if not (ROOT / "data" / "organisms" / name / "config.json").exists():
            pytest.skip(f"data/organisms/{name}/config.json is absent: the {name} organism is not shipped yet")
    spec = importlib.util.spec_from_file_location("findings", ROOT / "docs" / "findings.py")
    findings = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(findings)
    found = findings.findings()
    readme = (ROOT / "README.md").read_text()
    assert set(found) == {"lens", "safety", "masking", "tracing", "moe"}
    for name, text in found.items():
        assert "[" in text and text in readme, f"README.md does not quote the {name} finding as computed: {text}"
