"""The support matrix: every component of every family in :mod:`arch_zoo`, checked against the
hand-written oracles (values, Zero, interchange, causality), and ``docs/support.md`` in sync with
what vene resolves. A silently wrong cell fails here.

Cells known wrong today are strict xfails with their reason: writes at input sites that alias a
tensor another module reads (post-norm and parallel blocks) wait for issue 10's copy-on-write.
"""
from __future__ import annotations

import pathlib
import sys

import pytest
import torch

import arch_zoo as zoo
import support_cells as sc

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    # tiny models: thread start-up costs far more than it saves, and CI machines are shared
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
    sc._models.clear()


def _param(cell):
    fam, prefix, comp = cell
    reason = zoo.FAMILIES[fam].stacks[prefix].xfail.get(comp)
    marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
    return pytest.param(fam, prefix, comp, marks=marks, id=f"{fam}-{prefix or 'default'}-{comp}")


@pytest.mark.parametrize("family,prefix,component", [_param(c) for c in sc.cells()])
def test_cell(family, prefix, component):
    sc.check_cell(family, prefix, component)


@pytest.mark.parametrize("family", list(zoo.FAMILIES))
def test_vene_offers_exactly_the_oracle_components(family):
    """Nothing unverified: every component vene resolves on a stack has an oracle, and every
    component the oracle expects resolves."""
    import vene as pv

    fam = zoo.FAMILIES[family]
    m = sc.model(family)
    listed = pv.list_components(m)
    stacks = list(listed)
    assert len(stacks) == len(fam.stacks), f"{family}: vene found stacks {stacks}, the oracle has {list(fam.stacks)}"
    for prefix, s in fam.stacks.items():
        name = stacks[0] if prefix == "" else prefix
        assert name in listed, f"{family}: no stack {name!r} in {stacks}"
        offered = {c for c, v in listed[name].items() if not _is_reason(v)}
        assert offered == sc.expected_components(s), (
            f"{family}/{name}: vene offers {sorted(offered - sc.expected_components(s))} without an oracle, "
            f"misses {sorted(sc.expected_components(s) - offered)}"
        )


def _is_reason(v: str) -> bool:
    return not v.endswith((".input", ".output", ".attn_probs"))


def test_docs_support_md_is_current():
    import re

    import transformers

    current = (ROOT / "docs" / "support.md").read_text()
    built = re.search(r"built with transformers (\d+(?:\.\d+)*\w*)", current)
    assert built, "docs/support.md does not say which transformers release it was generated with"
    if built.group(1) != transformers.__version__:
        # the page documents the locked release; the cells themselves are checked above on this one
        pytest.skip(f"docs/support.md documents transformers {built.group(1)}, {transformers.__version__} is installed")
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import support_matrix
    finally:
        sys.path.pop(0)
    expected = support_matrix.render()
    assert current == expected, "docs/support.md is stale: run `python scripts/support_matrix.py`"
