"""Network edge commands: ``kneenode scp``, ``kneenode echo``, ``kneenode send``."""
