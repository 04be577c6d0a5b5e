"""Development support shared by tests/ and bench/: the localstripe helpers and the simulated
year. Never imported by the product (the import-linter layers list only the apps)."""
