"""Entry point. Exits with ``os._exit`` after an orderly shutdown: interpreter teardown of gloo
and NCCL objects can abort a finished process, which would turn success into a failure code."""

import logging
import os
import sys

from .cli import main

rc = main()
sys.stdout.flush()
sys.stderr.flush()
logging.shutdown()
os._exit(rc)
