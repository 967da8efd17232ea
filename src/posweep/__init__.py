"""posweep: train, sweep and evaluate preference-optimization methods, and find the robust one.

In: a policy model, preference pairs, test prompts and a gold reward model (a sweep config). Out: a sweep
folder with every run's checkpoint metrics and samples, the paper's analyses and a robust recommendation.

Stages, one package each, each importing only its own and earlier ones (docs/ARCHITECTURE.md):
config, io, metrics, text, packages, progress (shared, torch-free) → models → data → losses → training
→ generation → judges → evaluation → demo_build → sweep → analysis → report → workflow → cli.
"""

__version__ = "0.1.0"
