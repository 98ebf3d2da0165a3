"""Live dashboard, JSON API and Prometheus metrics served from inside the daemon (off by default)."""

from .config import DashboardConfig
from .metrics import SinkMetrics, SourceMetrics
from .server import DashboardError, DashboardServer
from .state import DashboardState

__all__ = ["DashboardConfig", "DashboardError", "DashboardServer", "DashboardState", "SinkMetrics", "SourceMetrics"]
