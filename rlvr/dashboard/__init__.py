"""`rlvr dashboard`: follow training runs live in the browser (charts and a rollout browser)."""

from rlvr.dashboard.server import DashboardServer, make_server, serve

__all__ = ["DashboardServer", "make_server", "serve"]
