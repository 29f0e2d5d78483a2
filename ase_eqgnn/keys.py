"""Named constants for property keys, shared by the calculator, the trainer and the readers.

Units inside the package are eV, Å and fs everywhere (ASE's conventions); conversions happen at the
edges (readers and writers) and are named there.
"""

ENERGY = "energy"  # eV, per structure
FREE_ENERGY = "free_energy"  # eV, equal to ENERGY for these potentials
ENERGIES = "energies"  # eV, per atom
FORCES = "forces"  # eV/Å
STRESS = "stress"  # eV/Å^3, ASE sign convention, Voigt order xx yy zz yz xz xy
VIRIAL = "virial"  # eV, -dE/d(strain) (3x3), so stress = -virial / volume
