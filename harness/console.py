"""Progress of long loops: tqdm on a terminal, a plain line every 30 s in a log."""
from __future__ import annotations

import sys

from tqdm import tqdm

from .threads import refit

PROGRESS_EVERY_S = 30.0  # off a terminal, one plain progress line this often


class _PlainProgress(tqdm):
    """tqdm for logs: output to a file or CI gets one plain line every
    PROGRESS_EVERY_S seconds (and a last one at the end) instead of a redrawn bar;
    loops shorter than that print nothing."""

    def display(self, msg=None, pos=None):
        if msg is None:  # a refresh; msg='' is tqdm clearing the bar, which a log does not need
            self._last_line = self.__str__()
            print(self._last_line, file=self.fp, flush=True)
        return True

    def set_postfix(self, ordered_dict=None, refresh=True, **kwargs):
        super().set_postfix(ordered_dict, refresh=False, **kwargs)  # shown with the next timed line

    def set_description(self, desc=None, refresh=True):
        super().set_description(desc, refresh=False)

    def close(self):
        if self.disable:
            return
        shown = getattr(self, "_last_line", None)
        if shown is not None and shown != self.__str__():  # the final state, once
            self.display()
        self.disable = True
        self._decr_instances(self)


def progress(iterable=None, desc: str = "", total: int | None = None, **kwargs) -> tqdm:
    """The progress bar of every long loop: tqdm on a terminal, plain periodic lines
    elsewhere (a 90 s feature extraction redirected to a file still shows progress).
    Same interface as tqdm (iterate it, or `update`/`set_postfix` with `total`). A long loop
    is where a run re-checks how many CPU threads the machine has free (threads.refit)."""
    refit()
    if sys.stderr.isatty():
        return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, **kwargs)
    return _PlainProgress(iterable, desc=desc, total=total, file=sys.stdout, ascii=True, ncols=100,
                          delay=PROGRESS_EVERY_S, mininterval=PROGRESS_EVERY_S, **kwargs)
