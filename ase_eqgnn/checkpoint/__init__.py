"""Model files, one module for every kind the package writes: a JSON config plus tensors, sealed
with a SHA-256 digest, written atomically, read without running pickled code, and checked as
untrusted input before anything is built. One error type, :class:`CheckpointError` (a
``ValueError``), names the file and what to do.

Potential files (:func:`save_model` / :func:`load_model`, :mod:`.potential`), a ``torch.save``
dict read back with ``torch.load(weights_only=True)``::

    {"format": "ase_eqgnn", "format_version": 2, "package_version": "0.1.0",
     "config_json": '{"name": ..., "species": [...], "cutoff": ..., "hparams": {...},
                      "domain": {"Cu-Cu": 2.31} or null, "units": {...}, "metadata": {...}}',
     "state_dict": {name: tensor},
     "sha256": digest of everything above}

Back-mapping model files (:mod:`ase_eqgnn.cg.backmap`) use the same machinery (:mod:`.files`):
:func:`write_checkpoint` seals a payload with :func:`payload_digest` and writes it atomically;
:func:`read_checkpoint` verifies format, version and digest. Any damage to a sealed file, one flipped
bit in a weight or in the config, is a :class:`CheckpointError`. Files of a version from before
digests load with one :class:`CheckpointWarning`. The digest detects damage, not forgery (anyone can
re-seal an edited file), which is why every file's config and tensors are also checked for sense.

Example
-------
>>> import os, tempfile
>>> from ase_eqgnn.models import build_model
>>> path = os.path.join(tempfile.mkdtemp(), "model.pt")
>>> save_model(build_model("painn", species=["Cu"], cutoff=4.0, features=8, layers=1), path)
>>> load_model(path).cutoff
4.0
"""

from .files import (DIGEST_KEY, CheckpointError, CheckpointWarning, FileKind, atomic_torch_save,
                    check_finite, check_state_shapes, payload_digest, probe_state_shapes,
                    read_checkpoint, write_checkpoint)
from .potential import (CUTOFF_RANGE_A, FORMAT, FORMAT_VERSION, HPARAM_BOUNDS, MAX_PARAMETERS, UNITS,
                        check_cutoff, check_domain, check_hparams, load_checkpoint_dict, load_model,
                        save_model)

__all__ = ["CheckpointError", "CheckpointWarning", "FileKind", "DIGEST_KEY", "payload_digest",
           "atomic_torch_save", "write_checkpoint", "read_checkpoint", "check_finite",
           "probe_state_shapes", "check_state_shapes", "save_model", "load_model",
           "load_checkpoint_dict", "check_hparams", "check_cutoff", "check_domain", "FORMAT",
           "FORMAT_VERSION", "UNITS", "HPARAM_BOUNDS", "CUTOFF_RANGE_A", "MAX_PARAMETERS"]
