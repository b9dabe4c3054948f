"""Telling the application what happened: status events, signed HTTP callbacks and the Python hook.

``outbox`` writes one ``status_events`` row per status change a caller cares about, in the very transaction of
the change (the lifecycle's transitions, ``record_event``), so no event is lost or invented. ``dispatcher`` fans
new rows out into deliveries (one per interested endpoint, one for ``MAILWORKER_STATUS_HOOK``) and runs them,
each attempt stored, retried with jitter over about a day; ``signing`` is Standard Webhooks; ``endpoints`` the
operator's ``mailworker callbacks`` side.
"""
