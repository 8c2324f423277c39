"""Files shipped with the package: trained models and measured results.

Each one names the script that regenerates it (see CONTRIBUTING.md, "Shipped assets").
"""

from pathlib import Path

ASSETS = Path(__file__).resolve().parent
