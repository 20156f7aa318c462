"""``python -m kaggle_kit`` runs the command line (useful where the console script is not on PATH)."""

from kaggle_kit.cli import main

main()
