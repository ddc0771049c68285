"""The program-level JCT dashboard: a web page over the store (`app`), the figures behind it (`data`),
and the same page as one self-contained HTML file or matplotlib PNGs (`export`)."""

from agentrt.dashboard.app import create_app, load_tenant_keys, run_dashboard

__all__ = ["create_app", "load_tenant_keys", "run_dashboard"]
