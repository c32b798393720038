package handler

import (
	"encoding/json"
	"fmt"
)

// Protocol is the handler protocol version this package speaks.
const Protocol = 1

// OutputFormat asks for structured output matching Schema instead of text.
type OutputFormat struct {
	Type   string         `json:"type"`
	Schema map[string]any `json:"schema"`
}

// Invocation is one agent invocation, as the runtime sends it.
type Invocation struct {
	// ID is the opaque invocation id (for your logs).
	ID string `json:"id"`
	// SourceID is the client's source_id, for your logs; "" when it sent none.
	SourceID     string `json:"source_id"`
	SystemPrompt string `json:"system_prompt"`
	UserPrompt   string `json:"user_prompt"`
	// Model may be empty.
	Model string `json:"model"`
	// OutputFormat is nil for a text answer; otherwise answer with
	// StructuredOutput.
	OutputFormat *OutputFormat `json:"output_format"`
	// Env is the invocation's agent_env. It is not in os.Environ (one
	// process serves many invocations): apply it to what you run, e.g.
	// cmd.Env = append(os.Environ(), inv.EnvList()...).
	Env map[string]string `json:"env"`
	// Secrets are values to keep out of your own logs (see Redact); the
	// runtime redacts whatever it forwards anyway.
	Secrets []string `json:"secrets"`
}

// EnvList is Env as KEY=VALUE strings, the form exec.Cmd.Env takes.
func (inv *Invocation) EnvList() []string {
	list := make([]string, 0, len(inv.Env))
	for key, value := range inv.Env {
		list = append(list, key+"="+value)
	}
	return list
}

// Result is what a handler answers: Text, or StructuredOutput when it is
// not nil (anything that marshals to a JSON object: a map or a struct).
type Result struct {
	Text             string
	StructuredOutput any
	// Metadata is passed to the client's result_message; nil means {}.
	Metadata map[string]any
}

// Text is a text result.
func Text(text string) Result { return Result{Text: text} }

// Structured is a structured-output result.
func Structured(output any) Result { return Result{StructuredOutput: output} }

// WithMetadata returns the result with its metadata set.
func (r Result) WithMetadata(metadata map[string]any) Result {
	r.Metadata = metadata
	return r
}

// Error fails an invocation with a message and metadata (error_message).
// Any other error fails it too; this one carries metadata.
type Error struct {
	Message  string
	Metadata map[string]any
}

func (e *Error) Error() string { return e.Message }

// NewError is an *Error with metadata.
func NewError(message string, metadata map[string]any) *Error {
	return &Error{Message: message, Metadata: metadata}
}

// Errorf is an *Error without metadata, formatted like fmt.Sprintf.
func Errorf(format string, args ...any) *Error {
	return &Error{Message: fmt.Sprintf(format, args...)}
}

// message is one protocol line the handler writes.
type message map[string]any

func orEmpty(metadata map[string]any) map[string]any {
	if metadata == nil {
		return map[string]any{}
	}
	return metadata
}

// resultMessage is the terminal for a returned Result, or an error
// terminal when the result breaks the contract.
func resultMessage(r Result) message {
	if r.StructuredOutput == nil {
		return message{"type": "result", "text": r.Text, "metadata": orEmpty(r.Metadata)}
	}
	raw, err := json.Marshal(r.StructuredOutput)
	if err != nil {
		return errorMessage(fmt.Errorf("structured output cannot be sent as JSON: %v", err))
	}
	if len(raw) == 0 || raw[0] != '{' {
		return errorMessage(fmt.Errorf("structured output must be a JSON object, got %s", truncate(string(raw), 40)))
	}
	return message{"type": "result", "structured_output": json.RawMessage(raw), "metadata": orEmpty(r.Metadata)}
}

// errorMessage is the terminal for a returned error.
func errorMessage(err error) message {
	var metadata map[string]any
	if e, ok := err.(*Error); ok {
		metadata = e.Metadata
	}
	text := err.Error()
	if text == "" {
		text = fmt.Sprintf("%T", err)
	}
	return message{"type": "error", "error": text, "metadata": orEmpty(metadata)}
}

func truncate(text string, max int) string {
	if len(text) <= max {
		return text
	}
	return text[:max] + "..."
}
