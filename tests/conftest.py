"""Test-session settings.

The tests evaluate small systems, where torch's intra-op threads cost more than they give, and on a
shared machine spinning threads slow everything down by 10x; one thread keeps timings stable.
"""

import torch

torch.set_num_threads(1)


def maxwell_boltzmann(atoms, temperature_K, rng):
    """Maxwell-Boltzmann momenta (ASE's thermalize_momenta, or its older name before ASE 3.29)."""
    from ase.md import velocitydistribution as vd

    draw = getattr(vd, "thermalize_momenta", None)
    if draw is not None:
        draw(atoms, temperature_K, rng=rng)
    else:
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
