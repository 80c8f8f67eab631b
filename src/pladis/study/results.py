"""Summaries of a study: per-question win rates of config B over config A with Wilson 95 % intervals and an exact
two-sided binomial test against 50 %, per prompt category where known; a bar chart like the paper's Fig. 6; CSV.

Win rate = B's share of the decisive votes; "no preference" votes are counted and shown but left out of the rate and
the test (the usual sign-test treatment of ties).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field

from sqlalchemy import Engine, func, select

from .db import Assignment, Evaluator, Study, StudyPair, Vote, read_session

Z95 = 1.959963984540054


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion; (0, 1) when there are no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_test(successes: int, trials: int, p: float = 0.5) -> float:
    """Exact two-sided binomial test: total probability of outcomes no likelier than the one observed."""
    if trials == 0:
        return 1.0
    if not 0 <= successes <= trials:
        raise ValueError("successes must lie in 0..trials")

    def log_pmf(k: int) -> float:
        return (
            math.lgamma(trials + 1)
            - math.lgamma(k + 1)
            - math.lgamma(trials - k + 1)
            + k * math.log(p)
            + (trials - k) * math.log1p(-p)
        )

    observed = log_pmf(successes)
    tolerance = 1e-7  # relative, so that outcomes tied with the observed one count despite rounding
    total = sum(math.exp(lp) for k in range(trials + 1) if (lp := log_pmf(k)) <= observed + math.log1p(tolerance))
    return min(1.0, total)


@dataclass
class Row:
    question: str
    category: str | None
    wins_b: int
    wins_a: int
    ties: int

    @property
    def votes(self) -> int:
        return self.wins_a + self.wins_b + self.ties

    @property
    def decisive(self) -> int:
        return self.wins_a + self.wins_b

    @property
    def win_rate(self) -> float | None:
        return self.wins_b / self.decisive if self.decisive else None

    @property
    def ci(self) -> tuple[float, float]:
        return wilson_interval(self.wins_b, self.decisive)

    @property
    def p_value(self) -> float:
        return binomial_test(self.wins_b, self.decisive)

    @property
    def win_rate_text(self) -> str:
        return "n/a" if self.win_rate is None else f"{100 * self.win_rate:.1f} %"

    @property
    def ci_text(self) -> str:
        low, high = self.ci
        return "n/a" if not self.decisive else f"{100 * low:.1f}–{100 * high:.1f} %"

    @property
    def p_text(self) -> str:
        value = self.p_value
        return f"{value:.2g}" if value < 0.001 else f"{value:.3f}"


@dataclass
class Summary:
    study: str
    config_a: str
    config_b: str
    questions: list[str]
    evaluators: int
    finished: int
    pairs: int
    rows: list[Row] = field(default_factory=list)

    def overall(self, question: str) -> Row:
        return next(r for r in self.rows if r.question == question and r.category is None)


def summarise(engine: Engine, study_id: int) -> Summary:
    with read_session(engine) as session:
        study = session.get(Study, study_id)
        if study is None:
            raise ValueError(f"no study with id {study_id}")
        evaluators = session.scalar(select(func.count(Evaluator.id)).where(Evaluator.study_id == study_id)) or 0
        finished = (
            session.scalar(
                select(func.count(Evaluator.id)).where(
                    Evaluator.study_id == study_id, Evaluator.finished_at.is_not(None)
                )
            )
            or 0
        )
        pairs = session.scalar(select(func.count(StudyPair.id)).where(StudyPair.study_id == study_id)) or 0
        counts = session.execute(
            select(Vote.question, StudyPair.category, Vote.choice, func.count(Vote.id))
            .join(Assignment, Vote.assignment_id == Assignment.id)
            .join(StudyPair, Assignment.pair_id == StudyPair.id)
            .where(StudyPair.study_id == study_id)
            .group_by(Vote.question, StudyPair.category, Vote.choice)
        ).all()
        questions = study.questions.split(",")
        summary = Summary(study.name, study.config_a, study.config_b, questions, evaluators, finished, pairs)
    categories = sorted({c for _, c, _, _ in counts if c is not None})
    for question in questions:
        for category in [None, *categories] if categories else [None]:
            tally = {"a": 0, "b": 0, "none": 0}
            for q, c, choice, n in counts:
                if q == question and (category is None or c == category):
                    tally[choice] += n
            summary.rows.append(Row(question, category, tally["b"], tally["a"], tally["none"]))
    return summary


def format_table(summary: Summary) -> list[list[str]]:
    """Header and rows as text, for the terminal and the docs."""
    table = [
        ["question", "category", "votes", summary.config_b, summary.config_a, "no pref.", "win rate", "95 % CI", "p"]
    ]
    for r in summary.rows:
        table.append(
            [
                r.question,
                r.category or "all",
                str(r.votes),
                str(r.wins_b),
                str(r.wins_a),
                str(r.ties),
                r.win_rate_text,
                r.ci_text,
                r.p_text,
            ]
        )
    return table


def summary_csv(summary: Summary) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        ["question", "category", "votes", "wins_b", "wins_a", "ties", "win_rate_b", "ci_low", "ci_high", "p_value"]
    )
    for r in summary.rows:
        low, high = r.ci
        rate = "" if r.win_rate is None else f"{r.win_rate:.6f}"
        writer.writerow(
            [
                r.question,
                r.category or "all",
                r.votes,
                r.wins_b,
                r.wins_a,
                r.ties,
                rate,
                f"{low:.6f}",
                f"{high:.6f}",
                f"{r.p_value:.6g}",
            ]
        )
    return out.getvalue()


def votes_csv(engine: Engine, study_id: int) -> str:
    """Every stored vote, one row each; evaluators appear only by their number."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(
        [
            "evaluator",
            "position",
            "sample_id",
            "prompt",
            "category",
            "seed",
            "question",
            "choice",
            "choice_config",
            "clicked_side",
            "left_config",
            "voted_at",
        ]
    )
    with read_session(engine) as session:
        study = session.get(Study, study_id)
        assert study is not None
        names = {"a": study.config_a, "b": study.config_b, "none": ""}
        rows = session.execute(
            select(Evaluator.ordinal, Assignment.position, Assignment.a_on_left, StudyPair, Vote)
            .join(Assignment, Vote.assignment_id == Assignment.id)
            .join(Evaluator, Assignment.evaluator_id == Evaluator.id)
            .join(StudyPair, Assignment.pair_id == StudyPair.id)
            .where(Evaluator.study_id == study_id)
            .order_by(Evaluator.ordinal, Assignment.position, Vote.question)
        ).all()
        for ordinal, position, a_on_left, pair, vote in rows:
            writer.writerow(
                [
                    ordinal + 1,
                    position,
                    pair.sample_id,
                    pair.prompt,
                    pair.category or "",
                    pair.seed or "",
                    vote.question,
                    vote.choice,
                    names[vote.choice],
                    vote.side,
                    study.config_a if a_on_left else study.config_b,
                    vote.created_at.isoformat(),
                ]
            )
    return out.getvalue()


