"""Serving the page: local only unless asked, no share link, no web fonts or analytics, a clear port error."""

from __future__ import annotations

import os
import sys
from typing import Any

from goushi.errors import GoushiError
from goushi.ui.style import CSS, theme

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def serve(demo: Any, host: str = "127.0.0.1", port: int = 7860, *, block: bool = True,
          open_browser: bool = False, quiet: bool = False) -> str:
    """Start the server; with block=False return its URL at once (tests, notebooks) and leave it running."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    if not 0 < int(port) < 65536:
        raise GoushiError(f"--port {port}: must be between 1 and 65535")
    if host not in LOCAL_HOSTS and not quiet:
        print(f"warning: --host {host}: the page (and every model on it) is reachable from other machines on "
              "the network; use --host 127.0.0.1 to keep it on this one", file=sys.stderr)
    demo.queue()
    try:
        _, url, _ = demo.launch(
            server_name=host, server_port=int(port), share=False, inbrowser=open_browser,
            prevent_thread_lock=True, quiet=True, show_error=True, ssr_mode=False, mcp_server=False,
            theme=theme(), css=CSS, footer_links=["api", "settings"],
        )
    except OSError:
        raise GoushiError(f"--port {port}: cannot serve on {host}:{port}, another program is using it; "
                          "pick another with --port") from None
    if not quiet:
        # Our own line instead of Gradio's, which suggests share=True (a public tunnel we never open).
        shown = "localhost" if host in LOCAL_HOSTS else host
        print(f"goushi ui: serving http://{shown}:{port}  (Ctrl-C to stop)", flush=True)
    if block:
        demo.block_thread()  # until Ctrl-C; it closes the server on the way out
    return url
