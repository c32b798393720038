module runtimeuse.dev/examples/echo

go 1.19

require runtimeuse.dev/handler v0.0.0
