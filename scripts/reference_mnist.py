"""The PyTorch MNIST example (pytorch/examples, mnist/main.py), as a user runs it: the baseline of
scripts/bench.py, whole process against whole process.

    python scripts/reference_mnist.py --epochs 1 --data ROOT [--dataset fashion-mnist] [--accel]

Its recipe unchanged: torchvision's (Fashion)MNIST with ToTensor + Normalize, DataLoader batch 64, the
example's Net, Adadelta lr 1.0, StepLR gamma 0.7, test batch 1000, fp32, a progress line every 10 batches.
Two differences, both needed to compare like with like: the training set is shuffled on the CPU too (the
example shuffles only on an accelerator, which on class-sorted data does not learn), and ROOT is a folder
in torchvision's layout that already holds the files (no download: this machine is offline).
"""

import argparse
import time

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.optim as optim
from torch.optim.lr_scheduler import StepLR
from torchvision import datasets, transforms

MEAN_STD = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530), "mnist-sample": (0.1307, 0.3081)}


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(9216, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x):
        x = self.conv1(x)
        x = F.relu(x)
        x = self.conv2(x)
        x = F.relu(x)
        x = F.max_pool2d(x, 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = self.fc1(x)
        x = F.relu(x)
        x = self.dropout2(x)
        x = self.fc2(x)
        return F.log_softmax(x, dim=1)


def train(model, device, train_loader, optimizer, epoch, log_interval=10, quiet=False):
    model.train()
    losses = []
    for batch_idx, (data, target) in enumerate(train_loader):
        data, target = data.to(device), target.to(device)
        optimizer.zero_grad()
        output = model(data)
        loss = F.nll_loss(output, target)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        if batch_idx % log_interval == 0 and not quiet:
            print("Train Epoch: {} [{}/{} ({:.0f}%)]\tLoss: {:.6f}".format(
                epoch, batch_idx * len(data), len(train_loader.dataset),
                100. * batch_idx / len(train_loader), loss.item()))
    return torch.stack(losses).mean().item()


def test(model, device, test_loader, quiet=False):
    model.eval()
    test_loss = 0
    correct = 0
    with torch.no_grad():
        for data, target in test_loader:
            data, target = data.to(device), target.to(device)
            output = model(data)
            test_loss += F.nll_loss(output, target, reduction="sum").item()
            pred = output.argmax(dim=1, keepdim=True)
            correct += pred.eq(target.view_as(pred)).sum().item()
    test_loss /= len(test_loader.dataset)
    if not quiet:
        print("\nTest set: Average loss: {:.4f}, Accuracy: {}/{} ({:.2f}%)\n".format(
            test_loss, correct, len(test_loader.dataset), 100. * correct / len(test_loader.dataset)))
    return test_loss, 100. * correct / len(test_loader.dataset)


def loaders(root, dataset: str, device, batch_size=64, test_batch_size=1000):
    mean, std = MEAN_STD[dataset]
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((mean,), (std,))])
    cls = datasets.FashionMNIST if dataset == "fashion-mnist" else datasets.MNIST
    train_kwargs = {"batch_size": batch_size, "shuffle": True}
    test_kwargs = {"batch_size": test_batch_size}
    if device.type != "cpu":
        train_kwargs.update(num_workers=1, pin_memory=True)
        test_kwargs.update(num_workers=1, pin_memory=True, shuffle=True)
    dataset1 = cls(root, train=True, download=False, transform=transform)
    dataset2 = cls(root, train=False, download=False, transform=transform)
    return (torch.utils.data.DataLoader(dataset1, **train_kwargs), torch.utils.data.DataLoader(dataset2, **test_kwargs))


def main():
    parser = argparse.ArgumentParser(description="PyTorch MNIST Example")
    parser.add_argument("--epochs", type=int, default=14)
    parser.add_argument("--lr", type=float, default=1.0)
    parser.add_argument("--gamma", type=float, default=0.7)
    parser.add_argument("--accel", action="store_true", help="use the accelerator (CUDA) if there is one")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--data", required=True, help="torchvision root holding MNIST/raw or FashionMNIST/raw")
    parser.add_argument("--dataset", choices=list(MEAN_STD), default="mnist")
    args = parser.parse_args()
    start = time.perf_counter()
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.accel and torch.cuda.is_available() else "cpu")
    train_loader, test_loader = loaders(args.data, args.dataset, device)
    model = Net().to(device)
    optimizer = optim.Adadelta(model.parameters(), lr=args.lr)
    scheduler = StepLR(optimizer, step_size=1, gamma=args.gamma)
    epoch_seconds = 0.0
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        train(model, device, train_loader, optimizer, epoch)
        _, accuracy = test(model, device, test_loader)
        epoch_seconds += time.perf_counter() - t0
        scheduler.step()
    # for scripts/bench.py (not in the example): what the epochs took, and all after the imports
    print(f"final test accuracy {accuracy:.2f}%, epochs {epoch_seconds:.3f}s, "
          f"after imports {time.perf_counter() - start:.3f}s")


if __name__ == "__main__":
    main()
