"""Infrastructure: settings, database engine and models, crypto, log redaction, modules."""
