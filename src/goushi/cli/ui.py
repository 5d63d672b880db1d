"""`goushi ui`: the web page over one or more trained runs."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "ui",
        help="web page: generate, chat, look at tokens / next-token probabilities / attention, read the model card",
        description="Serve the Gradio web page over trained runs: the RUN_DIRs given and every run directory found "
        "under --runs-dir (default ./runs when no RUN_DIR is given). Models load when first picked.",
    )
    p.add_argument("run_dirs", nargs="*", metavar="RUN_DIR", help="run directories written by `goushi train`")
    p.add_argument("--runs-dir", metavar="DIR",
                   help="also offer every run directory under DIR (default: ./runs if no RUN_DIR is given)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this machine only; 0.0.0.0 = the whole network)")
    p.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    p.set_defaults(func=run)


def launch(run_dirs: list[str | Path] | None, runs_dir: str | Path | None, host: str = "127.0.0.1",
           port: int = 7860, open_browser: bool = False) -> None:
    """Build the page and serve it until Ctrl-C (what `goushi demo` calls at the end)."""
    # Imported here on purpose: Gradio is a heavy optional dependency (`pip install goushi[ui]`), and every
    # other subcommand must start without it.
    from goushi.ui import build_app, serve

    demo = build_app(list(run_dirs or []), runs_dir)
    serve(demo, host, port, block=True, open_browser=open_browser)


def run(args: argparse.Namespace) -> int:
    launch(args.run_dirs, args.runs_dir, args.host, args.port, open_browser=args.open)
    return 0
