"""NVlabs/EDM checkpoints as ld3 sigma-space denoisers, loaded without executing pickled code.

* :mod:`.unpickler`: the restricted unpickler (explicit allow-list of globals; EDM's pickled
  module source is never executed);
* :mod:`.layers`, :mod:`.networks`: our implementation of EDM's SongUNet (DDPM++/NCSN++) and
  DhariwalUNet (ADM) with EDM's parameter names;
* :mod:`.precond`: VP / VE / iDDPM / EDM preconditioning as :class:`~ld3_cli.models.base.Denoiser`;
* :mod:`.loader`: :func:`load_edm` and the ``kind: edm`` registry builder.
"""
from .loader import EDMArchitectureError, build, load_edm, network_from_record, random_network
from .precond import PRECONDS, EDMPrecond, EDMPrecondBase, VEPrecond, VPPrecond, iDDPMPrecond
from .unpickler import PersistentRecord, restricted_load

__all__ = [
           "PRECONDS",
           "EDMArchitectureError",
           "EDMPrecond",
           "EDMPrecondBase",
           "PersistentRecord",
           "VEPrecond",
           "VPPrecond",
           "build",
           "iDDPMPrecond",
           "load_edm",
           "network_from_record",
           "random_network",
           "restricted_load",
]
