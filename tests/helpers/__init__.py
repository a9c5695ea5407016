"""Helpers shared by the tests: the shared media, real servers (PostgreSQL, Prometheus), HTTP calls to the
service. Only tests import them."""
