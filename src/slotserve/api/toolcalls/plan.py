"""One request's tool calling: its format, the constraint its calls are generated under, and its answer read
back as content and calls (whole, or as deltas while it streams).

- required / a named function: the answer is the calls, by a grammar over the tools' schemas;
- auto: free text, until the format's opening appears; from there on the grammar holds (a lazy grammar,
  llama.cpp's grammar_lazy with the format's trigger). The generic format is JSON throughout: a call or
  {"response": ...};
- none: no grammar and no calls read back.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from ...constraint import ConstraintError, ConstraintSpec, from_lark
from ..errors import invalid
from .definitions import Choice, ToolRequest
from .formats import CallFormat, GenericFormat
from .parse import Parsed, parse


@dataclass
class OutCall:
    id: str
    name: str
    arguments: str

    def openai(self) -> dict:
        return {"type": "function", "function": {"name": self.name, "arguments": self.arguments}, "id": self.id}


@dataclass
class Answered:
    content: str | None  # None when the answer is only calls
    calls: list[OutCall]


@dataclass(frozen=True)
class ToolCalls:
    fmt: CallFormat
    req: ToolRequest

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.req.callable())

    def constraint(self) -> ConstraintSpec | None:
        if not self.req.calls:
            return None
        lazy = self.req.choice == Choice.AUTO and not isinstance(self.fmt, GenericFormat)
        try:
            return from_lark(self.fmt.grammar(self.req), "tools", lazy=lazy,
                             triggers=(self.fmt.trigger(),) if lazy else ())
        except ConstraintError as exc:
            raise invalid(str(exc)) from None

    def read(self, text: str, *, final: bool) -> Parsed:
        if not self.req.calls:
            return Parsed(text)
        return parse(self.fmt, text, self.names, final=final, parallel=self.req.parallel)

    def answer(self, text: str) -> Answered:
        """The finished answer: content and the complete calls (one cut short by n_predict is dropped)."""
        got = self.read(text, final=True)
        calls = [OutCall(self.fmt.new_id(), c.name, c.arguments) for c in got.calls if c.done]
        if not calls:
            return Answered(got.content, [])
        return Answered(got.content.strip() or None, calls)

    def stream(self) -> CallStream:
        return CallStream(self)


@dataclass
class Delta:
    """One step of a streamed answer: text (`content`), or a call's start (`id`, `name`) or arguments piece."""
    content: str = ""
    index: int = -1  # the call's; -1 for content
    id: str | None = None
    name: str | None = None
    arguments: str = ""


@dataclass
class CallStream:
    """The answer's text so far -> what is new in it since the last look, as deltas."""
    plan: ToolCalls
    text: str = ""
    n_content: int = 0  # content characters sent
    sent_args: list[int] = field(default_factory=list)  # per call started: argument characters sent
    ids: list[str] = field(default_factory=list)
    n_done: int = 0  # calls complete so far


    def push(self, piece: str, *, final: bool = False) -> list[Delta]:
        self.text += piece
        got = self.plan.read(self.text, final=final)
        out, self.n_done = [], sum(c.done for c in got.calls)
        if len(got.content) > self.n_content:
            out.append(Delta(content=got.content[self.n_content:]))
            self.n_content = len(got.content)
        for i, call in enumerate(got.calls):
            if i == len(self.sent_args):
                self.ids.append(self.plan.fmt.new_id())
                self.sent_args.append(0)
                out.append(Delta(index=i, id=self.ids[i], name=call.name))
            if len(call.arguments) > self.sent_args[i]:
                out.append(Delta(index=i, arguments=call.arguments[self.sent_args[i]:]))
                self.sent_args[i] = len(call.arguments)
        return out
