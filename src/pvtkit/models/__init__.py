"""The model families, a package each (`configuration`, `conversion`, `modeling`, `processing`), the pyramid
encoder they share (`pyramid/`), and the registry (`family.py`)."""
