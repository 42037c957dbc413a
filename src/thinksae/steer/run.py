"""`thinksae steer`: generate a prompt set unsteered and under every steered setting (decoded
together in the same batches, same seeds; :mod:`thinksae.generation.decode`), measure them,
print them side by side, and save ``steer.json`` (and ``steer.png`` for a sweep).

Every input is checked before the model is loaded or anything is written.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import NamedTuple

from tqdm.auto import tqdm

from .. import atomic
from ..binding import Bound, ModelSource, bind_sae
from ..chat import ThinkMarkers, build_prompt
from ..config import to_dict
from ..corpus.problems import Problem, load_prompts, question_id
from ..errors import ThinksaeError
from ..features.report import load_analysis, read_feature_row
from ..generation.batches import plan_groups, plan_rows, prompt_lengths
from ..generation.decode import Decoding, generate_rows
from ..interventions import Intervention, SteeredFeatureStats, Window
from ..interventions.spec import check_features, parse_interventions, parse_sweep, parse_window
from ..models.names import DEFAULT_MODEL
from ..runs import need, with_defaults, with_run
from ..sae.bound import SaeAtHookpoint
from .config import SteerConfig
from .measure import compare, divergence, summarize, trace_record
from .regions import baseline_max, trained_regions
from .report import print_side_by_side, print_summary, write_sweep_png
from .result import SteerResult

FORMAT = "thinksae-steer/1"


class Plan(NamedTuple):
    """A checked steer request: the settings, the window, the questions, the SAE, and what Smax
    needs (features, and their max activations when they come from an analysis)."""

    conditions: list[tuple[str, list[Intervention]]]
    window: Window
    problems: list[Problem]
    sae_at: SaeAtHookpoint
    need_max: list[int]
    analysis_max: dict[int, float] | None


def _conditions(cfg: SteerConfig) -> list[tuple[str, list[Intervention]]]:
    if cfg.sweep:
        sets = parse_sweep(cfg.feature, cfg.sweep)
        return [(ivs[0].spec.partition("=")[2], ivs) for ivs in sets]
    ivs = parse_interventions(cfg.feature)
    return [(" ".join(i.spec for i in ivs), ivs)]


def _check_options(cfg: SteerConfig) -> None:
    cfg.generation.check()
    if cfg.batch_size < 1:
        raise ThinksaeError(f"--batch_size must be at least 1 (got {cfg.batch_size})")
    if cfg.limit is not None and cfg.limit < 1:
        raise ThinksaeError(f"--limit must be at least 1 (got {cfg.limit})")
    if cfg.show < 0:
        raise ThinksaeError(f"--show must be at least 0 (got {cfg.show})")
    if cfg.prompt and cfg.prompts_file:
        raise ThinksaeError("give either --prompt or --prompts_file, not both")
    if any(not p.strip() for p in cfg.prompt):
        raise ThinksaeError("--prompt is empty")


def _problems(cfg: SteerConfig) -> list[Problem]:
    if cfg.prompt:
        return [Problem(question_id(q), q) for q in dict.fromkeys(cfg.prompt)]
    return load_prompts(cfg.prompts_file or "builtin", cfg.limit)


def _analysis_max(cfg: SteerConfig, sae, hookpoint: str, features: list[int]) -> dict[int, float]:
    """Max activation of ``features`` from the analysis in ``cfg.max_from`` (checked first)."""
    analysed = load_analysis(cfg.max_from).get("sae") or {}
    ours = {"num_latents": sae.num_latents, "d_in": sae.d_in, "hookpoint": hookpoint}
    theirs = {k: analysed.get(k) for k in ours}
    if theirs != ours:
        raise ThinksaeError(f"--max_from {cfg.max_from} analysed another SAE ({theirs}), not this "
                            f"one ({ours})")
    return {f: float(read_feature_row(Path(cfg.max_from), f).get("max_act") or 0.0)
            for f in features}


def plan(cfg: SteerConfig) -> Plan:
    """Every check that needs no model: options, interventions, window, questions, the SAE and
    its features, the analysis Smax reads."""
    need(cfg, "sae", "an SAE directory")
    conditions = _conditions(cfg)
    window = parse_window(cfg.start or "sentence", cfg.end or "think_end")  # refused now if bad
    _check_options(cfg)
    problems = _problems(cfg)
    sae_at = SaeAtHookpoint.find(cfg.sae, cfg.hookpoint)
    sae = sae_at.load()
    for _, ivs in conditions:
        check_features(ivs, sae.num_latents)
    need_max = sorted({i.feature for _, ivs in conditions for i in ivs if i.kind == "clamp_max"})
    analysis_max = None if cfg.max_from == "baseline" else \
        _analysis_max(cfg, sae, sae_at.hookpoint, need_max)
    return Plan(conditions, window, problems, sae_at, need_max, analysis_max)


def default_window(single_token: bool, start: str | None = None, end: str | None = None) -> Window:
    """The steering window: ``start``/``end`` where given, else what works on the tokenizer:
    sentence .. think_end with single ``<think>``/``</think>`` tokens, else prompt .. none."""
    return parse_window(start or ("sentence" if single_token else "prompt"),
                        end or ("think_end" if single_token else "none"))


def window_markers(bound: Bound, start: str | None, end: str | None) -> tuple[Window, ThinkMarkers]:
    """The window (defaults from the tokenizer) and the tokenizer's markers, refusing a window
    that could never open on it."""
    single = bound.markers(sentences=False).single_token
    window = default_window(single, start, end)
    markers = bound.markers(sentences=window.start == "sentence")
    if not markers.single_token and (window.start != "prompt" or window.end != "none"):
        raise ThinksaeError(
            "this tokenizer has no single <think>/</think> tokens, so the window "
            f"--start {window.start} --end {window.end} would never open or close; use "
            "--start prompt --end none (with --think_prefill the prompt ends inside the thinking)")
    return window, markers


def _settings_record(cfg: SteerConfig) -> dict:
    """How every setting was generated, as ``steer.json`` records it."""
    g = cfg.generation
    return {"max_new_tokens": g.max_new_tokens, "batch_size": cfg.batch_size,
            "do_sample": g.do_sample, "temperature": g.temperature, "top_p": g.top_p,
            "seed": g.seed}


def _feature_stats(generated: dict) -> SteeredFeatureStats:
    """The SAE's view of a setting's features at its steered positions, over all its rows."""
    total = SteeredFeatureStats()
    for gen, row in generated.values():
        if gen.row_stats and gen.row_stats[row] is not None:
            total.add(gen.row_stats[row])
    return total


def _decode(cfg: SteerConfig, dec: Decoding, prompts: list[str], ids: list[str], p: Plan,
            regions: tuple[str, ...], bar) -> tuple[list, dict, list, list]:
    """Generate the baseline and every setting: ``(generated per setting, max activations,
    interventions per setting, seconds per setting)``; a setting's seconds are its equal share
    of the batches it was decoded in. Smax from the baseline: the baseline first, alone."""
    lengths = prompt_lengths(dec.tokenizer, prompts)
    n = 1 + len(p.conditions)
    groups = plan_groups(lengths, max(1, cfg.batch_size // n))
    max_acts, base, fixed, seconds = p.analysis_max or {}, None, None, [0.0] * n
    common = dict(prompts=prompts, ids=ids, generation=cfg.generation, progress=bar)
    if p.need_max and p.analysis_max is None:
        first = plan_rows(groups, [0], cfg.batch_size, lengths)
        t0 = time.perf_counter()
        base = generate_rows(dec, **common, batches=first, specs=[[]], record=p.need_max,
                             kl=False)[0]
        seconds[0] = time.perf_counter() - t0
        max_acts = baseline_max(dec.tokenizer, base, dec.window, dec.markers, regions, p.need_max)
        fixed = {q: b.width for b in first for _, q in b.rows}
    specs = [[]] + [[i.resolved(max_acts) for i in ivs] for _, ivs in p.conditions]
    together = list(range(1 if base is not None else 0, n))
    t0 = time.perf_counter()
    generated = generate_rows(dec, **common, specs=specs, kl=cfg.kl, batches=plan_rows(
        groups, together, cfg.batch_size, lengths, fixed))
    for s in together:
        seconds[s] = (time.perf_counter() - t0) / len(together)
    if base is not None:
        generated[0] = base
    return generated, max_acts, specs, seconds


def _records(dec: Decoding, problems: list[Problem], generated, steered: bool) -> list[dict]:
    out = []
    for i, p in enumerate(problems):
        gen, row = generated[i]
        out.append(trace_record(
            dec.tokenizer, gen.ids[row].tolist(), gen.width, dec.markers, dec.window, p.answer,
            gen.steered[row].tolist() if steered else None,
            gen.kl[row].tolist() if steered and gen.kl is not None else None))
    return out


def _runs(dec: Decoding, p: Plan, generated, specs, seconds) -> tuple[dict, list[dict], list]:
    """The baseline summary, each setting's record, and the baseline traces."""
    baseline = _records(dec, p.problems, generated[0], steered=False)
    base_summary = {**summarize(baseline), "seconds": seconds[0]}
    runs = []
    for (label, requested), ivs, gen, secs in zip(p.conditions, specs[1:], generated[1:],
                                                  seconds[1:], strict=True):
        recs = _records(dec, p.problems, gen, steered=True)
        summary = {**summarize(recs), **divergence(baseline, recs), "seconds": secs}
        runs.append({"label": label,
                     "interventions": [{**i.to_dict(), "requested": r.spec}
                                       for i, r in zip(ivs, requested)],
                     "summary": summary, "delta": compare(base_summary, summary),
                     "sae_at_steered_positions": _feature_stats(gen).to_dict(),
                     "traces": recs})
    return base_summary, runs, baseline


