"""A minimal Django project running django-post_office, the send benchmark's anchor row (``make bench``).

Configured as a post_office user would: ``post_office`` in ``INSTALLED_APPS``, its Celery integration
(``POST_OFFICE["CELERY_ENABLED"]``: every ``mail.send()`` publishes ``post_office.tasks.send_queued_mail`` after
commit), and a small email backend of our own (:mod:`.smtp2go_backend`) that posts to the SMTP2Go HTTP API --
here the same local stand-in the bare baseline and mailworker talk to. MariaDB through Django's ``mysql``
backend on PyMySQL (``pymysql.install_as_MySQLdb()``, the same pure-Python driver mailworker uses).

Run by :mod:`benchmarks.post_office_bench`; the worker is
``python -m celery -A benchmarks.post_office_app.celery_app worker -P threads -c N -Q $MWBENCH_PO_QUEUE``.
Needs the ``bench`` extra (``pip install -e '.[test,bench]'``).
"""
