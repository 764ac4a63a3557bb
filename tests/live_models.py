"""Models for tests/test_live.py: pinit builds them through ``--model``, and the tests build them too."""

from __future__ import annotations

import math

import torch
from torch import nn


class Forgetful(nn.Module):
    """A custom layer whose weight is ``torch.empty`` memory that nothing writes."""

    def __init__(self, n: int = 64) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, n))


class Garbage(nn.Module):
    """A parameter holding the bit pattern of never-written memory (what ``torch.empty`` returns
    when the allocator hands back used pages): subnormals next to huge values and zeros."""

    def __init__(self) -> None:
        super().__init__()
        w = torch.zeros(32, 32)
        w.view(-1)[::7] = torch.tensor(1e-41)  # subnormal float32
        w.view(-1)[3::11] = torch.tensor(3e35)
        w.view(-1)[5::13] = torch.tensor(-7e-39)
        self.weight = nn.Parameter(w)


class Net(nn.Module):
    """Linear, BatchNorm, an embedding tied to the head, a frozen parameter and a gradient."""

    def __init__(self, hidden: int = 8, vocab: int = 12, tie: bool = True, grad: bool = False) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.fc = nn.Linear(hidden, hidden)
        self.norm = nn.BatchNorm1d(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)
        if tie:
            self.head.weight = self.embed.weight
        self.frozen = nn.Parameter(torch.ones(3), requires_grad=False)
        self.register_buffer("scratch", torch.zeros(2), persistent=False)
        if grad:
            self.fc.weight.grad = torch.full_like(self.fc.weight, 0.5)


class WithCustom(nn.Module):
    """A Net with a custom layer that has its own reset_parameters(), and one that has none."""

    def __init__(self) -> None:
        super().__init__()
        self.net = Net(tie=False)
        self.custom = Custom(6)
        self.plain = Plain()


class Custom(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, n))
        self.bias = nn.Parameter(torch.empty(n))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.uniform_(self.bias, -0.1, 0.1)


class Plain(nn.Module):
    """No reset_parameters(): its values come from __init__ (drawn from the global RNG)."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.randn(4, 4))


def make_net(**kwargs: object) -> nn.Module:
    return Net(**kwargs)  # type: ignore[arg-type]


def broken() -> nn.Module:
    raise ValueError("the config says no")


def not_a_module() -> object:
    return {"weight": torch.zeros(2)}


class Factories:
    @staticmethod
    def small() -> nn.Module:
        return Net(hidden=4, vocab=5)


class Chatty(nn.Module):
    """Prints while it is built: pinit keeps stdout for its own output."""

    def __init__(self) -> None:
        super().__init__()
        print("building Chatty...")
        self.fc = nn.Linear(2, 2)


class TiedLM(nn.Module):
    """An embedding tied to the output layer: both modules have a reset_parameters()."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 50, bias=False)
        self.head.weight = self.emb.weight


class Scratch(nn.Module):
    """An initialized layer and a never-written scratch buffer that is not saved."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("scratch", torch.full((64, 64), float("nan")), persistent=False)


def lazy() -> nn.Module:
    return nn.Sequential(nn.LazyLinear(3))
