"""What a user can fix ends a run in one line with exit status 2; a diverged training
run ends only that experiment."""
from __future__ import annotations

import contextlib
import sys

import torch


class UserError(Exception):
    """Something the user can fix: a bad flag value, a dataset or weights that could
    not be fetched, an --out that cannot be written. `user_errors` turns it into one
    line on stderr and exit status 2, with no traceback."""


class Diverged(Exception):
    """A training run produced NaN/inf. The run stops; the other experiments go on."""


# cuDNN and cuBLAS report a failed allocation in their own words, without "out of memory".
_OOM_WORDS = ("out of memory", "CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED")
# torch.OutOfMemoryError exists from torch 2.5; torch.cuda.OutOfMemoryError before (both RuntimeErrors).
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@contextlib.contextmanager
def user_errors(prog: str, batch_flag: str = "--batch-size"):
    """Wrap a task's main: a UserError becomes `prog: error: ...` and exit 2. Running
    out of GPU memory is a user's fix too (a smaller batch): one line naming
    `batch_flag`, exit 2. Ctrl-C: one line, exit 130. In every case the experiments
    that finished are already in metrics.json (written after each) and every cache or
    figure write is atomic, so nothing half-written stays."""
    try:
        yield
    except UserError as e:
        one_line_exit(prog, str(e))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished experiments are kept in metrics.json", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    except RuntimeError as e:  # torch's out-of-memory errors are RuntimeErrors
        if not isinstance(e, _OOM) and not any(w in str(e) for w in _OOM_WORDS):
            raise
        one_line_exit(prog, f"out of GPU memory ({str(e).splitlines()[0][:120]}); lower {batch_flag} "
                            "(finished experiments are kept in metrics.json)")


def one_line_exit(prog: str, message: str):
    msg = " ".join(message.split())  # one line, whatever the message held
    print(f"{prog}: error: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2) from None
