"""`python -m specviz train-policy`: the drafter-choice policy from logged outcomes (specviz collect).

    reward[prompt, arm] = metrics.expected_speedup(the arm's decode counters, the cost curve pooled
                          over every forward of the collection): tau against this machine's forward
                          cost, load-independent; plain decoding is 1 by construction

One prompt in five (by a hash of the prompt, so a rerun splits alike) is held out. On it the card
reports the mean reward of: the REINFORCE policy, the supervised best-arm baseline, the best single
arm (chosen on the training part), plain decoding and the per-prompt oracle; per category; the
ablation of the features (states only, text statistics only, both); a learning curve (the
REINFORCE policy on a quarter, a half, all of the training part); and the shipped method gated by a
margin (policy.gate), the margin chosen by 5-fold cross-validation on the training part alone. The
chosen method's policy, refit on every prompt with its margin cross-validated on every prompt, ships
in assets/policy/ with its card.
"""
from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import fields
from pathlib import Path

import torch

from ..metrics import CostCurve, Metrics, expected_speedup
from .arms import POLICY_DIR
from .policy import (HIDDEN_DIMS, ArmPolicy, fit_best_arm, fit_encoder, fit_reinforce, fit_values, gate,
                     mean_reward, values_of)

HOLDOUT_EVERY = 5
# the margins cross-validation tries (expected speedup a pick must gain over the default; inf: never leave it)
MARGINS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.3, math.inf)
FOLDS = 5
METHODS = {"reinforce": fit_reinforce, "supervised": fit_best_arm}
# the ablation's feature sets: (principal components of the pooled prefill states, text statistics on)
FEATURES = {"both": (HIDDEN_DIMS, True), "states only": (HIDDEN_DIMS, False), "text only": (0, True)}


def metrics_of(summary: dict) -> Metrics:
    names = {f.name for f in fields(Metrics)}
    return Metrics(**{k: v for k, v in summary.items() if k in names})


def cost_curve(rows: list[dict]) -> CostCurve:
    curve = CostCurve()
    for row in rows:
        for outcome in row["arms"].values():
            for n, seconds in outcome["forwards"]:
                curve.add(n, seconds)
    return curve


def table(rows: list[dict], arms: list[str] | None = None):
    """(arms, kept rows, rewards [rows, arms], wall-clock speedups [rows, arms], curve). `arms`: the arms to
    score (a prompt logged without one of them is left out); default: the arms every prompt has."""
    if arms is None:
        arms = [a for a in rows[0]["arms"] if all(a in r["arms"] for r in rows)] if rows else []
    curve = cost_curve(rows)
    kept, rewards, walls = [], [], []
    for row in rows:
        ms = [row["arms"][a]["metrics"] if a in row["arms"] else None for a in arms]
        if any(m is None for m in ms):
            continue
        rs = [expected_speedup(metrics_of(m), curve) for m in ms]
        if any(r is None for r in rs):
            continue
        ar = ms[arms.index("none")]["tokens_per_s"]
        kept.append(row)
        rewards.append(rs)
        walls.append([m["tokens_per_s"] / ar if ar else 0.0 for m in ms])
    return arms, kept, torch.tensor(rewards), torch.tensor(walls), curve


def features(rows: list[dict]) -> tuple[torch.Tensor, torch.Tensor]:
    from ..collect import decode_states

    return torch.stack([decode_states(r["states"]) for r in rows]), torch.tensor([r["stats"] for r in rows])


def held_out(row: dict) -> bool:
    return int(row["key"], 16) % HOLDOUT_EVERY == 0


def fit(method: str, states, stats, rewards, seed: int, hidden_dims: int = HIDDEN_DIMS, use_text: bool = True,
        epochs: int | None = None):
    enc = fit_encoder(states, stats, hidden_dims, use_text)
    kw = {"epochs": epochs} if epochs else {}
    w, b = METHODS[method](enc(states, stats), rewards, seed=seed, **kw)
    return enc, w, b


def probs(enc, w, b, states, stats) -> torch.Tensor:
    return torch.softmax(enc(states, stats) @ w.T + b, -1)


