"""One module per destination stand-in, each defining a session-scoped pytest fixture
that starts it once per test run (tests/conftest.py loads every module here as a
plugin). A stand-in binds 127.0.0.1, runs in its own process group, is ready only
when the official client has made a real call against it, and is stopped at the end."""
