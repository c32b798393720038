package handler

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// As a child process (see TestRunKeepsStdoutForTheProtocol), this test
// binary is a handler served by Run.
func TestMain(m *testing.M) {
	if os.Getenv("RUNTIMEUSE_GO_SDK_CHILD") == "1" {
		err := Run(func(ctx context.Context, inv *Invocation, send *Sender) (Result, error) {
			fmt.Println("chatter on stdout")
			out, err := exec.Command("echo", "child chatter").Output()
			if err != nil {
				return Result{}, err
			}
			cmd := exec.Command("echo", "inherited chatter")
			cmd.Stdout = os.Stdout
			if err := cmd.Run(); err != nil {
				return Result{}, err
			}
			return Text(strings.TrimSpace(string(out)) + " / " + inv.UserPrompt), nil
		})
		fmt.Fprintln(os.Stderr, "Run returned", err)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestRunKeepsStdoutForTheProtocol(t *testing.T) {
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "RUNTIMEUSE_GO_SDK_CHILD=1")
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(stdin, `{"type":"invoke","protocol":1,"id":"r","user_prompt":"hi"}`)
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() {
		t.Fatalf("no reply; stderr: %s", stderr.String())
	}
	var reply map[string]any
	if err := json.Unmarshal(lines.Bytes(), &reply); err != nil {
		t.Fatalf("stray stdout line %q", lines.Text())
	}
	if reply["text"] != "child chatter / hi" || reply["id"] != "r" {
		t.Fatalf("reply: %v", reply)
	}
	stdin.Close()
	if lines.Scan() {
		t.Fatalf("more on stdout: %q", lines.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("%v: %s", err, stderr.String())
	}
	for _, want := range []string{"chatter on stdout\n", "inherited chatter\n", "Run returned <nil>"} {
		if !strings.Contains(stderr.String(), want) {
			t.Fatalf("%q not in stderr: %s", want, stderr.String())
		}
	}
}
