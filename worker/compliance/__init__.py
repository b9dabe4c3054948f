"""What bulk senders owe mailbox providers and recipients: one-click unsubscribe tokens (:mod:`.tokens`),
erasure on request and the keyed hashes that stand in for erased addresses (:mod:`.erasure`, :mod:`.keys`)."""
