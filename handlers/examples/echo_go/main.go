// The echo agent of `runtimeuse --agent echo`, on the Go SDK. Run it with
// `runtimeuse --handler handlers/examples/echo_go.sh`, which builds it (once,
// cached) and execs it.
//
// Answers by the user prompt: ECHO:<text>, STRUCTURED:<json object>,
// SLOW:<ms> (cancellable), STREAM:<n>, STREAM_TEXT:<text>, ERROR:<msg>,
// WRITE_FILE:<path> <content>, READ_FILE:<path>, ENV:<name>; anything else
// is echoed.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"runtimeuse.dev/handler"
)

var metadata = map[string]any{"handler": "echo-go"}

func text(value string) (handler.Result, error) {
	return handler.Text(value).WithMetadata(metadata), nil
}

func fail(format string, args ...any) (handler.Result, error) {
	return handler.Result{}, handler.NewError(fmt.Sprintf(format, args...), metadata)
}

type verb func(ctx context.Context, rest string, inv *handler.Invocation, send *handler.Sender) (handler.Result, error)

var verbs = map[string]verb{
	"ECHO": func(_ context.Context, rest string, _ *handler.Invocation, _ *handler.Sender) (handler.Result, error) {
		return text(rest)
	},
	"STRUCTURED": structured,
	"SLOW":       slow,
	"STREAM":     stream,
	"STREAM_TEXT": func(_ context.Context, rest string, _ *handler.Invocation, send *handler.Sender) (handler.Result, error) {
		send.Assistant(rest)
		return text("done")
	},
	"ERROR": func(_ context.Context, rest string, _ *handler.Invocation, _ *handler.Sender) (handler.Result, error) {
		return fail("%s", rest)
	},
	"WRITE_FILE": writeFile,
	"READ_FILE": func(_ context.Context, path string, _ *handler.Invocation, _ *handler.Sender) (handler.Result, error) {
		content, err := os.ReadFile(path)
		if err != nil {
			return fail("READ_FILE: cannot read %s: %v", path, err)
		}
		return text(strings.ToValidUTF8(string(content), "\uFFFD"))
	},
	"ENV": func(_ context.Context, name string, inv *handler.Invocation, _ *handler.Sender) (handler.Result, error) {
		value, ok := inv.Env[name]
		if !ok {
			return fail("ENV: %s is not set", name)
		}
		return text(value)
	},
}

func structured(_ context.Context, rest string, _ *handler.Invocation, _ *handler.Sender) (handler.Result, error) {
	var value any
	if err := json.Unmarshal([]byte(rest), &value); err != nil {
		return fail("STRUCTURED: invalid JSON: %v", err)
	}
	object, ok := value.(map[string]any)
	if !ok {
		return fail("STRUCTURED: expected a JSON object")
	}
	return handler.Structured(object).WithMetadata(metadata), nil
}

func slow(ctx context.Context, rest string, _ *handler.Invocation, _ *handler.Sender) (handler.Result, error) {
	ms, err := strconv.ParseUint(strings.TrimSpace(rest), 10, 63)
	if err != nil {
		return fail("SLOW: not a number of milliseconds: %q", rest)
	}
	timer := time.NewTimer(time.Duration(ms) * time.Millisecond)
	defer timer.Stop()
	select {
	case <-timer.C:
		return text("done")
	case <-ctx.Done():
		return handler.Result{}, ctx.Err()
	}
}

func stream(_ context.Context, rest string, _ *handler.Invocation, send *handler.Sender) (handler.Result, error) {
	n, err := strconv.ParseUint(strings.TrimSpace(rest), 10, 31)
	if err != nil {
		return fail("STREAM: not a count: %q", rest)
	}
	for i := uint64(1); i <= n; i++ {
		send.Assistant(fmt.Sprintf("message %d of %d", i, n))
	}
	return text(fmt.Sprintf("streamed %d messages", n))
}

func writeFile(_ context.Context, rest string, _ *handler.Invocation, _ *handler.Sender) (handler.Result, error) {
	path, content, _ := strings.Cut(rest, " ")
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fail("WRITE_FILE: cannot write %s: %v", path, err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		return fail("WRITE_FILE: cannot write %s: %v", path, err)
	}
	return text("wrote " + path)
}

func main() {
	err := handler.Run(func(ctx context.Context, inv *handler.Invocation, send *handler.Sender) (handler.Result, error) {
		name, rest, found := strings.Cut(inv.UserPrompt, ":")
		if run, ok := verbs[name]; found && ok {
			return run(ctx, rest, inv, send)
		}
		return text(inv.UserPrompt)
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
