"""Simulated cryo-EM particle images from atomic models and maps (``biocnn simulate``).

Modules: :mod:`~biocnn.sim.structure` (volumes from PDB/mmCIF/MRC),
:mod:`~biocnn.sim.project` (orientations, Fourier-slice projection),
:mod:`~biocnn.sim.ctf` (contrast transfer function), :mod:`~biocnn.sim.imaging`
(shifts, noise, phase flips), :mod:`~biocnn.sim.junk` (non-particle images) and
:mod:`~biocnn.sim.simulate` (writing a labelled data set) with its settings in
:mod:`~biocnn.sim.config`. 2D class averages (``--kind class-averages``):
:mod:`~biocnn.sim.procedural` (pseudo-atomic models), :mod:`~biocnn.sim.average` (image
formation), :mod:`~biocnn.sim.average_junk` (junk classes) and
:mod:`~biocnn.sim.average_dataset` (good/junk data set); see ``CLASS_AVERAGES.md``. Import them directly; this
package stays light so that ``import biocnn`` does not pull in gemmi.
"""

__all__: list[str] = []
