"""Entry point for ``celery -A clipqueue.make_celery worker|beat|flower``."""

from clipqueue import create_app

flask_app = create_app()
celery_app = flask_app.extensions["celery"]
