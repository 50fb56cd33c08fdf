"""``python apps/deploy -i ... -o ... -m ...``: the folder form of ``app.py`` (what a MAP runs)."""

import logging

from app import MSSNMitosisApp

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    MSSNMitosisApp().run()
