"""Coreset selection for QAT: per-sample scores and the ACS selector.

`scores` (jax) computes EVS/DS on the mesh; `selector` (ACS schedules and
top-fraction selection), `baselines` and `forgetting` use NumPy only.
"""
from acs_jax.coreset.baselines import SELECTORS, Selector, get_selector
from acs_jax.coreset.forgetting import ForgettingTracker
from acs_jax.coreset.scores import (compute_teacher_probs,
                                    disagreement_score,
                                    disagreement_score_from_probs,
                                    error_vector_score, make_score_fn,
                                    score_dataset)
from acs_jax.coreset.selector import (SCHEDULES, SelectionRecord,
                                      acs_coefficient, acs_select,
                                      select_top_fraction)