def _show(cfg: SteerConfig, p: Plan, baseline, base_summary, runs) -> str:
    for i, q in enumerate(p.problems[:cfg.show]):
        for run_ in runs:
            print_side_by_side(q.question, baseline[i]["completion"],
                               run_["traces"][i]["completion"], run_["label"])
    sae_dir = p.sae_at.dir
    title = f"steering {sae_dir.parent.name}/{sae_dir.name}, {len(p.problems)} prompts, window " \
            f"{p.window.start}..{p.window.end}"
    print_summary([("baseline", base_summary)] + [(r["label"], r["summary"]) for r in runs],
                  title)
    return title


def run(cfg: SteerConfig, model=None, tokenizer=None) -> SteerResult:
    """Run ``cfg`` (module docstring); ``model``/``tokenizer`` optionally replace loading
    ``cfg.model``. Returns the result also written to ``<out>/steer.json``."""
    cfg = with_defaults(with_run(cfg, "steer", ("sae", "model", "tokenizer")),
                        model=DEFAULT_MODEL, out="runs/steer")
    p = plan(cfg)
    regions = trained_regions(p.sae_at.card)
    bound = bind_sae(p.sae_at, ModelSource.of(cfg), model, tokenizer)
    window, markers = window_markers(bound, cfg.start, cfg.end)
    p = p._replace(window=window)
    dec = Decoding(bound.model, bound.tokenizer, bound.sae, bound.hookpoint, window, markers)
    gen = cfg.generation
    prompts = [build_prompt(dec.tokenizer, q.question, gen.system_prompt, gen.think_prefill)
               for q in p.problems]
    bar = tqdm(total=len(p.problems) * (1 + len(p.conditions)), desc="steer", unit="trace",
               disable=not cfg.progress)
    try:
        generated, max_acts, specs, seconds = _decode(cfg, dec, prompts, [q.id for q in p.problems],
                                                      p, regions, bar)
        base_summary, runs, baseline = _runs(dec, p, generated, specs, seconds)
    finally:
        bar.close()
    title = _show(cfg, p, baseline, base_summary, runs)
    out = Path(cfg.out)
    png = out / "steer.png" if cfg.sweep else None
    config = getattr(bound.model, "config", None)
    result = SteerResult(
        format=FORMAT, mode="sweep" if cfg.sweep else "single", sae=str(bound.sae_dir),
        hookpoint=bound.hookpoint, model=getattr(config, "_name_or_path", None) or cfg.model,
        window=p.window.to_dict(),
        max_activation={str(f): max_acts[f] for f in p.need_max} or None,
        max_activation_from=cfg.max_from if p.need_max else None,
        settings=_settings_record(cfg),
        questions=[{"id": q.id, "question": q.question, "answer": q.answer, "prompt": prompts[i]}
                   for i, q in enumerate(p.problems)],
        baseline={"summary": base_summary, "traces": baseline}, runs=runs,
        png=str(png) if png else None, config=to_dict(cfg))
    if png is not None:
        feats = ", ".join(str(i.feature) for i in p.conditions[0][1])
        write_sweep_png(png, [r["label"] for r in runs], [r["summary"] for r in runs],
                        base_summary, f"{title}; features {feats}")
    atomic.write_json(out / "steer.json", result.to_dict())
    print(out / "steer.json")
    return result
