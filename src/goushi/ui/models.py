"""Which models the page offers, and one shared Engine per model, loaded on first use.

The registry is the only process-wide state of the web page, and it holds no user data: just the
run directories found and the engines loaded from them. Everything a user types or gets back lives
in that user's session (gr.State / component values). What a run directory is belongs to goushi.rundir;
a loaded engine carries its record (`engine.record`), so handlers never read it again.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from goushi.engine import Engine
from goushi.errors import GoushiError
from goushi.run_record import RunRecord
from goushi.rundir import CONFIG, TOKENIZER, WEIGHTS, check_run_dir, looks_like_run, read_run

# How deep under --runs-dir to look: runs/NAME and runs/NAME/best (or runs/group/NAME).
SCAN_DEPTH = 2
# Loaded engines kept in memory; a page with dozens of runs must not load them all at once.
MAX_LOADED = 4


@dataclass(frozen=True)
class RunEntry:
    key: str  # what the picker shows; unique
    path: Path


def discover(run_dirs: list[str | Path] | None, runs_dir: str | Path | None) -> list[RunEntry]:
    """Run directories named explicitly (kept even if broken, so the page can say why), then those under runs_dir."""
    found: list[RunEntry] = []
    seen: set[Path] = set()
    keys: set[str] = set()

    def add(path: Path, key: str) -> None:
        real = path.resolve()
        if real in seen:
            return
        seen.add(real)
        base, n = key, 2
        while key in keys:  # two runs called "run" in different places stay distinguishable
            key, n = f"{base} ({n})", n + 1
        keys.add(key)
        found.append(RunEntry(key=key, path=path))

    for d in run_dirs or []:
        add(Path(d), str(d).rstrip("/\\") or str(d))
    if runs_dir is not None:
        root = Path(runs_dir)
        if root.is_dir():
            if looks_like_run(root):
                add(root, root.name or str(root))
            under: list[Path] = []
            level = [root]
            for _ in range(SCAN_DEPTH):
                nxt = []
                for parent in level:
                    try:
                        children = sorted(p for p in parent.iterdir() if p.is_dir() and not p.name.startswith("."))
                    except OSError:
                        continue
                    for child in children:
                        if looks_like_run(child):
                            under.append(child)
                        nxt.append(child)
                level = nxt
            # Sorted by name, so runs/a/best sits right under runs/a.
            for child in sorted(under, key=lambda p: p.relative_to(root).parts):
                add(child, child.relative_to(root).as_posix())
    return found


def _stamp(path: Path) -> tuple:
    """Changes when the run is retrained or repaired, so the page reloads it instead of serving a stale copy."""
    out = []
    for name in (CONFIG, WEIGHTS, TOKENIZER):
        try:
            st = (path / name).stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _default_loader(path: Path) -> Engine:
    return Engine.load(path, device="auto")


def describe_error(e: BaseException) -> str:
    """One line a user can act on; unexpected exceptions keep their type so they can be reported."""
    if isinstance(e, GoushiError):
        return str(e)
    return f"{type(e).__name__}: {e}"


class ModelRegistry:
    """Runs found on disk, and engines loaded from them on demand (shared by every session)."""

    def __init__(self, run_dirs: list[str | Path] | None = None, runs_dir: str | Path | None = None, *,
                 loader: Callable[[Path], Any] | None = None, max_loaded: int = MAX_LOADED) -> None:
        self.run_dirs = [Path(d) for d in run_dirs or []]
        self.runs_dir = Path(runs_dir) if runs_dir is not None else None
        self._loader = loader or _default_loader
        self._max_loaded = max_loaded
        self._lock = threading.Lock()
        self._key_locks: dict[str, threading.Lock] = {}
        self._engines: OrderedDict[str, tuple[tuple, Any]] = OrderedDict()
        self._errors: dict[str, tuple[tuple, str]] = {}
        self.entries: list[RunEntry] = []
        self.refresh()

    def refresh(self) -> list[RunEntry]:
        entries = discover(self.run_dirs, self.runs_dir)
        with self._lock:
            self.entries = entries
        return entries

    def keys(self) -> list[str]:
        return [e.key for e in self.entries]

    def entry(self, key: str | None) -> RunEntry:
        for e in self.entries:
            if e.key == key:
                return e
        if not self.entries:
            raise GoushiError("no models found; train one first (`make demo`, or `goushi data build` + `goushi train`)")
        raise GoushiError(f"model {key!r} is not in the list any more; pick another one or press refresh")

    def record(self, key: str) -> RunRecord:
        """The run's record, read now (cheap: no weights); for a run that failed to load. A loaded run's is
        `get(key).record`."""
        return read_run(self.entry(key).path)

    def loaded(self, key: str) -> bool:
        with self._lock:
            return key in self._engines

    def get(self, key: str) -> Any:
        """The engine for `key`, loading it once; GoushiError with the reason when it cannot be loaded."""
        entry = self.entry(key)
        with self._lock:
            lock = self._key_locks.setdefault(key, threading.Lock())
        with lock:  # two sessions asking for the same model at once load it once
            stamp = _stamp(entry.path)
            with self._lock:
                cached = self._engines.get(key)
                if cached and cached[0] == stamp:
                    self._engines.move_to_end(key)
                    return cached[1]
                err = self._errors.get(key)
            if err and err[0] == stamp:  # same broken files: do not retry on every click
                raise GoushiError(err[1])
            try:
                check_run_dir(entry.path)
                engine = self._loader(entry.path)
            except Exception as e:  # any failure must leave the other models usable
                msg = describe_error(e)
                with self._lock:
                    self._errors[key] = (stamp, msg)
                    self._engines.pop(key, None)
                raise GoushiError(msg) from None
            with self._lock:
                self._errors.pop(key, None)
                self._engines[key] = (stamp, engine)
                self._engines.move_to_end(key)
                while len(self._engines) > self._max_loaded:
                    self._engines.popitem(last=False)
            return engine
