"""ICPL: an LLM writes reward programs, a teacher ranks the behaviours, the LLM revises.

One run (Yu et al. 2024, "Few-shot In-Context Preference Learning with LLMs"), per round:

1. **Sample** K programs from the LLM (K separate requests, answers cached on disk); extract
   the code, check it statically and on a probe batch of real transitions in the sandbox;
   sample more (up to ``max_samples``) while fewer than K pass.
2. **Train** one PPO policy per program on the program's reward (in parallel processes
   when ``train.parallel > 1``), recording the program's components per rollout, the episode
   lengths and, for the proxy teacher and the evaluator only, the true return.
3. **Rank** the behaviours: ``proxy`` by task score (true return of the final policy, or the
   best over training: ``proxy_score``), ``human`` by a person ranking K clips on the web
   page, ``random`` (the control of the issue: random best/worst).
4. **Feed back** the best and worst programs with their component traces and a history of
   one-line summaries (an extra LLM call per round) into the next prompt; the chat is
   ``[system, first user, latest user]``.

Everything a round produces is written under ``run_dir/rounds/`` as it happens; a rerun with
the same run directory resumes: finished rounds are read back, finished candidates are not
retrained, and LLM answers come from the cache.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch.utils.tensorboard import SummaryWriter

from pbrl.data import QueryBatch, SegmentBatch
from pbrl.icpl.context import env_context
from pbrl.icpl.llm import ChatClient, LocalServer, make_client
from pbrl.icpl.prompting import (
    Feedback,
    clip_text,
    extract_code,
    feedback_messages,
    format_trace,
    initial_messages,
    summary_messages,
)
from pbrl.icpl.relay import RelayServer
from pbrl.icpl.sandbox import ProgramError, RewardSandbox, SandboxLimits, SandboxPolicy
from pbrl.icpl.train import TrainSpec, random_transitions, train_candidate

TEACHERS = ("proxy", "human", "random")
RETRY_MARK = "\nYour last programs could not be used:\n"
"""Appended to the latest prompt when no program of a round trained (then asked again)."""
PROXY_SCORES = ("final", "max")


SUMMARY_CHARS = 600  # a history line's length at most (the prompt asks for three sentences)


class ICPLError(RuntimeError):
    """The run cannot go on; the message says why."""


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def _write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(_json_safe(obj), indent=1))
    tmp.replace(path)


class ICPLLoop:
    """One ICPL run in ``run_dir`` (see the module docstring).

    Args:
        cfg: the composed config (``pbrl/configs/icpl/icpl.yaml``).
        run_dir: TensorBoard events, rounds, LLM cache, feedback store.
        client: a ready chat client (tests); default: built from ``cfg.llm``.
    """

    def __init__(self, cfg: DictConfig, run_dir: str | Path, client: ChatClient | None = None):
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.seed = int(cfg.seed)
        self.rng = np.random.default_rng(self.seed)
        self.teacher_name = str(cfg.teacher.name)
        if self.teacher_name not in TEACHERS:
            raise ICPLError(f"unknown teacher {self.teacher_name!r}; valid: {', '.join(TEACHERS)}")
        if cfg.proxy_score not in PROXY_SCORES:
            raise ICPLError(f"proxy_score must be one of {PROXY_SCORES}, got {cfg.proxy_score!r}")
        score_seeds = cfg.get("score_seeds", 1)
        if not isinstance(score_seeds, int) or isinstance(score_seeds, bool) or score_seeds < 1:
            raise ICPLError(
                f"score_seeds must be a whole number >= 1 (trainings per program; 1 is the "
                f"paper's single training), got {score_seeds!r}"
            )
        self.score_seeds = score_seeds
        try:
            parse_parallel(cfg.train.parallel)  # fail before paying for any LLM call
        except ValueError as err:
            raise ICPLError(str(err)) from err
        self.env_name = str(cfg.env.name)
        kwargs = cfg.env.get("kwargs")  # an empty DictConfig is falsy: not `or {}`
        self.env_kwargs = dict(OmegaConf.to_container(kwargs, resolve=True) if kwargs else {})  # type: ignore[arg-type]
        self.context = env_context(self.env_name, self.env_kwargs)
        self.task = str(cfg.task)
        self.server: LocalServer | RelayServer | None = None
        if client is None:
            llm_cfg = OmegaConf.to_container(cfg.llm, resolve=True)
            assert isinstance(llm_cfg, dict)
            cache = llm_cfg.pop("cache_dir", None) or self.run_dir / "llm_cache"
            if llm_cfg.get("name") == "local" and not llm_cfg.get("log_path"):
                llm_cfg["log_path"] = str(self.run_dir / "llm_server.log")
            if llm_cfg.get("name") == "manual" and not llm_cfg.get("relay_dir"):
                llm_cfg["relay_dir"] = str(self.run_dir / "relay")
            client, self.server = make_client(llm_cfg, cache, seed=self.seed)
        self.client = client
        s = cfg.sandbox
        self.limits = SandboxLimits(
            cpu_seconds=int(s.cpu_seconds),
            memory_mb=int(s.memory_mb),
            call_timeout=float(s.call_timeout),
            start_timeout=float(s.start_timeout),
        )
        self.policy = SandboxPolicy(require_layers=bool(s.require_layers))
        self.writer = SummaryWriter(str(self.run_dir))
        self.teacher: Any = None
        self.store: Any = None
        self._probe = random_transitions(
            self.env_name, self.env_kwargs, int(cfg.probe_steps), self.seed + 777
        )
        OmegaConf.save(cfg, self.run_dir / "config.yaml", resolve=True)

    # --- the loop -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """All rounds; returns the summary also written to ``summary.json``."""
        first = initial_messages(self.context.render(), self.task)
        messages = first
        summaries: list[str] = []
        best_so_far = -math.inf
        prev_best: dict[str, Any] | None = None
        record: list[dict[str, Any]] = []
        for r in range(int(self.cfg.rounds)):
            rdir = self.run_dir / "rounds" / f"r{r}"
            (rdir / "messages.json").parent.mkdir(parents=True, exist_ok=True)
            _write_json(rdir / "messages.json", messages)
            done = rdir / "round.json"
            before, fresh = dict(self.client.stats), not done.exists()
            if not fresh:  # resumed: this round is finished
                rnd = json.loads(done.read_text())
                print(f"[icpl] round {r}: read back from {done}", flush=True)
            else:
                rnd = self._round(r, messages, rdir)
                _write_json(done, rnd)
            # History: how this round's best differs from the previous best. Only the next
            # round's prompt reads it, so the last round asks for none; a run resumed with more
            # rounds asks for it then.
            changed = False
            if rnd["best"] is not None and "summary" not in rnd and r + 1 < int(self.cfg.rounds):
                if prev_best is not None and self.cfg.history_summary:
                    rnd["summary"] = self._summarise(prev_best, rnd)
                else:
                    rnd["summary"] = self._first_summary(rnd)
                changed = True
            # The LLM calls this round cost (samples, retries, the summary), kept in its record so
            # that a run resumed over several processes still counts them all (a round recorded
            # before rounds kept this has none, and the run's total is then this process's).
            spent = {k: v - before.get(k, 0) for k, v in self.client.stats.items()}
            if fresh or ("llm" in rnd and any(spent.values())):
                old = rnd.get("llm", {})
                rnd["llm"] = {k: old.get(k, 0) + spent.get(k, 0) for k in {*old, *spent}}
                changed = True
            if changed:
                _write_json(done, rnd)
            record.append(rnd)
            best_so_far = max(best_so_far, rnd.get("best_score_true") or -math.inf)
            self._log_round(r, rnd, best_so_far)
            if rnd["best"] is not None:
                summaries.append(str(rnd.get("summary", "")))
                prev_best = rnd["candidates"][rnd["best"]]
                worst = rnd["candidates"][rnd["worst"]]
                fb = Feedback(
                    best_code=prev_best["source"],
                    best_trace=format_trace(prev_best["trace"]),
                    worst_code=worst["source"],
                    worst_trace=format_trace(worst["trace"]),
                    summaries=summaries,
                    failures=self._failure_lines(rnd),
                )
                messages = feedback_messages(first, fb)
            else:  # nothing trained: repeat from the current messages (ICPL), with the reasons
                fails = "\n".join(f"- {x}" for x in self._failure_lines(rnd))
                last = messages[-1]["content"].split(RETRY_MARK)[0]  # one list, the latest
                messages = [
                    *messages[:-1],
                    {"role": "user", "content": f"{last}{RETRY_MARK}{fails}\n"},
                ]
        summary = self._summary(record)
        if int(self.cfg.get("final_eval_seeds", 0)) > 0 and summary["best_program"] is not None:
            summary["final_eval"] = self._final_eval(summary["best_program"])
        _write_json(self.run_dir / "summary.json", summary)
        self.writer.flush()
        return summary

    # --- one round ------------------------------------------------------------------------
    def _round(self, r: int, messages: list[dict[str, str]], rdir: Path) -> dict[str, Any]:
        k = int(self.cfg.K)
        t0 = time.time()
        # 1. sample, extract, check statically and on the probe batch
        candidates: list[dict[str, Any]] = []
        runnable = 0
        while runnable < k and len(candidates) < int(self.cfg.max_samples):
            want = min(k - runnable, int(self.cfg.max_samples) - len(candidates))
            answers = self.client.chat(messages, k=want, first_sample=len(candidates), tag=f"r{r}")
            for ans in answers:
                cand = self._check(ans.text)
                cand["answer_key"] = ans.key
                candidates.append(cand)
                runnable += cand["status"] == "runnable"
        print(
            f"[icpl] round {r}: {runnable}/{len(candidates)} sampled programs passed the checks",
            flush=True,
        )
        # 2. train a policy per runnable program
        jobs = [j for j, c in enumerate(candidates) if c["status"] == "runnable"][:k]
        results = self._train_scored(r, [candidates[j] for j in jobs], rdir)
        for j, res in zip(jobs, results, strict=True):
            candidates[j].update(res)
        trained = [j for j in jobs if candidates[j]["status"] == "trained"]
        # 3. rank
        ranking = self._rank(r, candidates, trained, rdir, jobs)
        best = ranking[0] if ranking else None
        worst = ranking[-1] if ranking else None
        score_key = f"task_score_{self.cfg.proxy_score}"
        return {
            "round": r,
            "candidates": candidates,
            "trained": trained,
            "ranking": ranking,
            "best": best,
            "worst": worst,
            "best_score_true": None if best is None else candidates[best][score_key],
            "teacher": self.teacher_name,
            "seconds": time.time() - t0,
        }

    def _check(self, answer: str) -> dict[str, Any]:
        """Extract and check one answer's program (static rules, then the probe batch)."""
        try:
            code = extract_code(answer)
        except ProgramError as err:
            return {
                "status": "rejected",
                "reason": err.reason,
                "error": err.message,
                "source": answer[:2000],
            }
        obs, act, nxt = self._probe
        try:
            with RewardSandbox(code, limits=self.limits, policy=self.policy) as sb:
                out = sb.probe(obs[:64], act[:64], nxt[:64])
        except ProgramError as err:
            return {
                "status": "rejected",
                "reason": err.reason,
                "error": err.message,
                "source": code,
            }
        return {"status": "runnable", "source": code, "components": list(out.components)}

    def _spec(self, source: str, seed: int) -> TrainSpec:
        t = self.cfg.train
        ppo = dict(OmegaConf.to_container(t.ppo, resolve=True) or {})  # type: ignore[arg-type]
        return TrainSpec(
            source=source,
            env_name=self.env_name,
            env_kwargs=self.env_kwargs,
            seed=seed,
            total_steps=int(t.total_steps),
            n_envs=int(t.n_envs),
            ppo=ppo,
            net_arch=list(t.net_arch),
            normalize_reward=bool(t.normalize_reward),
            eval_episodes=int(t.eval_episodes),
            clip_steps=int(self.cfg.clip_steps),
            limits=asdict(self.limits),
            policy=asdict(self.policy),
        )

    def _train(
        self,
        r: int | str,
        cands: Sequence[dict[str, Any]],
        rdir: Path,
        seeds: Sequence[int],
        stems: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Train (or read back) every candidate, candidate ``j`` with ``seeds[j]``.

        Results go to ``<stem>.json`` and clips to ``<stem>.npz`` (default stem ``c<j>``).
        ``r``: the round, or a label such as ``"final"`` (only printed).
        """
        if stems is None:
            stems = [f"c{j}" for j in range(len(cands))]
        out: list[dict[str, Any] | None] = [None] * len(cands)
        todo: list[int] = []
        for j, _ in enumerate(cands):
            f = rdir / f"{stems[j]}.json"
            if f.exists():
                out[j] = json.loads(f.read_text())
            else:
                todo.append(j)
        specs = {j: self._spec(cands[j]["source"], seeds[j]) for j in todo}

        def finish(j: int, res: dict[str, Any]) -> None:
            clip = res.pop("clip", None)
            if clip is not None:
                np.savez(rdir / f"{stems[j]}.npz", **clip)
            _write_json(rdir / f"{stems[j]}.json", res)
            out[j] = res
            score = res.get("task_score_final")
            print(
                f"[icpl] round {r} candidate {stems[j]}: {res['status']}"
                + (
                    f" ({res.get('reason')}: {res.get('error', '')[:120]})"
                    if res["status"] != "trained"
                    else f", task score {score:.2f}"
                )
                + f", {res.get('seconds', 0):.0f}s",
                flush=True,
            )

        parallel = parse_parallel(self.cfg.train.parallel)
        if parallel == "ray" and todo:
            for j, res in zip(
                todo,
                ray_map(train_candidate, [specs[j] for j in todo], self.cfg.train.get("ray")),
                strict=True,
            ):
                finish(j, res)
        elif parallel <= 1 or len(todo) <= 1:
            for j in todo:
                finish(j, train_candidate(specs[j]))
        else:
            with ProcessPoolExecutor(
                min(parallel, len(todo)), mp_context=get_context("spawn")
            ) as pool:
                futures = {j: pool.submit(train_candidate, specs[j]) for j in todo}
                for j, fut in futures.items():
                    finish(j, fut.result())
        return [o for o in out if o is not None]

    def _train_scored(
        self, r: int, cands: Sequence[dict[str, Any]], rdir: Path
    ) -> list[dict[str, Any]]:
        """Train each of a round's programs ``score_seeds`` times; one merged result each.

        Training ``p``'s first run is the paper's single training (seed ``seed * 1000 + r * 100
        + p``, files ``c<p>.*``: its clip is the one a person ranks and its trace the one the
        LLM reads); runs ``i >= 1`` add ``i * 1_000_000`` to the seed and write ``c<p>.s<i>.*``.
        All runs go to the pool at once. See :func:`merge_runs` for the merged result.
        """
        n = self.score_seeds
        m = len(cands)
        base = [self.seed * 1000 + r * 100 + p for p in range(m)]
        res = self._train(
            r,
            [c for _ in range(n) for c in cands],
            rdir,
            seeds=[b + i * 1_000_000 for i in range(n) for b in base],
            stems=[f"c{p}" if i == 0 else f"c{p}.s{i}" for i in range(n) for p in range(m)],
        )
        return [merge_runs([res[i * m + p] for i in range(n)]) for p in range(m)]

    # --- ranking --------------------------------------------------------------------------
    def _rank(
        self,
        r: int,
        cands: list[dict[str, Any]],
        trained: list[int],
        rdir: Path,
        jobs: list[int],
    ) -> list[int]:
        """Candidate indices, best first (only trained candidates take part)."""
        if not trained:
            return []
        if len(trained) == 1:
            return list(trained)
        if self.teacher_name == "random":
            return [trained[i] for i in self.rng.permutation(len(trained))]
        if self.teacher_name == "proxy":
            key = f"task_score_{self.cfg.proxy_score}"
            return sorted(trained, key=lambda j: -float(cands[j][key]))
        return self._rank_human(r, trained, rdir, jobs)

    def _rank_human(self, r: int, trained: list[int], rdir: Path, jobs: list[int]) -> list[int]:
        """Put one ranking query of the trained candidates' clips on the labelling page.

        ``jobs``: the candidate index of each training, in order; training ``p`` wrote its clip
        to ``c<p>.npz`` (``p`` counts runnable candidates, not all sampled answers).
        """
        from pbrl.store import FeedbackStore
        from pbrl.teachers import make_teacher

        clips = [dict(np.load(rdir / f"c{jobs.index(j)}.npz")) for j in trained]
        h = min(len(c["obs"]) for c in clips)
        members = [
            SegmentBatch(
                obs=c["obs"][None, :h],
                actions=c["actions"][None, :h],
                true_reward=c["true_reward"][None, :h],
                sim_state=c["sim_state"][None, :h],
                env_name=self.env_name,
            )
            for c in clips
        ]
        query = QueryBatch.from_members(members, kind="ranking", selector=f"icpl-round{r}")
        if self.teacher is None:
            t = OmegaConf.to_container(self.cfg.teacher, resolve=True)
            assert isinstance(t, dict)
            t.pop("name")
            self.store = FeedbackStore(self.run_dir / "feedback.sqlite")
            self.teacher = make_teacher(
                "human",
                store=self.run_dir / "feedback.sqlite",
                state_dir=self.run_dir / "human",
                env_name=self.env_name,
                env_kwargs=self.env_kwargs,
                seed=self.seed,
                question="Rank the clips from best to worst for the task: " + self.task,
                **t,
            )
            print(self.teacher.banner(), flush=True)
        self.store.add_queries(query, step=r)
        answers = [fb for fb in self.teacher.label(query) if fb.ranking is not None]
        if not answers:
            raise ICPLError(
                f"round {r}: nobody ranked the clips (teacher.timeout passed); rerun the same "
                f"run directory to ask again (trainings are kept): {self.run_dir}"
            )
        return [trained[i] for i in answers[0].ranking]  # type: ignore[union-attr]

    # --- history ------------------------------------------------------------------------
    def _summarise(self, prev_best: dict[str, Any], rnd: dict[str, Any]) -> str:
        new = rnd["candidates"][rnd["best"]]
        msgs = summary_messages(self.task, prev_best["source"], new["source"])
        try:
            text = self.client.chat(msgs, k=1, temperature=0.0, tag=f"r{rnd['round']}-summary")[
                0
            ].text
        except Exception as err:  # noqa: BLE001  (a summary is optional)
            return f"(no summary: {err})"
        return clip_text(text, SUMMARY_CHARS)

    def _first_summary(self, rnd: dict[str, Any]) -> str:
        best = rnd["candidates"][rnd["best"]]
        return f"the best program used components {', '.join(best.get('components', [])) or 'none'}"

    @staticmethod
    def _failure_lines(rnd: dict[str, Any]) -> list[str]:
        out = []
        for j, c in enumerate(rnd["candidates"]):
            if c["status"] in ("rejected", "failed"):
                out.append(f"program {j}: {c['reason']}: {str(c.get('error', ''))[:200]}")
        return out

    # --- logging --------------------------------------------------------------------------
    def _log_round(self, r: int, rnd: dict[str, Any], best_so_far: float) -> None:
        w = self.writer
        cands = rnd["candidates"]
        key = f"task_score_{self.cfg.proxy_score}"
        scores = [c[key] for c in cands if c["status"] == "trained"]
        w.add_scalar("icpl/samples", len(cands), r)
        w.add_scalar(
            "icpl/compiled_fraction",
            sum(c["status"] != "rejected" for c in cands) / max(1, len(cands)),
            r,
        )
        w.add_scalar("icpl/trained", len(scores), r)
        for j, c in enumerate(cands):
            if c["status"] == "trained":
                w.add_scalar(f"icpl/task_score/candidate_{j}", c[key], r)
        if scores:
            w.add_scalar("icpl/task_score_max", max(scores), r)
            w.add_scalar("icpl/task_score_mean", float(np.mean(scores)), r)
        if rnd["best_score_true"] is not None:
            w.add_scalar("icpl/task_score_of_ranked_best", rnd["best_score_true"], r)
        if math.isfinite(best_so_far):
            w.add_scalar("icpl/best_so_far", best_so_far, r)
        table = "| # | status | reason / task score |\n|---|---|---|\n" + "\n".join(
            f"| {j} | {c['status']} | "
            + (
                f"{c[key]:.2f}"
                if c["status"] == "trained"
                else f"{c.get('reason')}: {str(c.get('error', ''))[:80]}"
            )
            for j, c in enumerate(cands)
        )
        w.add_text("icpl/candidates", table, r)
        if rnd["best"] is not None:
            w.add_text("icpl/best_program", "```python\n" + cands[rnd["best"]]["source"] + "```", r)
        for k, v in self.client.stats.items():
            w.add_scalar(f"icpl/llm_{k}", v, r)
        w.flush()

    def _summary(self, record: list[dict[str, Any]]) -> dict[str, Any]:
        key = f"task_score_{self.cfg.proxy_score}"
        whole_run = bool(record) and all("llm" in rnd for rnd in record)
        per_round = []
        best_src, best_score, so_far = None, -math.inf, -math.inf
        for rnd in record:
            scores = [c[key] for c in rnd["candidates"] if c["status"] == "trained"]
            top = max(scores) if scores else None
            if top is not None and top > best_score:
                best_score = top
                best_src = next(
                    c["source"]
                    for c in rnd["candidates"]
                    if c["status"] == "trained" and c[key] == top
                )
            so_far = max(so_far, top if top is not None else -math.inf)
            per_round.append(
                {
                    "round": rnd["round"],
                    "samples": len(rnd["candidates"]),
                    "trained": len(scores),
                    "task_score_max": top,
                    "ranked_best_score": rnd["best_score_true"],
                    "best_so_far": so_far if math.isfinite(so_far) else None,
                }
            )
        return {
            "env": self.env_name,
            "task": self.task,
            "teacher": self.teacher_name,
            "proxy_score": self.cfg.proxy_score,
            "rounds": per_round,
            "best_task_score": best_score if math.isfinite(best_score) else None,
            "best_program": best_src,
            # every round's LLM calls, over all the processes the run took, where each round
            # kept them; else (rounds recorded by older pbrl) this process's only
            "llm": (
                {k: sum(rnd["llm"].get(k, 0) for rnd in record) for k in self.client.stats}
                if whole_run
                else dict(self.client.stats)
            ),
            "llm_scope": "run" if whole_run else "process",
        }

    def _final_eval(self, source: str) -> dict[str, Any]:
        """Retrain the best program with seeds ``0 .. final_eval_seeds - 1`` (ICPL's num_eval).

        The best-so-far score is the largest of up to K x rounds single noisy trainings, biased
        upwards (and rising with more samples even without feedback); the retrained mean is an
        unbiased score of the program it picked. Trainings are kept in ``final/`` (a rerun
        reads them back). ``rollout_reward_correlation``: per training, Pearson's r over its
        rollouts between the program's mean reward per step and the mean true episode return.
        """
        n = int(self.cfg.final_eval_seeds)
        fdir = self.run_dir / "final"
        fdir.mkdir(parents=True, exist_ok=True)
        res = self._train("final", [{"source": source}] * n, fdir, seeds=list(range(n)))
        key = f"task_score_{self.cfg.proxy_score}"
        scores = [float(x[key]) for x in res if x["status"] == "trained"]
        corr = []
        for x in res:
            if x["status"] != "trained":
                continue
            a = np.asarray(x["trace"].get("total", []), np.float64)
            b = np.asarray(x["train_true_returns"], np.float64)
            ok = np.isfinite(a) & np.isfinite(b) if len(a) == len(b) else np.zeros(0, bool)
            if ok.sum() > 2 and a[ok].std() > 0 and b[ok].std() > 0:
                corr.append(float(np.corrcoef(a[ok], b[ok])[0, 1]))
        out = {
            "seeds": list(range(n)),
            "trained": len(scores),
            "task_scores": scores,
            "task_score_mean": float(np.mean(scores)) if scores else None,
            "task_score_std": float(np.std(scores)) if scores else None,
            "rollout_reward_correlation": corr,
            "failures": [x.get("reason") for x in res if x["status"] != "trained"],
        }
        if scores:
            self.writer.add_scalar("icpl/final_task_score_mean", out["task_score_mean"], 0)
            self.writer.add_scalar("icpl/final_task_score_std", out["task_score_std"], 0)
        print(
            f"[icpl] best program retrained with {n} seeds: task score "
            + (f"{out['task_score_mean']:.2f} ± {out['task_score_std']:.2f}" if scores else "n/a"),
            flush=True,
        )
        return out

    def close(self) -> None:
        """Close the writer, the labelling server and the local model server."""
        self.writer.close()
        if self.teacher is not None:
            self.teacher.close()
        if self.store is not None:
            self.store.close()
        if self.server is not None:
            self.server.stop()


def merge_runs(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One program's result from its ``score_seeds`` trainings (one training: unchanged).

    The first run's record (trace, clip, per-rollout returns) with ``task_score_final`` and
    ``task_score_max`` replaced by their means over the runs, which the proxy ranks by and
    best-so-far counts; ``run_scores`` keeps each run's. A program that fails in any run is
    failed, with that run's reason (a reward that raises or hangs on some states is broken).
    """
    if len(runs) == 1:
        return runs[0]
    for i, x in enumerate(runs):
        if x["status"] != "trained":
            return {**x, "error": f"training {i + 1} of {len(runs)}: {x.get('error', '')}"}
    out = dict(runs[0])
    out["run_scores"] = {
        k: [float(x[k]) for x in runs] for k in ("task_score_final", "task_score_max")
    }
    for k, v in out["run_scores"].items():
        out[k] = float(np.mean(v))
    out["seconds"] = float(sum(x.get("seconds", 0.0) for x in runs))
    return out


def parse_parallel(value: Any) -> int | str:
    """``train.parallel``: a number of processes (``1``: in this process) or ``"ray"``."""
    if isinstance(value, str) and value.strip().lower() == "ray":
        return "ray"
    try:
        n = int(value)
    except (TypeError, ValueError):
        n = 0
    if n < 1:
        raise ValueError(
            f"train.parallel must be a number of processes >= 1 or 'ray', got {value!r}"
        )
    return n


def ray_map(
    fn: Callable[[Any], Any], items: list[Any], ray_cfg: Mapping[str, Any] | None = None
) -> list[Any]:
    """``[fn(x) for x in items]`` as Ray tasks (one per item), results in order.

    ``ray_cfg``: ``address`` (a running cluster, ``"auto"`` finds one; ``None`` starts a local
    instance, or joins the one this process already started), ``num_cpus`` per task (default 1)
    and ``num_gpus`` per task (default 0). Ray is the ``ray`` extra.
    """
    try:
        import ray
    except ImportError as err:
        raise ImportError(
            "train.parallel=ray needs ray, which is not installed; install it with "
            "`pip install 'pbrl[ray]'` or use a number of processes (train.parallel=2)"
        ) from err
    cfg = dict(ray_cfg or {})
    if not ray.is_initialized():
        ray.init(
            address=cfg.get("address"),
            include_dashboard=False,
            log_to_driver=False,
            ignore_reinit_error=True,
        )
    task = ray.remote(
        num_cpus=float(cfg.get("num_cpus", 1)), num_gpus=float(cfg.get("num_gpus", 0))
    )(fn)
    return list(ray.get([task.remote(x) for x in items]))


def run(cfg: DictConfig, run_dir: str | Path, client: ChatClient | None = None) -> dict[str, Any]:
    """Run (or resume) the ICPL loop ``cfg`` in ``run_dir``."""
    loop = ICPLLoop(cfg, run_dir, client=client)
    try:
        return loop.run()
    finally:
        loop.close()


def main_print(summary: dict[str, Any], out: Callable[[str], None] = print) -> None:
    """One line per round (the CLI's closing report)."""
    for r in summary["rounds"]:
        out(
            f"[icpl] round {r['round']}: {r['trained']}/{r['samples']} trained, "
            f"best task score {r['task_score_max']}, best so far {r['best_so_far']}"
        )
    print(f"[icpl] best task score {summary['best_task_score']}", file=sys.stderr)
