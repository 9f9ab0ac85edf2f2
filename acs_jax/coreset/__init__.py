"""Coreset selection for QAT: per-sample scores and the ACS selector.

`scores` (jax) computes EVS/DS on the mesh; `selector` (ACS schedules and
top-fraction selection), `baselines` and `forgetting` use NumPy only.
"""
from acs_jax.coreset.baselines import (ADAPTIVE, CAN_BE_ADAPTIVE, NEEDS,
                                       ONE_SHOT, SELECTORS, Selector,
                                       get_selector)
from acs_jax.coreset.forgetting import ForgettingTracker
from acs_jax.coreset.scores import (compute_teacher_probs,
                                    disagreement_score,
                                    disagreement_score_from_probs,
                                    error_vector_score, make_score_fn,
                                    score_dataset)
from acs_jax.coreset.selector import (SCHEDULES, SelectionRecord,
                                      acs_coefficient, acs_select,
                                      is_selection_epoch, select_top_fraction,
                                      selection_epochs)
