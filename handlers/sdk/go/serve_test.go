package handler

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"
	"time"
)

// peer drives Serve like the runtime does: lines in, lines out.
type peer struct {
	t        *testing.T
	in       *io.PipeWriter
	messages chan map[string]any
	served   chan error
}

func start(t *testing.T, h HandlerFunc) *peer {
	t.Helper()
	inR, inW := io.Pipe()
	outR, outW := io.Pipe()
	p := &peer{t: t, in: inW, messages: make(chan map[string]any, 64), served: make(chan error, 1)}
	go func() {
		p.served <- Serve(inR, outW, h)
		outW.Close()
	}()
	go func() {
		scanner := bufio.NewScanner(outR)
		scanner.Buffer(nil, 64<<20)
		for scanner.Scan() {
			var m map[string]any
			if err := json.Unmarshal(scanner.Bytes(), &m); err != nil {
				t.Errorf("not a protocol line: %q", scanner.Text())
				continue
			}
			p.messages <- m
		}
		close(p.messages)
	}()
	t.Cleanup(func() { p.close() })
	return p
}

func (p *peer) send(line string) {
	p.t.Helper()
	if _, err := io.WriteString(p.in, line+"\n"); err != nil {
		p.t.Fatalf("write: %v", err)
	}
}

func (p *peer) invoke(id, prompt string, fields map[string]any) {
	p.t.Helper()
	m := map[string]any{
		"type": "invoke", "protocol": 1, "id": id, "source_id": nil, "system_prompt": "sys",
		"user_prompt": prompt, "model": "m", "output_format": nil, "env": map[string]any{}, "secrets": []any{},
	}
	for k, v := range fields {
		m[k] = v
	}
	line, _ := json.Marshal(m)
	p.send(string(line))
}

func (p *peer) next() map[string]any {
	p.t.Helper()
	select {
	case m, ok := <-p.messages:
		if !ok {
			p.t.Fatal("the handler's output ended")
		}
		return m
	case <-time.After(15 * time.Second):
		p.t.Fatal("no message within 15s")
	}
	return nil
}

func (p *peer) terminal() map[string]any {
	p.t.Helper()
	for {
		m := p.next()
		if m["type"] == "result" || m["type"] == "error" {
			return m
		}
	}
}

func (p *peer) close() error {
	p.in.Close()
	select {
	case err := <-p.served:
		p.served <- err
		return err
	case <-time.After(15 * time.Second):
		p.t.Fatal("Serve did not return after EOF")
	}
	return nil
}

func equal(t *testing.T, got, want any) {
	t.Helper()
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	var gv, wv any
	_ = json.Unmarshal(g, &gv)
	_ = json.Unmarshal(w, &wv)
	if !reflect.DeepEqual(gv, wv) {
		t.Fatalf("got  %s\nwant %s", g, w)
	}
}

type obj = map[string]any

func echo(ctx context.Context, inv *Invocation, send *Sender) (Result, error) {
	verb, rest, _ := strings.Cut(inv.UserPrompt, ":")
	switch verb {
	case "TEXT":
		return Text(rest).WithMetadata(obj{"handler": "t"}), nil
	case "STRUCT":
		var v any
		if err := json.Unmarshal([]byte(rest), &v); err != nil {
			return Result{}, err
		}
		return Structured(v), nil
	case "INFO":
		return Structured(inv), nil
	case "SAY":
		send.Assistant(rest)
		send.Assistant(rest, "second")
		send.Log(LevelDebug, "log debug")
		send.Logf(LevelWarn, "log %s", "warn")
		return Text("said"), nil
	case "FAIL":
		return Result{}, NewError(rest, obj{"code": 7})
	case "PLAIN":
		return Result{}, errors.New("plain " + rest)
	case "PANIC":
		panic("boom " + rest)
	case "WAIT":
		send.Assistant("waiting")
		<-ctx.Done()
		send.Assistant("after cancel")
		return Text("late"), nil
	}
	return Text(inv.UserPrompt), nil
}

func TestTextAndStructuredResults(t *testing.T) {
	p := start(t, echo)
	p.invoke("a", "TEXT:hello", nil)
	equal(t, p.next(), obj{"type": "result", "text": "hello", "metadata": obj{"handler": "t"}, "id": "a"})
	p.invoke("s", `STRUCT:{"a":[1,2],"b":null}`, nil)
	equal(t, p.next(), obj{"type": "result", "structured_output": obj{"a": []any{1, 2}, "b": nil}, "metadata": obj{}, "id": "s"})
	if err := p.close(); err != nil {
		t.Fatal(err)
	}
}

func TestTheInvocationHasEveryField(t *testing.T) {
	p := start(t, echo)
	format := obj{"type": "json_schema", "schema": obj{"type": "object"}}
	p.invoke("i", "INFO", obj{
		"source_id": "src", "system_prompt": "be brief", "model": "gpt-x", "output_format": format,
		"env": obj{"A": "1", "B": "two", "N": 3}, "secrets": []any{"s3cret", 4}, "future": true,
	})
	equal(t, p.next()["structured_output"], obj{
		"id": "i", "source_id": "src", "system_prompt": "be brief", "user_prompt": "INFO", "model": "gpt-x",
		"output_format": format, "env": obj{"A": "1", "B": "two"}, "secrets": []any{"s3cret"},
	})
	p.invoke("j", "INFO", nil)
	info := p.next()["structured_output"].(obj)
	if info["output_format"] != nil || info["source_id"] != "" {
		t.Fatalf("defaults: %v", info)
	}
}

