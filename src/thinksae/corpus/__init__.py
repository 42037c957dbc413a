"""Corpus: reasoning traces (generate or import), region segmentation and behaviour tagging.

`thinksae corpus`: :mod:`.config` (its options), :mod:`.run` (its one entry, ``run(cfg)``);
domain modules: :mod:`.problems` (questions, answers, ids), :mod:`.traces` (the trace records,
import), :mod:`.generate` (generation, resumable), :mod:`.engines` (hf, llama.cpp, vLLM),
:mod:`.segment` (regions and behaviours per token).
"""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "CorpusConfig": "config", "config_path": "config",
    "build_corpus": "run:run",
    "ENGINES": "engines",
    "generate_traces": "generate",
    "Problem": "problems", "answers_match": "problems", "builtin_problems": "problems",
    "extract_numeric_answer": "problems", "load_prompts": "problems", "safe_arithmetic": "problems",
    "SAMPLE_SEP": "problems", "question_id": "problems", "question_of": "problems",
    "repeat_problems": "problems",
    "BEHAVIOUR_VOCAB": "segment", "Region": "segment", "TokenizedTrace": "segment",
    "behaviour_names": "segment", "control_token_ids": "segment", "find_behaviours": "segment",
    "tokenize_trace": "segment",
    "Trace": "traces", "append_trace": "traces", "append_traces": "traces",
    "iter_traces": "traces", "load_traces": "traces", "read_traces": "traces",
    "traces_from_records": "traces", "write_traces": "traces",
})
