package handler

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"sync"
)

// HandlerFunc runs one invocation. ctx is cancelled when the runtime
// cancels the invocation (or closes stdin): stop then; the cancel has been
// answered and whatever the function returns afterwards is dropped.
type HandlerFunc func(ctx context.Context, inv *Invocation, send *Sender) (Result, error)

// maxLine is the longest line read; a longer one is skipped.
const maxLine = 32 << 20

// Run serves h on stdin/stdout until stdin closes (the runtime wants the
// process gone), then returns nil. While it serves, file descriptor 1
// points at stderr (the handler's log), so fmt.Println or a child process
// inheriting stdout cannot corrupt the protocol, which goes to a private
// copy of the original stdout.
func Run(h HandlerFunc) error {
	protocol, err := claimStdout()
	if err != nil {
		return fmt.Errorf("runtimeuse handler: %w", err)
	}
	return Serve(os.Stdin, protocol, h)
}

// Serve is Run over any reader and writer (tests, embedding).
func Serve(r io.Reader, w io.Writer, h HandlerFunc) error {
	if h == nil {
		return errors.New("runtimeuse handler: nil HandlerFunc")
	}
	s := &server{handler: h, out: w}
	err := readLines(r, s.line)
	s.stop()
	return err
}

type server struct {
	handler HandlerFunc
	// mu guards out and current: handlers send from their own goroutines.
	mu      sync.Mutex
	out     io.Writer
	current *run
}

func diag(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "[runtimeuse-handler] "+format+"\n", args...)
}

// write sends one line; the caller holds mu.
func (s *server) write(m message) {
	line, err := json.Marshal(m)
	if err != nil {
		line, _ = json.Marshal(message{
			"type": "error", "id": m["id"], "metadata": map[string]any{},
			"error": fmt.Sprintf("the handler's %v cannot be sent as JSON: %v", m["type"], err),
		})
	}
	line = append(line, '\n')
	if _, err := s.out.Write(line); err != nil {
		diag("cannot write to the runtime: %v", err)
	}
}

