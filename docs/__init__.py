"""The docs (a package only so that ``docs/conftest.py`` cannot shadow ``tests/conftest.py``)."""
