package handler

import "fmt"

// Level is a log line's severity.
type Level string

// Log levels of handler protocol v1.
const (
	LevelDebug Level = "debug"
	LevelInfo  Level = "info"
	LevelWarn  Level = "warn"
	LevelError Level = "error"
)

// Sender sends what a handler has to say while it runs. Safe for
// concurrent use; after the invocation's terminal (or its cancel) it
// drops everything.
type Sender struct {
	run *run
}

// Assistant streams intermediate text to the client (assistant_message),
// one block per argument.
func (s *Sender) Assistant(blocks ...string) {
	if blocks == nil {
		blocks = []string{}
	}
	s.run.send(message{"type": "assistant", "text_blocks": blocks})
}

// Log writes a line to the runtime's log (redacted there); never sent to
// the client.
func (s *Sender) Log(level Level, text string) {
	s.run.send(message{"type": "log", "level": string(level), "message": text})
}

// Logf is Log with fmt.Sprintf formatting.
func (s *Sender) Logf(level Level, format string, args ...any) {
	s.Log(level, fmt.Sprintf(format, args...))
}
