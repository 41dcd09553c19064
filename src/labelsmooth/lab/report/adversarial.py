"""The adversarial-robustness section of a report: does label smoothing buy robustness, or only
mask the gradient an attacker follows?

Goibert & Dohmatob (2019) report that smoothing improves robustness to white-box attacks; Fu et
al. (2020) that the gain is gradient masking, which vanishes under transfer attacks (crafted on
another, unsmoothed model) and under a loss whose gradient does not saturate. The numbers come from
the run's adversarial evaluation (:mod:`labelsmooth.lab.adversarial`, stored in
``adversarial.json``; computed on the first report of the run and read afterwards). The section
shows robust accuracy per attack, budget and eps (mean and 95% interval over seeds) and judges,
by the report's one rule, four claims, each with its primary contrast the largest eps against
eps = 0 at budget :data:`PRIMARY_BUDGET` (other eps, budgets and FGSM are secondary):

- white-box robustness (PGD-20 on cross-entropy; Goibert & Dohmatob);
- the same gain under the transfer control and under the margin-loss control (Fu et al. predict
  it vanishes: "not supported");
- gradient masking itself: the gap between robust accuracy under PGD on cross-entropy and under
  PGD on the margin loss, which Fu et al. predict smoothing widens.

The smallest effect that matters is 0.02 (two points of robust accuracy) for each. The primary
budget is the smallest, 0.05: models trained without any defence keep little accuracy above it
(on Fashion-MNIST, a quick run's unsmoothed CNNs kept 1-3% at 0.1 and none at 0.2), so a gain can
only show there; the larger budgets are secondary. The section then says in words whether any
white-box gain survives both controls.
"""

from __future__ import annotations

from pathlib import Path

from ..adversarial import ATTACKS, evaluate_run
from ..stats import BOUNDS, estimate
from .context import Condition, ReportContext, SectionOutput
from .html import embed_figure, escape, figure_grid, figure_text, table
from .verdicts import Claim, judge

__all__ = ["CLAIMS", "PRIMARY_BUDGET", "conclusion", "section"]

SOURCES = {"goibert": "Goibert & Dohmatob 2019, Adversarial Robustness via Label-Smoothing",
           "fu": "Fu, Chen, Ruan & Jia 2020, Label Smoothing and Adversarial Robustness"}
WHITEBOX = Claim("adversarial-white-box", "Smoothing improves white-box robustness",
                 "Label smoothing raises accuracy under white-box L-infinity attacks that follow the model's own "
                 "cross-entropy gradient (PGD, FGSM).", SOURCES["goibert"])
TRANSFER = Claim("adversarial-transfer", "The robustness gain survives transfer attacks",
                 "Label smoothing raises accuracy under attacks crafted on an independently trained unsmoothed "
                 "model (Fu et al. 2020 report that it does not: the white-box gain is gradient masking).",
                 f"{SOURCES['goibert']}, under the transfer control of {SOURCES['fu']}")
MARGIN = Claim("adversarial-margin-loss", "The robustness gain survives the margin loss",
               "Label smoothing raises accuracy under white-box PGD on the margin (Carlini-Wagner) loss, whose "
               "gradient does not vanish when the softmax saturates (Fu et al. 2020 report that the gain does not "
               "survive attacks that avoid the masked cross-entropy gradient).",
               f"{SOURCES['goibert']}, under the loss control of {SOURCES['fu']}")
MASKING = Claim("gradient-masking", "Smoothing masks the gradient",
                "Label smoothing widens the gap between robust accuracy under PGD on cross-entropy and under PGD "
                "on the margin loss: a smoothed model's cross-entropy gradient misleads the attacker.",
                SOURCES["fu"], predicts="deterioration")
# claim -> (its attacks, primary first); the masking claim's quantity is a difference of two attacks
CLAIMS = {WHITEBOX: ("pgd", "fgsm"), TRANSFER: ("transfer-pgd", "transfer-fgsm"), MARGIN: ("pgd-margin",),
          MASKING: ("pgd", "pgd-margin")}
PRIMARY_BUDGET = 0.05
MARGIN_ACCURACY = 0.02


