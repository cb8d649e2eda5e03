"""The clinical rhythm model (`clinical`): rhythm classes of reports, their RR processes, and the beats they give.
Above the data layer and the simulator, below generation."""

from sediff_jax.rhythm.clinical import (RHYTHM_CLASSES, RhythmClass, clinical_beats, rhythm_class,
                                        sinus_rr_cv)

__all__ = ["RHYTHM_CLASSES", "RhythmClass", "clinical_beats", "rhythm_class", "sinus_rr_cv"]
