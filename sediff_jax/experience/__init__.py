"""Clinical experience for conditioning: patient profiles, weighted-Jaccard retrieval, distilled reports."""

from sediff_jax.experience.profiles import (
    FEATURE_NAMES, HOSPITAL_VIEWS, STATEMENT_VIEWS, CodeSets, Profile, ProfileCorpus, ProfileError, corpus_summary,
)
from sediff_jax.experience.retrieval import ExperienceIndex, Neighbours, RetrievalConfig, default_weights