func TestAssistantAndLogLinesStreamBeforeTheTerminal(t *testing.T) {
	p := start(t, echo)
	p.invoke("x", "SAY:hi", nil)
	got := []any{p.next(), p.next(), p.next(), p.next(), p.next()}
	equal(t, got, []any{
		obj{"type": "assistant", "text_blocks": []any{"hi"}, "id": "x"},
		obj{"type": "assistant", "text_blocks": []any{"hi", "second"}, "id": "x"},
		obj{"type": "log", "level": "debug", "message": "log debug", "id": "x"},
		obj{"type": "log", "level": "warn", "message": "log warn", "id": "x"},
		obj{"type": "result", "text": "said", "metadata": obj{}, "id": "x"},
	})
}

func TestErrorsAndPanicsAreOneErrorAndTheHandlerStaysWarm(t *testing.T) {
	p := start(t, echo)
	p.invoke("e1", "FAIL:nope", nil)
	equal(t, p.next(), obj{"type": "error", "error": "nope", "metadata": obj{"code": 7}, "id": "e1"})
	p.invoke("e2", "PLAIN:x", nil)
	equal(t, p.next(), obj{"type": "error", "error": "plain x", "metadata": obj{}, "id": "e2"})
	p.invoke("e3", "PANIC:y", nil)
	equal(t, p.next(), obj{"type": "error", "error": "handler panicked: boom y", "metadata": obj{}, "id": "e3"})
	p.invoke("ok", "TEXT:still here", nil)
	if got := p.next()["text"]; got != "still here" {
		t.Fatalf("after errors: %v", got)
	}
}

func TestResultsThatBreakTheContract(t *testing.T) {
	cases := map[string]Result{
		"must be a JSON object":  Structured([]int{1}),
		"cannot be sent as JSON": Structured(obj{"f": func() {}}),
	}
	for want, result := range cases {
		result := result
		p := start(t, func(context.Context, *Invocation, *Sender) (Result, error) { return result, nil })
		p.invoke("b", "x", nil)
		m := p.next()
		if m["type"] != "error" || m["id"] != "b" || !strings.Contains(m["error"].(string), want) {
			t.Fatalf("%s: %v", want, m)
		}
	}
}

func TestCancelAnswersAtOnceCancelsCtxAndDropsTheLateOutcome(t *testing.T) {
	p := start(t, echo)
	p.invoke("w", "WAIT", nil)
	equal(t, p.next(), obj{"type": "assistant", "text_blocks": []any{"waiting"}, "id": "w"})
	p.send(`{"type":"cancel","id":"w"}`)
	equal(t, p.next(), obj{"type": "error", "error": "cancelled", "metadata": obj{}, "id": "w"})
	p.invoke("n", "TEXT:next", nil)
	equal(t, p.next(), obj{"type": "result", "text": "next", "metadata": obj{"handler": "t"}, "id": "n"})
	p.close()
	for m := range p.messages {
		t.Fatalf("after the terminal: %v", m)
	}
}

func TestStrayCancelsAndASecondInvoke(t *testing.T) {
	p := start(t, echo)
	p.invoke("t", "TEXT:one", nil)
	p.next()
	p.send(`{"type":"cancel","id":"t"}`)
	p.invoke("h", "WAIT", nil)
	p.next()
	p.send(`{"type":"cancel","id":"not-h"}`)
	p.invoke("second", "TEXT:no", nil)
	refused := p.next()
	if refused["id"] != "second" || !strings.Contains(refused["error"].(string), "another invocation (h) is still running") {
		t.Fatalf("refusal: %v", refused)
	}
	p.send(`{"type":"cancel","id":"h"}`)
	equal(t, p.next(), obj{"type": "error", "error": "cancelled", "metadata": obj{}, "id": "h"})
}

func TestBadLinesAreSkippedAndAWrongProtocolIsAnError(t *testing.T) {
	p := start(t, echo)
	for _, line := range []string{"not json", "[1,2]", `{"type":"mystery"}`, `{"type":"invoke","protocol":1}`, ""} {
		p.send(line)
	}
	p.invoke("v", "TEXT:x", obj{"protocol": 2})
	refused := p.next()
	if refused["id"] != "v" || !strings.Contains(refused["error"].(string), "unsupported handler protocol 2") {
		t.Fatalf("refusal: %v", refused)
	}
	p.send("{\"type\":\"invoke\",\"protocol\":1,\"id\":\"crlf\",\"user_prompt\":\"TEXT:ok\"}\r")
	equal(t, p.next(), obj{"type": "result", "text": "ok", "metadata": obj{"handler": "t"}, "id": "crlf"})
}

func TestEOFCancelsTheRunningInvocationAndReturns(t *testing.T) {
	cancelled := make(chan struct{})
	p := start(t, func(ctx context.Context, inv *Invocation, send *Sender) (Result, error) {
		send.Assistant("started")
		<-ctx.Done()
		close(cancelled)
		return Text("never sent"), nil
	})
	p.invoke("eof", "x", nil)
	p.next()
	if err := p.close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-cancelled:
	case <-time.After(15 * time.Second):
		t.Fatal("ctx not cancelled at EOF")
	}
}

func TestABigInvocationArrivesWhole(t *testing.T) {
	p := start(t, echo)
	big := strings.Repeat("x", 3<<20) + "é"
	p.invoke("big", "TEXT:"+big, nil)
	if got := p.next()["text"]; got != big {
		t.Fatalf("got %d bytes", len(got.(string)))
	}
}

func TestRedactLongestFirst(t *testing.T) {
	if got := Redact("key=abc123 and abc", []string{"abc", "abc123", ""}); got != "key=[REDACTED] and [REDACTED]" {
		t.Fatal(got)
	}
}

func TestServeRefusesANilHandler(t *testing.T) {
	if err := Serve(strings.NewReader(""), io.Discard, nil); err == nil {
		t.Fatal("no error for a nil handler")
	}
}
