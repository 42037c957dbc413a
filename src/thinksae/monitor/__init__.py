"""Live monitoring: stream a model's generation with chosen SAE features per token, evaluate rules,
raise alerts (logged to JSONL) and act (stop, or switch on steering) before the answer is written.

Python API::

    mon = Monitor(model, tokenizer, sae, "layers.10", features=[12, 34], rules=load_rules(path))
    for event in mon.watch("What is 15% of 80?"):
        ...  # TokenEvent, AlertEvent, DoneEvent

Interfaces: `thinksae monitor --prompt …` (terminal view) and `thinksae monitor --serve` (web
app). See :mod:`.engine` for what the reported values are, :mod:`.rules` for the rule format.
"""

from .alerts import AlertLog, read_alerts
from .engine import Monitor, Plan, WatchList, check_value
from .events import VALUE_LABELS, VALUES, AlertEvent, DoneEvent, Event, TokenEvent
from .rules import Rule, RuleEngine, load_rules, parse_rule, parse_rules, watched_features
from .run import MonitorConfig, build_monitor, monitor
from .tokens import RegionTracker

__all__ = [
    "AlertEvent", "AlertLog", "DoneEvent", "Event", "Monitor", "MonitorConfig", "Plan",
    "RegionTracker", "Rule", "RuleEngine", "TokenEvent", "VALUES", "VALUE_LABELS", "WatchList",
    "build_monitor", "check_value", "load_rules", "monitor", "parse_rule", "parse_rules",
    "read_alerts", "watched_features",
]
