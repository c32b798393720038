//go:build unix

package handler

import (
	"os"
	"syscall"
)

// claimStdout keeps a private copy of stdout for protocol lines and points
// fd 1 at stderr.
func claimStdout() (*os.File, error) {
	fd, err := syscall.Dup(1)
	if err != nil {
		return nil, err
	}
	syscall.CloseOnExec(fd)
	if err := dup2(2, 1); err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), "runtimeuse-protocol"), nil
}
