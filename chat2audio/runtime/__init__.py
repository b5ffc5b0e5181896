"""The runtime leaf the engines (`llm/`, `tts/`, `stt/`) may share: the thread bridge, the HTTP
upstream helpers, the device rule, the engine error base and the text measures. It imports
nothing of the service above it."""