func readLines(r io.Reader, onLine func([]byte)) error {
	reader := bufio.NewReaderSize(r, 64<<10)
	for {
		line, err := readLine(reader)
		if len(line) > 0 {
			onLine(line)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// readLine returns the next line without its "\n" (or "\r\n"); a line over
// maxLine is read to its end, reported and returned empty.
func readLine(reader *bufio.Reader) ([]byte, error) {
	var line []byte
	tooLong := false
	for {
		chunk, err := reader.ReadSlice('\n')
		if !tooLong && len(line)+len(chunk) > maxLine {
			tooLong, line = true, nil
		}
		if !tooLong {
			line = append(line, chunk...)
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if tooLong {
			diag("skipping a line over %d bytes", maxLine)
		}
		return bytes.TrimRight(line, "\r\n"), err
	}
}

func (s *server) line(line []byte) {
	if len(bytes.TrimSpace(line)) == 0 {
		return
	}
	var msg map[string]json.RawMessage
	if err := json.Unmarshal(line, &msg); err != nil {
		diag("ignoring a line that is not a JSON object")
		return
	}
	var kind string
	_ = json.Unmarshal(msg["type"], &kind)
	switch kind {
	case "invoke":
		s.invoke(line)
	case "cancel":
		var cancel struct {
			ID *string `json:"id"`
		}
		_ = json.Unmarshal(line, &cancel)
		s.cancel(cancel.ID)
	default:
		diag("ignoring a message of unknown type %q", kind)
	}
}

type invokeLine struct {
	Invocation
	Protocol     *int            `json:"protocol"`
	ID           *string         `json:"id"`
	SourceID     *string         `json:"source_id"`
	OutputFormat json.RawMessage `json:"output_format"`
	Env          map[string]any  `json:"env"`
	Secrets      []any           `json:"secrets"`
}

func (s *server) invoke(line []byte) {
	var in invokeLine
	if err := json.Unmarshal(line, &in); err != nil || in.ID == nil {
		diag("ignoring an invoke without a string id or with fields of the wrong type")
		return
	}
	id := *in.ID
	s.mu.Lock()
	defer s.mu.Unlock()
	if refusal := s.refusal(in.Protocol); refusal != "" {
		s.write(message{"type": "error", "id": id, "error": refusal, "metadata": map[string]any{}})
		return
	}
	inv := invocationOf(id, &in)
	ctx, cancel := context.WithCancel(context.Background())
	r := &run{server: s, id: id, cancel: cancel}
	s.current = r
	go r.execute(ctx, inv)
}

func (s *server) refusal(protocol *int) string {
	if protocol == nil || *protocol != Protocol {
		version := "null"
		if protocol != nil {
			version = fmt.Sprint(*protocol)
		}
		return fmt.Sprintf("unsupported handler protocol %s (this handler speaks %d)", version, Protocol)
	}
	if s.current != nil {
		return fmt.Sprintf("another invocation (%s) is still running", s.current.id)
	}
	return ""
}

// invocationOf fills the defaults the runtime's line may omit.
func invocationOf(id string, in *invokeLine) *Invocation {
	inv := in.Invocation
	inv.ID = id
	if in.SourceID != nil {
		inv.SourceID = *in.SourceID
	}
	inv.OutputFormat = nil
	var format OutputFormat
	if len(in.OutputFormat) > 0 && json.Unmarshal(in.OutputFormat, &format) == nil && format.Type != "" {
		inv.OutputFormat = &format
	}
	inv.Env = map[string]string{}
	for key, value := range in.Env {
		if text, ok := value.(string); ok {
			inv.Env[key] = text
		}
	}
	inv.Secrets = []string{}
	for _, secret := range in.Secrets {
		if text, ok := secret.(string); ok {
			inv.Secrets = append(inv.Secrets, text)
		}
	}
	return &inv
}

func (s *server) cancel(id *string) {
	s.mu.Lock()
	r := s.current
	if r == nil || (id != nil && *id != r.id) {
		s.mu.Unlock()
		diag("cancel for %v: no such invocation running", quoted(id))
		return
	}
	r.finishLocked(message{"type": "error", "error": "cancelled", "metadata": map[string]any{}})
	s.mu.Unlock()
	r.cancel()
}

func quoted(id *string) string {
	if id == nil {
		return "null"
	}
	return fmt.Sprintf("%q", *id)
}

// stop is stdin EOF: what runs is cancelled; its terminal no longer matters.
func (s *server) stop() {
	s.mu.Lock()
	r := s.current
	s.current = nil
	if r != nil {
		r.done = true
	}
	s.mu.Unlock()
	if r != nil {
		r.cancel()
	}
}

// run is one invocation, from invoke to its terminal.
type run struct {
	server *server
	id     string
	cancel context.CancelFunc
	done   bool // guarded by server.mu
}

func (r *run) execute(ctx context.Context, inv *Invocation) {
	defer r.cancel()
	result, err := r.call(ctx, inv)
	if err != nil {
		r.finish(errorMessage(err))
		return
	}
	r.finish(resultMessage(result))
}

// call runs the handler; a panic becomes an error (and a stack in the log).
func (r *run) call(ctx context.Context, inv *Invocation) (result Result, err error) {
	defer func() {
		if p := recover(); p != nil {
			diag("invocation %s panicked: %v\n%s", r.id, p, debug.Stack())
			err = fmt.Errorf("handler panicked: %v", p)
		}
	}()
	return r.server.handler(ctx, inv, &Sender{run: r})
}

func (r *run) send(m message) {
	r.server.mu.Lock()
	defer r.server.mu.Unlock()
	if !r.done {
		m["id"] = r.id
		r.server.write(m)
	}
}

func (r *run) finish(m message) {
	r.server.mu.Lock()
	defer r.server.mu.Unlock()
	r.finishLocked(m)
}

// finishLocked sends the terminal, once; the caller holds server.mu.
func (r *run) finishLocked(m message) {
	if r.done {
		return
	}
	r.done = true
	if r.server.current == r {
		r.server.current = nil
	}
	m["id"] = r.id
	r.server.write(m)
}
