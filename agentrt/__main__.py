"""`python -m agentrt ...` is the `agentrt` command."""

import sys

from agentrt.cli import main

sys.exit(main())
