"""Tests of the health sub-app and its checks."""
