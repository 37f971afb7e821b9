"""``python -m aa_jax.rational``: the table of fit errors, measured again (see ``fit.py``)."""

from aa_jax.rational.fit import FIT_MAX_ERROR, FIT_MEASURED_ERROR, measure_fit_error

if __name__ == "__main__":
    print("init        version  measured   recorded   bound")
    for (init, version), recorded in FIT_MEASURED_ERROR.items():
        print(f"{init:11s} {version:8s} {measure_fit_error(init, version):.3g}  "
              f"{recorded:.3g}  {FIT_MAX_ERROR[(init, version)]:.3g}")
