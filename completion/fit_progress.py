"""A one-line status of a long matrix fit on stderr: its stage and the time so far.

``NTKImputer(progress=True)`` (the ``matrix`` command on a terminal, without ``-q`` or ``-v``)
shows, for example, ``NTKImputer: CV RMSE 0.8273  mode=cols, prior=profile, ... [00:21]``: the
last message of the fit (those ``verbose`` logs, and its stages: the cross-validation's size,
the final fit), rewritten in place as the fit goes on (a tqdm line without a bar, refreshed
every second), and removed when the fit ends.
"""
from __future__ import annotations

import shutil
import sys
import threading

__all__ = ["FitProgress"]

# seconds between two refreshes of the elapsed time while a stage runs
REFRESH_SECONDS = 1.0


class FitProgress:
    """Context manager; :meth:`stage` sets the status text. Does nothing when not ``enabled``
    (and in a copy pickled for another process)."""

    def __init__(self, enabled, name="NTKImputer"):
        self.enabled = bool(enabled)
        self.name = name
        self._bar = None
        self._stopped = threading.Event()
        self._ticker = None

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=None, desc=f"{self.name}: starting", file=sys.stderr,
                             bar_format="{desc} [{elapsed}]", leave=False,
                             ncols=shutil.get_terminal_size().columns)
            self._ticker = threading.Thread(target=self._tick, daemon=True)
            self._ticker.start()
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._stopped.set()
            self._ticker.join()
            self._bar.close()
            self._bar = None
        return False

    def __reduce__(self):  # a copy sent to another process (Dask workers) shows nothing
        return FitProgress, (False, self.name)

    def stage(self, text):
        """Show ``text`` (on one line, cut to the terminal's width) as the fit's stage."""
        if self._bar is not None:
            width = shutil.get_terminal_size().columns - len(self.name) - 14
            line = " ".join(text.split())
            if len(line) > width:
                line = line[:max(width - 3, 0)] + "..."
            self._bar.set_description_str(f"{self.name}: {line}")

    def _tick(self):
        while not self._stopped.wait(REFRESH_SECONDS):
            self._bar.refresh()