def gated_picks(method: str, feature_set: str, seed: int, epochs, train_part: tuple, test_part: tuple,
                margins=MARGINS) -> dict[float, torch.Tensor]:
    """Fit on (states, stats, rewards) of the training part; each margin's picks on the test part's
    (states, stats). The default arm is the training part's best on average."""
    states, stats, rewards = train_part
    dims, use_text = FEATURES[feature_set]
    enc, w, b = fit(method, states, stats, rewards, seed, dims, use_text, epochs)
    values = values_of(fit_values(enc(states, stats), rewards), enc(*test_part))
    picks = probs(enc, w, b, *test_part).argmax(1)
    default = int(rewards.mean(0).argmax())
    return {m: gate(picks, values, default, m) for m in margins}


def cross_validated_margin(states, stats, rewards, method: str, feature_set: str, seed: int = 0,
                           epochs=None, folds: int = FOLDS) -> tuple[float, dict[float, float]]:
    """(the margin with the highest mean reward over `folds` folds, every margin's mean). Ties go to
    the larger margin: with no evidence either way, stay with the arm that is best on average."""
    n = len(rewards)
    fold = torch.arange(n) % folds
    total = dict.fromkeys(MARGINS, 0.0)
    for f in range(folds):
        te, tr = fold == f, fold != f
        if not te.any() or tr.sum() < 2:
            continue
        for m, pick in gated_picks(method, feature_set, seed, epochs, (states[tr], stats[tr], rewards[tr]),
                                   (states[te], stats[te])).items():
            total[m] += float(rewards[te].gather(1, pick[:, None]).sum())
    means = {m: round(v / n, 4) for m, v in total.items()}
    best = max(means.values())
    return max(m for m, v in means.items() if v >= best - 1e-9), means


def evaluate(rows: list[dict], seed: int = 0, epochs: int | None = None, arms: list[str] | None = None,
             method: str = "reinforce", feature_set: str = "both") -> dict:
    """Held-out mean rewards of the policies and the fixed choices (the card's figures)."""
    logged = len(rows)
    arms, rows, rewards, walls, curve = table(rows, arms)
    test = torch.tensor([held_out(r) for r in rows])
    train = ~test
    if train.sum() < 2 or test.sum() < 1:
        raise ValueError(f"{len(rows)} usable prompts: too few to train and hold out (collect more)")
    states, stats = features(rows)
    tr = lambda t: t[train]  # noqa: E731
    te = lambda t: t[test]  # noqa: E731
    best_single = int(tr(rewards).mean(0).argmax())
    out = {"arms": arms, "prompts": len(rows), "left_out": logged - len(rows), "train": int(train.sum()),
           "held_out": int(test.sum()),
           "curve": [[round(n, 2), round(s, 6), c] for n, s, c in curve.points()],
           "mean_reward_per_arm": {a: round(float(te(rewards)[:, i].mean()), 4) for i, a in enumerate(arms)},
           "mean_wall_speedup_per_arm": {a: round(float(te(walls)[:, i].mean()), 4) for i, a in enumerate(arms)},
           "best_single_arm": arms[best_single],
           "fixed": {"none (AR)": round(float(te(rewards)[:, arms.index("none")].mean()), 4), f"best single ({arms[best_single]})": round(float(te(rewards)[:, best_single].mean()), 4),
                     "oracle": round(float(te(rewards).max(1).values.mean()), 4)}}
    picks = {}
    for each in METHODS:
        for name, (dims, use_text) in FEATURES.items():
            enc, w, b = fit(each, tr(states), tr(stats), tr(rewards), seed, dims, use_text, epochs)
            p = probs(enc, w, b, te(states), te(stats))
            out.setdefault("ablation", {}).setdefault(each, {})[name] = round(mean_reward(p, te(rewards)), 4)
            if name == "both":
                picks[each] = p.argmax(1)
    cats = sorted({r["category"] for r in rows})
    cat_of = [r["category"] for r in rows]
    test_cats = [c for c, t in zip(cat_of, test.tolist()) if t]
    per_cat = {}
    for c in cats:
        idx = torch.tensor([tc == c for tc in test_cats])
        if not idx.any():
            continue
        r = te(rewards)[idx]
        per_cat[c] = {"prompts": int(idx.sum()), "oracle": round(float(r.max(1).values.mean()), 4),
                      "best single": round(float(r[:, best_single].mean()), 4),
                      **{m: round(float(r.gather(1, picks[m][idx][:, None]).mean()), 4) for m in METHODS}}
    out["per_category"] = per_cat
    n = int(train.sum())
    curve_points = {}
    for share in (0.25, 0.5, 1.0):
        k = max(2, int(n * share))
        enc, w, b = fit("reinforce", tr(states)[:k], tr(stats)[:k], tr(rewards)[:k], seed, epochs=epochs)
        curve_points[k] = round(mean_reward(probs(enc, w, b, te(states), te(stats)), te(rewards)), 4)
    out["learning_curve_reinforce"] = curve_points
    margin, cv = cross_validated_margin(tr(states), tr(stats), tr(rewards), method, feature_set, seed, epochs)
    pick = gated_picks(method, feature_set, seed, epochs, (tr(states), tr(stats), tr(rewards)),
                       (te(states), te(stats)), (margin,))[margin]
    out["margin"] = {"method": f"{method} ({feature_set})", "chosen": str(margin),
                     "cv_mean_reward": {str(m): v for m, v in cv.items()},
                     "held_out": round(float(te(rewards).gather(1, pick[:, None]).mean()), 4),
                     "left_default": int((pick != best_single).sum())}
    return out


