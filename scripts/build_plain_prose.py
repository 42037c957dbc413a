"""Build src/thinksae/data/plain_prose.jsonl: the offline non-reasoning set of the Ma et al. 2026
protocol (`thinksae.validate.ma2026`).

Plain prose that the offline model (Qwen2.5-Coder-1.5B-Instruct, an instruct model that is not
trained to reason) writes from everyday prompts (describe a place, a recipe, a short story, a
letter, a news-style paragraph, ...). No system prompt asking it to think and no `<think>`
prefill: the chat template's own default system line only. Generated through thinksae's own
generation path (`thinksae.corpus.generate.generate_traces`, Hugging Face engine, greedy), one
record per prompt: ``{"id", "text", "prompt", "kind", "subject", "settings"}``.

    OMP_NUM_THREADS=2 python scripts/build_plain_prose.py            # all prompts, 64 new tokens
    python scripts/build_plain_prose.py --limit 8 --out /tmp/p.jsonl  # a quick look

The generation is resumable: traces are appended to ``<out>.traces.jsonl`` as batches finish,
``--convert_only`` writes ``--out`` from the traces made so far without loading a model, and a
run generates only the prompts whose ids ``--out`` lacks.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

CONTROL = re.compile(r"<\|[^<>|\s]+\|>")
"""Qwen's control-token markup."""

KINDS = {
    "place": "Write one paragraph describing {s}. Reply with the paragraph only.",
    "recipe": "Write a short recipe for {s}: the ingredients, then how to make it. Reply with the "
              "recipe only.",
    "story": "Write the opening paragraph of a short story about {s}. Reply with the story only.",
    "letter": "Write a short friendly letter to a friend about {s}. Reply with the letter only.",
    "news": "Write a short news report about {s}. Reply with the report only.",
    "product": "Write a short product description for {s}. Reply with the description only.",
    "postcard": "Write a holiday postcard from {s}. Reply with the postcard text only.",
    "diary": "Write a diary entry about {s}. Reply with the entry only.",
}
"""Everyday writing tasks (no questions to solve, no instructions to reason)."""

