"""``python -m d2pruner.priors calibrate|show ...`` — see :mod:`d2pruner.calibration`."""

from d2pruner.calibration import main

raise SystemExit(main())
