"""tb_stability demo runs (importable: `from demo.main import run_all`)."""
