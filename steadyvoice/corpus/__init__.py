"""Offline training-corpus builder: ``steadyvoice corpus OUT_DIR [--hours H] [--seed S]``.

Clean English speech from real recordings in Debian packages and from Debian's TTS engines, noise from
Debian sound packages and synthetic families, room impulse responses from pyroomacoustics; splits with
disjoint speakers and noise files; a manifest with sources, licences and versions.

    from steadyvoice.corpus import CorpusConfig, build_corpus
    result = build_corpus(CorpusConfig(hours=1.0, seed=0), "corpus/")
"""

from steadyvoice.corpus.build import BuildResult, build_corpus, default_cache_dir
from steadyvoice.corpus.config import CorpusConfig

__all__ = ["BuildResult", "CorpusConfig", "build_corpus", "default_cache_dir"]
