"""a clip's priority, the outputs it asks for, and its preview, thumbnails and portrait version

Revision ID: 0006
Revises: 0005
"""
import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("clips", schema=None) as batch_op:
        batch_op.add_column(sa.Column("priority", sa.String(length=8), nullable=False, server_default="normal"))
        batch_op.add_column(sa.Column("outputs", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("portrait_fill", sa.String(length=8), nullable=True))
        batch_op.add_column(sa.Column("preview_url", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("thumbnails", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("portrait_url", sa.Text(), nullable=True))
        # GET /api/v1/clips pages newest first, by (created_at, id), with or without a status.
        batch_op.create_index("ix_clips_created_at_id", ["created_at", "id"])
        batch_op.create_index("ix_clips_status_created_at_id", ["status", "created_at", "id"])


def downgrade():
    with op.batch_alter_table("clips", schema=None) as batch_op:
        batch_op.drop_index("ix_clips_status_created_at_id")
        batch_op.drop_index("ix_clips_created_at_id")
        for column in ("portrait_url", "thumbnails", "preview_url", "portrait_fill", "outputs", "priority"):
            batch_op.drop_column(column)
