"""`thinksae serve`: load the run's model and SAE, then serve the workbench until interrupted."""

from __future__ import annotations

import uvicorn

from ..errors import ThinksaeError
from ..runs import read_run
from .app import create_app
from .config import ServeConfig


def run(cfg: ServeConfig) -> None:
    """`thinksae serve`: load the run's model and SAE, then serve until interrupted."""
    if not 0 < cfg.port < 65536:
        raise ThinksaeError(f"--port must be in 1..65535 (got {cfg.port})")
    for name in ("max_new_tokens", "max_text_tokens", "max_body"):
        if getattr(cfg, name) < 1:
            raise ThinksaeError(f"--{name} must be at least 1 (got {getattr(cfg, name)})")
    read_run(cfg.run)  # a one-line error before anything loads
    if cfg.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {cfg.host}: anyone who can reach it can read the run and run "
              "generations (there is no authentication)")
    app = create_app(cfg.run, cfg=cfg)
    print(f"thinksae workbench: http://{cfg.host}:{cfg.port}/")
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level="warning", limit_concurrency=64,
                timeout_keep_alive=5)
