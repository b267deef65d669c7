"""NEAT's exit signals: how close the monitored neurons are to their pattern at exit points.

``mu_ref`` is the mean (signed) activation of the selected neurons at the exit positions of the
calibration traces. Two readings of the current activation ``a_t`` of those neurons:

* the paper's (Eq. 9): ``rho_t = cos(a_t, mu_ref)`` and ``phi_t = ||a_t|| / ||mu_ref||``;
* the reference code's (``EnsembleNeuronMonitor``): each neuron is scaled by its sign-aligned
  reference magnitude, ``z_i = s_i a_i / |s_i mu_i|``, then ``sim_t = cos(z_t, 1)`` and
  ``mag_t = ||z_t||`` (a norm, not a ratio: ``sqrt(k)`` at the reference pattern).

``ExitMonitor`` computes them one token at a time, for a controller that decides to exit.

Example:
    >>> ref = ExitReference(flat=(3, 9), signs=(1, -1), mu_ref=(2.0, -1.0))
    >>> r = ExitMonitor(ref).update(np.array([4.0, -2.0]))
    >>> round(r.rho, 3), round(r.phi, 3), round(r.sim, 3), round(r.mag, 3)
    (1.0, 2.0, 1.0, 2.828)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from jaxtyping import Float

from workbench.atomic import atomic_write_text

EPS = 1e-10


@dataclass(frozen=True)
class ExitReference:
    """The selected neurons (flat indices ``layer * d_mlp + index``), their signs and ``mu_ref``."""

    flat: tuple[int, ...]
    signs: tuple[int, ...]
    mu_ref: tuple[float, ...]

    def __post_init__(self) -> None:
        if not len(self.flat) == len(self.signs) == len(self.mu_ref):
            raise ValueError(f"ExitReference: {len(self.flat)} neurons, {len(self.signs)} signs, "
                             f"{len(self.mu_ref)} reference values")

    def __len__(self) -> int:
        return len(self.flat)

    def signals(self, acts: Float[np.ndarray, "pos k"]) -> dict[str, Float[np.ndarray, " pos"]]:
        """``rho``, ``phi``, ``sim`` and ``mag`` at every position of ``acts`` (columns in ``flat`` order)."""
        mu = np.asarray(self.mu_ref, dtype=np.float64)
        a = np.asarray(acts, dtype=np.float64)
        norms = np.linalg.norm(a, axis=1)
        mu_norm = max(float(np.linalg.norm(mu)), EPS)
        rho = a @ mu / (np.maximum(norms, EPS) * mu_norm)
        signs = np.asarray(self.signs, dtype=np.float64)
        z = a * signs / np.maximum(np.abs(mu * signs), 1e-6)
        z_norm = np.linalg.norm(z, axis=1)
        sim = z.sum(1) / (np.maximum(z_norm, EPS) * np.sqrt(max(len(mu), 1)))
        return {"rho": rho, "phi": norms / mu_norm, "sim": sim, "mag": z_norm}

    def save(self, path: str | Path, **extra: Any) -> Path:
        """Writes the reference as JSON (atomically), with ``extra`` fields such as provenance."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, json.dumps({**asdict(self), **extra}, indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> ExitReference:
        """Reads a reference written by ``save``.

        >>> import tempfile
        >>> p = ExitReference((1,), (1,), (0.5,)).save(tempfile.mkdtemp() + "/r.json", provenance="x")
        >>> ExitReference.load(p)
        ExitReference(flat=(1,), signs=(1,), mu_ref=(0.5,))
        """
        path = Path(path)
        try:
            d = json.loads(path.read_text())
            return cls(tuple(int(x) for x in d["flat"]), tuple(int(x) for x in d["signs"]),
                       tuple(float(x) for x in d["mu_ref"]))
        except FileNotFoundError:
            raise ValueError(f"{path}: no NEAT reference file; run `workbench rank --method exit RUN`") from None
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: unreadable NEAT reference ({exc}); rank the run again") from exc


@dataclass(frozen=True)
class ExitReading:
    """The exit signals at one token."""

    rho: float
    phi: float
    sim: float
    mag: float


class ExitMonitor:
    """Online exit signals: feed the monitored neurons' activations one token at a time.

    Stateless apart from the last reading (kept for a controller that acts on the next step, as the
    reference code's logits processor does).
    """

    def __init__(self, reference: ExitReference) -> None:
        if not len(reference):
            raise ValueError("ExitMonitor: the reference has no neurons; rank exit neurons first")
        self.reference = reference
        self.last: ExitReading | None = None

    def update(self, acts: Float[np.ndarray, " k"]) -> ExitReading:
        """The signals for one token's activations (in the reference's neuron order)."""
        s = self.reference.signals(np.asarray(acts, dtype=np.float64)[None, :])
        self.last = ExitReading(*(float(s[k][0]) for k in ("rho", "phi", "sim", "mag")))
        return self.last

    def reset(self) -> None:
        self.last = None
