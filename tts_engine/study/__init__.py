"""The study's rooms below its command line (tts_engine/run.py): the checks that run before any model
loads (checks.py), what a study folder knows about the settings that produced it (manifest.py), and
the append-only results files whose rows come in whole units (store.py)."""
