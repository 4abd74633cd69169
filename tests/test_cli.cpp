// tests/test_cli.cpp: (placeholder until its area lands)
