"""Prompts (package-data templates), code extraction from answers, training-trace summaries.

Templates live in ``pbrl/icpl/prompts/*.txt`` and use ``$name`` placeholders
(:class:`string.Template`), so code with braces needs no escaping. ICPL keeps only
``[system, first user, latest user]``: memory lives in the history summaries, not in a growing
chat (:func:`feedback_messages`).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from string import Template

import numpy as np

from pbrl.icpl.sandbox import FUNCTION, ProgramError, check_source

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)


@cache
def template(name: str) -> Template:
    """The template ``prompts/<name>.txt``."""
    text = resources.files("pbrl.icpl").joinpath("prompts", f"{name}.txt").read_text()
    return Template(text)


def render(name: str, **values: str) -> str:
    """Fill template ``name``; a missing placeholder is a KeyError naming it."""
    return template(name).substitute(**values).strip() + "\n"


def system_message() -> str:
    """The system prompt: role, function signature, output rules."""
    return render("system", signature=render("signature"), output_rules=render("output_rules"))


def initial_messages(env_context: str, task: str) -> list[dict[str, str]]:
    """``[system, user]`` of the first round."""
    return [
        {"role": "system", "content": system_message()},
        {"role": "user", "content": render("initial_user", env_context=env_context, task=task)},
    ]


@dataclass(frozen=True)
class Feedback:
    """What the next prompt says about the last round.

    Attributes:
        best_code: source of the program whose behaviour was ranked best.
        best_trace: its training statistics (:func:`format_trace`).
        worst_code: source of the program ranked worst.
        worst_trace: its training statistics.
        summaries: one line per earlier round (history).
        failures: why programs of the last round could not be used.
    """

    best_code: str
    best_trace: str
    worst_code: str
    worst_trace: str
    summaries: Sequence[str] = ()
    failures: Sequence[str] = ()


def feedback_messages(first: Sequence[Mapping[str, str]], fb: Feedback) -> list[dict[str, str]]:
    """``[system, first user, assistant placeholder-free latest user]`` for the next round."""
    history = ""
    if fb.summaries:
        lines = "\n".join(f"- Round {i + 1}: {s}" for i, s in enumerate(fb.summaries))
        history = render("history", summaries=lines) + "\n"
    failures = ""
    if fb.failures:
        failures = "\n" + render("failures", reasons="\n".join(f"- {r}" for r in fb.failures))
    user = render(
        "feedback_user",
        history=history,
        best_code=fb.best_code.strip(),
        best_trace=fb.best_trace.strip(),
        worst_code=fb.worst_code.strip(),
        worst_trace=fb.worst_trace.strip(),
        failures=failures,
        tips=render("tips").strip(),
        output_rules=render("output_rules").strip(),
    )
    return [dict(first[0]), dict(first[1]), {"role": "user", "content": user}]


def summary_messages(task: str, previous_code: str, new_code: str) -> list[dict[str, str]]:
    """The extra call that describes how the new best differs from the previous best.

    Only the difference, as ICPL's ``difference.txt``: no verdict on which is better. The
    teachers rank within a round only, and a verdict from the task score would hand the proxy
    arm ground truth that the human and random-label arms do not get.
    """
    return [
        {"role": "system", "content": render("summary_system")},
        {
            "role": "user",
            "content": render(
                "summary_user",
                task=task,
                previous_code=previous_code.strip(),
                new_code=new_code.strip(),
            ),
        },
    ]


def clip_text(text: str, limit: int) -> str:
    """``text`` on one line, at most ``limit`` characters, never cut inside a word.

    Cut after the last whole sentence that fits; with none in the second half, after the last
    whole word, then an ellipsis.
    """
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    head = flat[: limit + 1]  # a sentence may end at character ``limit`` (then a space)
    end = max(head.rfind(". "), head.rfind("! "), head.rfind("? "))
    if end >= limit // 2:
        return flat[: end + 1]
    space = head.rfind(" ", 0, limit - 1)
    return (flat[:space] if space > 0 else flat[: limit - 1]) + "…"


# --- code extraction --------------------------------------------------------------------------
def extract_code(answer: str, function: str = FUNCTION) -> str:
    """The reward program in an LLM answer.

    Takes the last fenced code block (```python, ```py or bare ```) that defines ``function``;
    without fences, the longest run of lines from the first ``import``/``def`` that parses.
    The result passes the signature check (:func:`pbrl.icpl.sandbox.check_source` is run
    with the static rules too, so a forbidden program is reported here).

    Raises:
        ProgramError: reason ``syntax`` (no code found / does not parse), ``signature`` or
            ``forbidden``.
    """
    blocks = [
        body
        for lang, body in _FENCE.findall(answer)
        if lang.lower() in ("", "python", "py", "python3")
    ]
    defining = [b for b in blocks if re.search(rf"def\s+{function}\s*\(", b)]
    if defining:
        code = defining[-1]
    elif blocks:
        code = max(blocks, key=len)
    else:
        code = _unfenced(answer, function)
    code = code.strip("\n")
    check_source(code, function)
    return code + "\n"


def _unfenced(answer: str, function: str) -> str:
    lines = answer.splitlines()
    starts = [i for i, ln in enumerate(lines) if re.match(r"(import |from \S+ import |def )", ln)]
    if not starts or f"def {function}" not in answer:
        raise ProgramError("syntax", f"the answer holds no code block defining {function}")
    for end in range(len(lines), starts[0], -1):
        chunk = "\n".join(lines[starts[0] : end])
        try:
            ast.parse(chunk)
        except SyntaxError:
            continue
        if f"def {function}" in chunk:
            return chunk
    raise ProgramError("syntax", f"no part of the answer defining {function} parses as Python")


# --- traces -----------------------------------------------------------------------------------
def format_trace(trace: Mapping[str, Sequence[float]], points: int = 10) -> str:
    """ICPL's reward-trace feedback: per series ``points`` evenly spaced values + max/mean/min.

    ``trace`` maps a series name (a reward component, ``total``, ``episode_length``) to its
    values over training (one per PPO rollout).
    """
    lines = []
    for name, values in trace.items():
        v = np.asarray(values, dtype=np.float64)
        v = v[np.isfinite(v)]
        if v.size == 0:
            lines.append(f"{name}: no data")
            continue
        idx = np.unique(np.linspace(0, v.size - 1, min(points, v.size)).round().astype(int))
        pts = ", ".join(f"{x:.3g}" for x in v[idx])
        lines.append(f"{name}: [{pts}], max {v.max():.3g}, mean {v.mean():.3g}, min {v.min():.3g}")
    return "\n".join(lines)
