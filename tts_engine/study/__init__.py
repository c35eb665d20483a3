"""The study's rooms below its command line (tts_engine/run.py, which wires them): the options
(args.py), the checks that run before any model loads (checks.py), what a study folder knows about
the settings that produced it (manifest.py), the append-only results files whose rows come in whole
units (store.py), the units of work a command asks for (plan.py), the progress of a running study
(progress.py), difficulty bins and compute-optimal scaling (analysis.py), and the summary, table and
plot (report.py)."""
