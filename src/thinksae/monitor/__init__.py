"""Live monitoring: stream a model's generation with chosen SAE features per token, evaluate rules,
raise alerts (logged to JSONL) and act (stop, or switch on steering) before the answer is written.

Python API::

    mon = Monitor(model, tokenizer, sae, "layers.10", features=[12, 34], rules=load_rules(path))
    for event in mon.watch("What is 15% of 80?"):
        ...  # TokenEvent, AlertEvent, DoneEvent

Interfaces: `thinksae monitor --prompt …` (terminal view) and `thinksae monitor --serve` (web
app). `thinksae monitor`: :mod:`.config`, :mod:`.run`; see :mod:`.engine` for what the reported
values are, :mod:`.rules` for the rule format.
"""

from ..lazy import lazy_exports

__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "AlertLog": "alerts", "read_alerts": "alerts",
    "Monitor": "engine", "Plan": "engine", "WatchList": "engine", "check_value": "engine",
    "VALUE_LABELS": "events", "VALUES": "events", "AlertEvent": "events", "DoneEvent": "events",
    "Event": "events", "TokenEvent": "events",
    "Rule": "rules", "RuleEngine": "rules", "load_rules": "rules", "parse_rule": "rules",
    "parse_rules": "rules", "watched_features": "rules",
    "MonitorConfig": "config", "build_monitor": "run", "monitor": "run:run",
})
