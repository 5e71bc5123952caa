"""Browser tests of the web page. A package, so its conftest and module names never clash with tests/api's."""
