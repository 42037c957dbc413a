"""`thinksae corpus`: generate reasoning traces with a model (resumable), or import existing ones;
writes the traces (JSONL) and the config next to them."""

from __future__ import annotations

import json
from pathlib import Path

from ..config import save_config, to_dict
from ..errors import ThinksaeError
from ..models.loading import load_model
from ..models.tokenizer import load_tokenizer
from .config import RECIPE, CorpusConfig, config_path
from .engines import check_batch_size, check_engine, open_engine, resolve_engine
from .generate import all_done, generate_traces
from .problems import load_prompts, repeat_problems
from .traces import load_traces, write_traces


def _check_resumable(cfg: CorpusConfig) -> None:
    path = config_path(cfg.out)
    if not (Path(cfg.out).exists() and path.exists()):
        return
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return
    new = to_dict(cfg)
    changed = [k for k in RECIPE if k in old and old[k] != new[k]]
    if changed:
        raise ThinksaeError(
            f"{cfg.out} holds traces made with other {', '.join(changed)} "
            f"({', '.join(f'{old[k]!r}' for k in changed)}); use another --out or the same settings"
        )


def run(cfg: CorpusConfig, model=None, tokenizer=None) -> Path:
    """Generate traces for ``cfg.prompts`` with ``cfg.model`` (resuming into ``cfg.out``) or
    import ``cfg.traces``; writes ``cfg.out`` and ``<out>.config.json``, returns ``cfg.out``."""
    out = Path(cfg.out)
    if cfg.traces:
        try:
            traces = load_traces(cfg.traces, tokenizer, split=cfg.split, limit=cfg.limit)
        except ThinksaeError as e:
            if tokenizer is not None or "chat template" not in str(e):
                raise
            tokenizer = load_tokenizer(cfg.model)  # the records need templating after all
            traces = load_traces(cfg.traces, tokenizer, split=cfg.split, limit=cfg.limit)
        if not traces:
            raise ThinksaeError(f"{cfg.traces} holds no traces")
        write_traces(traces, out)
        save_config(cfg, config_path(out))
        return out

    if cfg.answer_tokens < 0:
        raise ThinksaeError(f"answer_tokens must be >= 0, got {cfg.answer_tokens}")
    gen = cfg.generation
    gen.check()
    check_batch_size(cfg.batch_size)
    _check_resumable(cfg)
    problems = repeat_problems(load_prompts(cfg.prompts, cfg.limit), cfg.samples, gen.do_sample)
    if all_done(out, [p.id for p in problems]):  # e.g. kept traces copied in: no engine needed
        print(f"thinksae: all {len(problems)} traces are already in {out}; nothing to generate",
              flush=True)
        save_config(cfg, config_path(out))
        return out
    engine_name = resolve_engine(cfg.engine, cfg.model, cfg.device, cfg.dtype)
    check_engine(engine_name, cfg.model)
    if engine_name != "hf":
        tokenizer = tokenizer or load_tokenizer(cfg.model)
    elif model is None or tokenizer is None:
        model, tokenizer = load_model(cfg.model, device=cfg.device, dtype=cfg.dtype,
                                      progress=cfg.progress)
    if engine_name != cfg.engine:
        print(f"thinksae: corpus engine auto: {engine_name}", flush=True)
    engine = open_engine(engine_name, cfg.model, tokenizer, gen, model, dtype=cfg.dtype)
    save_config(cfg, config_path(out))
    try:
        generate_traces(model, tokenizer, problems, out, gen, batch_size=cfg.batch_size,
                        progress=cfg.progress, answer_tokens=cfg.answer_tokens, engine=engine)
    finally:
        getattr(engine, "close", lambda: None)()
    return out