def _by_condition(context: ReportContext, evaluation: dict) -> dict[Condition, dict[int, dict]]:
    """condition -> seed -> {"clean": accuracy, attack: {budget: accuracy}} of the evaluated cells."""
    found: dict[Condition, dict[int, dict]] = {}
    for condition, runs in context.groups.items():
        for seed, run in runs.items():
            if run.get("cell") in evaluation["robust"]:
                found.setdefault(condition, {})[seed] = {"clean": evaluation["clean"][run["cell"]],
                                                          **evaluation["robust"][run["cell"]]}
    return found


def _values(by_seed: dict[int, dict], claim: Claim, attack: str, budget: str) -> dict[int, float]:
    if claim is MASKING:
        return {s: v["pgd"][budget] - v["pgd-margin"][budget] for s, v in by_seed.items()}
    return {s: v[attack][budget] for s, v in by_seed.items()}


def _verdicts(context: ReportContext, scores: dict, budgets: list[str], attacks: tuple[str, ...]) -> list[dict]:
    primary_budget = f"{PRIMARY_BUDGET:g}" if f"{PRIMARY_BUDGET:g}" in budgets else min(budgets, key=float)
    records = []
    for claim, claim_attacks in CLAIMS.items():
        if not set(claim_attacks if claim is MASKING else claim_attacks[:1]) <= set(attacks):
            continue
        for attack in (claim_attacks[:1] if claim is MASKING else [a for a in claim_attacks if a in attacks]):
            name = ("robust accuracy under PGD-20 (cross-entropy) minus under PGD-20 (margin loss)"
                    if claim is MASKING else f"robust accuracy, {ATTACKS[attack][3]}")
            for budget in budgets:
                for condition, base in context.pairs():
                    if condition not in scores or base not in scores:
                        continue
                    records.append(judge(
                        claim, _values(scores[condition], claim, attack, budget),
                        _values(scores[base], claim, attack, budget), section="adversarial robustness",
                        split="test", contrast=context.contrast(condition, base),
                        quantity=f"{name}, budget {budget}",
                        primary=(context.is_primary(condition) and budget == primary_budget
                                 and attack == claim_attacks[0]),
                        better="lower" if claim is MASKING else "higher", margin=MARGIN_ACCURACY,
                        scope=context.scope, bounds=None if claim is MASKING else "accuracy"))
    return records


