"""One entry's life: running create (producer, creator), the pipe between its
writer and its readers (writer, pipe, sink, sizes) and what readers hold (stream).
Imports disk/ and ipc, never the cache above it."""
