module runtimeuse.dev/handler

go 1.19
