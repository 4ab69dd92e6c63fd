"""Intervention constructors refuse misspelt keywords (did-you-mean), accept every
RepresentationConfig field and pyvene's compatibility keywords, and leave user subclasses free."""
import pytest
import torch

import vene as pv
from vene.config import RepresentationConfig
from vene.errors import UnknownKeywordError
from vene.interventions import registered_interventions
from vene.interventions.base import BASE_KWARGS, PYVENE_COMPAT_KWARGS, accepted_kwargs


def test_misspelt_keyword_is_refused_with_a_suggestion():
    with pytest.raises(UnknownKeywordError, match=r"'noise_levl'.*Did you mean 'noise_level'"):
        pv.NoiseIntervention(embed_dim=4, noise_levl=0.1)
    with pytest.raises(TypeError, match="low_rank_dimension"):  # also a TypeError, as Python's own
        pv.LowRankRotatedSpaceIntervention(embed_dim=4, low_rank_dim=2)
    with pytest.raises(pv.ConfigError, match="'preserve_eror'.*preserve_error"):
        pv.AutoencoderIntervention(embed_dim=4, latent_dim=8, preserve_eror=False)


@pytest.mark.parametrize("name", sorted(registered_interventions()))
def test_every_builtin_checks_its_keywords(name):
    cls = registered_interventions()[name]
    assert accepted_kwargs(cls) is not None, f"{name} does not declare accepted_kwargs"
    with pytest.raises(UnknownKeywordError, match="embed_dimm"):
        cls(embed_dimm=4)


def test_representation_fields_and_pyvene_keywords_are_accepted():
    assert set(RepresentationConfig._fields) <= BASE_KWARGS
    assert set(PYVENE_COMPAT_KWARGS) <= BASE_KWARGS | accepted_kwargs(pv.NoiseIntervention)
    iv = pv.VanillaIntervention(embed_dim=4, use_fast=True, group_key=0, moe_key=None, layer=2)
    assert int(iv.embed_dim) == 4
    noise = pv.NoiseIntervention(embed_dim=4, noise_leve=0.5)  # pyvene's spelling
    assert noise.level == 0.5


def test_a_config_built_intervention_still_gets_every_field():
    from tiny_models import gpt2

    model = gpt2()
    cfg = pv.IntervenableConfig([{"layer": 0, "component": "block_output",
                                  "intervention_type": pv.LowRankRotatedSpaceIntervention,
                                  "low_rank_dimension": 2}])
    ivm = pv.IntervenableModel(cfg, model)
    iv = next(iter(ivm.interventions.values()))
    assert iv.low_rank_dimension == 2


def test_user_subclasses_keep_pyvene_freedom_unless_they_opt_in():
    class Scaled(pv.ConstantSourceIntervention):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.factor = kwargs.get("factor", 1.0)

        def forward(self, base, source=None, subspaces=None):
            return base * self.factor

    assert Scaled(factor=3.0).factor == 3.0

    class Strict(Scaled):
        accepted_kwargs = frozenset({"factor"})

    assert Strict(factor=2.0).factor == 2.0
    with pytest.raises(UnknownKeywordError, match="Did you mean 'factor'"):
        Strict(facter=2.0)


def test_saved_artifact_with_an_unknown_keyword_loads_with_a_warning(tmp_path):
    from vene.serialization import _filter_kwargs

    with pytest.warns(UserWarning, match="no longer accepts"):
        kept = _filter_kwargs(pv.NoiseIntervention, {"noise_level": 0.1, "old_option": 1}, "k")
    assert kept == {"noise_level": 0.1}
    assert torch.is_tensor(pv.NoiseIntervention(**kept).noise_like(torch.zeros(1, 2, 3)))
