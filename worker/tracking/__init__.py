"""Tracking: SMTP2Go events normalised and applied per recipient, suppressions, stats."""
