"""PyTorch side of issue 10's GPU throughput check: SimCLR on a ResNet-18 with the
CIFAR stem (3x3 stride-1 first convolution, no max pool), head 512 -> 2048 -> 128,
NT-Xent (tau 0.5), SGD with momentum, on 2 x N random 32x32 images per step, timed
after warm-up with CUDA synchronisation. Measuring only; not a project dependency.

    python3 benches/torch_gpu.py N STEPS
"""
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.b1(self.c1(x)))
        y = self.b2(self.c2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))


class SimCLR(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU())
        layers, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Linear(512, 2048), nn.BatchNorm1d(2048), nn.ReLU(), nn.Linear(2048, 128))

    def forward(self, x):
        h = self.layers(self.stem(x)).mean(dim=(2, 3))
        return self.head(h)


def nt_xent(z, tau=0.5):
    n2 = z.shape[0]
    z = F.normalize(z, dim=1)
    sim = (z @ z.t()) / tau
    sim = sim.masked_fill(torch.eye(n2, dtype=torch.bool, device=z.device), float("-inf"))
    target = (torch.arange(n2, device=z.device) + n2 // 2) % n2
    return F.cross_entropy(sim, target)


def main():
    n, steps = int(sys.argv[1]), int(sys.argv[2])
    dev = torch.device("cuda")
    model = SimCLR().to(dev).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-6)
    x = torch.randn(2 * n, 3, 32, 32, device=dev)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = nt_xent(model(x))
        loss.backward()
        opt.step()
        return loss

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        loss = step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20
    print(f"RESULT torch-gpu resnet18-cifar batch=2x{n} step_ms={dt*1e3:.1f} "
          f"img_per_s={2*n/dt:.0f} peak_alloc_mib={peak:.0f} loss={loss.item():.4f}")


if __name__ == "__main__":
    main()
