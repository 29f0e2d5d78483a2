"""What every kind of model file shares: digest, atomic writes, verified reads, checks before building.

- :func:`payload_digest`: SHA-256 over a file's content (see below); :func:`write_checkpoint` seals
  a payload with it (key ``"sha256"``) and writes it atomically; :func:`read_checkpoint` loads with
  ``torch.load(weights_only=True)`` (no pickled code runs), checks format and version and verifies
  the digest, warning once for files from before digests.
- :func:`probe_state_shapes` builds a module with its allocations on the ``meta`` device, so the
  shapes a config implies are known before any memory is spent; :func:`check_state_shapes` compares
  them with the stored tensors and :func:`check_finite` looks for NaN and infinities.

Digest: SHA-256 over a canonical byte stream of the payload minus its ``"sha256"`` entry. Each value
is written with a type tag and its length where it has one: strings as UTF-8, ints in decimal,
floats as ``float.hex``, tensors as dtype, shape and their raw bytes (CPU, contiguous), lists in
order and dicts in sorted key order, recursively. Two payloads with the same digest hold the same
names, dtypes, shapes, bytes and config text.

Example
-------
>>> import torch
>>> a = payload_digest({"config_json": "{}", "state_dict": {"w": torch.ones(2)}})
>>> b = payload_digest({"state_dict": {"w": torch.ones(2)}, "config_json": "{}"})
>>> a == b, a == payload_digest({"config_json": "{}", "state_dict": {"w": torch.zeros(2)}})
(True, False)
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tempfile
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._device import _device_constructors

PathLike = Union[str, "os.PathLike[str]"]
DIGEST_KEY = "sha256"
#: Deepest nesting of dicts and lists a model file may have (a trainer's optimizer state: about 5).
MAX_DEPTH = 32


class CheckpointError(ValueError):
    """A model file that is missing pieces, damaged, foreign, implausible or from a newer version."""


class CheckpointWarning(UserWarning):
    """A model file that loads but lacks what newer files carry (digest, training-domain record)."""


@dataclass(frozen=True)
class FileKind:
    """How one kind of model file identifies itself: ``payload[version_key]`` is its version (at
    most ``version``); files from ``sealed_since`` on must carry a digest."""

    format: str
    version_key: str
    version: int
    sealed_since: int
    what: str    # "model file", for messages
    writer: str  # what writes such files, for the "not a ... file" message


# -- digest -----------------------------------------------------------------------------------------
def _feed(h: "hashlib._Hash", obj: Any, depth: int = 0) -> None:
    def chunk(tag: bytes, data: bytes) -> None:
        h.update(tag + len(data).to_bytes(8, "little") + data)

    if depth > MAX_DEPTH:
        raise TypeError(f"its entries are nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, torch.Tensor):
        if obj.layout != torch.strided or \
                obj.numel() * obj.element_size() > obj.untyped_storage().nbytes():
            # a broadcast view of a few stored bytes could claim terabytes once made contiguous
            raise TypeError(f"a tensor of shape {tuple(obj.shape)} is not plain data stored in full")
        t = obj.detach().to("cpu").contiguous().reshape(-1)
        chunk(b"T", f"{t.dtype}{tuple(obj.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    elif isinstance(obj, str):
        chunk(b"S", obj.encode("utf-8", "surrogatepass"))
    elif isinstance(obj, (bytes, bytearray)):
        chunk(b"B", bytes(obj))
    elif obj is None or isinstance(obj, bool):
        chunk(b"K", repr(obj).encode())
    elif isinstance(obj, int):
        chunk(b"I", str(obj).encode())
    elif isinstance(obj, float):
        chunk(b"F", obj.hex().encode())
    elif isinstance(obj, (torch.dtype, torch.Size, torch.device)):
        chunk(b"O", repr(obj).encode())
    elif isinstance(obj, dict):
        chunk(b"D", str(len(obj)).encode())
        for key in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            _feed(h, key, depth + 1)
            _feed(h, obj[key], depth + 1)
    elif isinstance(obj, (list, tuple)):
        chunk(b"L" if isinstance(obj, list) else b"U", str(len(obj)).encode())
        for item in obj:
            _feed(h, item, depth + 1)
    else:
        raise TypeError(f"cannot digest a {type(obj).__name__} in a model file")


def payload_digest(payload: Dict[str, Any]) -> str:
    """Hex SHA-256 of ``payload`` without its digest entry (see the module docstring).

    TypeError for content no model file holds: other objects, nesting deeper than
    :data:`MAX_DEPTH`, tensors that are not plain strided data stored in full.
    """
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in payload.items() if k != DIGEST_KEY})
    return h.hexdigest()


# -- writing -----------------------------------------------------------------------------------------
def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` through a temporary file, fsync and ``os.replace``."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; a checkpoint is an ordinary readable file
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable; not possible on every platform
        dfd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def write_checkpoint(payload: Dict[str, Any], path: PathLike) -> None:
    """Seal ``payload`` with its digest and write it atomically (:func:`atomic_torch_save`)."""
    payload = {k: v for k, v in payload.items() if k != DIGEST_KEY}
    payload[DIGEST_KEY] = payload_digest(payload)
    atomic_torch_save(payload, path)


# -- reading -----------------------------------------------------------------------------------------
def read_checkpoint(path: PathLike, kind: FileKind, legacy_note: str = "") -> Dict[str, Any]:
    """The content of a ``kind`` file on the CPU, its format, version and digest verified.

    ``FileNotFoundError`` for a missing file; :class:`CheckpointError` naming the file for one that
    is unreadable, foreign, newer than this code, unsealed although its version has digests, or whose
    digest does not match. A file from before ``kind.sealed_since`` loads with one
    :class:`CheckpointWarning` (``legacy_note`` says what else such files lack).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{kind.what} {path!r} does not exist")
    if not os.path.isfile(path):  # a folder, a pipe or a device: never opened
        raise CheckpointError(f"{kind.what} {path!r} is not a regular file")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or pickled objects weights_only refuses
        raise CheckpointError(
            f"cannot read {kind.what} {path!r}: it is truncated, corrupt or not a torch file "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}). "
            "Re-save or re-download it.") from None
    if not isinstance(raw, dict) or raw.get("format") != kind.format:
        found = type(raw).__name__ if not isinstance(raw, dict) else \
            f"dict with keys {sorted(map(str, raw))[:6]}"
        raise CheckpointError(f"{path!r} is not an ase_eqgnn {kind.what} (found a {found}); such files "
                              f"are written by {kind.writer}, files from other packages are not read")
    version = raw.get(kind.version_key)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{kind.what} {path!r} has an invalid {kind.version_key} {version!r}")
    if version > kind.version:
        raise CheckpointError(
            f"{kind.what} {path!r} has {kind.version_key} {version}, newer than this ase_eqgnn "
            f"(reads up to {kind.version}; file written by ase_eqgnn "
            f"{raw.get('package_version', '?')}). Upgrade ase_eqgnn to load it.")
    try:  # also for files without a digest: it walks and vets every entry
        actual = payload_digest(raw)
    except (TypeError, RuntimeError) as err:
        raise CheckpointError(f"{kind.what} {path!r} is damaged: {err}") from None
    stored = raw.get(DIGEST_KEY)
    if stored is None and version < kind.sealed_since:
        note = f" {legacy_note}" if legacy_note else ""
        warnings.warn(f"{kind.what} {path!r} was written by an older ase_eqgnn ({kind.version_key} "
                      f"{version}): it has no integrity digest{note}. It loads, but damage to it "
                      "cannot be detected; save it again with this version to add what is missing.",
                      CheckpointWarning, stacklevel=3)
        return raw
    if not isinstance(stored, str):
        raise CheckpointError(f"{kind.what} {path!r} has no valid integrity digest; the file is "
                              "damaged. Re-save or re-download it.")
    if not hmac.compare_digest(stored, actual):
        raise CheckpointError(f"{kind.what} {path!r} is damaged: its content does not match its "
                              "SHA-256 digest (a changed weight or config). Re-save or re-download it.")
    return raw


