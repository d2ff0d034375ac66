"""``python -m steadyvoice`` (also what ``torchrun -m steadyvoice train`` runs)."""

from steadyvoice.cli import entry

if __name__ == "__main__":
    entry()
