"""From the heart's dipole (Frank X, Y, Z) to the 12 standard leads and back.

`DOWER`: Dower et al. (1980), "On deriving the electrocardiogram from vectorcardiographic leads", Clin. Cardiol.
3:87 -- the published XYZ -> (I, II, V1..V6) coefficients. The remaining limb leads are derived from I and II
(`sediff_jax.leads.leads_from_independent`), so Einthoven's and Goldberger's laws hold exactly.
`KORS`: Kors et al. (1990), "Reconstruction of the Frank vectorcardiogram from standard electrocardiographic
leads", Eur. Heart J. 11:1083 -- the published (I, II, V1..V6) -> XYZ regression, for fitting to recordings.
Frank axes: X to the patient's left, Y to the feet, Z to the back.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from sediff_jax.leads import leads_from_independent

Array = jax.Array

# Rows I, II, V1..V6; columns X, Y, Z.
DOWER = np.array(
    [
        [0.632, -0.235, 0.059],
        [0.235, 1.066, -0.132],
        [-0.515, 0.157, -0.917],
        [0.044, 0.164, -1.387],
        [0.882, 0.098, -1.277],
        [1.213, 0.127, -0.601],
        [1.125, 0.127, -0.086],
        [0.831, 0.076, 0.230],
    ],
    np.float32,
)

# Rows X, Y, Z; columns I, II, V1..V6.
KORS = np.array(
    [
        [0.38, -0.07, -0.13, 0.05, -0.01, 0.14, 0.06, 0.54],
        [-0.07, 0.93, 0.06, -0.02, -0.05, 0.06, -0.17, 0.13],
        [0.11, -0.23, -0.43, -0.06, -0.14, -0.20, -0.11, 0.31],
    ],
    np.float32,
)


def dipole_to_leads(dipole: Array) -> Array:
    """Project dipole signals to the 12 leads.

    Args:
      dipole: (..., 3) mV, Frank X, Y, Z.
    Returns:
      (..., 12) mV in `sediff_jax.leads.LEAD_NAMES` order.
    """
    independent = jnp.einsum("...c,lc->...l", dipole, jnp.asarray(DOWER, dipole.dtype))
    return leads_from_independent(independent)


def leads_to_dipole(ecg: Array) -> Array:
    """Kors' reconstruction of the Frank dipole from a 12-lead ECG.

    Args:
      ecg: (..., 12) mV in `LEAD_NAMES` order.
    Returns:
      (..., 3) mV, Frank X, Y, Z.
    """
    independent = jnp.concatenate([ecg[..., :2], ecg[..., 6:]], axis=-1)
    return jnp.einsum("...l,cl->...c", independent, jnp.asarray(KORS, ecg.dtype))
