"""A CUDA-graph-captured training step equals the eager step (GPU tests skip without CUDA)."""
import pytest
import torch

from spikingjelly_vae.models import ESVAE
from spikingjelly_vae.train.capture import CapturedStep


@pytest.fixture
def deterministic_cudnn():
    """cuDNN's default backward algorithms sum in a run-dependent order: on an H200 two benchmark variants
    running the same eager steps differed by ~1e-3 in the loss after 3 AdamW steps, and captured vs eager
    by 2e-4 (relative) in the parameters after 4. Deterministic algorithms leave the capture alone to test."""
    saved = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    yield
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved


def _setup():
    torch.manual_seed(0)
    model = ESVAE(in_channels=1, latent_dim=8, T=4, image_size=32, hidden=(4, 4, 8, 8)).cuda()
    optimizer = torch.optim.AdamW(model.param_groups(1e-3), weight_decay=1e-3, capturable=True, foreach=True)
    return model, optimizer


def _loss_fn(model):
    return lambda x: model.loss(x, model(x))["loss"]


def _batches(n=4):
    g = torch.Generator().manual_seed(1)
    return [torch.rand(8, 1, 32, 32, generator=g).mul(2).sub(1).cuda() for _ in range(n)]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda graphs)")
def test_captured_step_equals_eager_step(deterministic_cudnn):
    batches = _batches()
    model, optimizer = _setup()
    torch.cuda.manual_seed(5)
    eager = []
    for x in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = _loss_fn(model)(x)
        loss.backward()
        optimizer.step()
        eager.append(loss.item())
    eager_params = [p.detach().clone() for p in model.parameters()]

    model2, optimizer2 = _setup()
    step = CapturedStep(_loss_fn(model2), optimizer2, batches[0], model=model2)
    torch.cuda.manual_seed(5)
    captured = [step(x).item() for x in batches]
    torch.testing.assert_close(torch.tensor(captured), torch.tensor(eager), rtol=1e-5, atol=1e-6)
    for a, b in zip(model2.parameters(), eager_params):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (torch.cuda graphs)")
def test_captured_step_refuses_other_shapes():
    model, optimizer = _setup()
    step = CapturedStep(_loss_fn(model), optimizer, _batches(1)[0], model=model)
    with pytest.raises(ValueError, match="drop_last"):
        step(torch.zeros(4, 1, 32, 32, device="cuda"))


def test_captured_step_needs_cuda_tensors():
    model = ESVAE(in_channels=1, latent_dim=8, T=4, image_size=32, hidden=(4, 4, 8, 8))
    optimizer = torch.optim.AdamW(model.parameters())
    with pytest.raises(ValueError, match="CUDA"):
        CapturedStep(_loss_fn(model), optimizer, torch.zeros(2, 1, 32, 32), model=model)
