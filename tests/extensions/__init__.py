"""Test-only extensions, one module each, registered the way a newcomer would add a built-in
one (docs/architecture.md): a deployment target and an objective term."""
