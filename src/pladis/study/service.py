"""Study logic without HTTP: register a study, start evaluators with balanced assignments, show pairs, store votes.

Balance: the study's pairs are shuffled once (``StudyPair.idx``); evaluator number ``n`` (0, 1, 2, ...) takes the
``k`` pairs at slots ``n*k .. n*k+k-1`` of that order, wrapping around, so exposure counts of any two pairs differ
by at most one. Each pair's side alternates from one round of the order to the next (starting from a random side
per pair), so every pair is shown A-left as often as A-right, up to one. The order of an evaluator's ``k`` pairs is
shuffled per evaluator.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from typing import Literal

from sqlalchemy import Engine, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from .db import Assignment, Evaluator, Study, StudyPair, Vote, read_session, utcnow, write_session
from .loader import Pair

QUESTIONS: dict[str, str] = {
    "quality": "Which image is of higher quality and visually more pleasing?",
    "alignment": "Which image looks more representative of the given prompt?",
}
SIDES = ("left", "right", "none")


class StudyError(ValueError):
    """A request the study refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StudySpec:
    name: str
    config_a: str
    config_b: str
    questions: tuple[str, ...] = ("quality", "alignment")
    pairs_per_evaluator: int = 20
    allow_tie: bool = True


@dataclass(frozen=True)
class Shown:
    """What the pair page needs: nothing in it tells which side is which config."""

    key: str
    position: int
    total: int
    prompt: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def parse_questions(text: str) -> tuple[str, ...]:
    keys = tuple(dict.fromkeys(q.strip() for q in text.split(",") if q.strip()))
    unknown = [q for q in keys if q not in QUESTIONS]
    if unknown or not keys:
        raise StudyError(f"unknown question(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(QUESTIONS)}")
    return keys


def open_study(engine: Engine, spec: StudySpec, pairs: list[Pair]) -> int:
    """Register ``spec`` with its pairs (first time) or check that the stored study matches; returns its id."""
    if not pairs:
        raise StudyError("a study needs at least one pair")
    if spec.pairs_per_evaluator < 1:
        raise StudyError("--pairs must be at least 1")
    parse_questions(",".join(spec.questions))
    with write_session(engine) as session:
        study = session.scalar(select(Study).where(Study.name == spec.name))
        if study is None:
            study = Study(
                name=spec.name,
                config_a=spec.config_a,
                config_b=spec.config_b,
                questions=",".join(spec.questions),
                pairs_per_evaluator=min(spec.pairs_per_evaluator, len(pairs)),
                allow_tie=spec.allow_tie,
                evaluators_started=0,
            )
            session.add(study)
            session.flush()
            rng = secrets.SystemRandom()
            order = list(range(len(pairs)))
            rng.shuffle(order)
            for idx, pair_number in enumerate(order):
                pair = pairs[pair_number]
                session.add(
                    StudyPair(
                        study_id=study.id,
                        idx=idx,
                        flip=rng.random() < 0.5,
                        sample_id=pair.sample_id,
                        prompt=pair.prompt,
                        category=pair.category,
                        seed=pair.seed,
                        image_a=str(pair.image_a.resolve()),
                        image_b=str(pair.image_b.resolve()),
                    )
                )
            return study.id
        stored = set(session.scalars(select(StudyPair.sample_id).where(StudyPair.study_id == study.id)))
        mismatch = []
        if (study.config_a, study.config_b) != (spec.config_a, spec.config_b):
            mismatch.append(f"configs {study.config_a} vs {study.config_b}")
        if study.questions != ",".join(spec.questions):
            mismatch.append(f"questions {study.questions}")
        if study.pairs_per_evaluator != min(spec.pairs_per_evaluator, len(pairs)):
            mismatch.append(f"{study.pairs_per_evaluator} pairs per evaluator")
        if study.allow_tie != spec.allow_tie:
            mismatch.append("the no-preference option")
        if stored != {p.sample_id for p in pairs}:
            mismatch.append(f"{len(stored)} other sample ids")
        if mismatch:
            raise StudyError(
                f"the database already holds study {spec.name!r} with {'; '.join(mismatch)}; "
                "pass the same options, another --study name or another --db"
            )
        # Image files may have moved with the run folder: keep the paths current.
        by_id = {p.sample_id: p for p in pairs}
        for row in session.scalars(select(StudyPair).where(StudyPair.study_id == study.id)):
            row.image_a, row.image_b = (
                str(by_id[row.sample_id].image_a.resolve()),
                str(by_id[row.sample_id].image_b.resolve()),
            )
        return study.id


