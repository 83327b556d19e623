"""Executors run one experiment's command and report what happened; `local` runs it as a subprocess here."""
