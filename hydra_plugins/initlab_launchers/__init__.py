"""initlab's Hydra launcher plugins (Hydra instantiates launchers only from `hydra_plugins`):
thin subclasses of the joblib and submitit plugins whose `launch` is initlab.app.launchers'.
Each is defined only where its plugin (the `parallel` / `slurm` extra) is installed, and
imports nothing heavy: Hydra imports every plugin module on every start."""
