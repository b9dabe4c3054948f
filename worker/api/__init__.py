"""The application-facing API: enqueue_email, get_email_status, and input validation."""
