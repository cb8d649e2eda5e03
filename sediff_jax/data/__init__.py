"""The data layer: WFDB records -> canonical 12-lead form -> prepared array_record datasets -> batches.

Import the submodules you need (`sediff_jax.data.ptbxl`, `.loader`, ...); this package does not import
tensorflow_datasets until a builder or loader is used. Signal processing (R peaks, beats, filters,
delineation) is `sediff_jax.signal`.
"""

from sediff_jax.data.canonical import CanonicalConfig, CanonicalRecord, canonicalize
from sediff_jax.data.sources import SPLITS, LayoutError, RecordEntry
from sediff_jax.data.wfdb_reader import RawRecord, RecordError, read_record
