"""Drop `PoissonLatent` into an ordinary SpikingJelly SNN.

The classifier below is plain SpikingJelly (multi-step layers, LIFNode with ATan, rate-coded output), not one of
our models. Between its feature extractor and its classifier head sits a `PoissonLatent`: the hidden spike
train [T, N, 128] is reduced to firing rates and re-sampled as Poisson spikes, with the reparameterised gradient
dz/dr = sum_t 1[|r - u_t| < 0.5], so the head sees a stochastic spike code that only carries rates.

    python examples/poisson_latent_in_your_snn.py --steps 30                       # synthetic digits
    python examples/poisson_latent_in_your_snn.py --data-root DATA       # real MNIST
"""
import argparse

import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

from spikingjelly_vae import PoissonLatent


class PoissonBottleneckSNN(nn.Module):
    def __init__(self, T: int = 8, hidden: int = 128, classes: int = 10):
        super().__init__()
        self.T = T
        lif = dict(tau=2.0, surrogate_function=surrogate.ATan(), step_mode="m")
        self.features = nn.Sequential(
            layer.Conv2d(1, 16, 3, padding=1, step_mode="m"), layer.BatchNorm2d(16, step_mode="m"),
            neuron.LIFNode(**lif), layer.MaxPool2d(2, step_mode="m"),
            layer.Flatten(step_mode="m"), layer.Linear(16 * 14 * 14, hidden, step_mode="m"),
            neuron.LIFNode(**lif),
        )
        self.latent = PoissonLatent(T=T)  # spikes [T, N, hidden] -> rates -> Poisson spikes [T, N, hidden]
        self.head = nn.Sequential(layer.Linear(hidden, classes, step_mode="m"), neuron.LIFNode(**lif))

    def forward(self, images: torch.Tensor, generator=None) -> torch.Tensor:
        x_seq = images.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        z = self.latent(self.features(x_seq), generator=generator)
        return self.head(z).mean(0)  # output firing rates [N, classes]


def batches(args, generator):
    if args.data_root:
        from torchvision import datasets, transforms

        data = datasets.MNIST(args.data_root, train=True, download=False, transform=transforms.ToTensor())
        loader = torch.utils.data.DataLoader(data, batch_size=args.batch, shuffle=True, generator=generator)
        while True:
            yield from loader
    # synthetic "digits": class c lights up row band c of a 28x28 image, plus noise
    while True:
        labels = torch.randint(0, 10, (args.batch,), generator=generator)
        images = 0.2 * torch.rand(args.batch, 1, 28, 28, generator=generator)
        for i, c in enumerate(labels.tolist()):
            images[i, 0, 2 + 2 * c: 4 + 2 * c, 4:24] = 1.0
        yield images, labels


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="optimisation steps")
    parser.add_argument("--batch", type=int, default=32, help="batch size")
    parser.add_argument("--T", type=int, default=8, help="time steps")
    parser.add_argument("--data-root", default=None, help="folder holding MNIST/raw (torchvision layout)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    net = PoissonBottleneckSNN(T=args.T)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    history = []
    for step, (images, labels) in zip(range(args.steps), batches(args, gen)):
        rates = net(images, generator=gen)
        loss = F.mse_loss(rates, F.one_hot(labels, 10).float())
        opt.zero_grad()
        loss.backward()
        opt.step()
        functional.reset_net(net)
        acc = (rates.argmax(1) == labels).float().mean().item()
        history.append((loss.item(), acc))
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  batch accuracy {acc:.2f}")
    return history


if __name__ == "__main__":
    main()
