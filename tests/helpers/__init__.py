"""What several test modules share: settings and tiny configs, the real data's location, training
harnesses. Test modules import from here (and from tests/references/), never from each other
(tests/test_architecture.py checks it)."""
