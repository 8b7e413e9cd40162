"""`headplast sweep`: the pipeline's runs as jobs on an engine (local, Ray, SLURM via submitit)."""
