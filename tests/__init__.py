"""Heddle's test suite. Run with `python -m twisted.trial tests`.

matrix-nio is an asyncio library, so the suite runs on Twisted's asyncio reactor; it is
installed here, before anything imports the default reactor.
"""

import sys

if "twisted.internet.reactor" not in sys.modules:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
