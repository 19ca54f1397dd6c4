"""Estimated peak GPU memory of each task's largest step at its default settings, from
the real architectures built on PyTorch's meta device (shapes only: nothing is
allocated, nothing downloaded). The numbers in README.md's "Precision" table come from
here; they are estimates, not measurements on a GPU.

What is counted, in bytes of tensors:
- weights; for a training step also their gradients and the optimiser's state (Adam and
  AdamW: two tensors per weight; SGD with momentum: one);
- activations: for a training step every tensor autograd saves for the backward pass
  (torch.autograd.graph.saved_tensors_hooks sees each one during a meta-device forward),
  computed in the precision the step runs in (bf16 autocast: the model and input in
  bf16, which is what autocast makes of convolutions and matmuls; fp16 the same size);
  for an inference step the largest output of any module times three (its input, its
  output and a branch alive beside them).
Not counted: the CUDA context (about 0.3-0.5 GiB per process), cuDNN/cuBLAS workspaces
and the caching allocator's fragmentation (together typically 10-30% more).

    python tools/memory_estimate.py              # the table (GiB), as Markdown
"""
from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GIB = 2 ** 30


def param_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


@contextlib.contextmanager
def count_saved(total: list):
    """Add the bytes of every tensor autograd saves for backward to total[0]."""
    seen = set()

    def pack(t):
        key = (t.data_ptr() if t.device.type != "meta" else id(t), t.shape, t.dtype)
        if key not in seen:
            seen.add(key)
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def train_step(model: nn.Module, inputs: tuple, dtype: torch.dtype, optimiser_states: int = 2,
               trainable: nn.Module | None = None) -> dict:
    """Estimate of one training step: model weights (fp32, as autocast keeps them),
    gradients and optimiser state of the `trainable` part (default: all), activations
    saved for backward in `dtype`."""
    trainable = trainable or model
    weights = param_bytes(model)
    n_train = sum(p.numel() for p in trainable.parameters()) * 4
    saved = [0]
    m = model.to(dtype)
    with count_saved(saved):
        out = m(*[x.to(dtype) if x.is_floating_point() else x for x in inputs])
    del out
    return {"weights": weights, "grads+optimiser": n_train * (1 + optimiser_states), "activations": saved[0]}


def inference_step(model: nn.Module, inputs: tuple, dtype: torch.dtype, keep: list | None = None) -> dict:
    """Estimate of one forward pass without autograd: weights in fp32 plus three times
    the largest module output (or, with `keep`, the outputs a caller keeps, e.g. all
    attention maps)."""
    largest = [0]

    def hook(_, __, out):
        outs = out if isinstance(out, (tuple, list)) else [out]
        size = sum(o.numel() * o.element_size() for o in outs if torch.is_tensor(o))
        largest[0] = max(largest[0], size)

    handles = [mod.register_forward_hook(hook) for mod in model.modules() if not list(mod.children())]
    with torch.no_grad():
        model.to(dtype)(*[x.to(dtype) if x.is_floating_point() else x for x in inputs])
    for h in handles:
        h.remove()
    fp32_weights = param_bytes(model) * 4 // torch.tensor([], dtype=dtype).element_size()  # autocast keeps fp32
    return {"weights": fp32_weights, "activations": 3 * largest[0] + sum(keep or [])}


def gib(d: dict) -> float:
    return sum(d.values()) / GIB


def rows(dtype: torch.dtype = torch.bfloat16) -> list[tuple[str, str, dict]]:
    """(task, step, estimate) of each task's largest steps at the defaults the scripts
    use (batch sizes and input sizes as README.md lists them)."""
    import open_clip
    import torchvision
    from transformers import ViTConfig, ViTForImageClassification

    from architecture import VAE, DigitClassifier, Discriminator, Generator

    bf16, meta = dtype, torch.device("meta")  # bf16 and fp16 have the same size
    out = []
    with meta:
        resnet = torchvision.models.resnet152(weights=None)
    img = torch.empty(128, 3, 224, 224, device=meta)
    out.append(("Task1", "transfer: full fine-tune, batch 128 at 224 px, AdamW",
                train_step(resnet, (img,), bf16)))
    with meta:
        resnet = torchvision.models.resnet152(weights=None)
    out.append(("Task1", "baseline/features: extraction, batch 512 at 224 px",
                inference_step(resnet, (torch.empty(512, 3, 224, 224, device=meta),), bf16)))
    with meta:
        vit = ViTForImageClassification(ViTConfig(image_size=224, patch_size=16, num_labels=1000,
                                                  attn_implementation="eager"))
    maps = 12 * 64 * 12 * 197 * 197 * torch.tensor([], dtype=dtype).element_size()  # every layer's [B, heads, T, T]
    out.append(("Task2", "attention/masking: ViT-B/16, batch 64, all attention maps",
                inference_step(vit, (torch.empty(64, 3, 224, 224, device=meta),), bf16, keep=[maps])))
    with meta:
        clip = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True, device=meta)
    out.append(("Task4", "embeddings: CLIP ViT-B/32 image tower, batch 256",
                inference_step(clip.visual, (torch.empty(256, 3, 224, 224, device=meta),), bf16)))
    with meta:
        g, d = Generator(), Discriminator()
    gan = nn.ModuleDict({"g": g, "d": d})
    z = torch.empty(64, 100, device=meta)
    out.append(("Task3", "GAN step: G and D, batch 64, Adam", {
        k: a + b for (k, a), b in zip(train_step(g, (z,), bf16).items(),
                                       train_step(d, (torch.empty(64, 1, 28, 28, device=meta),), bf16).values())}))
    del gan
    with meta:
        vae, clf = VAE(20), DigitClassifier(32)
    out.append(("Task5", "VAE step: batch 128, Adam", train_step(vae, (torch.empty(128, 1, 28, 28, device=meta),), bf16)))
    out.append(("Tasks 3, 5", "scoring CNN step: batch 128, AdamW",
                train_step(clf, (torch.empty(128, 1, 28, 28, device=meta),), bf16)))
    return out


def main() -> None:
    half, full = rows(torch.bfloat16), rows(torch.float32)
    print("| task | step (defaults) | A100/H100: bf16 | T4: fp16 training, fp32 inference | fp32 |")
    print("|---|---|---|---|---|")
    for (task, step, est), (_, _, est32) in zip(half, full):
        t4 = est if "grads+optimiser" in est else est32
        print(f"| {task} | {step} | {gib(est):.1f} | {gib(t4):.1f} | {gib(est32):.1f} |")


if __name__ == "__main__":
    main()
