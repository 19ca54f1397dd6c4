"""Files a run writes: atomic writes, JSON-safe values, the disk cache of expensive
results (trained weights, features, embeddings) and the arrays figures are drawn from."""
from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import os
import sys
import textwrap
from pathlib import Path
from typing import Callable, TypeVar

import numpy as np
import torch

from .errors import UserError

T = TypeVar("T")


def jsonable(v):
    """Python scalars for numpy/torch values; NaN/inf become None (JSON has neither)."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, (torch.Tensor, np.ndarray)):
        return jsonable(v.tolist())
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, Path):
        return str(v)
    return v


def fmt(v) -> str:
    """A metric as the summary tables show it: 4 significant digits, lists cut at 12."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list):
        return "[" + ", ".join(fmt(x) for x in v[:12]) + (", ..." if len(v) > 12 else "") + "]"
    return str(v)


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temp path beside `path` to write to; on success rename it over `path`
    (readers never see half a file, an interrupted write leaves the old file). On any
    failure the temp file is removed; a failed write (disk full, read-only, a
    directory where a file should be) is a UserError that names the way out."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except Exception as e:  # noqa: BLE001  sorted below; anything else propagates unchanged
        if _interrupted(e):  # Ctrl-C inside zipfile (np.savez, torch.save): their cleanup raised over it
            raise KeyboardInterrupt from None
        if not isinstance(e, OSError):
            raise
        raise UserError(f"could not write {path} ({e.strerror or e}); free some disk space or choose another "
                        "--out (finished experiments are kept)") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def _interrupted(e: BaseException | None) -> bool:
    """Whether Ctrl-C broke off this write: zipfile, under np.savez_compressed and torch.save, closes its
    archive while a KeyboardInterrupt unwinds and raises its own error ("Can't close the ZIP file while there
    is an open writing handle"), which hides the interrupt; it is still in the exception's context chain."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__context__
    return False


def write_atomic(path: Path, text: str) -> None:
    """Write text to `path` atomically (see atomic_path)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_png(fig, path: str | Path, note: str = "") -> Path:
    """Save a matplotlib figure at 150 dpi, atomically, and close it; `note` (what a smoke run or a
    multi-seed run says of its figures) goes in a strip below the picture, on no text."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=150, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
            if note and path.suffix == ".png":
                image = plt.imread(tmp, format="png")                    # [H, W, 4] floats in [0, 1]
                lines = textwrap.wrap(note, int(image.shape[1] / 150 * 72 / 4.8))  # 8 pt text: ~4.8 pt a character
                strip = plt.figure(figsize=((image.shape[1] + 1) / 150, 0.06 + 0.16 * len(lines)), dpi=150)
                strip.text(0.5, 0.5, "\n".join(lines), ha="center", va="center", fontsize=8, color="#b00000")
                strip.canvas.draw()
                below = np.asarray(strip.canvas.buffer_rgba())[:, :image.shape[1]] / 255.0
                plt.close(strip)
                plt.imsave(tmp, np.concatenate([image, below]), format="png")
    finally:
        plt.close(fig)
    return path


def save_torch(path: Path, obj) -> None:
    """torch.save atomically (see atomic_path)."""
    with atomic_path(path) as tmp:
        try:
            torch.save(obj, tmp)
        except RuntimeError as e:  # torch's file writer reports a failed write (disk full) this way
            raise OSError(f"torch.save failed: {str(e).splitlines()[0][:120]}") from None


def source_digest(*code) -> str:
    """A hash of the source of the functions and classes `code` (what decides a cached
    result), so a result computed by other code is never reused."""
    return hashlib.sha1("".join(inspect.getsource(c) for c in code).encode()).hexdigest()[:12]


class Cache:
    """The disk cache of a run: `cached(kind, settings, compute, code=(f, g))` returns
    what `compute()` returned when the same settings and code computed it before, else
    calls it and stores the result in out/cache/<kind>-<key>.pt.

    One rule decides reuse: the key hashes `settings` (everything that decides the
    result: model, data, recipe, seed, precision) together with the source of the
    functions in `code`, so any change of either is a new file. The file carries its
    settings (checkpoints carry their config) and is loaded with weights_only=True:
    tensors, dicts, lists, numbers and strings only, never arbitrary pickles. A file
    that cannot be read is recomputable: one line says so and it is computed again.
    --fresh (`fresh`) ignores the files an earlier run wrote, once: a result computed
    in this run is reused by the experiments after it."""

    def __init__(self, out: str | Path, fresh: bool = False):
        self.dir, self.fresh = Path(out) / "cache", fresh
        self.written: set[Path] = set()

    def path(self, kind: str, settings: dict, code=()) -> Path:
        key = {"settings": jsonable(settings), "code": source_digest(*code) if code else None}
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
        return self.dir / f"{kind}-{digest}.pt"

    def load(self, path: Path):
        """The stored value, or None when absent, ignored (--fresh) or unreadable."""
        if not path.exists() or (self.fresh and path not in self.written):
            return None
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)["value"]
            print(f"cache: reusing {path.name} (--fresh recomputes)", flush=True)
            return value
        except Exception as e:  # noqa: BLE001  truncated, corrupt, or not ours: all recomputable
            print(f"cache: {path} is unreadable ({type(e).__name__}); computing it again", file=sys.stderr,
                  flush=True)
            return None

    def __call__(self, kind: str, settings: dict, compute: Callable[[], T], code=(),
                 keep: Callable[[T], bool] = lambda value: True) -> T:
        """`keep(value)` False: return what compute gave without storing it (a diverged run)."""
        path = self.path(kind, settings, code)
        value = self.load(path)
        if value is None:
            value = compute()
            if keep(value):
                save_torch(path, {"settings": jsonable(settings), "value": value})
                self.written.add(path)
        return value


# Figure data: arrays a figure needs that are too big for metrics.json (images,
# embeddings, 2-D coordinates, training logs) live in out/cache/plot/<experiment>.npz.


def plot_data_path(out: str | Path, experiment: str) -> Path:
    return Path(out) / "cache" / "plot" / f"{experiment}.npz"


def as_arrays(arrays: dict) -> dict[str, np.ndarray]:
    """What an experiment returned for its figures, as numpy arrays (tensors moved to
    the CPU; lists of strings become string arrays)."""
    return {k: np.asarray(v.detach().cpu() if torch.is_tensor(v) else v) for k, v in arrays.items()}


def save_plot_data(out: str | Path, experiment: str, arrays: dict[str, np.ndarray]) -> None:
    with atomic_path(plot_data_path(out, experiment)) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


class MissingPlotData(dict):
    """Stands in for an experiment's arrays under --replot when its file is missing or
    unreadable: a figure that needs one gets a UserError naming the way out."""

    def __init__(self, message: str):
        super().__init__()
        self.message = message

    def __missing__(self, key):
        raise UserError(self.message)


def load_plot_data(out: str | Path, experiment: str) -> dict[str, np.ndarray]:
    path = plot_data_path(out, experiment)
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        return MissingPlotData(f"{path} is missing: rerun the experiment {experiment!r} (without --replot)")
    except (ValueError, OSError) as e:
        return MissingPlotData(f"{path} is unreadable ({type(e).__name__}); rerun the experiment {experiment!r}")
