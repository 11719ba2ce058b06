"""The runtime: the worker that runs one placed unit (`python -m edgeflow.runtime --config
unit.json`), the message format, sensor drivers and sinks, link emulation, the embedded broker
and `edgeflow run` (docs/runtime.md). The worker imports only this package, `unit_config` and its
libraries (paho-mqtt, numpy, onnxruntime, prometheus_client), never the compiler."""
