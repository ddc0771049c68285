"""agentrt: the runtime users program agents against (agents as async Python, tools, store, server).

Not built yet: the runtime lands with its own issue. Today the embedded engine (`engine`) is the
usable part of the distribution; see the README.
"""
