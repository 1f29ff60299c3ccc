"""The README's Python examples run as written (with a smaller training budget)."""

import re
from pathlib import Path

import pytest

from tests.conftest import group_names

README = Path(__file__).parent.parent / "README.md"


@pytest.mark.slow
def test_readme_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 3
    source = "\n".join(blocks)
    assert "abi.fit(random_seed=1)" in source
    source = source.replace("abi.fit(random_seed=1)", "abi.fit(random_seed=1, steps=300)")
    namespace: dict = {}
    exec(compile(source, str(README), "exec"), namespace)
    assert namespace["idata"].posterior["mu"].shape == (4, 1000)
    assert namespace["posteriors"][0].posterior["mu"].shape == (4, 250)
    assert "log_likelihood" in group_names(namespace["with_loo"])
    assert len(namespace["posteriors"]) == 100
    assert (tmp_path / "model.abi").exists()
    assert "pareto_k" in namespace["idata"].sample_stats.attrs