def train_policy(rows: list[dict], method: str = "reinforce", seed: int = 0, epochs: int | None = None,
                 arms: list[str] | None = None, feature_set: str = "both",
                 margin: float | str | None = "cv") -> ArmPolicy:
    """The policy on every usable prompt, with what `auto` needs beside it (priors, drafting costs, curve,
    the default arm and its margin: "cv" cross-validates it on these prompts, None leaves no gate)."""
    arms, rows, rewards, _, curve = table(rows, arms)
    states, stats = features(rows)
    dims, use_text = FEATURES[feature_set]
    if margin == "cv":
        margin = cross_validated_margin(states, stats, rewards, method, feature_set, seed, epochs)[0]
    enc, w, b = fit(method, states, stats, rewards, seed, dims, use_text, epochs)
    one = curve.seconds(1) or 1.0
    cost = []
    for a in arms:
        drafted = sum(r["arms"][a]["metrics"]["drafted"] for r in rows)
        draft_s = sum(r["arms"][a]["metrics"]["draft_s"] for r in rows)
        cost.append(draft_s / drafted / one if drafted else 0.0)
    return ArmPolicy(arms, enc, w, b, method, [round(float(x), 4) for x in rewards.mean(0)],
                     [round(c, 5) for c in cost], [(round(n, 3), s) for n, s, _ in curve.points()],
                     value_weight=fit_values(enc(states, stats), rewards),
                     default_arm=arms[int(rewards.mean(0).argmax())], margin=margin)


def write_card(path: Path, report: dict, collected: dict, method: str, seconds: float) -> None:
    from ..atomic import atomic_write_text

    card = {"method": method, "trained_in_s": round(seconds, 1), "collection": collected, **report}
    atomic_write_text(path.with_suffix(".json"), json.dumps(card, indent=1))
    fixed = report["fixed"]
    left = f" ({report['left_out']} logged without every arm left out)" if report.get("left_out") else ""
    lines = [f"# Drafter-choice policy (`auto`) for {collected.get('target', '?')}", "",
             f"Trained with {method} on {report['train']} logged prompts, evaluated on {report['held_out']} held out "
             f"(one in {HOLDOUT_EVERY} by prompt hash), {time.strftime('%Y-%m-%d')}. Collection: "
             f"{collected.get('prompts', '?')} prompts in {collected.get('seconds', '?')} s on {collected.get('machine', '?')}, "
             f"{collected.get('max_new_tokens', '?')} new tokens, greedy{left}; arms skipped: "
             f"{'; '.join(collected.get('skipped', [])) or 'none'}."
             + (f" Instructions the arms' heads trained on were not logged (those of the first "
                f"{collected['left_out_v2_shards']} shards of data v2)." if collected.get("left_out_v2_shards") else ""),
             "", "Reward: the speedup expected from tau and this machine's cost curve (metrics.expected_speedup); "
             "held-out means:", "", "| choice | mean expected speedup |", "|---|---|"]
    lines += [f"| {k} | {v:.3f} |" for k, v in fixed.items()]
    for m, abl in report["ablation"].items():
        lines += [f"| {m} ({k}) | {v:.3f} |" for k, v in abl.items()]
    if report.get("margin"):
        g = report["margin"]
        lines += [f"| {g['method']}, kept to the best single arm unless its pick gains > {g['chosen']} expected "
                  f"(margin by {FOLDS}-fold cross-validation on the training part; left it on {g['left_default']} "
                  f"of {report['held_out']}) | {g['held_out']:.3f} |"]
        if "shipped" in g:
            lines += ["", f"The shipped policy's margin, cross-validated on every logged prompt: {g['shipped']} "
                          "(inf: it always keeps the best single arm)."]
    lines += ["", "Per arm (held out): " + ", ".join(f"{a} {v:.3f} (wall {report['mean_wall_speedup_per_arm'][a]:.2f})"
                                                      for a, v in report["mean_reward_per_arm"].items()), "",
              "Learning curve (REINFORCE, training prompts -> held-out mean): " +
              ", ".join(f"{k}: {v:.3f}" for k, v in report["learning_curve_reinforce"].items()), "",
              "| category | prompts | oracle | best single | reinforce | supervised |", "|---|---|---|---|---|---|"]
    lines += [f"| {c} | {v['prompts']} | {v['oracle']:.3f} | {v['best single']:.3f} | {v['reinforce']:.3f} | "
              f"{v['supervised']:.3f} |" for c, v in report["per_category"].items()]
    atomic_write_text(path.with_suffix(".md"), "\n".join(lines) + "\n")


