"""Terminal view of a monitored generation (rich): tokens coloured by the watched features'
values, and the alerts as they are raised; the status line and the alert table name the value
shown (top-k activation or relu(pre-activation))."""

from __future__ import annotations

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .events import VALUE_LABELS, AlertEvent, DoneEvent, Event, TokenEvent

SEVERITY_STYLE = {"info": "cyan", "warning": "bold yellow", "critical": "bold white on red"}


def _shade(level: float) -> str:
    """White text on a background from none (0) to strong orange (1)."""
    level = min(max(level, 0.0), 1.0)
    if level < 0.05:
        return ""
    r, g, b = 255, int(240 - 150 * level), int(200 - 200 * level)
    return f"black on rgb({r},{g},{b})"


class View:
    """Accumulates events and renders them."""

    def __init__(self, features: list[int], max_alerts: int = 12, value: str = "topk"):
        self.features, self.value = features, value
        self.tokens: list[TokenEvent] = []
        self.alerts: list[AlertEvent] = []
        self.done: DoneEvent | None = None
        self.peak = dict.fromkeys(features, 0.0)
        self.max_alerts = max_alerts

    def add(self, event: Event) -> None:
        if isinstance(event, TokenEvent):
            self.tokens.append(event)
            for f, v in event.acts.items():
                self.peak[f] = max(self.peak.get(f, 0.0), v)
        elif isinstance(event, AlertEvent):
            self.alerts.append(event)
        elif isinstance(event, DoneEvent):
            self.done = event

    def level(self, event: TokenEvent) -> float:
        """The token's strongest watched activation relative to that feature's peak so far."""
        return max((v / self.peak[f] for f, v in event.acts.items() if self.peak.get(f, 0) > 0),
                   default=0.0)

    def text(self) -> Text:
        out = Text()
        alerted = {a.step for a in self.alerts}
        for ev in self.tokens:
            style = _shade(self.level(ev))
            if ev.region == "special":
                style = (style + " dim").strip()
            if ev.step in alerted:
                style = (style + " underline").strip()
            out.append(ev.text, style=style or None)
        return out

    def alert_table(self) -> Table:
        table = Table(title=f"alerts ({len(self.alerts)}) · values: "
                            f"{VALUE_LABELS.get(self.value, self.value)}", expand=True,
                      title_justify="left")
        for col in ("step", "rule", "severity", "region", "token", "values", "action"):
            table.add_column(col, overflow="fold")
        for a in self.alerts[-self.max_alerts:]:
            values = ", ".join(f"{f}={v:.3g}" for f, v in a.values.items())
            table.add_row(str(a.step), a.rule, Text(a.severity, SEVERITY_STYLE.get(a.severity, "")),
                          a.region, repr(a.token), values, a.action)
        return table

    def status(self) -> Text:
        feats = ", ".join(map(str, self.features[:16])) + (" …" if len(self.features) > 16 else "")
        line = (f"watching [{feats}] · {VALUE_LABELS.get(self.value, self.value)} · "
                f"{len(self.tokens)} tokens")
        if self.done is not None:
            line += f" · done: {self.done.reason}"
            if self.done.rule:
                line += f" (rule {self.done.rule})"
            line += f" in {self.done.seconds:.1f}s"
        return Text(line, style="bold")

    def render(self) -> Group:
        return Group(self.text(), Text(""), self.alert_table(), self.status())


def run_terminal(monitor, prompt: str, console: Console | None = None, live: bool = True,
                 **watch_kwargs) -> list[Event]:
    """Generate from ``prompt`` showing the live view; returns all events."""
    console = console or Console()
    view = View(monitor.features, value=watch_kwargs.get("value") or monitor.value)
    events: list[Event] = []
    if live and console.is_terminal:
        with Live(view.render(), console=console, refresh_per_second=8) as screen:
            for event in monitor.watch(prompt, **watch_kwargs):
                events.append(event)
                view.add(event)
                screen.update(view.render())
    else:
        for event in monitor.watch(prompt, **watch_kwargs):
            events.append(event)
            view.add(event)
        console.print(view.render())
    if monitor.log is not None and view.alerts:
        console.print(f"alerts appended to {monitor.log.path}")
    return events