def find_study(engine: Engine, name: str) -> Study:
    with read_session(engine) as session:
        study = session.scalar(select(Study).where(Study.name == name))
        if study is None:
            names = list(session.scalars(select(Study.name).order_by(Study.name)))
            raise StudyError(f"no study {name!r} in this database; it holds: {', '.join(names) or 'no study'}", 404)
        return study


def find_study_by_id(engine: Engine, study_id: int) -> Study:
    with read_session(engine) as session:
        study = session.get(Study, study_id)
        if study is None:
            raise StudyError(f"no study with id {study_id}", 404)
        return study


def start_evaluator(engine: Engine, study_id: int) -> str:
    """A new evaluator with its balanced assignment; returns the secret token (stored only as a hash)."""
    token = secrets.token_urlsafe(32)
    rng = secrets.SystemRandom()
    with write_session(engine) as session:
        # The UPDATE takes the row lock, so concurrent starts get distinct ordinals on every database.
        session.execute(
            update(Study).where(Study.id == study_id).values(evaluators_started=Study.evaluators_started + 1)
        )
        study = session.get(Study, study_id)
        if study is None:
            raise StudyError("unknown study", 404)
        ordinal = study.evaluators_started - 1
        pairs = list(session.scalars(select(StudyPair).where(StudyPair.study_id == study_id).order_by(StudyPair.idx)))
        count, k = len(pairs), study.pairs_per_evaluator
        evaluator = Evaluator(study_id=study_id, ordinal=ordinal, token_hash=hash_token(token))
        session.add(evaluator)
        session.flush()
        chosen = []
        for slot in range(ordinal * k, ordinal * k + k):
            pair = pairs[slot % count]
            a_on_left = (slot // count + int(pair.flip)) % 2 == 0
            chosen.append((pair, a_on_left))
        rng.shuffle(chosen)
        # Counterbalance order effects: an evaluator never repeats an earlier evaluator's exact order of the same pairs.
        earlier = _orders_shown(session, study_id, evaluator.id)
        for _ in range(100):
            if tuple(pair.id for pair, _ in chosen) not in earlier:
                break
            rng.shuffle(chosen)
        for position, (pair, a_on_left) in enumerate(chosen, 1):
            session.add(
                Assignment(
                    evaluator_id=evaluator.id,
                    position=position,
                    pair_id=pair.id,
                    a_on_left=a_on_left,
                    key=secrets.token_urlsafe(18),
                )
            )
    return token


def _orders_shown(session: Session, study_id: int, except_evaluator: int) -> set[tuple[int, ...]]:
    rows = session.execute(
        select(Assignment.evaluator_id, Assignment.pair_id)
        .join(Evaluator, Evaluator.id == Assignment.evaluator_id)
        .where(Evaluator.study_id == study_id, Assignment.evaluator_id != except_evaluator)
        .order_by(Assignment.evaluator_id, Assignment.position)
    ).all()
    orders: dict[int, list[int]] = {}
    for evaluator_id, pair_id in rows:
        orders.setdefault(evaluator_id, []).append(pair_id)
    return {tuple(order) for order in orders.values()}


def find_evaluator(session: Session, study_id: int, token: str | None) -> Evaluator | None:
    if not token or len(token) > 100:
        return None
    evaluator = session.scalar(select(Evaluator).where(Evaluator.token_hash == hash_token(token)))
    if evaluator is None or evaluator.study_id != study_id:
        return None
    return evaluator


def _answered_ids(session: Session, evaluator_id: int) -> set[int]:
    rows = session.scalars(
        select(Assignment.id)
        .join(Vote, Vote.assignment_id == Assignment.id)
        .where(Assignment.evaluator_id == evaluator_id)
        .distinct()
    )
    return set(rows)


def next_pair(engine: Engine, study_id: int, token: str | None) -> Shown | None:
    """The evaluator's first unanswered pair (marked as shown), or None when finished; unknown token: 403."""
    with write_session(engine) as session:
        evaluator = find_evaluator(session, study_id, token)
        if evaluator is None:
            raise StudyError("unknown or expired evaluator link; start the study from its first page", 403)
        assignments = list(
            session.scalars(
                select(Assignment).where(Assignment.evaluator_id == evaluator.id).order_by(Assignment.position)
            )
        )
        answered = _answered_ids(session, evaluator.id)
        for assignment in assignments:
            if assignment.id not in answered:
                if assignment.shown_at is None:
                    assignment.shown_at = utcnow()
                pair = session.get(StudyPair, assignment.pair_id)
                assert pair is not None
                return Shown(
                    key=assignment.key, position=assignment.position, total=len(assignments), prompt=pair.prompt
                )
        if evaluator.finished_at is None:
            evaluator.finished_at = utcnow()
        return None


def image_path(engine: Engine, study_id: int, token: str | None, key: str, side: str) -> str:
    """The file behind ``side`` of the evaluator's assignment ``key``; anything else is a 404."""
    if side not in ("left", "right"):
        raise StudyError("not found", 404)
    with read_session(engine) as session:
        evaluator = find_evaluator(session, study_id, token)
        if evaluator is None:
            raise StudyError("not found", 404)
        assignment = session.scalar(select(Assignment).where(Assignment.key == key))
        if assignment is None or assignment.evaluator_id != evaluator.id:
            raise StudyError("not found", 404)
        pair = session.get(StudyPair, assignment.pair_id)
        assert pair is not None
        show_a = assignment.a_on_left == (side == "left")
        return pair.image_a if show_a else pair.image_b


def record_vote(
    engine: Engine, study_id: int, token: str | None, key: str, answers: dict[str, str]
) -> Literal["stored", "duplicate"]:
    """Store one answer per question for the pair ``key``; a replay of an answered pair stores nothing."""
    try:
        return _record_vote(engine, study_id, token, key, answers)
    except IntegrityError:
        # A concurrent double click won the race on the unique (assignment, question) constraint.
        return "duplicate"


def _record_vote(
    engine: Engine, study_id: int, token: str | None, key: str, answers: dict[str, str]
) -> Literal["stored", "duplicate"]:
    with write_session(engine) as session:
        evaluator = find_evaluator(session, study_id, token)
        if evaluator is None:
            raise StudyError("unknown evaluator; votes need the link or cookie the study gave you", 403)
        study = session.get(Study, study_id)
        assert study is not None
        assignment = session.scalar(select(Assignment).where(Assignment.key == key))
        if assignment is None or assignment.evaluator_id != evaluator.id:
            raise StudyError("this pair is not part of your study", 400)
        if assignment.shown_at is None:
            raise StudyError("this pair has not been shown to you yet", 409)
        questions = study.questions.split(",")
        allowed = SIDES if study.allow_tie else SIDES[:2]
        if set(answers) != set(questions) or any(answers[q] not in allowed for q in questions):
            raise StudyError(f"answer every question with one of: {', '.join(allowed)}", 400)
        already = session.scalar(select(func.count(Vote.id)).where(Vote.assignment_id == assignment.id))
        if already:
            return "duplicate"
        for question in questions:
            side = answers[question]
            choice = "none" if side == "none" else ("a" if assignment.a_on_left == (side == "left") else "b")
            session.add(Vote(assignment_id=assignment.id, question=question, choice=choice, side=side))
    return "stored"
