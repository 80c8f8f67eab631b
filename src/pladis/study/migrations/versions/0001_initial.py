"""Initial study schema: studies, pairs, evaluators, assignments, votes.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_studies",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("config_a", sa.String(200), nullable=False),
        sa.Column("config_b", sa.String(200), nullable=False),
        sa.Column("questions", sa.String(200), nullable=False),
        sa.Column("pairs_per_evaluator", sa.Integer, nullable=False),
        sa.Column("allow_tie", sa.Boolean, nullable=False),
        sa.Column("evaluators_started", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "study_pairs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("study_studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("flip", sa.Boolean, nullable=False),
        sa.Column("sample_id", sa.String(300), nullable=False),
        sa.Column("prompt", sa.Text, nullable=False),
        sa.Column("category", sa.String(200), nullable=True),
        sa.Column("seed", sa.Integer, nullable=True),
        sa.Column("image_a", sa.Text, nullable=False),
        sa.Column("image_b", sa.Text, nullable=False),
        sa.UniqueConstraint("study_id", "sample_id"),
        sa.UniqueConstraint("study_id", "idx"),
    )
    op.create_index("ix_study_pairs_study_id", "study_pairs", ["study_id"])
    op.create_table(
        "study_evaluators",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("study_id", sa.Integer, sa.ForeignKey("study_studies.id", ondelete="CASCADE"), nullable=False),
        sa.Column("ordinal", sa.Integer, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("study_id", "ordinal"),
    )
    op.create_index("ix_study_evaluators_study_id", "study_evaluators", ["study_id"])
    op.create_table(
        "study_assignments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("evaluator_id", sa.Integer, sa.ForeignKey("study_evaluators.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("pair_id", sa.Integer, sa.ForeignKey("study_pairs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("a_on_left", sa.Boolean, nullable=False),
        sa.Column("key", sa.String(40), nullable=False, unique=True),
        sa.Column("shown_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("evaluator_id", "position"),
    )
    op.create_index("ix_study_assignments_evaluator_id", "study_assignments", ["evaluator_id"])
    op.create_index("ix_study_assignments_pair_id", "study_assignments", ["pair_id"])
    op.create_table(
        "study_votes",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "assignment_id", sa.Integer, sa.ForeignKey("study_assignments.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("question", sa.String(40), nullable=False),
        sa.Column("choice", sa.String(4), nullable=False),
        sa.Column("side", sa.String(5), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("assignment_id", "question"),
    )
    op.create_index("ix_study_votes_assignment_id", "study_votes", ["assignment_id"])


def downgrade() -> None:
    for table in ("study_votes", "study_assignments", "study_evaluators", "study_pairs", "study_studies"):
        op.drop_table(table)
