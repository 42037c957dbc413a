"""`thinksae steer`: generate a prompt set unsteered and under every steered setting (decoded
together in the same batches, same seeds; see :mod:`.generation`), measure them, print them
side by side, and save ``steer.json`` (and ``steer.png`` for a sweep).

Every input is checked before the model is loaded or anything is written.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path

from simple_parsing import field
from tqdm.auto import tqdm

from .. import atomic
from ..config import to_dict
from ..errors import ThinksaeError
from ..generation import GenerationConfig, generation_field
from ..interventions.hooks import Markers, SteeredFeatureStats
from ..interventions.spec import Intervention, check_features, parse_interventions, parse_sweep, parse_window
from ..models.loading import DEFAULT_MODEL
from ..sae.bound import SaeAtHookpoint
from .generation import generate_rows, plan_groups, plan_rows, prompt_lengths
from .measure import compare, divergence, summarize, trace_record
from .regions import baseline_max, trained_regions
from .report import print_side_by_side, print_summary, write_sweep_png
from .result import SteerResult

FORMAT = "thinksae-steer/1"


class _Extend(argparse.Action):
    """A repeatable list option: ``--feature 1=0 --feature 2=x4`` (and ``--feature 1=0 2=x4``)."""

    def __call__(self, parser, namespace, values, option_string=None):
        old = getattr(namespace, self.dest, None)
        old = [] if old is None or old is self.default else list(old)
        setattr(namespace, self.dest, old + list(values))


@dataclass
class SteerConfig:
    """Options of `thinksae steer`."""

    sae: str = field(positional=True, metavar="SAE_DIR")
    """SAE directory (sparsify or SAELens layout), or a training run directory with --hookpoint."""
    feature: list[str] = field(default_factory=list, action=_Extend)
    """Interventions FEATURE=VALUE, repeated or comma-separated: 123=2.5 clamps to 2.5, 123=x4
    scales by 4, 123=+2 adds 2 x the decoder row (-2 subtracts), 123=off zero-ablates, 123=2max
    clamps to 2 x the feature's max activation (AIRI's recipe; where from: --max_from).
    With --sweep: bare feature indices."""
    sweep: list[str] = field(default_factory=list, action=_Extend)
    """Sweep mode: VALUEs (same grammar, comma-separated) applied in turn to every --feature;
    writes a table and steer.png."""
    max_from: str = "baseline"
    """Where Smax values take the feature's max activation: `baseline` (over the unsteered
    generations of this prompt set, at the positions of the steering window in the regions the
    SAE was trained on, from its thinksae.json; all non-special tokens when it does not say) or a
    `thinksae analyze` output directory of this SAE (over the analysed tokens; for features that
    seldom fire in short generations)."""
    hookpoint: str | None = None
    """Hookpoint to steer (default: the SAE's own, from thinksae.json or its directory name)."""
    model: str = DEFAULT_MODEL
    """Model (hub id, local directory, .gguf or `offline`)."""
    tokenizer: str | None = None
    """Load the tokenizer from another spec (default: the model's)."""
    prompt: list[str] = field(default_factory=list, action=_Extend)
    """Question(s) to generate from (repeatable)."""
    prompts_file: str | None = field(default=None, alias=["--prompts-file"])
    """Questions instead of --prompt: `builtin` (math problems with answers), `gsm8k` or a
    JSONL/text file (default: builtin)."""
    limit: int | None = 16
    """Use only the first N questions of --prompts_file."""
    start: str = "sentence"
    """Steer from: prompt (every generated token), think (after <think>), sentence (after the
    first sentence of thinking, i.e. R1's "Okay, so the user..." opening) or N (after N thinking
    tokens)."""
    end: str = "think_end"
    """Steer up to: think_end (</think>; the answer is not steered), none, or M thinking tokens."""
    batch_size: int = 48
    """Most rows decoded together: each batch holds its questions under the baseline and every
    setting (rows = questions x settings, left-padded), so decoding reads the weights once per
    step for all of them. (With Smax from the baseline, the baseline runs first.)"""
    generation: GenerationConfig = generation_field()
    """How to generate, the same for the baseline and every setting (flat options:
    --max_new_tokens, --do_sample, ...). Sampled rows draw from a stream seeded by --seed and
    their question, so the baseline and every setting use the same seeds."""
    kl: bool = True
    """Measure KL(clean || steered) of the next-token distribution at the steered positions
    (two extra forward passes per batch)."""
    show: int = 2
    """Print the baseline and steered generations of this many questions side by side."""
    out: str = "runs/steer"
    """Output directory: steer.json (and steer.png with --sweep)."""
    device: str = "auto"
    """cpu, cuda, cuda:N or auto."""
    dtype: str = "auto"
    """Model dtype: auto (bf16 where fast), float32, bfloat16 or float16. The SAE runs in float32."""
    progress: bool = True
    """Show a progress bar."""


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


def _problems(cfg: SteerConfig):
    from ..corpus import Problem, load_prompts, question_id

    if cfg.prompt:
        return [Problem(question_id(q), q) for q in dict.fromkeys(cfg.prompt)]
    return load_prompts(cfg.prompts_file or "builtin", cfg.limit)


def _analysis_max(cfg: SteerConfig, sae, hookpoint: str, features: list[int]) -> dict[int, float]:
    """Max activation of ``features`` from the analysis in ``cfg.max_from`` (checked first)."""
    from ..features.report import load_analysis, read_feature_row

    analysed = load_analysis(cfg.max_from).get("sae") or {}
    ours = {"num_latents": sae.num_latents, "d_in": sae.d_in, "hookpoint": hookpoint}
    theirs = {k: analysed.get(k) for k in ours}
    if theirs != ours:
        raise ThinksaeError(f"--max_from {cfg.max_from} analysed another SAE ({theirs}), not this "
                            f"one ({ours})")
    return {f: float(read_feature_row(Path(cfg.max_from), f).get("max_act") or 0.0)
            for f in features}


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


def _decode(cfg: SteerConfig, common: dict, conditions, need_max: list[int],
            analysis_max: dict | None, regions: tuple[str, ...]) -> tuple[list, dict, list, list]:
    """Generate the baseline and every setting (module :mod:`.generation`): ``(generated per
    setting, max activations, seconds per setting)``; a setting's seconds are its equal share
    of the batches it was decoded in. Smax from the baseline: the baseline first, alone."""
    lengths = prompt_lengths(common["tokenizer"], common["prompts"])
    n = 1 + len(conditions)
    groups = plan_groups(lengths, max(1, cfg.batch_size // n))
    max_acts, base, fixed, seconds = analysis_max or {}, None, None, [0.0] * n
    if need_max and analysis_max is None:
        first = plan_rows(groups, [0], cfg.batch_size, lengths)
        t0 = time.perf_counter()
        base = generate_rows(**common, batches=first, specs=[[]], record=need_max, kl=False)[0]
        seconds[0] = time.perf_counter() - t0
        max_acts = baseline_max(common["tokenizer"], base, common["window"], common["markers"],
                                regions, need_max)
        fixed = {p: b.width for b in first for _, p in b.rows}
    specs = [[]] + [[i.resolved(max_acts) for i in ivs] for _, ivs in conditions]
    together = list(range(1 if base is not None else 0, n))
    t0 = time.perf_counter()
    generated = generate_rows(**common, batches=plan_rows(groups, together, cfg.batch_size,
                                                          lengths, fixed),
                              specs=specs, kl=cfg.kl)
    for s in together:
        seconds[s] = (time.perf_counter() - t0) / len(together)
    if base is not None:
        generated[0] = base
    return generated, max_acts, specs, seconds


def steer(cfg: SteerConfig, model=None, tokenizer=None) -> SteerResult:
    """Run ``cfg`` (module docstring); ``model``/``tokenizer`` optionally replace loading
    ``cfg.model``. Returns the result also written to ``<out>/steer.json``."""
    from ..corpus import build_prompt

    conditions = _conditions(cfg)
    window = parse_window(cfg.start, cfg.end)
    _check_options(cfg)
    problems = _problems(cfg)
    bound = SaeAtHookpoint.find(cfg.sae, cfg.hookpoint)
    sae_dir, hookpoint, sae = bound.dir, bound.hookpoint, bound.load()
    regions = trained_regions(bound.card)
    for _, ivs in conditions:
        check_features(ivs, sae.num_latents)
    need_max = sorted({i.feature for _, ivs in conditions for i in ivs if i.kind == "clamp_max"})
    analysis_max = None if cfg.max_from == "baseline" else \
        _analysis_max(cfg, sae, hookpoint, need_max)
    if model is None:
        from ..models import load_model

        bound.precheck(cfg.model)
        model, tokenizer = load_model(cfg.model, cfg.device, cfg.dtype, tokenizer=cfg.tokenizer,
                                      progress=cfg.progress)
    elif tokenizer is None:
        raise ThinksaeError("a model was passed without its tokenizer")
    bound.check_model(model)
    sae = sae.to(next(model.parameters()).device)

    from ..corpus.generate import stop_ids

    markers = Markers.from_tokenizer(tokenizer, stop_ids(model, tokenizer),
                                     sentences=window.start == "sentence")
    if not markers.single_token and (window.start != "prompt" or window.end != "none"):
        raise ThinksaeError(
            "this tokenizer has no single <think>/</think> tokens, so the window "
            f"--start {window.start} --end {window.end} would never open or close; use "
            "--start prompt --end none (with --think_prefill the prompt ends inside the thinking)")
    gen = cfg.generation
    prompts = [build_prompt(tokenizer, p.question, gen.system_prompt, gen.think_prefill)
               for p in problems]
    ids = [p.id for p in problems]
    common = dict(model=model, tokenizer=tokenizer, prompts=prompts, ids=ids, generation=gen,
                  sae=sae, hookpoint=hookpoint, window=window, markers=markers)

    def records(generated, steered: bool) -> list[dict]:
        out = []
        for i, p in enumerate(problems):
            gen, row = generated[i]
            out.append(trace_record(
                tokenizer, gen.ids[row].tolist(), gen.width, markers, window, p.answer,
                gen.steered[row].tolist() if steered else None,
                gen.kl[row].tolist() if steered and gen.kl is not None else None))
        return out

    bar = tqdm(total=len(problems) * (1 + len(conditions)), desc="steer", unit="trace",
               disable=not cfg.progress)
    try:
        generated, max_acts, specs, seconds = _decode(cfg, {**common, "progress": bar},
                                                      conditions, need_max, analysis_max, regions)
        baseline = records(generated[0], steered=False)
        base_summary = {**summarize(baseline), "seconds": seconds[0]}
        runs = []
        for (label, requested), ivs, gen, secs in zip(conditions, specs[1:], generated[1:],
                                                      seconds[1:], strict=True):
            recs = records(gen, steered=True)
            summary = {**summarize(recs), **divergence(baseline, recs), "seconds": secs}
            runs.append({"label": label,
                         "interventions": [{**i.to_dict(), "requested": r.spec}
                                           for i, r in zip(ivs, requested)],
                         "summary": summary, "delta": compare(base_summary, summary),
                         "sae_at_steered_positions": _feature_stats(gen).to_dict(),
                         "traces": recs})
    finally:
        bar.close()

    for i, p in enumerate(problems[:cfg.show]):
        for run in runs:
            print_side_by_side(p.question, baseline[i]["completion"],
                               run["traces"][i]["completion"], run["label"])
    title = f"steering {sae_dir.parent.name}/{sae_dir.name}, {len(problems)} prompts, window " \
            f"{window.start}..{window.end}"
    print_summary([("baseline", base_summary)] + [(r["label"], r["summary"]) for r in runs],
                  title)

    out = Path(cfg.out)
    png = out / "steer.png" if cfg.sweep else None
    config = getattr(model, "config", None)
    result = SteerResult(
        format=FORMAT, mode="sweep" if cfg.sweep else "single", sae=str(sae_dir),
        hookpoint=hookpoint, model=getattr(config, "_name_or_path", None) or cfg.model,
        window=window.to_dict(), max_activation={str(f): max_acts[f] for f in need_max} or None,
        max_activation_from=cfg.max_from if need_max else None,
        settings=_settings_record(cfg),
        questions=[{"id": p.id, "question": p.question, "answer": p.answer, "prompt": prompts[i]}
                   for i, p in enumerate(problems)],
        baseline={"summary": base_summary, "traces": baseline}, runs=runs,
        png=str(png) if png else None, config=to_dict(cfg))
    if png is not None:
        feats = ", ".join(str(i.feature) for i in conditions[0][1])
        write_sweep_png(png, [r["label"] for r in runs], [r["summary"] for r in runs],
                        base_summary, f"{title}; features {feats}")
    atomic.write_json(out / "steer.json", result.to_dict())
    print(out / "steer.json")
    return result