def chart_png(summary: Summary) -> bytes:
    """Horizontal stacked bars per question (and category): share of votes for B, no preference, A; like Fig. 6."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    rows = summary.rows
    labels = [r.question.capitalize() + (f" · {r.category}" if r.category else "") for r in rows]
    share = [[x / r.votes * 100 if r.votes else 0.0 for x in (r.wins_b, r.ties, r.wins_a)] for r in rows]
    fig = Figure(figsize=(7.5, 0.55 * len(rows) + 1.3), dpi=100)
    ax = fig.subplots()
    colours = ("#2456a6", "#c9ccd2", "#e08a3c")
    names = (summary.config_b, "no preference", summary.config_a)
    y = list(range(len(rows)))[::-1]
    left = [0.0] * len(rows)
    for part in range(3):
        widths = [s[part] for s in share]
        bars = ax.barh(y, widths, left=left, color=colours[part], label=names[part], height=0.6)
        for bar, width in zip(bars, widths):
            if width >= 8:
                ax.text(
                    bar.get_x() + width / 2,
                    bar.get_y() + bar.get_height() / 2,
                    f"{width:.0f}%",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if part != 1 else "black",
                )
        left = [a + b for a, b in zip(left, widths)]
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 100)
    ax.set_xlabel("share of votes (%)")
    ax.axvline(50, color="black", linewidth=0.6, linestyle=":")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.35 if len(rows) < 4 else -0.12), ncol=3, frameon=False)
    ax.set_title(f"User preference: {summary.config_b} vs {summary.config_a}")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()