def cmd_train_policy(a) -> int:
    from ..collect import default_dir, read_outcomes

    data = Path(a.data) if a.data else default_dir(a.target)
    rows = read_outcomes(data / "outcomes.jsonl")
    if not rows:
        raise ValueError(f"no logged outcomes in {data}; run `python -m specviz collect --target {a.target}` first")
    try:
        collected = json.loads((data / "card.json").read_text())
    except (OSError, ValueError):
        collected = {}
    # the arms of the last collection: prompts logged before an arm was added and not yet redone sit out
    arms = collected.get("arms") or None
    start = time.perf_counter()
    margin = {"cv": "cv", "none": None}.get(a.margin, None)
    if a.margin not in ("cv", "none"):
        try:
            margin = float(a.margin)
        except ValueError:
            raise ValueError(f"--margin {a.margin!r}: expected cv, none or a number (expected speedup)") from None
    report = evaluate(rows, a.seed, a.epochs or None, arms, a.method, a.features)
    if report["left_out"]:
        print(f"{report['left_out']} of {len(rows)} logged prompts lack one of the arms {', '.join(report['arms'])} "
              f"and were left out (run collect again to log them)", file=sys.stderr)
    policy = train_policy(rows, a.method, a.seed, a.epochs or None, arms, a.features, margin)
    policy.card = {"held_out": report["fixed"], "ablation": report["ablation"], "prompts": report["prompts"],
                   "features": a.features, "margin": report["margin"]}
    report["margin"]["shipped"] = str(policy.margin)  # cross-validated on every prompt, as the policy is fit
    out = Path(a.out) if a.out else POLICY_DIR / f"auto-{Path(a.target).name}.safetensors"
    policy.save(out)
    write_card(out, report, collected, f"{a.method} ({a.features})", time.perf_counter() - start)
    print(out.with_suffix(".md").read_text())
    print(f"policy written to {out}", file=sys.stderr)
    return 0


def add_parser(sub) -> None:
    t = sub.add_parser("train-policy", help="train the drafter-choice policy (auto) on outcomes from collect")
    t.add_argument("--target", default="smollm2-135m")
    t.add_argument("--data", help="the collect directory (default: <cache>/policy/<target>)")
    t.add_argument("--method", choices=sorted(METHODS), default="reinforce")
    t.add_argument("--features", choices=sorted(FEATURES), default="both",
                   help="what the shipped policy reads (the card's ablation scores all three on the held-out fifth)")
    t.add_argument("--margin", default="cv",
                   help="expected-speedup gain a pick needs over the best single arm to replace it: cv "
                        "(cross-validated on the logged prompts), none (no gate) or a number")
    t.add_argument("--epochs", type=int, default=0, help="0: the default")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", help="policy file (default: assets/policy/auto-<target>.safetensors)")
    t.set_defaults(func=cmd_train_policy)
