"""Operations: the sweeper, reconciliation against SMTP2Go, requeue and purge."""
