"""The recorded answers in ``benchmarks/icpl_answers`` replay.

``benchmarks/icpl_bench.py --cache-dir benchmarks/icpl_answers/<set>`` reruns the ICPL loops of
RESULTS.md with the recorded answers instead of asking anybody. That only works while (1) every
record sits under the key the client computes for it and (2) the round-0 prompt pbrl-icpl asks
today is the prompt that was answered: rounds after 0 depend on training results, round 0 only
on the code. A change to the prompt templates or the env context breaks (2); this test then
says so, rather than a rerun silently waiting on the relay for answers nobody will write.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from pbrl.icpl.context import env_context
from pbrl.icpl.llm import ChatClient, cache_key
from pbrl.icpl.prompting import extract_code, initial_messages, render

ROOT = Path(__file__).resolve().parents[2] / "benchmarks" / "icpl_answers"
SETS = sorted(p for p in ROOT.iterdir() if p.is_dir()) if ROOT.exists() else []


def _records(dataset: Path) -> list[tuple[Path, dict]]:
    return [(p, json.loads(p.read_text())) for p in sorted(dataset.glob("s*/*/*.json"))]


def _meta(dataset: Path) -> dict:
    meta = dataset / "set.json"
    assert meta.exists(), f"{dataset} has no set.json (env, task, model, how it was answered)"
    return json.loads(meta.read_text())


@pytest.mark.parametrize("dataset", SETS, ids=[p.name for p in SETS])
def test_every_record_sits_under_its_key(dataset: Path) -> None:
    records = _records(dataset)
    assert records, f"{dataset} holds no recorded answers"
    meta = _meta(dataset)
    for path, rec in records:
        key = cache_key(rec["model"], rec["messages"], rec["params"], rec["sample"])
        assert key == path.stem, f"{path}: the record's key is {key}; it would never be found"
        assert path.parent.name == key[:2], f"{path} is not in the folder of its key"
        model = meta["model"]
        assert rec["model"] == model, f"{path}: model {rec['model']!r}, set.json says {model!r}"
        assert rec["answer"].strip(), f"{path}: empty answer"


@pytest.mark.parametrize("dataset", SETS, ids=[p.name for p in SETS])
def test_round0_prompt_is_todays(dataset: Path) -> None:
    meta = _meta(dataset)
    with initialize_config_module(version_base=None, config_module="pbrl.configs.icpl"):
        cfg = compose(config_name="icpl", overrides=[f"env={meta['env']}", "llm=manual"])
    llm = cfg.llm
    client = ChatClient(
        "http://127.0.0.1:1/v1",  # never contacted: only the request params are read
        str(llm.model),
        api_key_env=None,
        temperature=llm.temperature,
        max_tokens=llm.max_tokens,
        extra_body=dict(llm.extra_body),
    )
    params = client.request_params()
    today = initial_messages(env_context(meta["env"]).render(), meta["task"])
    summary_system = render("summary_system")  # the history-summary calls also have two
    round0 = [
        (p, r)
        for p, r in _records(dataset)
        if len(r["messages"]) == 2 and r["messages"][0]["content"] != summary_system
    ]
    assert round0, f"{dataset}: no round-0 records (two messages, system and user)"
    for path, rec in round0:
        assert rec["messages"] == today, (
            f"pbrl-icpl's round-0 prompt for {meta['env']} is no longer the one recorded in "
            f"{path}: the recorded answers of {dataset.name} will not replay (the loop would wait "
            "on the relay). Keep the prompt, or re-record the set and say so in RESULTS.md"
        )
        assert rec["params"] == params, f"{path}: params {rec['params']}, the config gives {params}"
        assert extract_code(rec["answer"]), f"{path}: no code block in the answer"
