"""tools/memory_estimate.py, the source of README's memory table: its counts against
hand-computed answers."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import memory_estimate as me  # noqa: E402


def test_a_training_step_counts_weights_grads_adam_and_saved_activations():
    """Linear(1000 -> 10) -> ReLU on a batch of 32, on the meta device: 10,010 weights
    (fp32: 40,040 bytes), gradients + Adam's two states 3x that; autograd saves the
    Linear's input [32, 1000] for the weight gradient and the ReLU's output [32, 10]."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(1000, 10), nn.ReLU())
    est = me.train_step(model, (torch.empty(32, 1000, device="meta"),), torch.float32)
    assert est["weights"] == 40_040 and est["grads+optimiser"] == 3 * 40_040
    assert est["activations"] == (32 * 1000 + 32 * 10) * 4
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(1000, 10), nn.ReLU())
    half = me.train_step(model, (torch.empty(32, 1000, device="meta"),), torch.bfloat16)
    assert half["activations"] == (32 * 1000 + 32 * 10) * 2 and half["weights"] == 40_040


def test_an_inference_step_counts_three_largest_outputs():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(100, 400), nn.ReLU(), nn.Linear(400, 10))
    est = me.inference_step(model, (torch.empty(8, 100, device="meta"),), torch.float32)
    assert est["weights"] == (100 * 400 + 400 + 400 * 10 + 10) * 4
    assert est["activations"] == 3 * 8 * 400 * 4
