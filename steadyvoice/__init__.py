"""SteadyVoice: speech enhancement with MossFormer2, and training runs that are never lost.

Public API::

    from steadyvoice import Enhancer, Separator
    enhancer = Enhancer.from_pretrained("path/to/model_dir")
    clean = enhancer(noisy, sample_rate)
    talkers = Separator.from_pretrained("path/to/separation_model_dir")(mixture, sample_rate)
"""

__version__ = "0.1.0"

__all__ = ["Enhancer", "Separator", "load_model", "__version__"]


def __getattr__(name):  # lazy: `import steadyvoice` must not import torch
    if name == "Enhancer":
        from steadyvoice.inference import Enhancer

        return Enhancer
    if name == "Separator":
        from steadyvoice.separation import Separator

        return Separator
    if name == "load_model":
        from steadyvoice.models import load_model

        return load_model
    raise AttributeError(f"module 'steadyvoice' has no attribute {name!r}")
