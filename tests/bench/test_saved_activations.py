"""bench/saved_activations.py charges what autograd keeps to modules; SS2D's tail keeps two maps."""

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench import saved_activations  # noqa: E402


def test_tiny_model_on_cpu(capsys):
    assert saved_activations.main(["--config", "8,20,1,1,1,1", "--patch", "128"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("saved for the backward:") and "SS2D" in out and "Conv2d" in out


def test_charges_functional_calls_to_their_module():
    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return F.silu(self.lin(x))  # silu keeps lin's output: charged to Two, lin's input to Linear

    x = torch.randn(3, 4)
    by = saved_activations.saved_by_module(Two(), x, lambda out, target: {"loss": out.sum()})
    assert by["Two"] == 3 * 4 * 4 and by["Linear"] >= 3 * 4 * 4
