"""The canonical 12-lead order and the identities that tie the limb leads together.

Every array in the project that carries 12 leads uses `LEAD_NAMES` order on its last axis:
`ecg: (..., time, 12)`, units mV.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

LEAD_NAMES: tuple[str, ...] = (
    "I", "II", "III", "aVR", "aVL", "aVF", "V1", "V2", "V3", "V4", "V5", "V6",
)
NUM_LEADS = len(LEAD_NAMES)
LIMB_LEADS = LEAD_NAMES[:6]
CHEST_LEADS = LEAD_NAMES[6:]
# The 8 independent leads of a standard 12-lead recording (the others follow from I and II).
INDEPENDENT_LEADS: tuple[str, ...] = ("I", "II") + CHEST_LEADS

_LOOKUP = {name.upper(): i for i, name in enumerate(LEAD_NAMES)}


def lead_index(name: str) -> int:
    """Index of a lead in `LEAD_NAMES`, case-insensitive ('AVR' and 'aVR' both work)."""
    try:
        return _LOOKUP[name.strip().upper()]
    except KeyError:
        raise ValueError(f"unknown lead name {name!r}; expected one of {', '.join(LEAD_NAMES)}") from None


def leads_from_independent(independent):
    """Expand the 8 independent leads to all 12.

    Args:
      independent: (..., 8) in `INDEPENDENT_LEADS` order (I, II, V1..V6), mV. NumPy or JAX.

    Returns:
      (..., 12) in `LEAD_NAMES` order. III, aVR, aVL, aVF follow Einthoven's and Goldberger's laws
      exactly (to float rounding), as in every digital electrocardiograph.
    """
    xp = jnp if not isinstance(independent, np.ndarray) else np
    lead_i, lead_ii, chest = independent[..., 0], independent[..., 1], independent[..., 2:]
    lead_iii = lead_ii - lead_i
    avr = -0.5 * (lead_i + lead_ii)
    avl = lead_i - 0.5 * lead_ii
    avf = lead_ii - 0.5 * lead_i
    limb = xp.stack([lead_i, lead_ii, lead_iii, avr, avl, avf], axis=-1)
    return xp.concatenate([limb, chest], axis=-1)


def limb_lead_residuals(ecg):
    """Einthoven and Goldberger residuals of a 12-lead ECG.

    Args:
      ecg: (..., 12) mV in `LEAD_NAMES` order.

    Returns:
      (..., 4) mV: I - II + III, aVR + (I + II)/2, aVL - (I - III)/2, aVF - (II + III)/2.
      Zero for a physically consistent recording.
    """
    xp = jnp if not isinstance(ecg, np.ndarray) else np
    i, ii, iii, avr, avl, avf = (ecg[..., k] for k in range(6))
    return xp.stack(
        [i - ii + iii, avr + 0.5 * (i + ii), avl - 0.5 * (i - iii), avf - 0.5 * (ii + iii)], axis=-1
    )


# Each limb lead as a combination of (I, II): the columns of the least-squares projection below.
_LIMB_FROM_I_II = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0], [-0.5, -0.5], [1.0, -0.5], [-0.5, 1.0]])
# The orthogonal projection of the 6 limb leads onto the 2-dimensional space where Einthoven and Goldberger hold.
LIMB_PROJECTION = _LIMB_FROM_I_II @ np.linalg.pinv(_LIMB_FROM_I_II)


def project_to_lead_space(ecg):
    """The nearest (least squares over the six limb leads) 12-lead ECG that obeys Einthoven's and Goldberger's
    laws exactly: the limb leads projected onto their 2-dimensional space, the chest leads unchanged.

    Args:
      ecg: (..., 12) mV in `LEAD_NAMES` order. NumPy or JAX.

    Returns:
      (..., 12) mV; `limb_lead_residuals` of it is zero to float rounding, and an ECG that already obeys the
      laws is returned unchanged.
    """
    xp = jnp if not isinstance(ecg, np.ndarray) else np
    projection = xp.asarray(LIMB_PROJECTION, dtype=ecg.dtype)
    limb = ecg[..., :6] @ projection.T
    return xp.concatenate([limb, ecg[..., 6:]], axis=-1)