SUBJECTS = {
    "place": ["a quiet harbour town in autumn", "a busy fruit market in the morning",
              "an old public library", "a mountain lake at sunrise", "a small bakery on a corner",
              "a city park after rain", "a train station at night", "a lavender field in summer",
              "a seaside promenade in winter", "a farmhouse kitchen", "a botanical garden greenhouse",
              "a snowy village square", "a riverside campsite", "a crowded street festival",
              "a lighthouse on a cliff", "an empty beach at dawn", "a village church and its yard",
              "a flower shop", "a forest path in spring", "a rooftop garden in a big city",
              "a small island harbour", "a museum hall of old ships", "a vineyard at harvest time",
              "a wooden cabin in the woods", "a desert town at noon", "a canal in an old city",
              "a school playground at lunchtime", "a country road lined with poplars",
              "a tea house in the hills", "a fishing pier in the evening", "a covered bazaar",
              "a meadow full of wildflowers"],
    "recipe": ["a tomato soup", "banana bread", "a simple green salad", "pancakes", "lemonade",
               "a vegetable stir-fry", "apple crumble", "a cheese omelette", "roast potatoes",
               "a chocolate cake", "a lentil stew", "garlic bread", "a fruit smoothie",
               "mushroom risotto", "oatmeal cookies", "a chicken sandwich", "a bean chili",
               "a berry jam", "a carrot cake", "a mint tea", "a potato salad", "fried rice",
               "a pumpkin pie", "a pasta bake", "hot chocolate", "a cucumber soup",
               "a rice pudding", "spinach pie", "a peach cobbler", "scones", "a corn chowder",
               "a summer fruit tart"],
    "story": ["a lighthouse keeper and a lost cat", "a girl who finds an old map in the attic",
              "a baker who opens a shop in a new town", "two friends on a rowing trip",
              "a boy who builds a kite", "a fox living near a farm", "a sailor coming home",
              "a grandmother's garden", "a musician playing in the street", "a dog waiting at a gate",
              "a family moving to the seaside", "a postman on his last day",
              "a painter in a small village", "a snowy night in a mountain hut",
              "a girl learning to ride a bicycle", "a market stall owner", "an old clock shop",
              "a letter that arrives years late", "a summer at a grandparents' farm",
              "a fisherman and a storm", "a train journey through the countryside",
              "a lost umbrella", "a new neighbour with a piano", "a school trip to the zoo",
              "a shepherd on a hillside", "a tailor and a wedding dress", "a river boat captain",
              "a birthday picnic", "a bookshop cat", "a night at the fair",
              "a gardener and a rare rose", "a bus driver in a small town"],
    "letter": ["your new apartment", "a recent hiking trip", "your garden this spring",
               "a concert you went to", "your new puppy", "a visit to your grandparents",
               "a cooking class", "your summer holiday plans", "a new job", "a wedding you attended",
               "a trip to the seaside", "the first snow of the year", "a book club meeting",
               "a family reunion", "moving to a new city", "a camping weekend",
               "a local food festival", "your painting hobby", "a bicycle tour",
               "your vegetable harvest", "a day at the museum", "a birthday party",
               "learning to knit", "a boat trip", "a new café in town", "a school reunion",
               "a visit to a castle", "your cat's antics", "a rainy weekend at home",
               "a flower show", "a picnic in the park", "a trip to the mountains"],
    "news": ["a town opening a new public library", "a village flower festival",
             "a bakery winning a regional prize", "a new cycle path along the river",
             "a school choir performing at the town hall", "a museum exhibition of old toys",
             "the first farmers' market of the season", "a local football team's victory",
             "a restored steam train running again", "a community garden opening",
             "a marathon through the city centre", "a heavy snowfall closing roads",
             "a new ferry service to the islands", "a summer concert series in the park",
             "a zoo welcoming a baby giraffe", "a historic bridge reopening after repairs",
             "a town celebrating its 500th anniversary", "a charity bake sale",
             "a new art gallery in the old mill", "a beach clean-up by volunteers",
             "a lighthouse becoming a museum", "a record apple harvest",
             "a street parade for the new year", "a new playground in the square",
             "a film festival in a small town", "a kite festival on the coast",
             "a village hall renovation", "a jazz night at the harbour",
             "a new bus route to the hospital", "a children's book fair",
             "a rescued sea turtle being released", "a sunflower maze opening"],
    "product": ["a wooden garden bench", "a stainless steel water bottle", "a wool winter scarf",
                "a ceramic teapot", "a hiking backpack", "a desk lamp", "a linen tablecloth",
                "a pair of running shoes", "a picnic basket", "a cast iron frying pan",
                "a child's wooden train set", "a rain jacket", "a scented candle",
                "a leather notebook", "a folding bicycle", "a bird feeder", "a cotton bedsheet set",
                "a kitchen knife", "a travel mug", "a straw sun hat", "a set of paintbrushes",
                "a wicker laundry basket", "a camping tent", "a glass vase", "a wall clock",
                "a pair of gardening gloves", "a reading chair", "a soft toy bear",
                "a bamboo cutting board", "a beach towel", "an umbrella", "a flower pot"],
    "postcard": ["a beach town in Portugal", "the Scottish Highlands", "a Greek island",
                 "Kyoto in spring", "a ski resort in the Alps", "Paris in autumn",
                 "a lake in Canada", "a market town in Provence", "the coast of Norway",
                 "a village in Tuscany", "a national park in the United States",
                 "a rainforest lodge in Costa Rica", "Vienna at Christmas", "a farm in New Zealand",
                 "an old town in Croatia", "the Irish countryside", "a harbour in Maine",
                 "a desert camp in Morocco", "the lakes of northern Italy", "a seaside town in Wales",
                 "a mountain village in Nepal", "Amsterdam's canals", "a beach in Thailand",
                 "Lisbon's old quarter", "the fjords of Iceland", "a Danish island",
                 "a vineyard in Chile", "a castle in Germany", "a cottage in Cornwall",
                 "Barcelona in summer", "a small town in Sweden", "the Cape coast"],
    "diary": ["a lazy Sunday morning", "the first day at a new school", "a walk in the rain",
              "baking bread for the first time", "a visit to the dentist",
              "a picnic with friends", "a long train ride", "planting tomatoes",
              "a day at the beach", "a snow day", "cleaning out the garage", "a trip to the zoo",
              "a family dinner", "a visit to the market", "a quiet evening reading",
              "a thunderstorm at night", "painting the kitchen", "a swimming lesson",
              "a day at the fair", "a long bicycle ride", "meeting an old friend",
              "a rainy afternoon at a café", "the first warm day of spring",
              "a morning at the farmers' market", "a concert in the park", "a walk with the dog",
              "a visit to an aquarium", "a day of gardening", "moving house",
              "a birthday dinner", "a day in the mountains", "a night of stargazing"],
}
"""32 subjects per kind: 8 x 32 = 256 prompts."""


