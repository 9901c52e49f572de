"""Readers of other projects' dataset formats (registered under the kind "importer").

One module per format: ``ogmarl`` (flashbax vaults), ``omiga`` (MaMuJoCo HDF5 and SMAC torch
episodes), ``omar`` (per-agent numpy arrays), ``pymarl`` (episode-batch HDF5) and ``minari``
(import, and export through ``minari_format.export_minari``). Use them through
``python -m lightning_marl dataset convert --from FORMAT SRC DST`` or :func:`common.convert`.
Heavy dependencies (h5py, flashbax, minari) are imported only when a file is read.
"""

from lightning_marl.data.importers import minari_format, ogmarl, omar, omiga, pymarl  # noqa: F401  (registers)
from lightning_marl.data.importers.common import convert  # noqa: F401