def _figure(context: ReportContext, scores: dict, budgets: list[str], attacks: tuple[str, ...]) -> str:
    """Robust accuracy against the budget, one panel per attack, one line per condition (mean and 95% interval)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(3.2 * len(attacks), 3.2), layout="constrained")
    panels = figure.subplots(1, len(attacks), sharey=True, squeeze=False)[0]
    x = [0.0] + [float(b) for b in budgets]
    for axes, attack in zip(panels, attacks):
        for index, (condition, by_seed) in enumerate(scores.items()):
            found = [estimate([v["clean"] for v in by_seed.values()], BOUNDS["accuracy"])] + [
                estimate([v[attack][b] for v in by_seed.values()], BOUNDS["accuracy"]) for b in budgets]
            means = [e.mean for e in found]
            axes.plot(x, means, marker="o", color=f"C{index % 10}", label=figure_text(context.label(condition)))
            if all(e.has_interval for e in found):
                axes.fill_between(x, [e.low for e in found], [e.high for e in found], color=f"C{index % 10}",
                                  alpha=0.15, linewidth=0)
        axes.set_title(figure_text(ATTACKS[attack][3]), fontsize=8)
        axes.set_xlabel("L-inf budget on [0, 1] pixels")
        axes.grid(alpha=0.3)
    panels[0].set_ylabel("accuracy (test sample)")
    panels[0].legend(fontsize=8)
    return embed_figure(figure, Path(context.run_dir) / "adversarial_accuracy.png",
                        "Accuracy under attack against the budget (0: clean), mean and 95% interval over seeds",
                        wide=True)


def conclusion(records: list[dict]) -> str:
    """Whether a white-box gain survives the transfer and margin-loss controls, from the primary verdicts.

    >>> print(conclusion([{"claim": "adversarial-white-box", "primary": True, "verdict": "not supported"}]))
    Smoothing gave no white-box robustness gain that this run resolves (white-box verdict: not
    supported), so there is no gain for the controls to test.
    """
    primary = {r["claim"]: r["verdict"] for r in records if r["primary"]}
    white = primary.get(WHITEBOX.id)
    if white is None:
        return "No white-box verdict could be made, so nothing can be said about the controls."
    if white != "supported":
        return (f"Smoothing gave no white-box robustness gain that this run resolves (white-box verdict: {white}), "
                f"so there is no gain for the controls to test.")
    controls = {"the transfer attack": primary.get(TRANSFER.id), "PGD on the margin loss": primary.get(MARGIN.id)}
    kept = [name for name, verdict in controls.items() if verdict == "supported"]
    lost = [name for name, verdict in controls.items() if verdict == "not supported"]
    open_ = [f"{name} ({verdict or 'not evaluated'})" for name, verdict in controls.items()
             if verdict not in ("supported", "not supported")]
    text = "Smoothing improved white-box robustness (PGD on cross-entropy). "
    if len(kept) == len(controls):
        return text + ("The gain survives both controls, the transfer attack and PGD on the margin loss: it is not "
                       "gradient masking alone, against Fu et al. 2020.")
    if lost:
        text += (f"The gain does not survive {' or '.join(lost)}: consistent with gradient masking "
                 f"(Fu et al. 2020). ")
    if kept:
        text += f"It survives {' and '.join(kept)}. "
    if open_:
        text += f"This run cannot tell for {' and '.join(open_)}."
    return text.strip()


def section(context: ReportContext) -> SectionOutput:
    """Robust accuracy per attack, budget and eps, the four claims' verdicts and the conclusion."""
    title = "Adversarial robustness: real, or gradient masking?"
    evaluation = evaluate_run(context.run_dir)
    scores = _by_condition(context, evaluation)
    if not scores:
        return SectionOutput(title, "<p>No finished cell could be evaluated (no model.pt): nothing to attack.</p>")
    settings = evaluation["settings"]
    budgets = [f"{b:g}" for b in settings["budgets"]]
    attacks = tuple(settings["attacks"])
    conditions = list(scores)
    rows = [["clean (no attack)", "-"] + [estimate([v["clean"] for v in scores[c].values()],
                                                   BOUNDS["accuracy"]).format(3)
                                         for c in conditions]]
    for attack in attacks:
        for budget in budgets:
            rows.append([ATTACKS[attack][3], budget] + [estimate([v[attack][budget] for v in scores[c].values()],
                                                                 BOUNDS["accuracy"]).format(3) for c in conditions])
    header = ["attack", "budget (L-inf, [0, 1] pixels)"] + [
        f"{context.label(c)} ({len(scores[c])} seeds)" for c in conditions]
    records = _verdicts(context, scores, budgets, attacks)
    source = evaluation["source"]
    html = (f"<p>Every trained model is attacked on the same {evaluation['images']:,} test images (a fixed seeded "
            f"sample), in pixel space [0, 1] with L-infinity budgets {', '.join(budgets)}: FGSM and "
            f"PGD-{settings['steps']} "
            f"with a random start on the model's own cross-entropy (white-box), PGD-{settings['steps']} on the margin "
            f"(Carlini-Wagner) loss, and FGSM and PGD-{settings['steps']} crafted on an independently trained eps=0 "
            f"model (seed {source['seed']}, not itself evaluated) and carried over to each model (transfer). "
            f"Goibert &amp; Dohmatob (2019) report that smoothing improves white-box robustness; Fu et al. (2020) "
            f"that the gain is gradient masking and vanishes under transfer attacks and losses that do not "
            f"saturate. Robust accuracy: mean [95% interval over seeds]; primary contrast: the largest eps against "
            f"eps=0 at budget {PRIMARY_BUDGET:g} (models without a defence keep little accuracy at larger "
            f"budgets, so a "
            f"gain can only show there); smallest effect that matters: {MARGIN_ACCURACY:g} (two points of "
            f"accuracy). The numbers are stored in adversarial.json and read, not recomputed, when the report is "
            f"rebuilt.</p>"
            f"<p><b>{escape(conclusion(records))}</b></p>" + table(header, rows)
            + figure_grid([_figure(context, scores, budgets, attacks)]))
    return SectionOutput(title, html, records)
