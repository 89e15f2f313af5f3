"""The cache directory: records under striped flocks (index), data and entry files
(filestore), their changes together (store), the byte budget (usage) and the
cleanup pass (eviction). Imports ipc, never entry/ or the cache above it."""
