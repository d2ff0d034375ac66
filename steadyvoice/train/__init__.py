"""Training: config, the Trainer loop, losses, LR schedule, logs, and distributed.py (the only DDP code).

Import the parts you need (``from steadyvoice.train.loop import Trainer``); this package imports nothing
heavy by itself.
"""
