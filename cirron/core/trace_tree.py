"""The text tree of ``ci.trace()`` and ``cirron traces view``.

Each line is a span: ``name[index]``, its duration, its point marks summarised (its own and its
descendants': ``loss: last 0.231 (mean 0.40, n=32)``) and its summary marks (``val_acc=0.91``).
A long run of same-name siblings (batches) shows its first 3 and last 2 members plus one line
with the count, mean and p95 of the whole run, and those members show their leaf children
inline, so a 10-epoch by 500-batch session stays about a screenful.
"""

from __future__ import annotations

import math
from typing import Any

from cirron.core.trace import Record, TraceData, sessions
from cirron.core.trace_render import (
    HEAD,
    INLINE_MAX,
    TAIL,
    Node,
    fmt_duration,
    fmt_value,
    is_session,
    mark_value,
    session_label,
)

__all__ = ["tree_text"]

_RESET = "\x1b[0m"
_STYLE = {
    "name": "\x1b[1m",
    "dur": "\x1b[36m",
    "mark": "\x1b[33m",
    "dim": "\x1b[2m",
    "ok": "\x1b[32m",
    "bad": "\x1b[31m",
    "warn": "\x1b[33m",
    "run": "\x1b[34m",
}
_STATUS_STYLE = {"finished": "ok", "running": "run", "crashed": "bad", "interrupted": "bad"}
_ERROR_KEYS = ("exception", "exception_type", "error")

Agg = dict[str, list[Any]]  # mark name -> [n, finite sum, finite n, last ts, last value]


class _Painter:
    def __init__(self, color: bool) -> None:
        self.color = color

    def __call__(self, text: str, style: str) -> str:
        return f"{_STYLE[style]}{text}{_RESET}" if self.color and text else text


def tree_text(
    data: TraceData,
    trees: list[tuple[str, list[Node]]],
    *,
    color: bool = False,
    min_wall_ns: int | None = None,
) -> str:
    """The text of ``trees`` (per session, the root nodes to draw)."""
    if not trees:
        return "no spans recorded yet"
    ctx = _Ctx(data, _Painter(color), min_wall_ns)
    blocks = []
    for sid, roots in trees:
        lines: list[str] = []
        if len(roots) == 1 and roots[0].id == sid:
            ctx.draw(roots[0], "", "", lines, inline=False)
        else:
            lines.append(ctx.session_header(sid))
            if not roots:
                lines.append(ctx.paint("└── (no spans match)", "dim"))
            ctx.draw_children(roots, 0, "", lines)
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