# -- checks before building ----------------------------------------------------------------------
def check_finite(tensors: Dict[str, torch.Tensor], where: str) -> None:
    """CheckpointError naming the first floating-point tensor with a NaN or infinite entry."""
    for name, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f"{where}: tensor {name!r} holds NaN or infinite values; the file "
                                  "is damaged or from a diverged training run")


class _MetaAllocations(TorchFunctionMode):
    """Tensor factories without an explicit device allocate on ``meta`` (shape only, no memory).

    Unlike ``with torch.device("meta")``, torch's default device stays the CPU and empty tensors
    stay real, so libraries that ask for the default device (``torch.empty(0).device``) to compute
    numerical constants at construction (e3nn normalises its activations that way) still can.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _device_constructors() and kwargs.get("device") is None:
            probe = func(*args, **{**kwargs, "device": torch.device("meta")})
            if not isinstance(probe, torch.Tensor) or probe.numel() > 0:
                return probe
        return func(*args, **kwargs)


def _warm_e3nn_constants(l_max: int) -> None:
    # e3nn computes Clebsch-Gordan coefficients from data and caches them; computed here for real,
    # the cached values serve the meta build of tensor-product models.
    try:
        from e3nn import o3
    except ImportError:
        return
    for l1 in range(l_max + 1):
        for l2 in range(l_max + 1):
            for l3 in range(abs(l1 - l2), min(l1 + l2, l_max) + 1):
                o3.wigner_3j(l1, l2, l3)


def probe_state_shapes(build: Callable[[], torch.nn.Module], l_max: Optional[int] = None
                       ) -> Optional[Dict[str, Tuple[torch.Size, torch.dtype]]]:
    """``{name: (shape, dtype)}`` of the state_dict of ``build()``, built with its allocations on
    the meta device; None when the module cannot be built that way (the caller has then only its
    bounds on the config). ``l_max``: angular order whose e3nn constants to compute first.

    ValueError/TypeError from ``build`` (a config the builder refuses) propagate.
    """
    if isinstance(l_max, int) and 0 <= l_max <= 6:
        _warm_e3nn_constants(l_max)
    try:
        with torch.random.fork_rng(devices=[]), _MetaAllocations():
            module = build()
    except (ValueError, TypeError):
        raise
    except (RuntimeError, NotImplementedError, AssertionError):  # needs real data to be built
        return None
    return {k: (v.shape, v.dtype) for k, v in module.state_dict().items()}


def check_state_shapes(expected: Dict[str, Tuple[torch.Size, torch.dtype]],
                       stored: Dict[str, torch.Tensor], where: str, max_elements: int) -> None:
    """CheckpointError unless ``stored`` has exactly the names and shapes of ``expected`` (and
    integer dtypes where expected), with at most ``max_elements`` elements in all."""
    total = sum(shape.numel() for shape, _ in expected.values())
    if total > max_elements:
        raise CheckpointError(f"{where} describes a network of {total:,} weights, more than the "
                              f"{max_elements:,} a model file may have; its config is damaged")
    missing, unexpected = sorted(set(expected) - set(stored)), sorted(set(stored) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{where} does not match its config (missing tensors {missing[:3]}, "
                              f"unexpected {unexpected[:3]}); the file is damaged")
    for name, (shape, dtype) in expected.items():
        t = stored[name]
        if t.shape != shape:
            raise CheckpointError(f"{where} does not match its config: tensor {name!r} has shape "
                                  f"{tuple(t.shape)}, the config implies {tuple(shape)}; the file is "
                                  "damaged")
        if t.dtype.is_floating_point != dtype.is_floating_point or \
                (not dtype.is_floating_point and t.dtype != dtype):
            raise CheckpointError(f"{where}: tensor {name!r} is {t.dtype}, expected {dtype}; the file "
                                  "is damaged")


__all__ = ["CheckpointError", "CheckpointWarning", "FileKind", "DIGEST_KEY", "payload_digest",
           "atomic_torch_save", "write_checkpoint", "read_checkpoint", "check_finite",
           "probe_state_shapes", "check_state_shapes"]
