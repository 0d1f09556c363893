"""dead letters, poison counters and stored output in the database

Revision ID: 0003
Revises: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("clips", schema=None) as batch_op:
        batch_op.add_column(sa.Column("failure_code", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("deliveries", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("redeliveries", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("output", sa.JSON(), nullable=True))
    op.create_table(
        "dead_letters",
        sa.Column("clip_id", sa.Uuid(), sa.ForeignKey("clips.id", ondelete="CASCADE"), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("traceback", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("clip_id"),
    )
    op.create_index("ix_dead_letters_failed_at", "dead_letters", ["failed_at"])


def downgrade():
    op.drop_index("ix_dead_letters_failed_at", table_name="dead_letters")
    op.drop_table("dead_letters")
    with op.batch_alter_table("clips", schema=None) as batch_op:
        batch_op.drop_column("output")
        batch_op.drop_column("redeliveries")
        batch_op.drop_column("deliveries")
        batch_op.drop_column("failure_code")
