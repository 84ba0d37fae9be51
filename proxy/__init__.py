"""mixpanel-dwh-proxy: own your Mixpanel data."""

__version__ = "0.1.0"
