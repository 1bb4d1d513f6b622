"""Which recipe's checkpoint becomes a dataset's champion, and publishing it whole or not at all.

A candidate is one recipe's latest report: {recipe, method, metrics, forgetting, trainable_params,
train_seconds, gates: [{name, passed, summary}], checkpoint, ...}. Only recipes whose gates all
passed may win; among them the best metric wins, and recipes within `tolerance` of it are tied
and ordered by `tie_break`.
"""

from __future__ import annotations

import json
import shutil
from datetime import datetime, timezone
from pathlib import Path

from ft_assets.lib.config import LOWER_IS_BETTER, TASK_METRICS, ChampionConfig
from ft_assets.lib.models.model_card import CARD_FILE
from ft_assets.lib.storage import atomic_directory

CHAMPION_FILE = "champion.json"
HISTORY_FILE = "history.jsonl"


def choose_champion(candidates: list[dict], rule: ChampionConfig, task: str) -> dict:
    """The decision: {"winner": recipe or None, "metric", "why", "ranking": [{recipe, value, eligible, why}]}.

    `ranking` lists every candidate, eligible ones first in the order of the rule, each with the
    reason it did not win (a failed gate names itself and its numbers).
    """
    metric = rule.metric or TASK_METRICS[task][0]
    lower = metric in LOWER_IS_BETTER
    eligible = [c for c in candidates if not _failed_gates(c)]
    ranked = []
    if eligible:
        best = (min if lower else max)(c["metrics"][metric] for c in eligible)
        tied = [c for c in eligible if abs(c["metrics"][metric] - best) <= rule.tolerance]
        rest = [c for c in eligible if c not in tied]
        ranked = sorted(tied, key=lambda c: (*(_tie_value(c, key) for key in rule.tie_break),
                                             _signed(c["metrics"][metric], lower), c["recipe"]))
        ranked += sorted(rest, key=lambda c: (_signed(c["metrics"][metric], lower), c["recipe"]))
    winner = ranked[0] if ranked else None
    ranking = []
    for c in ranked:
        ranking.append({"recipe": c["recipe"], metric: c["metrics"][metric], "eligible": True,
                        "why": "champion" if c is winner else _lost_because(c, winner, metric, rule)})
    for c in candidates:
        if c not in eligible:
            ranking.append({"recipe": c["recipe"], metric: c["metrics"].get(metric), "eligible": False,
                            "why": "failed " + "; ".join(f"{g['name']}: {g['summary']}" for g in _failed_gates(c))})
    if winner is None:
        why = (f"no recipe passed its gates ({len(candidates)} candidate(s))" if candidates
               else "no recipe on this dataset has a report yet")
    else:
        runners = [r for r in ranking if r["recipe"] != winner["recipe"]]
        why = (f"{winner['recipe']} has the best {metric} ({winner['metrics'][metric]:.4f}) of "
               f"{len(eligible)} recipe(s) whose gates all passed")
        tied_with = [c["recipe"] for c in ranked[1:] if abs(c["metrics"][metric] - winner["metrics"][metric])
                     <= rule.tolerance]
        if tied_with:
            why += (f"; tied within {rule.tolerance:g} with {', '.join(tied_with)} and ahead on "
                    f"{' then '.join(rule.tie_break)}")
        if not runners:
            why += "; it was the only candidate"
    return {"winner": winner, "metric": metric, "why": why, "rule": rule.model_dump(), "ranking": ranking}


def _failed_gates(candidate: dict) -> list[dict]:
    return [g for g in candidate["gates"] if not g["passed"]]


def _signed(value: float, lower_is_better: bool) -> float:
    return value if lower_is_better else -value


def _tie_value(candidate: dict, key: str) -> float:
    value = candidate.get(key)
    return float("inf") if value is None else value


def _lost_because(candidate: dict, winner: dict, metric: str, rule: ChampionConfig) -> str:
    gap = abs(candidate["metrics"][metric] - winner["metrics"][metric])
    if gap > rule.tolerance:
        return f"{metric} {candidate['metrics'][metric]:.4f}, {gap:.4f} behind {winner['recipe']}"
    for key in rule.tie_break:
        if _tie_value(candidate, key) != _tie_value(winner, key):
            return (f"tied on {metric} within {rule.tolerance:g}; {key} {_describe(candidate.get(key))} vs "
                    f"{winner['recipe']}'s {_describe(winner.get(key))}")
    return f"tied with {winner['recipe']} on {metric} and every tie-break; the order falls to the name"


def _describe(value) -> str:
    if value is None:
        return "not measured"
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}"


def current_champion(champion_dir: Path) -> dict | None:
    """The published champion.json, or None when nothing was published yet."""
    path = champion_dir / CHAMPION_FILE
    return json.loads(path.read_text()) if path.exists() else None


def publish_champion(checkpoint_dir: Path, champion_dir: Path, record: dict) -> None:
    """Replaces `champion_dir` with a copy of the checkpoint (weights, merged/ export, tokenizer,
    manifest, model card) plus champion.json, in one rename: readers see the old champion or the
    new one, never a mix. Appends the record to history.jsonl beside it."""
    with atomic_directory(champion_dir, replace=True) as staging:
        shutil.copytree(checkpoint_dir, staging, dirs_exist_ok=True)
        (staging / CHAMPION_FILE).write_text(json.dumps(record, indent=2) + "\n")
        card = staging / CARD_FILE
        if card.exists():
            card.write_text(card.read_text().rstrip("\n") + "\n\n" + _card_section(record))
    with open(champion_dir.parent / HISTORY_FILE, "a") as history:
        history.write(json.dumps({k: record[k] for k in ("promoted_at", "recipe", "checkpoint", "why")}) + "\n")


def champion_record(decision: dict, dataset: str, run_id: str) -> dict:
    """What champion.json says: the winner, where it came from, and the whole ranking."""
    winner = decision["winner"]
    return {
        "dataset": dataset,
        "recipe": winner["recipe"],
        "method": winner["method"],
        "checkpoint": winner["checkpoint"],
        "checkpoint_version": Path(winner["checkpoint"]).name,
        "checkpoint_run_id": winner["checkpoint_run_id"],
        "report_run_id": winner["report_run_id"],
        "metric": decision["metric"],
        "value": winner["metrics"][decision["metric"]],
        "forgetting": winner.get("forgetting"),
        "gates": winner["gates"],
        "why": decision["why"],
        "rule": decision["rule"],
        "ranking": decision["ranking"],
        "promoted_by_run_id": run_id,
        "promoted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _card_section(record: dict) -> str:
    return (f"## Champion of `{record['dataset']}`\n\nPromoted {record['promoted_at']}: {record['why']}.\n\n"
            + ranking_markdown(record) + "\n")


def ranking_markdown(decision: dict) -> str:
    """Every candidate with its metric, whether its gates passed, and why it won or did not (a
    decision from choose_champion, or a champion record)."""
    lines = [f"| recipe | {decision['metric']} | eligible | why |", "| --- | ---: | --- | --- |"]
    for r in decision["ranking"]:
        value = r[decision["metric"]]
        lines.append(f"| {r['recipe']} | {'—' if value is None else format(value, '.4f')} | "
                     f"{'yes' if r['eligible'] else 'no'} | {r['why']} |")
    return "\n".join(lines)
