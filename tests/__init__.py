"""Heddle's test suite. Run with `python -m twisted.trial tests`.

matrix-nio is an asyncio library, so the suite runs on Twisted's asyncio reactor; it is
installed here, before anything imports the default reactor.
"""

import sys

if "twisted.internet.reactor" not in sys.modules:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()

import logging

# Server logs go to a file in trial's working directory (_trial_temp), not the terminal:
# expected errors (a refused federation invite, a deliberate 500) would otherwise be noise.
_handler = logging.FileHandler("heddle-tests.log")
_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
logging.getLogger().addHandler(_handler)
logging.getLogger().setLevel(logging.INFO)
