"""The model interface the package relies on: typed forward outputs, the SpikingVAE protocol, and a config
that holds every constructor argument and rebuilds the same model."""
import inspect

import pytest
import torch

from spikingjelly_vae.models import (ANNVAE, ESVAE, FSVAE, ANNVAEOutput, ESVAEOutput, FSVAEOutput, SpikingVAE,
                                     build_model)

from conftest import images, tiny

OUTPUTS = {"esvae": (ESVAEOutput, ("reconstruction", "posterior_rate", "prior_rate")),
           "fsvae": (FSVAEOutput, ("reconstruction", "q_z", "p_z", "z")),
           "ann-vae": (ANNVAEOutput, ("reconstruction", "mu", "logvar"))}


@pytest.mark.parametrize("name", list(OUTPUTS))
def test_forward_returns_named_fields_and_loss_reads_them(name):
    model = tiny(name, kld_weight=0.5) if name == "ann-vae" else tiny(name)
    x = images(2)
    out = model(x, generator=torch.Generator().manual_seed(0))
    cls, fields = OUTPUTS[name]
    assert type(out) is cls and out._fields == fields and out.reconstruction.shape == x.shape
    typed, plain = model.loss(x, out), model.loss(x, tuple(out))  # a plain tuple in field order works too
    assert typed.keys() == plain.keys() and all(torch.equal(typed[k], plain[k]) for k in typed)
    assert isinstance(model, SpikingVAE) == (name != "ann-vae")


@pytest.mark.parametrize("cls,overrides", [
    (ESVAE, dict(T=4, mmd_lambda=0.5, half_width=0.25, kernel_backend="torch", fuse_bn_lif=True)),
    (FSVAE, dict(T=4, k=3, scheduled=False, distance="kld", kernel_backend="torch")),
    (ANNVAE, dict(kld_weight=0.25)),
])
def test_config_holds_every_constructor_argument_and_rebuilds_the_model(cls, overrides):
    model = cls(1, 6, image_size=32, hidden=(4, 4, 8, 8), **overrides)
    params = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    assert list(model.config) == ["model", *params]
    assert {k: model.config[k] for k in overrides} == overrides and model.config["hidden"] == [4, 4, 8, 8]
    clone = build_model(model.config)
    assert type(clone) is cls and clone.config == model.config
    assert [(k, v.shape) for k, v in clone.state_dict().items()] == [(k, v.shape) for k, v in model.state_dict().items()]
