"""MONAI Label app for the MSSN mitosis detector: task configs, infer tasks and transforms."""
