//go:build !unix

package handler

import "os"

// claimStdout cannot redirect fd 1 here: stray stdout writes are the
// handler's own responsibility.
func claimStdout() (*os.File, error) {
	return os.Stdout, nil
}
