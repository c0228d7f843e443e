"""The create→converge benchmark's parts (bench/create_converge.py is its entry point): the harness,
the cases measured, and the profile of where the backend spends its time."""