def prompts() -> list[dict]:
    """Every (kind, subject) prompt, kinds interleaved so that any prefix mixes all kinds."""
    out = []
    for i in range(max(len(v) for v in SUBJECTS.values())):
        for kind, template in KINDS.items():
            if i < len(SUBJECTS[kind]):
                subject = SUBJECTS[kind][i]
                out.append({"id": f"{kind}-{i:02d}", "kind": kind, "subject": subject,
                            "prompt": template.format(s=subject)})
    return out


def plain_text(completion: str) -> str:
    """The completion without control-token markup (``<|im_end|>``, ``<|endoftext|>``) and outer
    whitespace (the generation path already trims the stop token)."""
    return CONTROL.sub("", completion).strip()


def existing_records(out: str) -> dict[str, dict]:
    """The records already in ``out`` by id (a run that stopped early keeps them; the next run
    generates only the prompts they lack)."""
    path = Path(out)
    if not path.is_file():
        return {}
    return {r["id"]: r for r in map(json.loads, path.read_text(encoding="utf-8").splitlines())}


def write_records(items: list[dict], traces: list, settings: dict, out: str) -> int:
    """``out`` (atomically): the records already there and one per new trace, in prompt order;
    returns how many."""
    from thinksae.atomic import write_bytes

    have = existing_records(out)
    by_id = {t.id: t for t in traces}
    rows = []
    for p in items:
        t = by_id.get(p["id"])
        if t is None:
            if p["id"] in have:
                rows.append(have[p["id"]])
            continue
        rows.append({"id": p["id"], "text": plain_text(t.completion), "prompt": p["prompt"],
                     "kind": p["kind"], "subject": p["subject"],
                     "settings": {**settings, "new_tokens": t.meta.get("num_new_tokens"),
                                  "finished": t.meta.get("finished")}})
    write_bytes(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode())
    return len(rows)


def main() -> None:
    from thinksae.corpus.generate import generate_traces
    from thinksae.corpus.traces import read_traces
    from thinksae.generation import GenerationConfig
    from thinksae.models import cpu_has_fast_bf16, load_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "src" / "thinksae"
                                         / "data" / "plain_prose.jsonl"))
    ap.add_argument("--model", default="offline")
    ap.add_argument("--max_new_tokens", type=int, default=64)
    ap.add_argument("--batch_size", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--convert_only", action="store_true",
                    help="write --out from the traces generated so far (no model), e.g. after a "
                         "time limit stopped the generation")
    args = ap.parse_args()

    items = prompts()[: args.limit]
    dtype = "bfloat16" if cpu_has_fast_bf16() else "float32"
    settings = {"model": args.model, "engine": "hf", "dtype": dtype, "do_sample": False,
                "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size,
                "system_prompt": None, "think_prefill": False,
                "chat_template": "the model's own (its default system line)"}
    traces_path = Path(args.out + ".traces.jsonl")
    if args.convert_only:
        n = write_records(items, read_traces(traces_path), settings, args.out)
        print(json.dumps({"out": args.out, "texts": n, "of": len(items)}))
        return
    t0 = time.time()
    model, tok = load_model(args.model, device="cpu", dtype=dtype, progress=False)
    loaded = time.time() - t0
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, do_sample=False, seed=0)
    t1 = time.time()
    have = existing_records(args.out)
    todo = [{"id": p["id"], "question": p["prompt"]} for p in items if p["id"] not in have]
    traces = generate_traces(model, tok, todo, traces_path, gen, batch_size=args.batch_size)
    generated = time.time() - t1
    n = write_records(items, traces, settings, args.out)
    traces_path.unlink(missing_ok=True)
    print(json.dumps({"out": args.out, "texts": n, "load_s": round(loaded, 1),
                      "generate_s": round(generated, 1), "dtype": dtype,
                      "cpu": platform.processor() or platform.machine()}))


if __name__ == "__main__":
    main()