class _Ctx:
    def __init__(self, data: TraceData, paint: _Painter, min_wall_ns: int | None) -> None:
        self.data = data
        self.paint = paint
        self.min_wall_ns = min_wall_ns
        self._agg: dict[str, Agg] = {}
        self._status = {i.id: i for i in sessions(data)}

    # -- lines ---------------------------------------------------------------------------------

    def draw(self, node: Node, first: str, rest: str, out: list[str], *, inline: bool) -> None:
        kids = node.children
        leafy = inline and kids and len(kids) <= INLINE_MAX and not node.hidden_short
        if leafy and all(not k.children and not k.hidden_deep for k in kids):
            out.append(first + self.line(node) + self._inline(kids))
            return
        out.append(first + self.line(node))
        self.draw_children(kids, node.hidden_short, rest, out)

    def draw_children(self, kids: list[Node], hidden: int, prefix: str, out: list[str]) -> None:
        entries = self._entries(kids, hidden)
        for i, (node, text, inline) in enumerate(entries):
            last = i == len(entries) - 1
            first = prefix + ("└── " if last else "├── ")
            rest = prefix + ("    " if last else "│   ")
            if node is None:
                out.append(first + self.paint(text, "dim"))
            else:
                self.draw(node, first, rest, out, inline=inline)

    def _entries(self, kids: list[Node], hidden: int) -> list[tuple[Node | None, str, bool]]:
        entries: list[tuple[Node | None, str, bool]] = []
        i = 0
        while i < len(kids):
            j = i
            while j < len(kids) and kids[j].span["name"] == kids[i].span["name"]:
                j += 1
            group = kids[i:j]
            if len(group) > HEAD + TAIL + 2:
                entries += [(n, "", True) for n in group[:HEAD]]
                entries.append((None, self._collapsed(group, len(group) - HEAD - TAIL), False))
                entries += [(n, "", True) for n in group[-TAIL:]]
            else:
                entries += [(n, "", False) for n in group]
            i = j
        if hidden:
            limit = fmt_duration(self.min_wall_ns or 0)
            entries.append(
                (None, f"… {hidden} span{'s' * (hidden != 1)} under {limit} hidden", False)
            )
        return entries

    def _collapsed(self, group: list[Node], hidden: int) -> str:
        durs = sorted(n.span["end_ns"] - n.span["start_ns"] for n in group)
        mean = sum(durs) / len(durs)
        p95 = durs[min(len(durs) - 1, math.ceil(0.95 * len(durs)) - 1)]
        name = group[0].span["name"]
        return (
            f"… {hidden} more {name} spans ({len(group)} in all: "
            f"mean {fmt_duration(mean)}, p95 {fmt_duration(p95)})"
        )

    def _inline(self, kids: list[Node]) -> str:
        parts = [f"{self._label(k.span)} {self._dur(k)}" for k in kids]
        return "  " + self.paint("▸ " + " · ".join(parts), "dim")

    def line(self, node: Node) -> str:
        span = node.span
        bits = [self.paint(self._label(span), "name")]
        if is_session(span):
            bits.append(node.id[:8])
            label = session_label(self.data, node.id)
            if label:
                bits.append(label)
        bits.append(self.paint(self._dur(node), "dur"))
        bits += self._facts(node)
        marks = self._marks(node.id)
        if marks:
            bits.append(self.paint(marks, "mark"))
        if node.hidden_deep:
            bits.append(self.paint(f"[+{node.hidden_deep} below]", "dim"))
        return "  ".join(bits)

    def session_header(self, sid: str) -> str:
        span = self.data.spans.get(sid)
        if span is None:
            info = self._status.get(sid)
            status = info.status if info else "unknown"
            return f"{self.paint('cirron.session', 'name')}  {sid[:8]}  {self._status_text(status)}"
        return self.line(Node(sid, span, 0))

    # -- pieces --------------------------------------------------------------------------------

    @staticmethod
    def _label(span: Record) -> str:
        index = span.get("index")
        return span["name"] if index is None else f"{span['name']}[{index}]"

    def _dur(self, node: Node) -> str:
        text = fmt_duration(node.span["end_ns"] - node.span["start_ns"])
        return (
            f"{text} (open)" if self.data.is_open(node.id) and not is_session(node.span) else text
        )

    def _facts(self, node: Node) -> list[str]:
        attrs = node.span.get("attrs", {})
        out = []
        if is_session(node.span):
            info = self._status.get(node.id)
            out.append(self._status_text(info.status if info else "unknown"))
            if info and info.rank is not None and (info.world_size or 1) > 1:
                out.append(f"rank {info.rank}/{info.world_size}")
        phase = attrs.get("phase")
        if phase and phase not in ("train", "training"):
            out.append(f"({phase})")
        for key in _ERROR_KEYS:
            if attrs.get(key):
                out.append(self.paint(f"✗ {attrs[key]}", "bad"))
                break
        return out

    def _status_text(self, status: str) -> str:
        return self.paint(status, _STATUS_STYLE.get(status, "warn"))

    def _marks(self, sid: str) -> str:
        parts = []
        for name, (n, total, finite, _ts, last) in self._rollup(sid).items():
            if n == 1:
                parts.append(f"{name}: {fmt_value(last)}")
            elif finite:
                parts.append(
                    f"{name}: last {fmt_value(last)} (mean {fmt_value(total / finite)}, n={n})"
                )
            else:
                parts.append(f"{name}: last {fmt_value(last)} (n={n})")
        for mark in self.data.marks_by_span.get(sid, ()):
            if mark.get("kind") == "summary":
                parts.append(f"{mark['name']}={fmt_value(mark_value(mark))}")
        return "  ".join(parts)

    def _rollup(self, root: str) -> Agg:
        """Point marks of ``root`` and all its descendants, by name (memoised, iterative)."""
        if root in self._agg:
            return self._agg[root]
        order, stack = [], [root]
        while stack:
            cur = stack.pop()
            if cur in self._agg:
                continue
            order.append(cur)
            stack.extend(self.data.children.get(cur, ()))
        for sid in reversed(order):
            agg: Agg = {}
            for mark in self.data.marks_by_span.get(sid, ()):
                if mark.get("kind", "point") == "point":
                    _add(
                        agg, mark["name"], [1, *_num(mark), mark.get("ts_ns", 0), mark_value(mark)]
                    )
            for kid in self.data.children.get(sid, ()):
                for name, item in self._agg.get(kid, {}).items():
                    _add(agg, name, item)
            self._agg[sid] = agg
        return self._agg[root]


def _num(mark: Record) -> tuple[float, int]:
    v = mark_value(mark)
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v), 1
    return 0.0, 0


def _add(agg: Agg, name: str, item: list[Any]) -> None:
    cur = agg.get(name)
    if cur is None:
        agg[name] = list(item)
        return
    cur[0] += item[0]
    cur[1] += item[1]
    cur[2] += item[2]
    if item[3] >= cur[3]:
        cur[3], cur[4] = item[3], item[4]
