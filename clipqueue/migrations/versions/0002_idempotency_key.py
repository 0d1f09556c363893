"""clips.idempotency_key: retried POSTs find their clip

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("clips", schema=None) as batch_op:
        batch_op.add_column(sa.Column("idempotency_key", sa.String(length=255), nullable=True))
        batch_op.create_unique_constraint("uq_clips_idempotency_key", ["idempotency_key"])


def downgrade():
    with op.batch_alter_table("clips", schema=None) as batch_op:
        batch_op.drop_constraint("uq_clips_idempotency_key", type_="unique")
        batch_op.drop_column("idempotency_key")
