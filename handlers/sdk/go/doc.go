// Package handler writes a runtimeuse agent handler as one function.
//
//	func main() {
//		handler.Run(func(ctx context.Context, inv *handler.Invocation, send *handler.Sender) (handler.Result, error) {
//			send.Assistant("Thinking...")
//			return handler.Text("you said " + inv.UserPrompt), nil
//		})
//	}
//
// The package speaks handler protocol v1 (protocol/handler-protocol.md in
// the runtimeuse repository) on stdin/stdout. Framing, one invocation at a
// time, cancellation (ctx is cancelled when the runtime cancels the
// invocation) and turning a returned error or a panic into exactly one
// `error` message are its job; the process stays warm for the next
// invocation. Standard library only.
package handler
