"""Every SQL statement the gateway sends, behind one adapter per table (or family of
tables). Routes and orchestration call these; they hold no SQL themselves."""
